//! Kubernetes API faults: each test states the exchanges, the failing answer among them,
//! and what the next reconcile repairs.

use super::testing::{FakeTokens, NOW, credential, now, token_at, written_secret};
use super::tests::{
    ApiHandle, Exchange, SECRET, STATUS, after_refresh, apply_secret, event, exchange, get_secret,
    patch_status, serve,
};
use super::{Context, Error, error_policy, reconcile};
use crate::api::AmrCredential;
use crate::identity::{AcquiredToken, RefreshFailure};
use http::{Method, Request, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// A mock API server answering one script, shared by every reconcile of a test.
struct Cluster {
    ctx: Arc<Context>,
    server: JoinHandle<()>,
}

impl Cluster {
    fn start(tokens: Vec<Result<AcquiredToken, RefreshFailure>>, script: Vec<Exchange>) -> Self {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = Context::new(
            Client::new(service, "default"),
            Arc::new(FakeTokens::answering(tokens)),
            Default::default(),
        );
        Cluster {
            ctx: Arc::new(ctx.with_clock(now)),
            server: tokio::spawn(serve(handle, script)),
        }
    }

    async fn reconcile(&self, cred: &AmrCredential) -> Result<Action, Error> {
        reconcile(Arc::new(cred.clone()), self.ctx.clone()).await
    }

    /// Drops the client and checks the script was answered to its end, and nothing more.
    async fn finish(self) {
        drop(self.ctx);
        match tokio::time::timeout(Duration::from_secs(2), self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            Err(_) => panic!("the client kept its connection open"),
        }
    }
}

/// `ex` answered with a failure `code` and its `reason`.
fn failing(mut ex: Exchange, code: u16, reason: &str) -> Exchange {
    let reply = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": reason, "reason": reason, "code": code});
    (ex.status, ex.reply) = (code, Some(reply));
    ex
}

/// A fresh read of the credential's status answered with `cred`.
fn get_status(cred: &AmrCredential) -> Exchange {
    let mut ex = exchange(Method::GET, STATUS, &[]);
    ex.reply = Some(serde_json::to_value(cred).expect("a credential serialises"));
    ex
}

/// An apply whose body carries every annotation and data member of `secret`, each
/// as `"key":"value"`.
fn apply_all_of(secret: &Secret) -> Exchange {
    let value = serde_json::to_value(secret).expect("a Secret serialises");
    let mut members = Vec::new();
    for part in [&value["metadata"]["annotations"], &value["data"]] {
        let map = part
            .as_object()
            .expect("the Secret has annotations and data");
        members.extend(
            map.iter()
                .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str()))),
        );
    }
    apply_secret(&members.iter().map(String::as_str).collect::<Vec<_>>())
}

#[tokio::test]
async fn a_conflict_on_the_secret_apply_backs_off_and_the_next_reconcile_writes_it() {
    let cred = credential("orders");
    let script = vec![
        get_secret(None),
        failing(apply_secret(&[]), 409, "Conflict"),
        get_secret(None),
        apply_secret(&[r#""username":"b2lkLTE=""#]),
        patch_status(&cred, &[r#""reason":"TokenRefreshed""#]),
        event("Normal", "TokenRefreshed"),
    ];
    let tokens = vec![Ok(token_at(NOW, 3600)), Ok(token_at(NOW, 3600))];
    let cluster = Cluster::start(tokens, script);
    let error = cluster
        .reconcile(&cred)
        .await
        .expect_err("the apply failed");
    assert!(
        matches!(error, Error::SecretApplyFailed { .. }),
        "{error:?}"
    );
    let first = error_policy(Arc::new(cred.clone()), &error, cluster.ctx.clone());
    let second = error_policy(Arc::new(cred.clone()), &error, cluster.ctx.clone());
    assert_eq!((first, second), (requeue(5), requeue(10)));
    cluster
        .reconcile(&cred)
        .await
        .expect("the API is healthy again");
    cluster.finish().await;
}

#[tokio::test]
async fn a_failed_secret_read_requests_no_token_and_writes_nothing() {
    let cred = credential("orders");
    let cluster = Cluster::start(
        vec![],
        vec![failing(get_secret(None), 500, "InternalError")],
    );
    let error = cluster.reconcile(&cred).await.expect_err("the read failed");
    assert!(matches!(error, Error::SecretGetFailed { .. }), "{error:?}");
    cluster.finish().await;
}

#[tokio::test]
async fn a_failed_status_patch_keeps_the_secret_and_the_next_reconcile_writes_the_status() {
    let cred = credential("orders");
    let token = token_at(NOW, 3600);
    let written = written_secret(&cred, &token);
    let script = vec![
        get_secret(None),
        apply_secret(&[]),
        failing(patch_status(&cred, &[]), 503, "ServiceUnavailable"),
        get_secret(Some(&written)),
        get_status(&cred),
        patch_status(&cred, &[r#""objectId":"oid-1""#, r#""type":"Ready""#]),
    ];
    // One token only: the second reconcile must reuse the one in the Secret.
    let cluster = Cluster::start(vec![Ok(token)], script);
    let error = cluster
        .reconcile(&cred)
        .await
        .expect_err("the patch failed");
    assert!(matches!(error, Error::StatusPatchFailed(_)), "{error:?}");
    cluster
        .reconcile(&cred)
        .await
        .expect("the status is written");
    cluster.finish().await;
}

#[tokio::test]
async fn a_secret_deleted_by_hand_is_recreated_with_one_token_request() {
    let token = token_at(NOW - 600, 3600);
    let cred = after_refresh(credential("orders"), &token, NOW - 600);
    let script = vec![
        get_secret(None),
        apply_secret(&[r#""username":"b2lkLTE=""#]),
        patch_status(&cred, &[r#""reason":"TokenRefreshed""#]),
        event("Normal", "TokenRefreshed"),
    ];
    let cluster = Cluster::start(vec![Ok(token_at(NOW, 3600))], script);
    cluster
        .reconcile(&cred)
        .await
        .expect("the Secret is recreated");
    cluster.finish().await;
}

#[tokio::test]
async fn a_secret_edited_by_hand_is_rewritten() {
    let token = token_at(NOW - 600, 3600);
    let cred = after_refresh(credential("orders"), &token, NOW - 600);
    let mut edited = written_secret(&cred, &token);
    let data = edited.data.as_mut().expect("the Secret has data");
    data.insert(
        "password".into(),
        k8s_openapi::ByteString(b"edited".to_vec()),
    );
    let fresh = token_at(NOW, 3600);
    let script = vec![
        get_secret(Some(&edited)),
        apply_all_of(&written_secret(&cred, &fresh)),
        patch_status(&cred, &[r#""reason":"TokenRefreshed""#]),
        event("Normal", "TokenRefreshed"),
    ];
    let cluster = Cluster::start(vec![Ok(fresh)], script);
    cluster
        .reconcile(&cred)
        .await
        .expect("the Secret is rewritten");
    cluster.finish().await;
}

#[tokio::test]
async fn a_crash_before_the_secret_is_written_leaves_a_consistent_secret_after_a_restart() {
    let cred = credential("orders");
    let crashed = Cluster::start(
        vec![Ok(token_at(NOW - 5, 3600))],
        vec![
            get_secret(None),
            failing(apply_secret(&[]), 500, "InternalError"),
        ],
    );
    let error = crashed
        .reconcile(&cred)
        .await
        .expect_err("the apply failed");
    assert!(
        matches!(error, Error::SecretApplyFailed { .. }),
        "{error:?}"
    );
    crashed.finish().await;

    let token = token_at(NOW, 3600);
    let script = vec![
        get_secret(None),
        apply_all_of(&written_secret(&cred, &token)),
        patch_status(&cred, &[r#""expiresAt":"2025-06-15T16:06:40Z""#]),
        event("Normal", "TokenRefreshed"),
    ];
    let restarted = Cluster::start(vec![Ok(token)], script);
    restarted
        .reconcile(&cred)
        .await
        .expect("the restart completes");
    restarted.finish().await;
}

const CREDENTIALS: &str = "/apis/amr.entraid.dev/v1alpha1/amrcredentials";

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "2"},
           "items": items})
}

/// Serves a cluster whose watches of AmrCredentials all expire at once (410 Gone): lists
/// hold `cred` once a watch has expired. Every request is noted in `log`.
async fn expiring_watches(
    mut handle: ApiHandle,
    (cred, secret): (AmrCredential, Secret),
    log: Arc<Mutex<Vec<String>>>,
) {
    let (mut open, mut expired) = (Vec::new(), false);
    while let Some((req, send)) = handle.next_request().await {
        let watch = req.uri().query().unwrap_or_default().contains("watch=true");
        let seen = format!("{} {} {watch}", req.method(), req.uri().path());
        log.lock()
            .expect("no test panicked holding the lock")
            .push(seen);
        let reply = match (req.uri().path(), watch) {
            (CREDENTIALS, true) => {
                expired = true;
                let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Failure", "reason": "Expired", "code": 410});
                json!({"type": "ERROR", "object": gone})
            }
            (_, true) => {
                open.push(send);
                continue;
            }
            (CREDENTIALS, false) => {
                let items = match expired {
                    true => vec![serde_json::to_value(&cred).expect("a credential serialises")],
                    false => Vec::new(),
                };
                list("amr.entraid.dev/v1alpha1", "AmrCredentialList", items)
            }
            ("/api/v1/secrets", false) => {
                list("meta.k8s.io/v1", "PartialObjectMetadataList", vec![])
            }
            _ => serde_json::to_value(&secret).expect("a Secret serialises"),
        };
        send.send_response(Response::new(Body::from(reply.to_string().into_bytes())));
    }
}

#[tokio::test]
async fn expiring_watches_are_relisted_with_backoff_and_reconcile_each_credential_once() {
    // The controller reads the system clock: the Secret is current by that clock.
    let iat = Timestamp::now().as_second() - 600;
    let token = token_at(iat, 3600);
    let cred = after_refresh(credential("orders"), &token, iat);
    let secret = written_secret(&cred, &token);
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(expiring_watches(handle, (cred, secret), log.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(super::run(
        Client::new(service, "default"),
        Arc::new(FakeTokens::answering(vec![])),
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));

    // Each expiry waits at least 0.8 s before the next list: 4 s allow at most 5 relists.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.send(()).expect("the controller still runs");
    let ran = tokio::time::timeout(Duration::from_secs(5), run).await;
    ran.expect("the controller stops")
        .expect("no panic")
        .expect("no error");
    let log = log
        .lock()
        .expect("no test panicked holding the lock")
        .clone();
    let count = |seen: &str| log.iter().filter(|l| *l == seen).count();
    let lists = count(&format!("GET {CREDENTIALS} false"));
    assert!((3..=8).contains(&lists), "{lists} lists: {log:#?}");
    assert!(count(&format!("GET {CREDENTIALS} true")) >= 2, "{log:#?}");
    assert_eq!(count(&format!("GET {SECRET} false")), 1, "{log:#?}");
    assert!(log.iter().all(|l| l.starts_with("GET ")), "{log:#?}");
}

fn requeue(secs: u64) -> Action {
    Action::requeue(Duration::from_secs(secs))
}
