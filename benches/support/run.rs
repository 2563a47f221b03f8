//! The measured run: the real reconcile and token source, a `kube::Client` talking HTTP to
//! the parent's API stand-in, the AmrCredentials held in memory as a reflector holds them,
//! and a scheduler that requeues each credential as the `Action` it returned asks, with
//! bounded concurrency.

use super::observer::{Observe, Tracker};
use super::{NAMESPACE, Outcome, Settings, credential, credential_name, stats};
use amr_credential_operator::controller::{self, Context, ControllerConfig};
use amr_credential_operator::identity::TokenSource;
use amr_credential_operator::identity::material::KubeMaterial;
use amr_credential_operator::identity::source::{AzureTokenSource, SourceConfig};
use amr_credential_operator::identity::transport::TransportConfig;
use jiff::Timestamp;
use kube::client::ClientBuilder;
use kube::runtime::controller::Action;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

/// Runs the benchmark described by `settings` and reports what it measured.
///
/// # Errors
/// When the token source cannot be built.
pub async fn run(settings: &Settings) -> Result<Outcome, String> {
    let baseline_rss_mib = stats::rss_mib().unwrap_or(f64::NAN);
    let tracker = Tracker::new(settings.credentials, settings.cycles + 1);
    for n in 0..settings.credentials {
        tracker.store(credential(n, n % settings.identities));
    }
    let setup_memory = stats::memory_mib();
    let client = kube_client(settings, &tracker)?;
    let tokens = token_source(settings, client.clone())?;
    let config = ControllerConfig {
        instance: Some("scale-bench".into()),
        ..ControllerConfig::default()
    };
    let ctx = Arc::new(Context::new(client, tokens, config));

    let started_at = Timestamp::now();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(settings.time_limit_s);
    let tally = schedule(&tracker, &ctx, settings, start, deadline).await;
    let ended_at = Timestamp::now();
    let mut outcome = outcome(
        &tracker,
        settings,
        tally,
        started_at,
        ended_at,
        baseline_rss_mib,
    );
    outcome.memory_mib.insert(0, setup_memory);
    outcome.heap_held_mib = heap_held(ctx, &tracker);
    Ok(outcome)
}

/// A client of the parent's API stand-in, over plain HTTP on loopback, observed by `tracker`.
fn kube_client(settings: &Settings, tracker: &Arc<Tracker>) -> Result<kube::Client, String> {
    let url = settings.api_url.parse().map_err(|e| format!("{e}"))?;
    let mut config = kube::Config::new(url);
    config.default_namespace = NAMESPACE.to_string();
    let builder = ClientBuilder::try_from(config).map_err(|e| e.to_string())?;
    Ok(builder.with_layer(&Observe(tracker.clone())).build())
}

/// Heap released by dropping, in turn, the controller's context (its Event recorder, metrics,
/// token cache and clients) and the AmrCredentials; then what is left.
fn heap_held(ctx: Arc<Context>, tracker: &Tracker) -> Option<[f64; 3]> {
    let before = stats::heap_in_use_mib()?;
    drop(ctx);
    let no_context = stats::heap_in_use_mib()?;
    tracker.clear_credentials();
    let rest = stats::heap_in_use_mib()?;
    Some([before - no_context, no_context - rest, rest])
}

fn token_source(settings: &Settings, client: kube::Client) -> Result<Arc<dyn TokenSource>, String> {
    let authority = settings.authority.parse().map_err(|e| format!("{e}"))?;
    let config = SourceConfig {
        authority_host: Some(authority),
        default_tenant: Some(settings.tenant.clone()),
        transport: TransportConfig {
            ca_files: vec![settings.ca_file.clone()],
            managed_identity_endpoint: None,
            request_timeout: Some(Duration::from_secs(10)),
        },
        ..SourceConfig::default()
    };
    let material = Arc::new(KubeMaterial::new(client));
    let source = AzureTokenSource::new(config, material).map_err(|e| e.to_string())?;
    Ok(Arc::new(source))
}

/// What the scheduler saw.
#[derive(Debug, Default)]
struct Tally {
    reconciles: u64,
    errors: u64,
    parked: u64,
    first_error: Option<String>,
}

/// Runs reconciles as they fall due, at most `settings.concurrency` at once, until every
/// cycle is complete or `deadline` passes; then lets those in flight finish.
async fn schedule(
    tracker: &Arc<Tracker>,
    ctx: &Arc<Context>,
    settings: &Settings,
    start: Instant,
    deadline: Instant,
) -> Tally {
    // Every credential is due at once, as after the controller's initial list.
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = (0..settings.credentials)
        .map(|n| Reverse((start, n)))
        .collect();
    let mut running = JoinSet::new();
    let mut tally = Tally::default();
    while !tracker.finished() {
        let next = due.peek().map(|Reverse((at, _))| *at);
        let room = running.len() < settings.concurrency;
        tokio::select! {
            Some(joined) = running.join_next(), if !running.is_empty() => {
                tally.record(joined.expect("a reconcile task does not panic"), &mut due);
            }
            () = sleep_until(next.unwrap_or(deadline)), if room && next.is_some() => {
                let now = Instant::now();
                while running.len() < settings.concurrency
                    && due.peek().is_some_and(|Reverse((at, _))| *at <= now)
                {
                    let Some(Reverse((_, n))) = due.pop() else { break };
                    spawn_reconcile(&mut running, tracker, ctx, n);
                }
            }
            () = sleep_until(deadline) => break,
        }
    }
    while let Some(joined) = running.join_next().await {
        tally.record(joined.expect("a reconcile task does not panic"), &mut due);
    }
    tally
}

/// A finished reconcile: the credential, when, the action, and the error if it failed.
type Finished = (usize, Instant, Action, Option<String>);

fn spawn_reconcile(
    running: &mut JoinSet<Finished>,
    tracker: &Tracker,
    ctx: &Arc<Context>,
    n: usize,
) {
    let obj = tracker
        .credential(&credential_name(n))
        .expect("every scheduled credential exists");
    let ctx = ctx.clone();
    running.spawn(async move {
        let (action, error) = match controller::reconcile(obj.clone(), ctx.clone()).await {
            Ok(action) => (action, None),
            // The controller's error policy decides the retry, as in the real loop.
            Err(e) => (
                controller::error_policy(obj, &e, ctx),
                Some(error_chain(&e)),
            ),
        };
        (n, Instant::now(), action, error)
    });
}

impl Tally {
    fn record(&mut self, finished: Finished, due: &mut BinaryHeap<Reverse<(Instant, usize)>>) {
        let (n, at, action, error) = finished;
        self.reconciles += 1;
        if let Some(message) = error {
            self.errors += 1;
            self.first_error.get_or_insert(message);
        }
        match requeue_after(&action) {
            Some(wait) => due.push(Reverse((at + wait, n))),
            None => self.parked += 1,
        }
    }
}

/// The delay an `Action` asks for. kube-runtime keeps it private; its `Debug` output,
/// `Action { requeue_after: Some(15.99s) }`, is the one way to read it.
fn requeue_after(action: &Action) -> Option<Duration> {
    let debug = format!("{action:?}");
    let inner = debug.split_once("Some(")?.1.split_once(')')?.0;
    let units = [("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)];
    let (number, scale) = units
        .iter()
        .find_map(|(suffix, scale)| Some((inner.strip_suffix(suffix)?, *scale)))?;
    let seconds: f64 = number.parse().ok()?;
    Some(Duration::from_secs_f64(seconds * scale))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}

fn outcome(
    tracker: &Tracker,
    settings: &Settings,
    tally: Tally,
    started_at: Timestamp,
    ended_at: Timestamp,
    baseline_rss_mib: f64,
) -> Outcome {
    let ready = tracker.milestone(1);
    let since_start = |w: u32| {
        let m = tracker.milestone(w)?;
        Some(m.wall.duration_since(started_at).as_secs_f64())
    };
    let cycle_done_s = (2..=settings.cycles + 1).map_while(since_start).collect();
    // The steady state runs from first readiness to the last completed cycle.
    let last = (1..=settings.cycles + 1)
        .rev()
        .find_map(|w| tracker.milestone(w));
    let (steady_refreshes, steady_cpu_ms) = match (ready, last) {
        (Some(r), Some(l)) => (l.rewrites - r.rewrites, (l.cpu - r.cpu).as_secs_f64() * 1e3),
        _ => (0, 0.0),
    };
    let lateness = tracker.lateness_ms();
    let lateness_ms = [0.5, 0.99, 1.0]
        .map(|q| stats::quantile(&lateness, q))
        .into_iter()
        .collect::<Option<Vec<f64>>>()
        .map(|v| [v[0], v[1], v[2]]);
    Outcome {
        started_at,
        ready_at: ready.map(|m| m.wall),
        ended_at: last.map_or(ended_at, |m| m.wall),
        first_ready_s: since_start(1),
        secrets_written: (1..=settings.cycles + 1)
            .map(|w| tracker.reached(w))
            .collect(),
        cycle_done_s,
        steady_refreshes,
        refreshes: tracker.rewrites(),
        lateness_ms,
        peak_rss_mib: stats::peak_rss_mib().unwrap_or(f64::NAN),
        baseline_rss_mib,
        memory_mib: (1..=settings.cycles + 1)
            .map_while(|w| tracker.milestone(w))
            .map(|m| m.memory_mib)
            .collect(),
        heap_held_mib: None,
        steady_cpu_ms,
        reconciles: [tally.reconciles, tally.errors, tally.parked],
        first_error: tally.first_error,
    }
}
