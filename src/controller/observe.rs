//! What the controller reports besides the API server: the credential metrics, readiness,
//! and how `spec.verify` probes Redis.

use crate::api::AmrCredentialStatus;
use crate::identity::RefreshFailure;
use crate::probe::{DEFAULT_TIMEOUT, ProbeOptions};
use crate::telemetry::{Metrics, Readiness};
use jiff::Timestamp;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where the controller reports to; every clone reports to the same place.
#[derive(Debug, Clone)]
pub struct Observers {
    /// Refreshes, retries, expiry, conditions, verifications and rollout restarts.
    pub metrics: Metrics,
    /// Marked synced once every watch has listed its AmrCredentials.
    pub readiness: Readiness,
    /// Timeout and trusted CAs of the probe that `spec.verify` runs.
    pub probe: ProbeOptions,
}

impl Default for Observers {
    fn default() -> Self {
        let probe = ProbeOptions::new(DEFAULT_TIMEOUT)
            .expect("the built-in roots on the ring provider always make a TLS configuration");
        Observers {
            metrics: Metrics::new(),
            readiness: Readiness::new(),
            probe,
        }
    }
}

/// A credential's namespace and name.
pub(super) type CredentialKey = (String, String);

/// The metrics of one controller run. [`Metrics`] keeps the credentials it recorded, so that
/// the series of a deleted credential can be removed.
pub(super) struct CredentialMetrics {
    metrics: Metrics,
    /// The token source's count of saved requests already added to the counter.
    saved_counted: AtomicU64,
}

impl CredentialMetrics {
    /// Records into `metrics`; `saved_so_far` requests were saved before this run.
    pub(super) fn new(metrics: Metrics, saved_so_far: u64) -> Self {
        CredentialMetrics {
            metrics,
            saved_counted: AtomicU64::new(saved_so_far),
        }
    }

    /// Counts one refresh round and, when it failed, the retries it made, by flow.
    pub(super) fn refresh(&self, flow: &str, failure: Option<&RefreshFailure>, took: Duration) {
        let ok = failure.is_none();
        self.metrics.record_refresh(flow, ok, took);
        let retries = failure.map_or(0, |f| f.attempts.saturating_sub(1));
        for _ in 0..retries {
            self.metrics.record_retry(flow);
        }
    }

    /// Adds the requests saved since the last call; `total` is the token source's count.
    pub(super) fn saved_requests(&self, total: u64) {
        // Concurrent reconciles may report out of order: only the highest total counts.
        let counted = self.saved_counted.fetch_max(total, Ordering::Relaxed);
        if total > counted {
            self.metrics.record_requests_saved(total - counted);
        }
    }

    /// Records the conditions and the token expiry a credential's status shows.
    pub(super) fn status(&self, namespace: &str, name: &str, status: &AmrCredentialStatus) {
        for condition in &status.conditions {
            self.metrics
                .set_condition(namespace, name, &condition.type_, &condition.status);
        }
        let expiry = status.expires_at.as_deref();
        if let Some(at) = expiry.and_then(|t| t.parse::<Timestamp>().ok()) {
            self.metrics.set_expiry(namespace, name, at.as_second());
        }
    }

    /// Counts one verification against Redis.
    pub(super) fn verification(&self, namespace: &str, name: &str, ok: bool) {
        self.metrics.record_verification(namespace, name, ok);
    }

    /// Counts one rollout restart of a workload.
    pub(super) fn rollout_restart(&self, namespace: &str, name: &str, ok: bool) {
        self.metrics.record_rollout_restart(namespace, name, ok);
    }

    /// The credentials with recorded series or conditions.
    pub(super) fn recorded(&self) -> HashSet<CredentialKey> {
        self.metrics.credentials()
    }

    /// Removes the series of every credential of `candidates` that is not `live`.
    pub(super) fn sweep(&self, candidates: HashSet<CredentialKey>, live: &HashSet<CredentialKey>) {
        for key in candidates.difference(live) {
            let (namespace, name) = key;
            tracing::debug!(
                namespace,
                name,
                "Removing the metrics of a deleted credential"
            );
            self.forget(key);
        }
    }

    /// Removes the series of every credential, when the controller stops.
    pub(super) fn forget_all(&self) {
        for key in self.recorded() {
            self.forget(&key);
        }
    }

    fn forget(&self, key: &CredentialKey) {
        self.metrics.forget(&key.0, &key.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::outage;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn key(name: &str) -> CredentialKey {
        ("shop".to_owned(), name.to_owned())
    }

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            message: String::new(),
            observed_generation: None,
            reason: "Healthy".to_owned(),
        }
    }

    fn series(metrics: &Metrics, name: &str) -> usize {
        let needle = format!("name=\"{name}\"");
        metrics
            .encode()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    #[test]
    fn a_failed_round_counts_its_retries() {
        let metrics = Metrics::new();
        let recorder = CredentialMetrics::new(metrics.clone(), 0);
        recorder.refresh("ClientCredentials", Some(&outage()), Duration::ZERO);
        let text = metrics.encode();
        assert!(text.contains("amr_credential_retries_total{flow=\"ClientCredentials\"} 2"));
        assert!(text.contains("flow=\"ClientCredentials\",result=\"failure\"} 1"));
    }

    #[test]
    fn saved_requests_count_only_what_is_new_even_out_of_order() {
        let metrics = Metrics::new();
        let recorder = CredentialMetrics::new(metrics.clone(), 3);
        for total in [5, 4, 7, 7] {
            recorder.saved_requests(total);
        }
        assert!(
            metrics
                .encode()
                .contains("amr_credential_entra_requests_saved_total 4")
        );
    }

    #[test]
    fn sweeping_forgets_only_credentials_that_are_gone() {
        let metrics = Metrics::new();
        let recorder = CredentialMetrics::new(metrics.clone(), 0);
        for name in ["orders", "carts"] {
            recorder.verification("shop", name, true);
        }
        let live = HashSet::from([key("carts")]);
        recorder.sweep(recorder.recorded(), &live);
        assert_eq!(
            (series(&metrics, "orders"), series(&metrics, "carts")),
            (0, 1)
        );
        assert_eq!(recorder.recorded(), live);
    }

    #[test]
    fn a_status_counts_its_conditions_and_sets_the_expiry() {
        let metrics = Metrics::new();
        let recorder = CredentialMetrics::new(metrics.clone(), 0);
        let status = AmrCredentialStatus {
            expires_at: Some("2025-06-15T16:06:40Z".into()),
            conditions: vec![condition("Ready", "True"), condition("Degraded", "False")],
            ..Default::default()
        };
        recorder.status("shop", "orders", &status);
        let text = metrics.encode();
        for line in [
            "amr_credential_token_expiry_timestamp_seconds\
             {namespace=\"shop\",name=\"orders\"} 1750003600",
            "amr_credential_credentials{condition=\"Ready\",status=\"True\"} 1",
            "amr_credential_credentials{condition=\"Degraded\",status=\"False\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert_eq!(recorder.recorded(), HashSet::from([key("orders")]));
    }

    #[test]
    fn a_refresh_leaves_nothing_to_forget() {
        let recorder = CredentialMetrics::new(Metrics::new(), 0);
        recorder.refresh("ClientCredentials", None, Duration::ZERO);
        assert!(recorder.recorded().is_empty());
    }

    #[test]
    fn forgetting_all_uncounts_every_credential() {
        let metrics = Metrics::new();
        let recorder = CredentialMetrics::new(metrics.clone(), 0);
        let status = AmrCredentialStatus {
            conditions: vec![condition("Ready", "True")],
            ..Default::default()
        };
        for name in ["orders", "carts"] {
            recorder.status("shop", name, &status);
        }
        recorder.forget_all();
        assert!(
            metrics
                .encode()
                .contains("amr_credential_credentials{condition=\"Ready\",status=\"True\"} 0")
        );
        assert!(recorder.recorded().is_empty());
    }
}
