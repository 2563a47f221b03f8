//! Reconcile tests: each states the exact API exchanges it expects, in order.

use super::conditions::{Outcome, TokenState, next_status};
use super::testing::{
    FakeTokens, NOW, credential, due_of, now, outage, redis_token, token_at, written_secret,
};
use super::{Context, ControllerConfig, Observers, reconcile};
use crate::api::{
    AmrCredential, AmrCredentialStatus, FlowType, REFRESH_REQUESTED_ANNOTATION, RedisEndpoint,
    RolloutRestartTarget, VerifyConfig, WorkloadKind,
};
use crate::emulator::amr::AmrEmulator;
use crate::emulator::pki::Ca;
use crate::identity::{AcquiredToken, RefreshFailure};
use crate::probe::ProbeOptions;
use http::{Method, Request, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

pub(super) type ApiHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub(super) const SECRET: &str = "/api/v1/namespaces/shop/secrets/orders";
pub(super) const STATUS: &str =
    "/apis/amr.entraid.dev/v1alpha1/namespaces/shop/amrcredentials/orders/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/orders-api";

/// One expected request and the answer to it.
pub(super) struct Exchange {
    method: Method,
    path: &'static str,
    /// Parts the query string must contain.
    query: &'static [&'static str],
    /// Parts the request body must contain.
    body: Vec<String>,
    pub(super) status: u16,
    /// The answer; `None` echoes the request body.
    pub(super) reply: Option<Value>,
}

pub(super) fn exchange(method: Method, path: &'static str, body: &[&str]) -> Exchange {
    let body = body.iter().map(|s| (*s).to_string()).collect();
    Exchange {
        method,
        path,
        query: &[],
        body,
        status: 200,
        reply: None,
    }
}

pub(super) fn get_secret(found: Option<&Secret>) -> Exchange {
    let reply = match found {
        Some(s) => serde_json::to_value(s).expect("a Secret serialises"),
        None => not_found(),
    };
    let status = if found.is_some() { 200 } else { 404 };
    Exchange {
        status,
        reply: Some(reply),
        ..exchange(Method::GET, SECRET, &[])
    }
}

pub(super) fn apply_secret(body: &[&str]) -> Exchange {
    let query = &["fieldManager=amr-credential-operator", "force=true"];
    Exchange {
        query,
        ..exchange(Method::PATCH, SECRET, body)
    }
}

pub(super) fn patch_status(cred: &AmrCredential, body: &[&str]) -> Exchange {
    let reply = serde_json::to_value(cred).expect("a credential serialises");
    Exchange {
        reply: Some(reply),
        ..exchange(Method::PATCH, STATUS, body)
    }
}

pub(super) fn event(type_: &str, reason: &str) -> Exchange {
    let body = [
        format!(r#""type":"{type_}""#),
        format!(r#""reason":"{reason}""#),
    ];
    let body: Vec<&str> = body.iter().map(String::as_str).collect();
    exchange(Method::POST, EVENTS, &body)
}

fn patch_deployment(found: bool, body: &[&str]) -> Exchange {
    let (status, reply) = match found {
        true => (
            200,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                             "metadata": {"name": "orders-api", "namespace": "shop"}}),
        ),
        false => (404, not_found()),
    };
    Exchange {
        status,
        reply: Some(reply),
        ..exchange(Method::PATCH, DEPLOYMENT, body)
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "not found", "reason": "NotFound", "code": 404})
}

/// Answers the script in order, then checks that no other request comes.
pub(super) async fn serve(mut handle: ApiHandle, script: Vec<Exchange>) {
    for (i, want) in script.into_iter().enumerate() {
        let (req, send) = handle
            .next_request()
            .await
            .expect("the client asked no more");
        let what = format!("exchange {i}: {} {}", req.method(), req.uri());
        assert_eq!(
            (req.method(), req.uri().path()),
            (&want.method, want.path),
            "{what}"
        );
        let query = req.uri().query().unwrap_or_default().to_string();
        assert!(want.query.iter().all(|q| query.contains(q)), "{what}");
        let bytes = req.into_body().collect_bytes().await.expect("a body");
        let body = String::from_utf8(bytes.to_vec()).expect("utf-8 body");
        for part in &want.body {
            assert!(body.contains(part.as_str()), "{what}: no {part} in {body}");
        }
        let reply = want
            .reply
            .map_or(bytes.to_vec(), |v| v.to_string().into_bytes());
        let response = Response::builder()
            .status(want.status)
            .body(Body::from(reply));
        send.send_response(response.expect("a valid response"));
    }
    if let Some((req, _)) = handle.next_request().await {
        panic!("unexpected request: {} {}", req.method(), req.uri());
    }
}

/// Reconciles `cred` once against the script and returns the requested action.
async fn reconcile_against(
    cred: AmrCredential,
    tokens: Vec<Result<AcquiredToken, RefreshFailure>>,
    config: ControllerConfig,
    script: Vec<Exchange>,
) -> Action {
    reconcile_observed(cred, tokens, config, Observers::default(), script).await
}

/// Like [`reconcile_against`], reporting to `observers`.
async fn reconcile_observed(
    cred: AmrCredential,
    tokens: Vec<Result<AcquiredToken, RefreshFailure>>,
    config: ControllerConfig,
    observers: Observers,
    script: Vec<Exchange>,
) -> Action {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let tokens = Arc::new(FakeTokens::answering(tokens));
    let ctx = Context::observed(client, tokens, config, observers);
    let server = tokio::spawn(serve(handle, script));
    let action = reconcile(Arc::new(cred), Arc::new(ctx.with_clock(now))).await;
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the client kept its connection open"),
    }
    action.expect("reconcile succeeds")
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("in range")
}

/// `cred` as it looks after a refresh at `refreshed` wrote `token`.
pub(super) fn after_refresh(
    mut cred: AmrCredential,
    token: &AcquiredToken,
    refreshed: i64,
) -> AmrCredential {
    let c = &token.claims;
    let state = TokenState {
        object_id: c.oid.clone(),
        issued_at: c.issued_at,
        expires_at: c.expires_at,
    };
    let resolved = crate::api::validate("orders", &cred.spec).expect("fixture is valid");
    let due = due_of("orders", token, &resolved);
    let outcome = Outcome::Refreshed {
        secret: "orders",
        token: state,
        refresh_at: due,
    };
    cred.status = Some(next_status(
        &AmrCredentialStatus::default(),
        &outcome,
        Some(1),
        at(refreshed),
    ));
    cred
}

fn with_deployment(mut cred: AmrCredential) -> AmrCredential {
    let target = RolloutRestartTarget {
        kind: WorkloadKind::Deployment,
        name: "orders-api".into(),
    };
    cred.spec.rollout_restart_targets = vec![target];
    cred
}

fn requeue(secs: u64) -> Action {
    Action::requeue(Duration::from_secs(secs))
}

/// The requeue after credential `orders` receives a token issued at NOW for an hour.
fn requeue_after_new_token() -> Action {
    let cred = credential("orders");
    let resolved = crate::api::validate("orders", &cred.spec).expect("fixture is valid");
    let due = due_of("orders", &token_at(NOW, 3600), &resolved);
    let wait = at(NOW).duration_until(due);
    Action::requeue(Duration::try_from(wait).expect("the refresh is ahead"))
}

#[tokio::test]
async fn a_new_credential_gets_a_secret_a_status_and_an_event() {
    let cred = credential("orders");
    let script = vec![
        get_secret(None),
        apply_secret(&[
            r#""username":"b2lkLTE=""#,
            // 80 % of the hour, staggered 8.872 s earlier for this credential.
            r#""amr.entraid.dev/refresh-at":"2025-06-15T15:54:31.128Z""#,
        ]),
        patch_status(
            &cred,
            &[r#""reason":"TokenRefreshed""#, r#""objectId":"oid-1""#],
        ),
        event("Normal", "TokenRefreshed"),
    ];
    let action = reconcile_against(
        cred,
        vec![Ok(token_at(NOW, 3600))],
        Default::default(),
        script,
    )
    .await;
    assert_eq!(action, requeue_after_new_token());
}

#[tokio::test]
async fn a_fresh_secret_after_a_restart_is_only_read() {
    let token = token_at(NOW - 600, 3600);
    let cred = after_refresh(credential("orders"), &token, NOW - 600);
    let script = vec![get_secret(Some(&written_secret(&cred, &token)))];
    let action = reconcile_against(cred, vec![], Default::default(), script).await;
    assert_eq!(action, Action::requeue(Duration::from_millis(2_271_128)));
}

#[tokio::test]
async fn a_refresh_request_refreshes_a_fresh_secret_at_once() {
    let token = token_at(NOW - 600, 3600);
    let mut cred = after_refresh(credential("orders"), &token, NOW - 600);
    cred.annotations_mut()
        .insert(REFRESH_REQUESTED_ANNOTATION.into(), "please".into());
    let script = vec![
        get_secret(Some(&written_secret(&cred, &token))),
        apply_secret(&[r#""amr.entraid.dev/refresh-requested-at":"please""#]),
        patch_status(&cred, &[r#""lastRefreshTime":"2025-06-15T15:06:40Z""#]),
        event("Normal", "TokenRefreshed"),
    ];
    reconcile_against(
        cred,
        vec![Ok(token_at(NOW, 3600))],
        Default::default(),
        script,
    )
    .await;
}

#[tokio::test]
async fn a_failed_refresh_keeps_a_valid_secret_and_degrades() {
    let token = token_at(NOW - 3000, 3600);
    let cred = after_refresh(credential("orders"), &token, NOW - 3000);
    let script = vec![
        get_secret(Some(&written_secret(&cred, &token))),
        patch_status(
            &cred,
            &[
                r#""reason":"RetriesExhausted""#,
                r#""consecutiveFailures":1"#,
            ],
        ),
        event("Warning", "RefreshFailed"),
    ];
    let action = reconcile_against(cred, vec![Err(outage())], Default::default(), script).await;
    assert_eq!(action, requeue(30));
}

#[tokio::test]
async fn an_expired_token_during_an_outage_makes_the_credential_unready() {
    let token = token_at(NOW - 4000, 3600);
    let cred = after_refresh(credential("orders"), &token, NOW - 4000);
    let script = vec![
        get_secret(Some(&written_secret(&cred, &token))),
        patch_status(
            &cred,
            &[r#""status":"False","type":"Ready""#, "TokenExpired"],
        ),
        event("Warning", "RefreshFailed"),
        event("Warning", "TokenExpired"),
    ];
    let action = reconcile_against(cred, vec![Err(outage())], Default::default(), script).await;
    assert_eq!(action, requeue(30));
}

#[tokio::test]
async fn a_secret_owned_by_someone_else_is_never_overwritten() {
    let cred = credential("orders");
    let mut foreign = written_secret(&cred, &token_at(NOW, 3600));
    foreign.metadata.owner_references.as_mut().expect("owned")[0].uid = "uid-other".into();
    let script = vec![
        get_secret(Some(&foreign)),
        patch_status(&cred, &[r#""reason":"SecretConflict""#]),
        event("Warning", "SecretConflict"),
    ];
    let action = reconcile_against(cred, vec![], Default::default(), script).await;
    assert_eq!(action, requeue(300));
}

#[tokio::test]
async fn an_ambient_flow_outside_the_allow_list_is_not_allowed() {
    let mut cred = credential("orders");
    cred.spec.flow.flow_type = FlowType::DefaultAzureCredential;
    let config = ControllerConfig {
        ambient_identity_namespaces: vec!["ops".into()],
        ..Default::default()
    };
    let script = vec![
        get_secret(None),
        patch_status(&cred, &[r#""reason":"NotAllowed""#]),
        event("Warning", "NotAllowed"),
    ];
    let action = reconcile_against(cred, vec![], config, script).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn an_invalid_spec_is_reported_without_touching_secrets() {
    let mut cred = credential("orders");
    cred.spec.flow.client_secret_ref = None;
    let script = vec![
        patch_status(&cred, &[r#""reason":"InvalidSpec""#, "clientSecretRef"]),
        event("Warning", "InvalidSpec"),
    ];
    let action = reconcile_against(cred, vec![], Default::default(), script).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_changed_secret_restarts_the_rollout_targets() {
    let token = token_at(NOW - 3000, 3600);
    let cred = after_refresh(with_deployment(credential("orders")), &token, NOW - 3000);
    let script = vec![
        get_secret(Some(&written_secret(&cred, &token))),
        apply_secret(&[]),
        patch_deployment(
            true,
            &[r#""kubectl.kubernetes.io/restartedAt":"2025-06-15T15:06:40Z""#],
        ),
        patch_status(&cred, &[r#""reason":"RolloutRestarted","status":"True""#]),
        event("Normal", "RolloutRestarted"),
    ];
    reconcile_against(
        cred,
        vec![Ok(token_at(NOW, 3600))],
        Default::default(),
        script,
    )
    .await;
}

#[tokio::test]
async fn a_missing_rollout_target_is_reported_and_the_secret_still_written() {
    let token = token_at(NOW - 3000, 3600);
    let cred = after_refresh(with_deployment(credential("orders")), &token, NOW - 3000);
    let script = vec![
        get_secret(Some(&written_secret(&cred, &token))),
        apply_secret(&[]),
        patch_deployment(false, &[]),
        patch_status(
            &cred,
            &[r#""reason":"RolloutTargetNotFound","status":"False""#],
        ),
        event("Warning", "RolloutTargetNotFound"),
    ];
    let action = reconcile_against(
        cred,
        vec![Ok(token_at(NOW, 3600))],
        Default::default(),
        script,
    )
    .await;
    assert_eq!(action, requeue_after_new_token());
}

#[tokio::test]
async fn a_routine_refresh_is_recorded_in_status_without_an_event() {
    let token = token_at(NOW - 3000, 3600);
    let cred = after_refresh(credential("orders"), &token, NOW - 3000);
    let script = vec![
        get_secret(Some(&written_secret(&cred, &token))),
        apply_secret(&[]),
        patch_status(&cred, &[r#""reason":"TokenRefreshed""#]),
    ];
    reconcile_against(
        cred,
        vec![Ok(token_at(NOW, 3600))],
        Default::default(),
        script,
    )
    .await;
}

#[tokio::test]
async fn a_refresh_after_failures_announces_the_recovery() {
    let token = token_at(NOW - 3000, 3600);
    let mut cred = after_refresh(credential("orders"), &token, NOW - 3000);
    if let Some(status) = cred.status.as_mut() {
        status.consecutive_failures = 2;
    }
    let script = vec![
        get_secret(Some(&written_secret(&cred, &token))),
        apply_secret(&[]),
        patch_status(&cred, &[r#""consecutiveFailures":0"#]),
        event("Normal", "TokenRefreshed"),
    ];
    reconcile_against(
        cred,
        vec![Ok(token_at(NOW, 3600))],
        Default::default(),
        script,
    )
    .await;
}

#[tokio::test]
async fn a_first_secret_restarts_no_workloads() {
    let cred = with_deployment(credential("orders"));
    let script = vec![
        get_secret(None),
        apply_secret(&[]),
        patch_status(&cred, &[r#""reason":"TokenRefreshed""#]),
        event("Normal", "TokenRefreshed"),
    ];
    reconcile_against(
        cred,
        vec![Ok(token_at(NOW, 3600))],
        Default::default(),
        script,
    )
    .await;
}

#[tokio::test]
async fn a_stale_cached_status_is_checked_against_a_fresh_read_before_writing() {
    let token = token_at(NOW - 600, 3600);
    let up_to_date = after_refresh(credential("orders"), &token, NOW - 600);
    let stale = credential("orders");
    let read = Exchange {
        reply: Some(serde_json::to_value(&up_to_date).expect("a credential serialises")),
        ..exchange(Method::GET, STATUS, &[])
    };
    let script = vec![get_secret(Some(&written_secret(&up_to_date, &token))), read];
    reconcile_against(stale, vec![], Default::default(), script).await;
}

fn verifying(mut cred: AmrCredential, redis: Option<(&str, u16)>) -> AmrCredential {
    cred.spec.verify = Some(VerifyConfig { enabled: true });
    cred.spec.redis = redis.map(|(host, port)| RedisEndpoint {
        host: host.into(),
        port,
        tls: true,
    });
    cred
}

/// Observers whose probe gives up on each step after a second, trusting `ca` if given.
fn observers(ca: Option<&std::path::Path>) -> Observers {
    let mut probe = ProbeOptions::new(Duration::from_secs(1)).expect("the built-in roots work");
    if let Some(path) = ca {
        probe = probe
            .trust_file(path)
            .expect("the emulator's CA file is PEM");
    }
    Observers {
        probe,
        ..Observers::default()
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a bound address").port()
}

/// The line counting one refresh by the client credentials flow with `result`.
fn refreshes(result: &str) -> String {
    format!(r#"amr_credential_refreshes_total{{flow="ClientCredentials",result="{result}"}} 1"#)
}

fn has_line(observers: &Observers, line: &str) -> bool {
    observers.metrics.encode().lines().any(|l| l == line)
}

#[tokio::test]
async fn a_new_token_that_passes_verification_is_verified() {
    let ca = Ca::new("controller test CA").expect("a CA");
    let amr = AmrEmulator::start(&ca).await.expect("redis-server starts");
    let token = redis_token("oid-verified");
    let expires = token.claims.expires_at;
    amr.grant("oid-verified", &token.token, expires)
        .await
        .expect("the emulator accepts the token");
    let cred = verifying(credential("orders"), Some((amr.host(), amr.tls_port())));
    let observers = observers(Some(amr.ca_cert_path()));
    let script = vec![
        get_secret(None),
        apply_secret(&[]),
        patch_status(
            &cred,
            &[r#""reason":"VerificationPassed","status":"True","type":"Verified""#],
        ),
        event("Normal", "TokenRefreshed"),
    ];
    reconcile_observed(
        cred,
        vec![Ok(token)],
        Default::default(),
        observers.clone(),
        script,
    )
    .await;
    assert!(has_line(
        &observers,
        r#"amr_credential_verifications_total{namespace="shop",name="orders",result="success"} 1"#
    ));
}

#[tokio::test]
async fn a_new_token_that_fails_verification_is_kept_and_a_warning_says_why() {
    let cred = verifying(credential("orders"), Some(("127.0.0.1", closed_port())));
    let observers = observers(None);
    let script = vec![
        get_secret(None),
        apply_secret(&[r#""username":"b2lkLWNsb3NlZA==""#]),
        patch_status(
            &cred,
            &[
                r#""message":"tcp: "#,
                r#""reason":"VerificationFailed","status":"False","type":"Verified""#,
                r#""reason":"TokenRefreshed","status":"True","type":"Ready""#,
            ],
        ),
        event("Normal", "TokenRefreshed"),
        event("Warning", "VerificationFailed"),
    ];
    let token = redis_token("oid-closed");
    reconcile_observed(
        cred,
        vec![Ok(token)],
        Default::default(),
        observers.clone(),
        script,
    )
    .await;
    assert!(has_line(
        &observers,
        r#"amr_credential_verifications_total{namespace="shop",name="orders",result="failure"} 1"#
    ));
}

#[tokio::test]
async fn verification_without_an_endpoint_is_reported_without_a_probe() {
    let cred = verifying(credential("orders"), None);
    let script = vec![
        get_secret(None),
        apply_secret(&[]),
        patch_status(
            &cred,
            &[r#""reason":"NoRedisEndpoint","status":"False","type":"Verified""#],
        ),
        event("Normal", "TokenRefreshed"),
    ];
    let observers = observers(None);
    let tokens = vec![Ok(token_at(NOW, 3600))];
    reconcile_observed(cred, tokens, Default::default(), observers.clone(), script).await;
    assert!(!observers.metrics.encode().contains("verifications_total{"));
}

#[tokio::test]
async fn a_fresh_token_never_verified_is_verified_without_a_refresh() {
    let token = redis_token("oid-fresh");
    let cred = after_refresh(
        credential("orders"),
        &token,
        token.claims.issued_at.as_second(),
    );
    let cred = verifying(cred, Some(("127.0.0.1", closed_port())));
    let read = Exchange {
        reply: Some(serde_json::to_value(&cred).expect("a credential serialises")),
        ..exchange(Method::GET, STATUS, &[])
    };
    let script = vec![
        get_secret(Some(&written_secret(&cred, &token))),
        read,
        patch_status(&cred, &[r#""reason":"VerificationFailed""#]),
        event("Warning", "VerificationFailed"),
    ];
    reconcile_observed(cred, vec![], Default::default(), observers(None), script).await;
}

#[tokio::test]
async fn a_refresh_is_counted_by_flow_and_result_with_its_conditions_and_expiry() {
    let observers = Observers::default();
    let script = vec![
        get_secret(None),
        apply_secret(&[]),
        patch_status(&credential("orders"), &[]),
        event("Normal", "TokenRefreshed"),
    ];
    let tokens = vec![Ok(token_at(NOW, 3600))];
    let cred = credential("orders");
    reconcile_observed(cred, tokens, Default::default(), observers.clone(), script).await;
    let labels = r#"namespace="shop",name="orders""#;
    for line in [
        refreshes("success"),
        r#"amr_credential_credentials{condition="Ready",status="True"} 1"#.to_owned(),
        r#"amr_credential_credentials{condition="Degraded",status="True"} 0"#.to_owned(),
        r#"amr_credential_credentials{condition="Degraded",status="False"} 1"#.to_owned(),
        format!(
            "amr_credential_token_expiry_timestamp_seconds{{{labels}}} {}",
            NOW + 3600
        ),
    ] {
        assert!(
            has_line(&observers, &line),
            "no {line} in\n{}",
            observers.metrics.encode()
        );
    }
}

#[tokio::test]
async fn a_failed_refresh_counts_a_failure_and_its_retries() {
    let token = token_at(NOW - 3000, 3600);
    let cred = after_refresh(credential("orders"), &token, NOW - 3000);
    let script = vec![
        get_secret(Some(&written_secret(&cred, &token))),
        patch_status(&cred, &[]),
        event("Warning", "RefreshFailed"),
    ];
    let observers = Observers::default();
    let tokens = vec![Err(outage())];
    reconcile_observed(cred, tokens, Default::default(), observers.clone(), script).await;
    assert!(has_line(&observers, &refreshes("failure")));
    assert!(has_line(
        &observers,
        r#"amr_credential_retries_total{flow="ClientCredentials"} 2"#
    ));
}

/// Answers every list with no items and keeps every watch open, until the client is gone.
async fn empty_cluster(mut handle: ApiHandle) {
    let mut watches = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        if req.uri().query().unwrap_or_default().contains("watch=true") {
            watches.push(send);
            continue;
        }
        let kind = match req.uri().path() {
            "/api/v1/secrets" => ("meta.k8s.io/v1", "PartialObjectMetadataList"),
            _ => ("amr.entraid.dev/v1alpha1", "AmrCredentialList"),
        };
        let list = json!({"apiVersion": kind.0, "kind": kind.1,
                          "metadata": {"resourceVersion": "1"}, "items": []});
        send.send_response(Response::new(Body::from(list.to_string().into_bytes())));
    }
}

#[tokio::test]
async fn readiness_turns_synced_after_the_initial_list_and_back_at_shutdown() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    tokio::spawn(empty_cluster(handle));
    let observers = Observers::default();
    let readiness = observers.readiness.clone();
    readiness.set_role(crate::telemetry::Role::Single);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tokens = Arc::new(FakeTokens::answering(vec![]));
    let run = tokio::spawn(super::run_with(
        client,
        tokens,
        Default::default(),
        observers,
        async {
            let _ = stopped.await;
        },
    ));

    let synced = async {
        while !readiness.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), synced)
        .await
        .expect("readiness turns synced");
    stop.send(()).expect("the controller still runs");
    let ran = tokio::time::timeout(Duration::from_secs(5), run).await;
    ran.expect("the controller stops")
        .expect("no panic")
        .expect("no error");
    assert_eq!(readiness.check(), Err("caches have not synced"));
}

/// Answers every request of a reconcile by its route, for as long as the client asks, and
/// returns "METHOD type reason" of each Event request.
async fn answer_by_route(
    mut handle: ApiHandle,
    cred: AmrCredential,
    secret: Secret,
) -> Vec<String> {
    let mut events = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let body = req.into_body().collect_bytes().await.expect("a body");
        let reply = match (&method, path.as_str()) {
            (&Method::GET, SECRET) => serde_json::to_vec(&secret).expect("a Secret serialises"),
            (&Method::PATCH, STATUS) => serde_json::to_vec(&cred).expect("a credential serialises"),
            (_, p) if p.starts_with(EVENTS) => {
                let event: Value = serde_json::from_slice(&body).expect("an Event");
                let (type_, reason) = (&event["type"], &event["reason"]);
                events.push(format!(
                    "{method} {} {}",
                    type_.as_str().unwrap_or_default(),
                    reason.as_str().unwrap_or_default()
                ));
                body.to_vec()
            }
            _ => body.to_vec(),
        };
        send.send_response(Response::new(Body::from(reply)));
    }
    events
}

#[tokio::test]
async fn a_repeated_warning_extends_one_event_and_a_repeated_normal_event_is_a_new_one() {
    let token = token_at(NOW - 3000, 3600);
    let failing = after_refresh(credential("orders"), &token, NOW - 3000);
    let mut requested = failing.clone();
    requested
        .annotations_mut()
        .insert(REFRESH_REQUESTED_ANNOTATION.into(), "please".into());
    let secret = written_secret(&failing, &token);
    let answers = vec![
        Err(outage()),
        Err(outage()),
        Ok(token_at(NOW, 3600)),
        Ok(token_at(NOW, 3600)),
    ];

    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let tokens = Arc::new(FakeTokens::answering(answers));
    let ctx = Context::new(Client::new(service, "default"), tokens, Default::default());
    let ctx = Arc::new(ctx.with_clock(now));
    let server = tokio::spawn(answer_by_route(handle, failing.clone(), secret));
    for cred in [&failing, &failing, &requested, &requested] {
        let _ = reconcile(Arc::new(cred.clone()), ctx.clone()).await;
    }
    drop(ctx);
    let events = tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("the client let go")
        .expect("no panic");
    assert_eq!(
        events,
        [
            "POST Warning RefreshFailed",
            "PATCH Warning RefreshFailed",
            "POST Normal TokenRefreshed",
            "POST Normal TokenRefreshed",
        ]
    );
}
