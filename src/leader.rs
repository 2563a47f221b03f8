//! Leader election over a `coordination.k8s.io/v1` Lease: one replica runs the controller,
//! the others stand by.
//!
//! The Lease protocol is `kube-lease-manager`'s. Around it this module adds what a
//! controller needs: work runs only while this replica holds the lease, every Lease request
//! has a deadline so a hung renewal cannot outlive the lease, any failed renewal stops the
//! work at once, and every term starts with a fresh write instead of resuming an old one.
//!
//! ```text
//!  Candidate --lease readable--> Standby --acquired--> Leader --renewal failed--> Candidate
//!      ^                            ^                    |
//!      |                            +------lost----------+
//!      +---- retry with backoff ---- (any Lease API failure)
//! ```

use crate::telemetry::{Readiness, Role};
use kube::Client;
use kube::client::Body;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerError, LeaseParams};
use std::future::{Future, pending};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;
use tracing::Instrument;

/// Where the lease lives and who competes for it.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease, usually the operator's own.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity in the lease, unique among replicas (the pod name).
    pub identity: String,
    /// How long the lease stays valid after a renewal, in whole seconds (at least 2);
    /// renewed every third of it.
    pub lease_duration: Duration,
}

/// What can fail in leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The lease duration leaves no room for renewals.
    #[error("lease duration must be at least 2 seconds, got {0:?}")]
    LeaseDurationTooShort(Duration),
    /// A request to the Lease API failed.
    #[error("Lease API request failed")]
    LeaseRequestFailed(#[source] LeaseManagerError),
    /// A request to the Lease API took longer than its deadline.
    #[error("Lease API request timed out after {0:?}")]
    LeaseRequestTimedOut(Duration),
}

/// Runs `work` only while this replica holds the lease, until `shutdown` completes.
///
/// `work` starts each time leadership is gained; its future is dropped as soon as
/// leadership is lost or a renewal fails, so it must not spawn tasks that outlive it.
/// Lease API failures never end the election: it retries with backoff, reporting the
/// replica as [`Role::Candidate`] meanwhile. On shutdown, or when `work` returns by itself,
/// the lease is released so that a standby takes over without waiting for it to expire.
///
/// # Errors
/// [`LeaderError::LeaseDurationTooShort`] when the configuration cannot work.
pub async fn run_when_leader<F, Fut>(
    client: Client,
    config: LeaderConfig,
    readiness: Readiness,
    work: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LeaderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let timing = Timing::new(config.lease_duration)?;
    let client = deadline_client(client, timing.request_timeout);
    let span = tracing::info_span!(
        "leader_election",
        lease = %config.name,
        identity = %config.identity
    );
    elect(client, config, timing, readiness, work, shutdown)
        .instrument(span)
        .await;
    Ok(())
}

/// The election loop of [`run_when_leader`]: terms, each followed by backoff on failure.
async fn elect<F, Fut>(
    client: Client,
    config: LeaderConfig,
    timing: Timing,
    readiness: Readiness,
    mut work: F,
    shutdown: impl Future<Output = ()>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut shutdown = pin!(shutdown);
    let mut failures = 0;

    loop {
        readiness.set_role(Role::Candidate);
        let term = tokio::select! {
            biased;
            () = &mut shutdown => return,
            term = start_term(&client, &config, &timing) => term,
        };
        let ending = match term {
            Ok(manager) => {
                failures = 0;
                readiness.set_role(Role::Standby);
                let ending = follow(&manager, &readiness, &mut work, shutdown.as_mut()).await;
                release(&manager).await;
                ending
            }
            Err(err) => Ending::Failed(err),
        };
        readiness.set_role(Role::Candidate);

        let Ending::Failed(err) = ending else {
            return;
        };
        failures += 1;
        let delay = timing.backoff(failures);
        tracing::warn!(error = %chain(&err), retry_in = ?delay, "Lease request failed; retrying");
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Durations derived from the lease duration.
#[derive(Debug, Clone, Copy)]
struct Timing {
    lease_seconds: u64,
    renew_every: u64,
    request_timeout: Duration,
}

impl Timing {
    fn new(lease_duration: Duration) -> Result<Timing, LeaderError> {
        let lease_seconds = lease_duration.as_secs();
        if lease_seconds < 2 {
            return Err(LeaderError::LeaseDurationTooShort(lease_duration));
        }
        let renew_every = (lease_seconds / 3).max(1);

        // A renewal is a write and a read: each bounded by a third of the lease, a failing
        // renewal is noticed by two thirds of the lease, before a standby may take over.
        Ok(Timing {
            lease_seconds,
            renew_every,
            request_timeout: Duration::from_secs(renew_every),
        })
    }

    /// Lease parameters: renew when `renew_every` has passed since the last renewal.
    fn params(&self, identity: &str) -> LeaseParams {
        let grace = self.lease_seconds - self.renew_every;
        LeaseParams::new(identity, self.lease_seconds, grace)
    }

    /// Delay before the `failures`-th retry: doubling from one second up to a lease.
    fn backoff(&self, failures: u32) -> Duration {
        let doubled = 1u64
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u64::MAX);
        Duration::from_secs(doubled.min(self.lease_seconds))
    }
}

/// How one term of the election ended.
enum Ending {
    Shutdown,
    WorkReturned,
    Failed(LeaderError),
}

/// Starts a term: reads (or creates) the lease and gives up any hold from an earlier term,
/// so that leadership always begins with a successful write.
async fn start_term(
    client: &Client,
    config: &LeaderConfig,
    timing: &Timing,
) -> Result<LeaseManager, LeaderError> {
    let manager = LeaseManager::new(
        client.clone(),
        config.name.as_str(),
        config.namespace.as_str(),
        timing.params(&config.identity),
        LeaseCreateMode::AutoCreate,
    )
    .await
    .map_err(LeaderError::LeaseRequestFailed)?;
    manager
        .release()
        .await
        .map_err(LeaderError::LeaseRequestFailed)?;
    Ok(manager)
}

/// Follows the lease, running `work` while it is held, until shutdown, until `work`
/// returns, or until a Lease request fails.
async fn follow<F, Fut>(
    manager: &LeaseManager,
    readiness: &Readiness,
    work: &mut F,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Ending
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut running: Option<Pin<Box<Fut>>> = None;
    loop {
        let changed = tokio::select! {
            biased;
            () = &mut shutdown => return stop(Ending::Shutdown, readiness),
            () = until_returns(&mut running) => return stop(Ending::WorkReturned, readiness),
            changed = manager.changed() => changed,
        };
        match changed {
            Ok(true) => {
                tracing::info!("Acquired the lease; starting work as leader");
                readiness.set_role(Role::Leader);
                running = Some(Box::pin(work()));
            }
            Ok(false) => {
                tracing::info!("Lost the lease; stopping work and standing by");
                running = None;
                readiness.set_synced(false);
                readiness.set_role(Role::Standby);
            }
            Err(err) => {
                let err = LeaderError::LeaseRequestFailed(err);
                return stop(Ending::Failed(err), readiness);
            }
        }
    }
}

/// Marks the work stopped; the caller drops its future by returning.
fn stop(ending: Ending, readiness: &Readiness) -> Ending {
    readiness.set_synced(false);
    readiness.set_role(Role::Candidate);
    ending
}

/// Completes when the running work returns; never while nothing runs.
async fn until_returns<Fut: Future<Output = ()>>(running: &mut Option<Pin<Box<Fut>>>) {
    match running {
        Some(work) => work.await,
        None => pending().await,
    }
}

/// Gives the lease up if this replica holds it; failures only delay a standby's takeover.
async fn release(manager: &LeaseManager) {
    if let Err(err) = manager.release().await {
        tracing::warn!(error = %chain(&err), "Releasing the lease failed");
    }
}

/// An error and its causes, for a log line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text = format!("{text}: {inner}");
        cause = inner.source();
    }
    text
}

/// A client whose every request, body included, must finish within `timeout`.
fn deadline_client(client: Client, timeout: Duration) -> Client {
    let namespace = client.default_namespace().to_owned();
    Client::new(Deadline { client, timeout }, namespace)
}

/// Sends requests through an inner client with a deadline each.
#[derive(Clone)]
struct Deadline {
    client: Client,
    timeout: Duration,
}

type DeadlineFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, tower::BoxError>> + Send>>;

impl tower::Service<http::Request<Body>> for Deadline {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = DeadlineFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let exchange = async {
                let (parts, body) = client.send(request).await?.into_parts();
                let body = body.collect_bytes().await?;
                Ok::<_, kube::Error>(http::Response::from_parts(parts, Body::from(body)))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(response) => Ok(response?),
                Err(_) => Err(LeaderError::LeaseRequestTimedOut(timeout).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode, header};
    use serde_json::{Value, json};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::sync::{mpsc, oneshot};

    const ME: &str = "operator-0";
    const OTHER: &str = "operator-1";
    const LEASE: &str = "amr-credential-operator";

    /// An in-memory Lease API behind kube's mock service: GET, POST and PATCH on one Lease.
    #[derive(Clone, Default)]
    struct FakeApi {
        lease: Arc<Mutex<Option<Value>>>,
        exchanges: Arc<Mutex<Vec<String>>>,
        fail_writes: Arc<AtomicBool>,
    }

    impl FakeApi {
        /// A Lease held by `holder`, renewed `renewed_ago` seconds ago, valid for 15 s.
        fn held_by(holder: &str, renewed_ago: i64) -> FakeApi {
            let renewed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(renewed_ago);
            let spec = json!({
                "holderIdentity": holder,
                "acquireTime": micro_time(renewed),
                "renewTime": micro_time(renewed),
                "leaseDurationSeconds": 15,
                "leaseTransitions": 4,
            });
            let fake = FakeApi::default();
            *fake.lease.lock().unwrap() = Some(json!({"spec": spec}));
            fake
        }

        fn client(&self) -> Client {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let fake = self.clone();
            tokio::spawn(async move {
                while let Some((request, respond)) = handle.next_request().await {
                    respond.send_response(fake.answer(request).await);
                }
            });
            Client::new(service, "default")
        }

        async fn answer(&self, request: Request<Body>) -> Response<Body> {
            let method = request.method().clone();
            let kind = match request.headers().get(header::CONTENT_TYPE) {
                Some(t) if t.as_bytes().starts_with(b"application/apply-patch") => " apply",
                Some(t) if t.as_bytes().starts_with(b"application/strategic") => " strategic",
                _ => "",
            };
            self.exchanges
                .lock()
                .unwrap()
                .push(format!("{method}{kind}"));
            let body = request.into_body().collect_bytes().await.unwrap();
            if method != Method::GET && self.fail_writes.load(Ordering::SeqCst) {
                return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
            }

            let mut lease = self.lease.lock().unwrap();
            match method {
                Method::GET => match lease.as_ref() {
                    Some(found) => object(StatusCode::OK, found),
                    None => status(StatusCode::NOT_FOUND, "NotFound"),
                },
                Method::POST => {
                    let created: Value = serde_json::from_slice(&body).unwrap();
                    object(StatusCode::CREATED, lease.insert(created))
                }
                Method::PATCH => {
                    let patch: Value = serde_json::from_slice(&body).unwrap();
                    let current = lease.get_or_insert_with(|| json!({}));
                    merge(current, &patch);
                    object(StatusCode::OK, current)
                }
                _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            }
        }

        fn spec(&self, field: &str) -> Value {
            let lease = self.lease.lock().unwrap();
            lease
                .as_ref()
                .map_or(Value::Null, |l| l["spec"][field].clone())
        }

        fn holder(&self) -> Value {
            self.spec("holderIdentity")
        }

        /// Every exchange but reads, in order.
        fn writes(&self) -> Vec<String> {
            let exchanges = self.exchanges.lock().unwrap();
            exchanges.iter().filter(|e| *e != "GET").cloned().collect()
        }
    }

    fn micro_time(at: jiff::Timestamp) -> String {
        at.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
    }

    /// JSON merge patch: what strategic merge and apply do to a Lease's scalar fields.
    fn merge(target: &mut Value, patch: &Value) {
        let Some(fields) = patch.as_object() else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = json!({});
        }
        for (key, value) in fields {
            if value.is_null() {
                target.as_object_mut().unwrap().remove(key);
            } else {
                merge(&mut target[key], value);
            }
        }
    }

    fn object(code: StatusCode, lease: &Value) -> Response<Body> {
        let mut lease = lease.clone();
        merge(
            &mut lease,
            &json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE, "namespace": "default"},
            }),
        );
        let body = serde_json::to_vec(&lease).unwrap();
        Response::builder()
            .status(code)
            .body(Body::from(body))
            .unwrap()
    }

    fn status(code: StatusCode, reason: &str) -> Response<Body> {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "message": reason, "code": code.as_u16(),
        });
        let body = serde_json::to_vec(&body).unwrap();
        Response::builder()
            .status(code)
            .body(Body::from(body))
            .unwrap()
    }

    fn config(lease_seconds: u64) -> LeaderConfig {
        LeaderConfig {
            namespace: "default".into(),
            name: LEASE.into(),
            identity: ME.into(),
            lease_duration: Duration::from_secs(lease_seconds),
        }
    }

    /// An election running in the background, with its work's starts and stops reported.
    struct Election {
        readiness: Readiness,
        started: mpsc::UnboundedReceiver<()>,
        stopped: mpsc::UnboundedReceiver<()>,
        shutdown: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), LeaderError>>,
    }

    /// Sends on its channel when dropped, that is when the work is stopped.
    struct OnDrop(mpsc::UnboundedSender<()>);

    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    fn elect(fake: &FakeApi, config: LeaderConfig) -> Election {
        let readiness = Readiness::new();
        let (started_tx, started) = mpsc::unbounded_channel();
        let (stopped_tx, stopped) = mpsc::unbounded_channel();
        let work = move || {
            let started = started_tx.clone();
            let guard = OnDrop(stopped_tx.clone());
            async move {
                let _guard = guard;
                let _ = started.send(());
                pending::<()>().await;
            }
        };
        let (shutdown, on_shutdown) = oneshot::channel::<()>();
        let on_shutdown = async move {
            let _ = on_shutdown.await;
        };
        let run = run_when_leader(fake.client(), config, readiness.clone(), work, on_shutdown);
        let task = tokio::spawn(run);
        Election {
            readiness,
            started,
            stopped,
            shutdown,
            task,
        }
    }

    async fn within<T>(seconds: u64, what: impl Future<Output = Option<T>>) -> T {
        let waited = tokio::time::timeout(Duration::from_secs(seconds), what).await;
        waited.expect("timed out").expect("channel closed")
    }

    impl Election {
        /// Shuts the election down; returns what stays observable afterwards.
        async fn shut_down(self) -> (Readiness, mpsc::UnboundedReceiver<()>) {
            self.shutdown.send(()).unwrap();
            self.task.await.unwrap().unwrap();
            (self.readiness, self.stopped)
        }
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_acquired_and_work_starts() {
        let fake = FakeApi::default();
        let mut election = elect(&fake, config(15));
        within(5, election.started.recv()).await;

        assert_eq!(election.readiness.role(), Role::Leader);
        assert_eq!(fake.holder(), ME);
        assert_eq!(fake.spec("leaseDurationSeconds"), 15);
        let writes = fake.writes();
        assert_eq!(writes.first().map(String::as_str), Some("POST"));
        assert!(writes.contains(&"PATCH apply".to_owned()), "{writes:?}");
        election.shut_down().await;
    }

    #[tokio::test]
    async fn a_valid_lease_of_another_holder_is_left_alone() {
        let fake = FakeApi::held_by(OTHER, 0);
        let mut election = elect(&fake, config(15));
        tokio::time::sleep(Duration::from_millis(300)).await;

        assert!(election.started.try_recv().is_err());
        assert_eq!(election.readiness.role(), Role::Standby);
        assert!(election.readiness.is_ready());
        election.shut_down().await;
        assert_eq!(fake.holder(), OTHER);
        assert_eq!(fake.writes(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn an_expired_lease_of_another_holder_is_taken_over() {
        let fake = FakeApi::held_by(OTHER, 60);
        let mut election = elect(&fake, config(15));
        within(5, election.started.recv()).await;

        assert_eq!(fake.holder(), ME);
        assert_eq!(fake.spec("leaseTransitions"), 5);
        election.shut_down().await;
    }

    #[tokio::test]
    async fn shutdown_stops_work_and_releases_the_lease() {
        let fake = FakeApi::default();
        let mut election = elect(&fake, config(15));
        within(5, election.started.recv()).await;
        election.readiness.set_synced(true);

        let (readiness, mut stopped) = election.shut_down().await;

        within(1, stopped.recv()).await;
        assert_eq!(fake.holder(), Value::Null);
        assert_eq!(fake.spec("renewTime"), Value::Null);
        assert!(!readiness.is_ready());
    }

    #[tokio::test]
    async fn a_failed_renewal_stops_work_until_the_lease_is_won_again() {
        let fake = FakeApi::default();
        let mut election = elect(&fake, config(2));
        within(5, election.started.recv()).await;

        fake.fail_writes.store(true, Ordering::SeqCst);
        within(3, election.stopped.recv()).await;
        assert_eq!(election.readiness.role(), Role::Candidate);

        fake.fail_writes.store(false, Ordering::SeqCst);
        within(5, election.started.recv()).await;
        assert_eq!(election.readiness.role(), Role::Leader);
        election.shut_down().await;
    }

    #[tokio::test]
    async fn work_that_returns_ends_the_election_and_releases_the_lease() {
        let fake = FakeApi::default();
        let work = || async {};
        let run = run_when_leader(fake.client(), config(15), Readiness::new(), work, pending());
        within(5, async { Some(run.await) }).await.unwrap();
        assert_eq!(fake.holder(), Value::Null);
    }

    #[test]
    fn log_lines_name_the_cause_of_a_failure() {
        let api = kube::Error::Api(kube::core::Status::failure("lease gone", "NotFound").boxed());
        let err = LeaderError::LeaseRequestFailed(LeaseManagerError::KubeError(api));
        assert!(chain(&err).starts_with("Lease API request failed: Kube error: "));
        assert!(chain(&err).contains("lease gone"));
    }

    #[tokio::test]
    async fn a_lease_shorter_than_two_seconds_is_rejected() {
        let fake = FakeApi::default();
        let election = elect(&fake, config(1));
        let err = election.task.await.unwrap().unwrap_err();
        assert!(matches!(err, LeaderError::LeaseDurationTooShort(_)));
        assert!(fake.exchanges.lock().unwrap().is_empty());
    }

    #[test]
    fn renewals_come_every_third_of_the_lease() {
        let timing = Timing::new(Duration::from_secs(15)).unwrap();
        assert_eq!(timing.renew_every, 5);
        assert_eq!(timing.request_timeout, Duration::from_secs(5));
    }

    #[test]
    fn retries_back_off_by_doubling_up_to_one_lease() {
        let timing = Timing::new(Duration::from_secs(15)).unwrap();
        let delays: Vec<u64> = (1..=6).map(|n| timing.backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 15, 15]);
        assert_eq!(timing.backoff(200).as_secs(), 15);
    }
}
