//! Reconcile tests: each states the exact API exchanges it expects, in order.

use super::conditions::{Outcome, TokenState, next_status};
use super::testing::{FakeTokens, NOW, credential, now, outage, token_at, written_secret};
use super::{Context, ControllerConfig, reconcile};
use crate::api::{
    AmrCredential, AmrCredentialStatus, FlowType, REFRESH_REQUESTED_ANNOTATION,
    RolloutRestartTarget, WorkloadKind,
};
use crate::identity::{AcquiredToken, RefreshFailure};
use http::{Method, Request, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

type ApiHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const SECRET: &str = "/api/v1/namespaces/shop/secrets/orders";
const STATUS: &str = "/apis/amr.entraid.dev/v1alpha1/namespaces/shop/amrcredentials/orders/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/orders-api";

/// One expected request and the answer to it.
struct Exchange {
    method: Method,
    path: &'static str,
    /// Parts the query string must contain.
    query: &'static [&'static str],
    /// Parts the request body must contain.
    body: Vec<String>,
    status: u16,
    /// The answer; `None` echoes the request body.
    reply: Option<Value>,
}

fn exchange(method: Method, path: &'static str, body: &[&str]) -> Exchange {
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

fn get_secret(found: Option<&Secret>) -> Exchange {
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

fn apply_secret(body: &[&str]) -> Exchange {
    let query = &["fieldManager=amr-credential-operator", "force=true"];
    Exchange {
        query,
        ..exchange(Method::PATCH, SECRET, body)
    }
}

fn patch_status(cred: &AmrCredential, body: &[&str]) -> Exchange {
    let reply = serde_json::to_value(cred).expect("a credential serialises");
    Exchange {
        reply: Some(reply),
        ..exchange(Method::PATCH, STATUS, body)
    }
}

fn event(type_: &str, reason: &str) -> Exchange {
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
async fn serve(mut handle: ApiHandle, script: Vec<Exchange>) {
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
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(client, Arc::new(FakeTokens::answering(tokens)), config);
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
fn after_refresh(mut cred: AmrCredential, token: &AcquiredToken, refreshed: i64) -> AmrCredential {
    let c = &token.claims;
    let state = TokenState {
        object_id: c.oid.clone(),
        issued_at: c.issued_at,
        expires_at: c.expires_at,
    };
    let resolved = crate::api::validate("orders", &cred.spec).expect("fixture is valid");
    let due = crate::token_manager::refresh_at(c.issued_at, c.expires_at, &resolved.token_manager);
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

#[tokio::test]
async fn a_new_credential_gets_a_secret_a_status_and_an_event() {
    let cred = credential("orders");
    let script = vec![
        get_secret(None),
        apply_secret(&[
            r#""username":"b2lkLTE=""#,
            r#""amr.entraid.dev/refresh-at":"2025-06-15T15:54:40Z""#,
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
    assert_eq!(action, requeue(2880));
}

#[tokio::test]
async fn a_fresh_secret_after_a_restart_is_only_read() {
    let token = token_at(NOW - 600, 3600);
    let cred = after_refresh(credential("orders"), &token, NOW - 600);
    let script = vec![get_secret(Some(&written_secret(&cred, &token)))];
    let action = reconcile_against(cred, vec![], Default::default(), script).await;
    assert_eq!(action, requeue(2280));
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
        event("Normal", "TokenRefreshed"),
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
        event("Normal", "TokenRefreshed"),
        event("Warning", "RolloutTargetNotFound"),
    ];
    let action = reconcile_against(
        cred,
        vec![Ok(token_at(NOW, 3600))],
        Default::default(),
        script,
    )
    .await;
    assert_eq!(action, requeue(2880));
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
