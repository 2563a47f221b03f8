//! Prometheus metrics of the operator, in the OpenMetrics text format.
//!
//! Labels stay bounded: a credential's namespace and name, its flow, a result, a condition
//! type and status. Error messages and token fingerprints never become labels. Only the
//! series that must name a credential do (its token expiry, its verifications and rollout
//! restarts); refreshes are counted by flow and conditions by how many credentials have each
//! status, so that thousands of credentials keep the metrics small.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name.
const PREFIX: &str = "amr_credential";

/// Values of the `result` label.
const RESULTS: [&str; 2] = ["success", "failure"];

/// Condition types counted: the operator sets four, the rest is room for types added later.
/// A type past the limit is not counted, so that odd statuses cannot grow the series.
const MAX_CONDITION_TYPES: usize = 8;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    namespace: String,
    name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    flow: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    flow: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    condition: String,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    namespace: String,
    name: String,
    result: &'static str,
}

/// Status of a condition, as in Kubernetes conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    const ALL: [Status; 3] = [Status::True, Status::False, Status::Unknown];

    /// `"True"` or `"False"`; anything else counts as unknown.
    fn parse(status: &str) -> Status {
        match status {
            "True" => Status::True,
            "False" => Status::False,
            _ => Status::Unknown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// A condition type and its gauges, one per status, counting the credentials that have it.
struct ConditionType {
    name: String,
    counts: [Gauge; Status::ALL.len()],
}

impl ConditionType {
    fn count(&self, status: Status) -> &Gauge {
        &self.counts[status as usize]
    }
}

/// A credential's status of each condition type, by the type's index in `Ledger::types`.
type ConditionStatuses = [Option<Status>; MAX_CONDITION_TYPES];

/// What the metrics keep per credential, and the condition types they count.
#[derive(Default)]
struct Ledger {
    /// Every credential with a series of its own or a counted condition.
    credentials: HashMap<CredentialLabels, ConditionStatuses>,
    /// Condition types in the order they were first seen.
    types: Vec<ConditionType>,
}

impl Ledger {
    /// Notes a credential, so that [`Metrics::forget`] finds it.
    fn note(&mut self, key: CredentialLabels) {
        self.credentials.entry(key).or_default();
    }

    /// The index of a condition type, creating its gauges at 0 when it is new; `None` once
    /// [`MAX_CONDITION_TYPES`] are known.
    fn intern(
        &mut self,
        condition: &str,
        family: &Family<ConditionLabels, Gauge>,
    ) -> Option<usize> {
        if let Some(index) = self.types.iter().position(|t| t.name == condition) {
            return Some(index);
        }
        if self.types.len() == MAX_CONDITION_TYPES {
            return None;
        }
        let gauge = |status: Status| {
            let labels = ConditionLabels {
                condition: condition.to_owned(),
                status: status.label(),
            };
            family.get_or_create(&labels).clone()
        };
        let counts = Status::ALL.map(gauge);
        self.types.push(ConditionType {
            name: condition.to_owned(),
            counts,
        });
        Some(self.types.len() - 1)
    }

    /// Moves a credential from the count of its former status of a condition to `status`.
    fn set(&mut self, key: CredentialLabels, index: usize, status: Status) {
        let statuses = self.credentials.entry(key).or_default();
        let (Some(slot), Some(kind)) = (statuses.get_mut(index), self.types.get(index)) else {
            return;
        };
        let former = slot.replace(status);
        if former == Some(status) {
            return;
        }
        if let Some(former) = former {
            kind.count(former).dec();
        }
        kind.count(status).inc();
    }

    /// Forgets a credential and takes it out of every count it is in.
    fn remove(&mut self, key: &CredentialLabels) {
        let Some(statuses) = self.credentials.remove(key) else {
            return;
        };
        for (kind, status) in self.types.iter().zip(statuses) {
            if let Some(status) = status {
                kind.count(status).dec();
            }
        }
    }
}

type HistogramFamily = Family<FlowLabels, Histogram, fn() -> Histogram>;

/// The operator's metrics: cheap to clone, every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    expiry: Family<CredentialLabels, Gauge>,
    refreshes: Family<RefreshLabels, Counter>,
    acquisition: HistogramFamily,
    retries: Family<FlowLabels, Counter>,
    credentials: Family<ConditionLabels, Gauge>,
    requests_saved: Counter,
    verifications: Family<ResultLabels, Counter>,
    rollout_restarts: Family<ResultLabels, Counter>,
    /// Held while a credential's series change too, so that a write racing `forget` never
    /// leaves a series that no entry of the ledger names.
    ledger: Mutex<Ledger>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric, with no series yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let expiry = Family::default();
        let refreshes = Family::default();
        let acquisition = HistogramFamily::new_with_constructor(acquisition_histogram);
        let retries = Family::default();
        let credentials = Family::default();
        let requests_saved = Counter::default();
        let verifications = Family::default();
        let rollout_restarts = Family::default();

        registry.register_with_unit(
            "token_expiry_timestamp",
            "Unix time at which the token in a credential's Secret expires",
            Unit::Seconds,
            expiry.clone(),
        );
        registry.register(
            "refreshes",
            "Token refreshes, by flow and result",
            refreshes.clone(),
        );
        registry.register_with_unit(
            "token_acquisition",
            "Time a credential waited for its token, by flow",
            Unit::Seconds,
            acquisition.clone(),
        );
        registry.register(
            "retries",
            "Token requests retried after a failed attempt, by flow",
            retries.clone(),
        );
        registry.register(
            "credentials",
            "Credentials whose condition has this status",
            credentials.clone(),
        );
        registry.register(
            "entra_requests_saved",
            "Entra ID token requests saved by sharing one token between credentials",
            requests_saved.clone(),
        );
        registry.register(
            "verifications",
            "Verifications of a credential against its Redis endpoint, by result",
            verifications.clone(),
        );
        registry.register(
            "rollout_restarts",
            "Rollout restarts requested after a credential's token changed, by result",
            rollout_restarts.clone(),
        );

        let inner = Inner {
            registry,
            expiry,
            refreshes,
            acquisition,
            retries,
            credentials,
            requests_saved,
            verifications,
            rollout_restarts,
            ledger: Mutex::default(),
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// Counts one refresh and how long it waited for its token.
    pub fn record_refresh(&self, flow: &str, ok: bool, took: Duration) {
        let labels = RefreshLabels {
            flow: flow.to_owned(),
            result: result(ok),
        };
        self.inner.refreshes.get_or_create(&labels).inc();
        self.inner
            .acquisition
            .get_or_create(&flow_labels(flow))
            .observe(took.as_secs_f64());
    }

    /// Counts one token request retried after a failed attempt.
    pub fn record_retry(&self, flow: &str) {
        self.inner.retries.get_or_create(&flow_labels(flow)).inc();
    }

    /// Counts Entra ID requests that were not sent because a shared token served them.
    pub fn record_requests_saved(&self, count: u64) {
        self.inner.requests_saved.inc_by(count);
    }

    /// Records when the token in a credential's Secret expires, in Unix seconds.
    pub fn set_expiry(&self, namespace: &str, name: &str, expires_at_unix: i64) {
        let key = credential_labels(namespace, name);
        let mut ledger = self.lock();
        self.inner.expiry.get_or_create(&key).set(expires_at_unix);
        ledger.note(key);
    }

    /// Counts a credential under its condition's status: `"True"`, `"False"`, anything else
    /// counts as `"Unknown"`. A credential is counted once per condition type, under the
    /// status it was last given.
    pub fn set_condition(&self, namespace: &str, name: &str, condition: &str, status: &str) {
        let key = credential_labels(namespace, name);
        let mut ledger = self.lock();
        match ledger.intern(condition, &self.inner.credentials) {
            Some(index) => ledger.set(key, index, Status::parse(status)),
            None => tracing::debug!(condition, "Condition type not counted: too many types"),
        }
    }

    /// Counts one verification of a credential against Redis.
    pub fn record_verification(&self, namespace: &str, name: &str, ok: bool) {
        let labels = result_labels(namespace, name, result(ok));
        let mut ledger = self.lock();
        self.inner.verifications.get_or_create(&labels).inc();
        ledger.note(credential_labels(namespace, name));
    }

    /// Counts one rollout restart requested for a credential's workloads.
    pub fn record_rollout_restart(&self, namespace: &str, name: &str, ok: bool) {
        let labels = result_labels(namespace, name, result(ok));
        let mut ledger = self.lock();
        self.inner.rollout_restarts.get_or_create(&labels).inc();
        ledger.note(credential_labels(namespace, name));
    }

    /// Removes every series of a deleted credential and takes it out of the condition counts.
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = credential_labels(namespace, name);
        let inner = &self.inner;
        let mut ledger = self.lock();

        ledger.remove(&key);
        inner.expiry.remove(&key);
        for result in RESULTS {
            let labels = result_labels(namespace, name, result);
            inner.verifications.remove(&labels);
            inner.rollout_restarts.remove(&labels);
        }
    }

    /// The namespace and name of every credential recorded and not forgotten since.
    pub fn credentials(&self) -> HashSet<(String, String)> {
        let ledger = self.lock();
        let key = |k: &CredentialLabels| (k.namespace.clone(), k.name.clone());
        ledger.credentials.keys().map(key).collect()
    }

    /// Every metric in the OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("encoding only fails when the writer does, and a String never does");
        out
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Buckets from 50 ms to about 25 s: a token request takes 100 ms to a few seconds.
fn acquisition_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 10))
}

fn result(ok: bool) -> &'static str {
    if ok { RESULTS[0] } else { RESULTS[1] }
}

fn credential_labels(namespace: &str, name: &str) -> CredentialLabels {
    CredentialLabels {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

fn flow_labels(flow: &str) -> FlowLabels {
    FlowLabels {
        flow: flow.to_owned(),
    }
}

fn result_labels(namespace: &str, name: &str, result: &'static str) -> ResultLabels {
    ResultLabels {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: &str = "WorkloadIdentity";

    fn lines(metrics: &Metrics) -> Vec<String> {
        metrics.encode().lines().map(str::to_owned).collect()
    }

    fn has(metrics: &Metrics, line: &str) -> bool {
        lines(metrics).iter().any(|l| l == line)
    }

    fn series_of(metrics: &Metrics, name: &str) -> Vec<String> {
        let lines = lines(metrics);
        lines
            .into_iter()
            .filter(|l| l.contains(name) && !l.starts_with('#'))
            .collect()
    }

    /// The credentials counted under `status` of `condition`, if the series exists.
    fn counted(metrics: &Metrics, condition: &str, status: &str) -> Option<i64> {
        let series =
            format!("amr_credential_credentials{{condition=\"{condition}\",status=\"{status}\"}} ");
        let lines = lines(metrics);
        let line = lines.iter().find_map(|l| l.strip_prefix(&series))?;
        line.parse().ok()
    }

    /// The counts of `condition` under True, False and Unknown.
    fn counts(metrics: &Metrics, condition: &str) -> [Option<i64>; 3] {
        ["True", "False", "Unknown"].map(|status| counted(metrics, condition, status))
    }

    #[test]
    fn expiry_is_a_gauge_in_seconds_per_credential() {
        let metrics = Metrics::new();
        metrics.set_expiry("shop", "orders-cache", 1_700_000_000);
        metrics.set_expiry("shop", "carts-cache", 1_700_000_100);
        assert!(has(
            &metrics,
            "# TYPE amr_credential_token_expiry_timestamp_seconds gauge"
        ));
        assert!(has(
            &metrics,
            "# UNIT amr_credential_token_expiry_timestamp_seconds seconds"
        ));
        assert!(has(
            &metrics,
            "amr_credential_token_expiry_timestamp_seconds\
             {namespace=\"shop\",name=\"orders-cache\"} 1700000000"
        ));
        assert!(has(
            &metrics,
            "amr_credential_token_expiry_timestamp_seconds\
             {namespace=\"shop\",name=\"carts-cache\"} 1700000100"
        ));
    }

    #[test]
    fn refreshes_are_counted_by_flow_and_result_only() {
        let metrics = Metrics::new();
        metrics.record_refresh(FLOW, true, Duration::from_millis(120));
        metrics.record_refresh(FLOW, false, Duration::from_millis(80));
        metrics.record_refresh(FLOW, true, Duration::from_millis(90));
        assert!(has(&metrics, "# TYPE amr_credential_refreshes counter"));
        let prefix = "amr_credential_refreshes_total{flow=\"WorkloadIdentity\",result=";
        let mut series = series_of(&metrics, "amr_credential_refreshes_total");
        series.sort();
        assert_eq!(
            series,
            [
                format!("{prefix}\"failure\"}} 1"),
                format!("{prefix}\"success\"}} 2")
            ]
        );
    }

    #[test]
    fn acquisition_time_is_a_histogram_by_flow_only() {
        let metrics = Metrics::new();
        metrics.record_refresh(FLOW, true, Duration::from_millis(120));
        let flow = "flow=\"WorkloadIdentity\"";
        assert!(has(
            &metrics,
            "# TYPE amr_credential_token_acquisition_seconds histogram"
        ));
        assert!(has(
            &metrics,
            &format!("amr_credential_token_acquisition_seconds_count{{{flow}}} 1")
        ));
        assert!(has(
            &metrics,
            &format!("amr_credential_token_acquisition_seconds_bucket{{le=\"0.2\",{flow}}} 1")
        ));
        assert!(has(
            &metrics,
            &format!("amr_credential_token_acquisition_seconds_bucket{{le=\"0.1\",{flow}}} 0")
        ));
    }

    #[test]
    fn retries_and_saved_requests_are_counters() {
        let metrics = Metrics::new();
        metrics.record_retry(FLOW);
        metrics.record_requests_saved(3);
        assert!(has(
            &metrics,
            "amr_credential_retries_total{flow=\"WorkloadIdentity\"} 1"
        ));
        assert!(has(&metrics, "amr_credential_entra_requests_saved_total 3"));
    }

    #[test]
    fn credentials_are_counted_by_condition_with_every_status_shown() {
        let metrics = Metrics::new();
        metrics.set_condition("shop", "orders", "Ready", "True");
        metrics.set_condition("shop", "carts", "Ready", "True");
        metrics.set_condition("shop", "carts", "Degraded", "False");
        assert!(has(&metrics, "# TYPE amr_credential_credentials gauge"));
        assert_eq!(counts(&metrics, "Ready"), [Some(2), Some(0), Some(0)]);
        assert_eq!(counts(&metrics, "Degraded"), [Some(0), Some(1), Some(0)]);
        assert_eq!(series_of(&metrics, "amr_credential_credentials").len(), 6);
    }

    #[test]
    fn a_status_change_moves_the_credential_to_the_new_status() {
        let metrics = Metrics::new();
        metrics.set_condition("shop", "orders", "Ready", "False");
        metrics.set_condition("shop", "carts", "Ready", "False");
        metrics.set_condition("shop", "orders", "Ready", "True");
        assert_eq!(counts(&metrics, "Ready"), [Some(1), Some(1), Some(0)]);
    }

    #[test]
    fn a_credential_given_the_same_status_twice_is_counted_once() {
        let metrics = Metrics::new();
        metrics.set_condition("shop", "orders", "Ready", "True");
        metrics.set_condition("shop", "orders", "Ready", "True");
        assert_eq!(counts(&metrics, "Ready"), [Some(1), Some(0), Some(0)]);
    }

    #[test]
    fn an_unexpected_condition_status_is_counted_as_unknown() {
        let metrics = Metrics::new();
        metrics.set_condition("shop", "orders", "Verified", "connection refused");
        assert_eq!(counts(&metrics, "Verified"), [Some(0), Some(0), Some(1)]);
    }

    #[test]
    fn condition_types_past_the_limit_are_not_counted() {
        let metrics = Metrics::new();
        for i in 0..=MAX_CONDITION_TYPES {
            metrics.set_condition("shop", "orders", &format!("Type{i}"), "True");
        }
        let last = format!("Type{MAX_CONDITION_TYPES}");
        assert_eq!(counts(&metrics, "Type0"), [Some(1), Some(0), Some(0)]);
        assert_eq!(counts(&metrics, &last), [None, None, None]);
        metrics.forget("shop", "orders");
        assert_eq!(counts(&metrics, "Type0"), [Some(0), Some(0), Some(0)]);
    }

    #[test]
    fn forget_uncounts_a_credential_and_keeps_the_others() {
        let metrics = Metrics::new();
        metrics.set_condition("shop", "orders", "Ready", "True");
        metrics.set_condition("shop", "orders", "Degraded", "Unknown");
        metrics.set_condition("shop", "carts", "Ready", "True");
        metrics.forget("shop", "orders");
        assert_eq!(counts(&metrics, "Ready"), [Some(1), Some(0), Some(0)]);
        assert_eq!(counts(&metrics, "Degraded"), [Some(0), Some(0), Some(0)]);
    }

    #[test]
    fn forgetting_twice_uncounts_once() {
        let metrics = Metrics::new();
        metrics.set_condition("shop", "orders", "Ready", "True");
        metrics.set_condition("shop", "carts", "Ready", "True");
        metrics.forget("shop", "orders");
        metrics.forget("shop", "orders");
        assert_eq!(counts(&metrics, "Ready"), [Some(1), Some(0), Some(0)]);
    }

    #[test]
    fn verifications_and_rollout_restarts_are_counted_by_result() {
        let metrics = Metrics::new();
        metrics.record_verification("shop", "orders", false);
        metrics.record_rollout_restart("shop", "orders", true);
        assert!(has(
            &metrics,
            "amr_credential_verifications_total\
             {namespace=\"shop\",name=\"orders\",result=\"failure\"} 1"
        ));
        assert!(has(
            &metrics,
            "amr_credential_rollout_restarts_total\
             {namespace=\"shop\",name=\"orders\",result=\"success\"} 1"
        ));
    }

    #[test]
    fn forget_removes_every_series_of_a_credential_and_only_those() {
        let metrics = Metrics::new();
        for name in ["orders", "carts"] {
            metrics.set_expiry("shop", name, 1);
            metrics.set_condition("shop", name, "Ready", "True");
            metrics.record_verification("shop", name, true);
            metrics.record_rollout_restart("shop", name, false);
        }

        metrics.forget("shop", "orders");

        let series = series_of(&metrics, "namespace=\"shop\"");
        assert!(
            series.iter().all(|l| !l.contains("name=\"orders\"")),
            "{series:#?}"
        );
        // Expiry, a verification, a restart.
        assert_eq!(
            series
                .iter()
                .filter(|l| l.contains("name=\"carts\""))
                .count(),
            3
        );
        let carts = ("shop".to_owned(), "carts".to_owned());
        assert_eq!(metrics.credentials(), HashSet::from([carts]));
    }

    #[test]
    fn forget_keeps_flow_wide_series() {
        let metrics = Metrics::new();
        metrics.set_expiry("shop", "orders", 1);
        metrics.record_refresh(FLOW, true, Duration::ZERO);
        metrics.record_retry(FLOW);
        metrics.forget("shop", "orders");
        assert!(has(
            &metrics,
            "amr_credential_refreshes_total{flow=\"WorkloadIdentity\",result=\"success\"} 1"
        ));
        assert!(has(
            &metrics,
            "amr_credential_retries_total{flow=\"WorkloadIdentity\"} 1"
        ));
        assert!(has(
            &metrics,
            "amr_credential_token_acquisition_seconds_count{flow=\"WorkloadIdentity\"} 1"
        ));
    }

    #[test]
    fn credentials_lists_each_credential_once_whatever_was_recorded() {
        let metrics = Metrics::new();
        metrics.set_expiry("shop", "orders", 1);
        metrics.set_condition("shop", "orders", "Ready", "True");
        metrics.record_verification("shop", "carts", true);
        metrics.record_rollout_restart("billing", "ledger", true);
        metrics.record_refresh(FLOW, true, Duration::ZERO);
        let keys = [("shop", "orders"), ("shop", "carts"), ("billing", "ledger")];
        let expected = keys.map(|(ns, name)| (ns.to_owned(), name.to_owned()));
        assert_eq!(metrics.credentials(), HashSet::from(expected));
    }

    #[test]
    fn clones_record_into_the_same_registry() {
        let metrics = Metrics::new();
        metrics.clone().record_retry(FLOW);
        metrics
            .clone()
            .set_condition("shop", "orders", "Ready", "True");
        metrics.clone().forget("shop", "orders");
        assert!(has(
            &metrics,
            "amr_credential_retries_total{flow=\"WorkloadIdentity\"} 1"
        ));
        assert_eq!(counts(&metrics, "Ready"), [Some(0), Some(0), Some(0)]);
        assert!(metrics.credentials().is_empty());
    }

    #[test]
    fn concurrent_status_changes_and_forgets_keep_every_credential_counted_once() {
        let metrics = Metrics::new();
        let statuses = ["Unknown", "False", "True"];
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        // Every thread changes the shared credentials, each in its own order.
                        let status = statuses[(t + i) % statuses.len()];
                        metrics.set_condition("shop", &format!("shared-{i}"), "Ready", status);
                        let own = format!("own-{t}-{i}");
                        metrics.set_condition("shop", &own, "Ready", "False");
                        metrics.set_condition("shop", &own, "Ready", "True");
                        if i % 2 == 0 {
                            metrics.forget("shop", &own);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recording never panics");
        }

        let counts = counts(&metrics, "Ready").map(Option::unwrap_or_default);
        assert_eq!(counts.iter().sum::<i64>(), 200 + 4 * 100);
        assert!(counts[0] >= 4 * 100, "{counts:?}");
        assert_eq!(metrics.credentials().len(), 200 + 4 * 100);
    }

    #[test]
    fn the_exposition_ends_with_the_openmetrics_eof_marker() {
        assert_eq!(
            lines(&Metrics::new()).last().map(String::as_str),
            Some("# EOF")
        );
    }
}
