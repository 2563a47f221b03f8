//! Start-up of the controller against a cluster, in named phases: configuration, clients,
//! servers, controller.
//!
//! ```text
//! configure ─► connect ─► serve telemetry ─► control (alone, or while holding the Lease)
//!                                              │ SIGTERM: reconciles finish, Lease released
//!                                              └► stop serving
//! ```

use crate::cli::{IdentityArgs, kube_material, shutdown_signal};
use crate::controller::{self, ControllerConfig, Observers};
use crate::identity::TokenSource;
use crate::leader::{self, LeaderConfig, LeaderError};
use crate::probe::ProbeOptions;
use crate::telemetry::{Metrics, Readiness, Role, TelemetryError, TelemetryServer};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long the Lease stays valid after a renewal; renewed every third of it.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the telemetry server may take to finish open requests at shutdown.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(5);
/// Where the kernel tells the host name, when `HOSTNAME` is not set.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// Arguments of `run` that only matter against a cluster.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Cluster mode (file mode, --local, ignores these)")]
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

/// Why `run` could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The arguments or the environment cannot work.
    #[error("{0}")]
    ConfigInvalid(String),
    /// No Kubernetes API could be configured.
    #[error("no Kubernetes API to talk to; use --local FILE to run without one")]
    NoKubernetes(#[source] kube::Error),
    /// The metrics and health server could not start.
    #[error("starting the metrics and health server failed (see --metrics-addr)")]
    TelemetryFailed(#[source] TelemetryError),
    /// The controller could not run.
    #[error("the controller stopped")]
    ControllerFailed(#[source] controller::Error),
    /// Leader election could not run.
    #[error("leader election failed")]
    LeaderElectionFailed(#[source] LeaderError),
}

impl RunError {
    /// 2 for what the user must fix before starting again, 1 for failures while running.
    fn exit_code(&self) -> ExitCode {
        match self {
            RunError::ConfigInvalid(_)
            | RunError::NoKubernetes(_)
            | RunError::TelemetryFailed(_) => ExitCode::from(2),
            RunError::ControllerFailed(_) | RunError::LeaderElectionFailed(_) => ExitCode::FAILURE,
        }
    }
}

/// Runs the controller until SIGTERM.
pub async fn run(cluster: ClusterArgs, identity: IdentityArgs) -> ExitCode {
    match start(cluster, identity).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            e.exit_code()
        }
    }
}

async fn start(cluster: ClusterArgs, identity: IdentityArgs) -> Result<(), RunError> {
    let settings = configure(cluster, &identity, hostname())?;
    let (client, tokens) = connect(&identity).await?;
    let observers = Observers {
        metrics: Metrics::new(),
        readiness: Readiness::new(),
        probe: settings.probe.clone(),
    };
    let server = Server::start(settings.metrics_addr, &observers).await?;
    let controlled = control(client, tokens, settings, observers).await;
    server.stop().await;
    controlled
}

/// Everything `run` needs to know before it connects anywhere.
struct Settings {
    controller: ControllerConfig,
    /// The Lease to hold, with leader election on.
    lease: Option<LeaderConfig>,
    metrics_addr: SocketAddr,
    probe: ProbeOptions,
}

/// Phase one, configuration: checks the arguments; `hostname` names this replica when
/// POD_NAME is not set.
fn configure(
    cluster: ClusterArgs,
    identity: &IdentityArgs,
    hostname: Option<String>,
) -> Result<Settings, RunError> {
    let probe = identity
        .verify
        .probe_options()
        .map_err(RunError::ConfigInvalid)?;
    let instance = cluster.pod_name.clone().or(hostname);
    let lease = lease(&cluster, instance.as_deref())?;
    let controller = ControllerConfig {
        ambient_identity_namespaces: clean(cluster.ambient_identity_namespaces),
        watch_namespaces: clean(cluster.watch_namespaces),
        instance,
        ..ControllerConfig::default()
    };
    Ok(Settings {
        controller,
        lease,
        metrics_addr: cluster.metrics_addr,
        probe,
    })
}

/// The Lease to hold, or `None` without leader election.
fn lease(cluster: &ClusterArgs, identity: Option<&str>) -> Result<Option<LeaderConfig>, RunError> {
    if !cluster.leader_election {
        return Ok(None);
    }
    let namespace = given(cluster.lease_namespace.as_deref())
        .or_else(|| given(cluster.pod_namespace.as_deref()));
    let Some(namespace) = namespace else {
        return Err(RunError::ConfigInvalid(
            "--leader-election needs the Lease's namespace: set --lease-namespace \
             (AMR_LEASE_NAMESPACE) or POD_NAMESPACE"
                .to_string(),
        ));
    };
    let Some(identity) = given(identity) else {
        return Err(RunError::ConfigInvalid(
            "--leader-election needs this replica's name: set POD_NAME".to_string(),
        ));
    };
    Ok(Some(LeaderConfig {
        namespace: namespace.to_string(),
        name: cluster.lease_name.clone(),
        identity: identity.to_string(),
        lease_duration: LEASE_DURATION,
    }))
}

/// Phase two, clients: the Kubernetes API and the token source.
async fn connect(
    identity: &IdentityArgs,
) -> Result<(kube::Client, Arc<dyn TokenSource>), RunError> {
    let client = kube::Client::try_default()
        .await
        .map_err(RunError::NoKubernetes)?;
    let source = identity
        .token_source(kube_material(client.clone()))
        .map_err(RunError::ConfigInvalid)?;
    Ok((client, Arc::new(source)))
}

/// Phase three, servers: `/metrics`, `/healthz` and `/readyz`, until told to stop.
struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), TelemetryError>>,
}

impl Server {
    /// Binds `addr` now, so that a taken address stops the start-up, and serves it.
    async fn start(addr: SocketAddr, observers: &Observers) -> Result<Server, RunError> {
        let server = TelemetryServer::bind(addr)
            .await
            .map_err(RunError::TelemetryFailed)?;
        let (stop, stopped) = oneshot::channel();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let metrics = observers.metrics.clone();
        let readiness = observers.readiness.clone();
        let task = tokio::spawn(async move {
            let served = server.serve(metrics, readiness, shutdown).await;
            // A dead health endpoint fails the liveness probe, which restarts the pod.
            if let Err(e) = &served {
                tracing::error!(error = %chain(e), "Metrics and health server stopped");
            }
            served
        });
        Ok(Server { stop, task })
    }

    /// Stops serving once open requests finish, or after a grace period.
    async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(SERVER_STOP_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// SIGTERM or Ctrl-C, awaitable from several places.
type Term = Shared<BoxFuture<'static, ()>>;

/// Phase four, controller: alone, or only while holding the Lease.
async fn control(
    client: kube::Client,
    tokens: Arc<dyn TokenSource>,
    settings: Settings,
    observers: Observers,
) -> Result<(), RunError> {
    let term: Term = shutdown_signal().boxed().shared();
    match settings.lease {
        None => {
            observers.readiness.set_role(Role::Single);
            let config = settings.controller;
            controller::run_with(client, tokens, config, observers, term)
                .await
                .map_err(RunError::ControllerFailed)
        }
        Some(lease) => {
            lead(
                client,
                tokens,
                (settings.controller, lease),
                observers,
                term,
            )
            .await
        }
    }
}

/// Runs the controller only while this replica holds the Lease, until SIGTERM.
async fn lead(
    client: kube::Client,
    tokens: Arc<dyn TokenSource>,
    (config, lease): (ControllerConfig, LeaderConfig),
    observers: Observers,
    term: Term,
) -> Result<(), RunError> {
    let failed = Arc::new(Mutex::new(None));
    let running = Arc::new(watch::Sender::new(false));
    let readiness = observers.readiness.clone();
    let work = {
        let (client, failed, running) = (client.clone(), failed.clone(), running.clone());
        let term = term.clone();
        move || {
            let (client, tokens, term) = (client.clone(), tokens.clone(), term.clone());
            let (config, observers) = (config.clone(), observers.clone());
            let (failed, running) = (failed.clone(), running.clone());
            async move {
                let _running = Running::mark(running);
                let ran = controller::run_with(client, tokens, config, observers, term).await;
                if let Err(e) = ran {
                    *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                }
            }
        }
    };

    // A leader's controller sees SIGTERM itself and lets its reconciles finish; only then
    // does the election stop and release the Lease.
    let mut idle = running.subscribe();
    let shutdown = async move {
        term.await;
        let _ = idle.wait_for(|running| !running).await;
    };
    leader::run_when_leader(client, lease, readiness, work, shutdown)
        .await
        .map_err(RunError::LeaderElectionFailed)?;
    let failure = failed.lock().unwrap_or_else(PoisonError::into_inner).take();
    failure.map_or(Ok(()), |e| Err(RunError::ControllerFailed(e)))
}

/// Says whether a controller runs, for as long as it is alive.
struct Running(Arc<watch::Sender<bool>>);

impl Running {
    fn mark(running: Arc<watch::Sender<bool>>) -> Running {
        running.send_replace(true);
        Running(running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// `value` trimmed, when anything is left.
fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|s| !s.is_empty())
}

fn clean(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// This machine's host name: `HOSTNAME`, else what the kernel says.
fn hostname() -> Option<String> {
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string(HOSTNAME_FILE).ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// An error and its causes, separated by colons; a cause whose text an earlier message
/// already holds is not repeated.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::VerifyArgs;

    fn cluster() -> ClusterArgs {
        ClusterArgs {
            watch_namespaces: vec![" shop ".into(), String::new()],
            ambient_identity_namespaces: Vec::new(),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            leader_election: true,
            lease_namespace: None,
            lease_name: "amr-credential-operator".into(),
            pod_name: None,
            pod_namespace: Some("operators".into()),
        }
    }

    fn identity() -> IdentityArgs {
        IdentityArgs {
            authority_host: None,
            tenant_id: None,
            managed_identity_endpoint: None,
            ca_files: Vec::new(),
            max_concurrent_token_requests: 16,
            token_request_timeout: 30,
            verify: VerifyArgs {
                redis_ca_files: Vec::new(),
                redis_timeout: Duration::from_secs(5),
            },
        }
    }

    fn config_error(result: Result<Settings, RunError>) -> String {
        match result {
            Err(e @ RunError::ConfigInvalid(_)) => e.to_string(),
            Err(e) => panic!("not a configuration error: {e}"),
            Ok(_) => panic!("the configuration was accepted"),
        }
    }

    #[test]
    fn the_lease_lives_in_the_pod_namespace_under_the_host_name_by_default() {
        let settings = configure(cluster(), &identity(), Some("node-a".into())).unwrap();
        let lease = settings.lease.unwrap();
        assert_eq!(
            (lease.namespace.as_str(), lease.identity.as_str()),
            ("operators", "node-a")
        );
        assert_eq!(settings.controller.watch_namespaces, vec!["shop"]);
    }

    #[test]
    fn the_lease_namespace_and_pod_name_win_over_the_defaults() {
        let mut args = cluster();
        args.lease_namespace = Some("leases".into());
        args.pod_name = Some("operator-0".into());
        let lease = configure(args, &identity(), Some("node-a".into()))
            .unwrap()
            .lease
            .unwrap();
        assert_eq!(
            (lease.namespace.as_str(), lease.identity.as_str()),
            ("leases", "operator-0")
        );
    }

    #[test]
    fn leader_election_without_a_namespace_is_a_configuration_error() {
        let mut args = cluster();
        args.pod_namespace = Some("  ".into());
        let message = config_error(configure(args, &identity(), Some("node-a".into())));
        assert!(message.contains("--lease-namespace"), "{message}");
        assert_eq!(
            RunError::ConfigInvalid(message).exit_code(),
            ExitCode::from(2)
        );
    }

    #[test]
    fn without_leader_election_no_namespace_is_needed() {
        let mut args = cluster();
        (args.leader_election, args.pod_namespace) = (false, None);
        assert!(configure(args, &identity(), None).unwrap().lease.is_none());
    }

    #[test]
    fn an_unreadable_redis_ca_file_is_a_configuration_error() {
        let mut identity = identity();
        identity.verify.redis_ca_files = vec!["/nonexistent/redis-ca.pem".into()];
        let message = config_error(configure(cluster(), &identity, Some("node-a".into())));
        assert!(message.contains("/nonexistent/redis-ca.pem"), "{message}");
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer ({0})")]
        struct Outer(#[source] std::io::Error);
        let inner = std::io::Error::other("inner");
        assert_eq!(chain(&Outer(inner)), "outer (inner)");
    }

    #[tokio::test]
    async fn a_taken_metrics_address_stops_the_start_up_and_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let Err(e) = Server::start(addr, &Observers::default()).await else {
            panic!("a taken address was bound");
        };
        assert!(matches!(e, RunError::TelemetryFailed(_)));
        assert!(chain(&e).contains(&addr.to_string()), "{}", chain(&e));
        assert_eq!(e.exit_code(), ExitCode::from(2));
    }
}
