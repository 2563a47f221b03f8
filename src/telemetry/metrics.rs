//! Prometheus metrics of the operator, in the OpenMetrics text format.
//!
//! Labels stay bounded: a credential's namespace and name, its flow, a result, a condition
//! type and status. Error messages and token fingerprints never become labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name.
const PREFIX: &str = "amr_credential";

/// Values of the `result` label.
const RESULTS: [&str; 2] = ["success", "failure"];

/// Values of the `status` label of a condition, as in Kubernetes conditions.
const STATUSES: [&str; 3] = ["True", "False", "Unknown"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    namespace: String,
    name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    namespace: String,
    name: String,
    flow: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    flow: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    name: String,
    condition: String,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    namespace: String,
    name: String,
    result: &'static str,
}

/// Flows and condition types seen per credential, so that `forget` finds every series.
#[derive(Debug, Default)]
struct Seen {
    flows: HashSet<String>,
    conditions: HashSet<String>,
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
    conditions: Family<ConditionLabels, Gauge>,
    requests_saved: Counter,
    verifications: Family<ResultLabels, Counter>,
    rollout_restarts: Family<ResultLabels, Counter>,
    seen: Mutex<HashMap<CredentialLabels, Seen>>,
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
        let conditions = Family::default();
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
            "Token refreshes of a credential, by flow and result",
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
            "conditions",
            "Status of a credential's conditions: 1 for the current status, else 0",
            conditions.clone(),
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
            conditions,
            requests_saved,
            verifications,
            rollout_restarts,
            seen: Mutex::default(),
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// Counts one refresh of a credential and how long it waited for its token.
    pub fn record_refresh(
        &self,
        namespace: &str,
        name: &str,
        flow: &str,
        ok: bool,
        took: Duration,
    ) {
        let labels = RefreshLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            flow: flow.to_owned(),
            result: result(ok),
        };
        self.inner.refreshes.get_or_create(&labels).inc();
        self.inner
            .acquisition
            .get_or_create(&flow_labels(flow))
            .observe(took.as_secs_f64());
        self.remember(namespace, name, |seen| seen.flows.insert(flow.to_owned()));
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
        let labels = credential_labels(namespace, name);
        self.inner
            .expiry
            .get_or_create(&labels)
            .set(expires_at_unix);
        self.remember(namespace, name, |_| true);
    }

    /// Records a condition's status: `"True"`, `"False"`, anything else counts as
    /// `"Unknown"`.
    pub fn set_condition(&self, namespace: &str, name: &str, condition: &str, status: &str) {
        let current = normalised_status(status);
        for status in STATUSES {
            let labels = condition_labels(namespace, name, condition, status);
            let value = i64::from(status == current);
            self.inner.conditions.get_or_create(&labels).set(value);
        }
        self.remember(namespace, name, |seen| {
            seen.conditions.insert(condition.to_owned())
        });
    }

    /// Counts one verification of a credential against Redis.
    pub fn record_verification(&self, namespace: &str, name: &str, ok: bool) {
        let labels = result_labels(namespace, name, result(ok));
        self.inner.verifications.get_or_create(&labels).inc();
        self.remember(namespace, name, |_| true);
    }

    /// Counts one rollout restart requested for a credential's workloads.
    pub fn record_rollout_restart(&self, namespace: &str, name: &str, ok: bool) {
        let labels = result_labels(namespace, name, result(ok));
        self.inner.rollout_restarts.get_or_create(&labels).inc();
        self.remember(namespace, name, |_| true);
    }

    /// Removes every series of a deleted credential.
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = credential_labels(namespace, name);
        let seen = self.lock_seen().remove(&key).unwrap_or_default();
        let inner = &self.inner;

        inner.expiry.remove(&key);
        for result in RESULTS {
            for flow in &seen.flows {
                let labels = RefreshLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    flow: flow.clone(),
                    result,
                };
                inner.refreshes.remove(&labels);
            }
            inner
                .verifications
                .remove(&result_labels(namespace, name, result));
            inner
                .rollout_restarts
                .remove(&result_labels(namespace, name, result));
        }
        for condition in &seen.conditions {
            for status in STATUSES {
                let labels = condition_labels(namespace, name, condition, status);
                inner.conditions.remove(&labels);
            }
        }
    }

    /// Every metric in the OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("encoding only fails when the writer does, and a String never does");
        out
    }

    /// Notes a credential's series in `seen`, for `forget`.
    fn remember(&self, namespace: &str, name: &str, note: impl FnOnce(&mut Seen) -> bool) {
        let mut seen = self.lock_seen();
        note(seen.entry(credential_labels(namespace, name)).or_default());
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, HashMap<CredentialLabels, Seen>> {
        self.inner
            .seen
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

fn normalised_status(status: &str) -> &'static str {
    STATUSES
        .into_iter()
        .find(|known| *known == status)
        .unwrap_or(STATUSES[2])
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

fn condition_labels(
    namespace: &str,
    name: &str,
    condition: &str,
    status: &'static str,
) -> ConditionLabels {
    ConditionLabels {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        condition: condition.to_owned(),
        status,
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

    #[test]
    fn expiry_is_a_gauge_in_seconds_per_credential() {
        let metrics = Metrics::new();
        metrics.set_expiry("shop", "orders-cache", 1_700_000_000);
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
    }

    #[test]
    fn refreshes_are_counted_by_flow_and_result() {
        let metrics = Metrics::new();
        metrics.record_refresh("shop", "orders", FLOW, true, Duration::from_millis(120));
        metrics.record_refresh("shop", "orders", FLOW, false, Duration::from_millis(80));
        metrics.record_refresh("shop", "orders", FLOW, true, Duration::from_millis(90));
        assert!(has(&metrics, "# TYPE amr_credential_refreshes counter"));
        let prefix = "amr_credential_refreshes_total{namespace=\"shop\",name=\"orders\",\
                      flow=\"WorkloadIdentity\",result=";
        assert!(has(&metrics, &format!("{prefix}\"success\"}} 2")));
        assert!(has(&metrics, &format!("{prefix}\"failure\"}} 1")));
    }

    #[test]
    fn acquisition_time_is_a_histogram_by_flow_only() {
        let metrics = Metrics::new();
        metrics.record_refresh("shop", "orders", FLOW, true, Duration::from_millis(120));
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
    fn a_condition_has_one_series_per_status_with_the_current_one_at_one() {
        let metrics = Metrics::new();
        metrics.set_condition("shop", "orders", "Ready", "False");
        metrics.set_condition("shop", "orders", "Ready", "True");
        let prefix = "amr_credential_conditions{namespace=\"shop\",name=\"orders\",\
                      condition=\"Ready\",status=";
        assert!(has(&metrics, &format!("{prefix}\"True\"}} 1")));
        assert!(has(&metrics, &format!("{prefix}\"False\"}} 0")));
        assert!(has(&metrics, &format!("{prefix}\"Unknown\"}} 0")));
    }

    #[test]
    fn an_unexpected_condition_status_is_recorded_as_unknown() {
        let metrics = Metrics::new();
        metrics.set_condition("shop", "orders", "Verified", "connection refused");
        assert_eq!(series_of(&metrics, "amr_credential_conditions").len(), 3);
        assert!(has(
            &metrics,
            "amr_credential_conditions{namespace=\"shop\",name=\"orders\",\
             condition=\"Verified\",status=\"Unknown\"} 1"
        ));
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
            metrics.record_refresh("shop", name, FLOW, true, Duration::ZERO);
            metrics.record_refresh("shop", name, "ClientCredentials", false, Duration::ZERO);
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
        // Expiry, two refresh series, three condition statuses, a verification, a restart.
        assert_eq!(
            series
                .iter()
                .filter(|l| l.contains("name=\"carts\""))
                .count(),
            8
        );
    }

    #[test]
    fn forget_keeps_flow_wide_series() {
        let metrics = Metrics::new();
        metrics.record_refresh("shop", "orders", FLOW, true, Duration::ZERO);
        metrics.record_retry(FLOW);
        metrics.forget("shop", "orders");
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
    fn clones_record_into_the_same_registry() {
        let metrics = Metrics::new();
        metrics.clone().record_retry(FLOW);
        assert!(has(
            &metrics,
            "amr_credential_retries_total{flow=\"WorkloadIdentity\"} 1"
        ));
    }

    #[test]
    fn the_exposition_ends_with_the_openmetrics_eof_marker() {
        assert_eq!(
            lines(&Metrics::new()).last().map(String::as_str),
            Some("# EOF")
        );
    }
}
