//! Start-up of the controller against a cluster, in named phases: configuration, clients,
//! servers, controller.

use crate::cli::{IdentityArgs, kube_material, shutdown_signal};
use crate::controller::{self, ControllerConfig};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `run` that only matter against a cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(long, env = "AMR_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Namespaces whose credentials may use the operator's own identity (managed identity,
    /// DefaultAzureCredential), comma-separated; empty allows none.
    #[arg(long, env = "AMR_AMBIENT_IDENTITY_NAMESPACES", value_delimiter = ',')]
    pub ambient_identity_namespaces: Vec<String>,
    /// Address of the metrics and health server (/metrics, /healthz, /readyz).
    #[arg(long, env = "AMR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Run only while holding a Lease, so that one of several replicas is active.
    #[arg(long, env = "AMR_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set,
        num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,
    /// Namespace of the leader election Lease; default: the pod's namespace.
    #[arg(long, env = "AMR_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "AMR_LEASE_NAME",
        default_value = "amr-credential-operator"
    )]
    pub lease_name: String,
    /// This instance's name in Events and the Lease; default: the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The pod's namespace (from the downward API).
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pub pod_namespace: Option<String>,
}

/// Runs the controller until SIGTERM.
pub async fn run(cluster: ClusterArgs, identity: IdentityArgs) -> ExitCode {
    // Clients.
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "error: no Kubernetes API to talk to ({e}); use --local FILE to run without one"
            );
            return ExitCode::from(2);
        }
    };
    let source = match identity.token_source(kube_material(client.clone())) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };

    // Controller.
    let config = ControllerConfig {
        ambient_identity_namespaces: clean(cluster.ambient_identity_namespaces),
        watch_namespaces: clean(cluster.watch_namespaces),
        instance: cluster.pod_name.clone(),
        ..ControllerConfig::default()
    };
    match controller::run(client, source, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn clean(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}
