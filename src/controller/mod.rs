//! The Kubernetes controller: reconcile AmrCredentials into Secrets.
//!
//! ```text
//! AmrCredential watch ──(generation, refresh request)──┐
//! managed Secret metadata watch ──────(owner)──────────┼─> reconcile: gather, decide, act
//! requeue at refresh time / next round ────────────────┘
//! ```

pub mod conditions;
pub mod decide;
#[cfg(test)]
mod fault_tests;
mod observe;
mod reconcile;
pub mod rollout;
pub mod secret;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
pub mod verification;

pub use observe::Observers;
pub use reconcile::reconcile;

use crate::api::{AmrCredential, REFRESH_REQUESTED_ANNOTATION};
use crate::identity::TokenSource;
use futures::{FutureExt, Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use observe::{CredentialKey, CredentialMetrics};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Namespaces whose credentials may use the operator's own identity (managed identity,
    /// DefaultAzureCredential). Empty: no namespace may.
    pub ambient_identity_namespaces: Vec<String>,
    /// Namespaces to watch. Empty: all namespaces.
    pub watch_namespaces: Vec<String>,
    /// Refreshes already overdue at start-up are spread over this long.
    pub startup_spread: Duration,
    /// Name of this operator instance in Events, such as the pod name.
    pub instance: Option<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            ambient_identity_namespaces: Vec::new(),
            watch_namespaces: Vec::new(),
            startup_spread: Duration::from_secs(30),
            instance: None,
        }
    }
}

/// How often the metrics of deleted credentials are removed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// What every reconcile shares.
pub struct Context {
    client: Client,
    tokens: Arc<dyn TokenSource>,
    /// Publishes warnings: it merges a repeated warning into one Event series, and keeps every
    /// Event it sent for six minutes to do so.
    warnings: Recorder,
    /// Identifies this controller in Events.
    reporter: Reporter,
    config: ControllerConfig,
    observers: Observers,
    metrics: CredentialMetrics,
    started_at: Timestamp,
    clock: fn() -> Timestamp,
    /// Consecutive reconcile errors per object, for the error policy's backoff.
    errors: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context whose clock is the system clock, reporting to default observers.
    pub fn new(client: Client, tokens: Arc<dyn TokenSource>, config: ControllerConfig) -> Self {
        Context::observed(client, tokens, config, Observers::default())
    }

    /// A context whose clock is the system clock, reporting to `observers`.
    pub fn observed(
        client: Client,
        tokens: Arc<dyn TokenSource>,
        config: ControllerConfig,
        observers: Observers,
    ) -> Self {
        let reporter = Reporter {
            controller: secret::FIELD_MANAGER.to_string(),
            instance: config.instance.clone(),
        };
        let metrics = CredentialMetrics::new(observers.metrics.clone(), tokens.saved_requests());
        Context {
            warnings: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            tokens,
            config,
            observers,
            metrics,
            started_at: Timestamp::now(),
            clock: Timestamp::now,
            errors: Mutex::default(),
        }
    }

    /// The same context reading time from `clock`, started long ago: nothing is spread.
    #[cfg(test)]
    fn with_clock(mut self, clock: fn() -> Timestamp) -> Self {
        self.clock = clock;
        self.started_at = Timestamp::UNIX_EPOCH;
        self
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Counts one more error for `key` and returns the count.
    fn count_error(&self, key: &str) -> u32 {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        let count = errors.entry(key.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn clear_errors(&self, key: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        errors.remove(key);
    }
}

/// What can go wrong in a reconcile or at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks metadata every stored object has.
    #[error("the AmrCredential has no {0}")]
    MissingObjectKey(&'static str),
    /// Reading the Secret failed.
    #[error("reading Secret {name} failed")]
    SecretGetFailed {
        /// The Secret's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Applying the Secret failed.
    #[error("applying Secret {name} failed")]
    SecretApplyFailed {
        /// The Secret's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading the AmrCredential's status failed.
    #[error("reading the status failed")]
    StatusGetFailed(#[source] kube::Error),
    /// Patching the AmrCredential's status failed.
    #[error("patching the status failed")]
    StatusPatchFailed(#[source] kube::Error),
    /// Listing AmrCredentials at start-up failed, typically because the CRD is missing.
    #[error("listing AmrCredentials failed; is the CustomResourceDefinition installed?")]
    CrdQueryFailed(#[source] kube::Error),
}

/// The first pause after a failed reconcile; it doubles per consecutive failure.
pub const ERROR_BACKOFF_INITIAL: Duration = Duration::from_secs(5);
/// The longest pause after failed reconciles.
pub const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The pause after `errors` consecutive failed reconciles of one object.
pub fn error_backoff(errors: u32) -> Duration {
    let doublings = errors.saturating_sub(1).min(16);
    ERROR_BACKOFF_INITIAL
        .saturating_mul(1 << doublings)
        .min(ERROR_BACKOFF_MAX)
}

/// Requeues a failed object after a backoff that grows with its consecutive failures.
pub fn error_policy(obj: Arc<AmrCredential>, error: &Error, ctx: Arc<Context>) -> Action {
    let errors = ctx.count_error(&object_key(&obj));
    let delay = error_backoff(errors);
    tracing::warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        errors,
        retry_in_s = delay.as_secs(),
        error = %ErrorChain(error),
        "Reconcile failed"
    );
    Action::requeue(delay)
}

fn object_key(obj: &AmrCredential) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Displays an error with its sources, separated by colons.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Runs the controller until `shutdown` completes, then lets running reconciles finish;
/// metrics and readiness go to default observers.
///
/// # Errors
/// [`Error::CrdQueryFailed`] when AmrCredentials cannot be listed at start-up.
pub async fn run(
    client: Client,
    tokens: Arc<dyn TokenSource>,
    config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with(client, tokens, config, Observers::default(), shutdown).await
}

/// Runs the controller like [`run`], reporting to `observers`: readiness turns synced once
/// every watch has listed its AmrCredentials, and turns back when the controller stops
/// (its future dropped included), which also removes every credential's metrics.
///
/// # Errors
/// [`Error::CrdQueryFailed`] when AmrCredentials cannot be listed at start-up.
pub async fn run_with(
    client: Client,
    tokens: Arc<dyn TokenSource>,
    config: ControllerConfig,
    observers: Observers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let scopes = scopes(&config.watch_namespaces);
    for scope in &scopes {
        let api = credentials_api(&client, scope.as_deref());
        api.list(&ListParams::default().limit(1))
            .await
            .map_err(Error::CrdQueryFailed)?;
    }
    tracing::info!(namespaces = ?config.watch_namespaces, "Controller starting");

    let ctx = Arc::new(Context::observed(client.clone(), tokens, config, observers));
    let _stopped = Stopped(ctx.clone());
    let shutdown = shutdown.shared();
    let mut stores = Vec::with_capacity(scopes.len());
    let mut controllers = Vec::with_capacity(scopes.len());
    for scope in scopes {
        let (reader, writer) = reflector::store();
        stores.push(reader.clone());
        let stream = controller(
            client.clone(),
            scope,
            (reader, writer),
            ctx.clone(),
            shutdown.clone(),
        );
        controllers.push(stream.boxed());
    }
    let run = futures::stream::select_all(controllers)
        .for_each(|result| async move { log_run_error(result) });
    // Upkeep never ends: the controllers' end is the end of the run.
    futures::future::select(std::pin::pin!(run), std::pin::pin!(upkeep(stores, &ctx))).await;
    tracing::info!("Controller stopped");
    Ok(())
}

/// Marks readiness synced once every store has been listed, then removes the metrics of
/// deleted credentials now and then.
async fn upkeep(stores: Vec<Store<AmrCredential>>, ctx: &Context) {
    for store in &stores {
        if store.wait_until_ready().await.is_err() {
            return std::future::pending().await;
        }
    }
    ctx.observers.readiness.set_synced(true);
    tracing::info!("Caches synced");

    let mut every = tokio::time::interval(SWEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // Recorded before the stores are read: a credential recorded in between is kept.
        let recorded = ctx.metrics.recorded();
        ctx.metrics.sweep(recorded, &live(&stores));
    }
}

/// Every credential the stores hold.
fn live(stores: &[Store<AmrCredential>]) -> HashSet<CredentialKey> {
    stores
        .iter()
        .flat_map(Store::state)
        .map(|c| (c.namespace().unwrap_or_default(), c.name_any()))
        .collect()
}

/// Resets readiness and removes the metrics of a run when it ends, however it ends.
struct Stopped(Arc<Context>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.observers.readiness.set_synced(false);
        self.0.metrics.forget_all();
    }
}

/// Failed reconciles are logged by the error policy; watch failures are logged here.
fn log_run_error(result: RunResult) {
    use kube::runtime::controller::Error as RunError;
    match result {
        Ok(_) | Err(RunError::ReconcilerFailed(..)) => {}
        Err(e) => tracing::warn!(error = %ErrorChain(&e), "Controller could not proceed"),
    }
}

/// One controller per watched namespace, or one for all (`None`): a reflector store must not
/// be fed by several watches.
fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    if namespaces.is_empty() {
        return vec![None];
    }
    namespaces.iter().cloned().map(Some).collect()
}

fn credentials_api(client: &Client, namespace: Option<&str>) -> Api<AmrCredential> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

type RunResult = Result<
    (ObjectRef<AmrCredential>, Action),
    kube::runtime::controller::Error<Error, watcher::Error>,
>;

fn controller(
    client: Client,
    namespace: Option<String>,
    (reader, writer): (
        Store<AmrCredential>,
        reflector::store::Writer<AmrCredential>,
    ),
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = RunResult> + Send {
    // Status writes change neither generation nor the refresh request, so they wake nothing.
    let api = credentials_api(&client, namespace.as_deref());
    // The store keeps every credential; their managed fields are never read, so they are
    // dropped before it does.
    let credentials = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|c| c.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(wake_hash, Default::default());
    // Only the metadata of managed Secrets is kept: memory grows with them alone.
    let secrets: Api<PartialObjectMeta<Secret>> = match namespace {
        Some(ns) => Api::namespaced(client, &ns),
        None => Api::all(client),
    };
    let managed = watcher::Config::default().labels(secret::MANAGED_SELECTOR);
    let owned = watcher(secrets, managed)
        .default_backoff()
        .touched_objects();
    Controller::for_stream(credentials, reader)
        .owns_stream(owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
}

/// What wakes a credential: its generation and its refresh-request annotation.
fn wake_hash(obj: &AmrCredential) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    obj.metadata.generation.hash(&mut hasher);
    obj.annotations()
        .get(REFRESH_REQUESTED_ANNOTATION)
        .hash(&mut hasher);
    Some(hasher.finish())
}
