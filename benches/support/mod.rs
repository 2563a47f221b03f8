//! Support for the scale benchmark: what the parent hands its child process, what the child
//! reports back, and the names both sides derive from an identity's index.

pub mod kube_api;
pub mod observer;
pub mod run;
pub mod stats;

use amr_credential_operator::api::AmrCredential;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Namespace of every object of the benchmark.
pub const NAMESPACE: &str = "bench";
/// Key of the client secret in each identity's Secret.
pub const SECRET_KEY: &str = "client-secret";
/// Fraction of a token's lifetime after which it is refreshed.
pub const REFRESH_RATIO: f64 = 0.8;

/// What one measured run does; the parent passes it to the child as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// AmrCredentials.
    pub credentials: usize,
    /// Identities (apps with a client secret) they share.
    pub identities: usize,
    /// Refresh cycles measured after the first acquisition.
    pub cycles: u32,
    /// Lifetime of the emulated tokens, in seconds.
    pub lifetime_s: u64,
    /// Reconciles in flight at most.
    pub concurrency: usize,
    /// Where the Kubernetes API stand-in answers, as `http://127.0.0.1:port`.
    pub api_url: String,
    /// The emulator's authority host.
    pub authority: String,
    /// The emulator's tenant.
    pub tenant: String,
    /// CA certificate the emulator's TLS certificate chains to.
    pub ca_file: PathBuf,
    /// Client secrets derive from it.
    pub seed: String,
    /// The run stops after this long even when unfinished.
    pub time_limit_s: u64,
}

/// What the child measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// When the first reconcile was scheduled.
    pub started_at: jiff::Timestamp,
    /// When every Secret held a token.
    pub ready_at: Option<jiff::Timestamp>,
    /// When the last measured cycle completed, or the run stopped.
    pub ended_at: jiff::Timestamp,
    /// Seconds from start until every Secret held a token.
    pub first_ready_s: Option<f64>,
    /// Secrets written at least once, twice, ..., `cycles + 1` times.
    pub secrets_written: Vec<usize>,
    /// Seconds from start until each refresh cycle was complete.
    pub cycle_done_s: Vec<f64>,
    /// Secret rewrites after every Secret held a token.
    pub steady_refreshes: u64,
    /// Every Secret rewrite.
    pub refreshes: u64,
    /// Lateness of the rewrites: median, 99th percentile and maximum, in milliseconds.
    pub lateness_ms: Option<[f64; 3]>,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
    /// Resident memory before any object existed, MiB.
    pub baseline_rss_mib: f64,
    /// Resident memory and heap in use once every object existed, then at first readiness
    /// and at the end of each cycle, MiB.
    pub memory_mib: Vec<[f64; 2]>,
    /// Heap held at the end by the controller's context, the AmrCredentials, and everything
    /// else, MiB.
    pub heap_held_mib: Option<[f64; 3]>,
    /// Process CPU over the refresh cycles, ms.
    pub steady_cpu_ms: f64,
    /// Reconciles run, failed, and left without a requeue.
    pub reconciles: [u64; 3],
    /// The first reconcile error, with its causes.
    pub first_error: Option<String>,
}

/// Client id of identity `i`.
pub fn client_id(i: usize) -> String {
    format!("5ca1e000-0000-4000-8000-{i:012}")
}

/// Object id of identity `i`.
pub fn object_id(i: usize) -> String {
    format!("0b1d5ca1-0000-4000-8000-{i:012}")
}

/// Name of the Secret holding identity `i`'s client secret.
pub fn secret_name(i: usize) -> String {
    format!("sp-{i:03}")
}

/// Client secret of identity `i`.
pub fn client_secret(seed: &str, i: usize) -> String {
    hex::encode(&Sha256::digest(format!("{seed}/{i}"))[..18])
}

/// Credential `n`, using identity `i`.
pub fn credential(n: usize, i: usize) -> AmrCredential {
    let object = json!({
        "apiVersion": "amr.entraid.dev/v1alpha1", "kind": "AmrCredential",
        "metadata": {
            "name": credential_name(n), "namespace": NAMESPACE,
            "uid": format!("00000000-0000-4000-8000-{n:012}"),
            "generation": 1, "resourceVersion": "1",
        },
        "spec": {
            "flow": {
                "type": "ClientCredentials", "clientId": client_id(i),
                "clientSecretRef": {"name": secret_name(i), "key": SECRET_KEY},
            },
            "tokenManagerConfig": {"expirationRefreshRatio": REFRESH_RATIO},
        },
    });
    serde_json::from_value(object).expect("the benchmark's AmrCredential is well-formed")
}

/// Name of credential `n`.
pub fn credential_name(n: usize) -> String {
    format!("cache-{n:05}")
}
