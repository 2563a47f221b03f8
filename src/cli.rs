//! Arguments shared by the subcommands that request tokens, and the `run` subcommand.

use crate::identity::material::{FileMaterial, KubeMaterial, Material};
use crate::identity::source::{AmbientEnv, AzureTokenSource, SourceConfig};
use crate::identity::transport::{TransportConfig, ca_files_with_env};
use crate::local::{self, LocalEvent, LocalOptions};
use crate::probe::ProbeOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use url::Url;

/// Where tokens come from (every endpoint is configurable), and how `spec.verify` checks
/// them: shared by `run` and `run --local`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Entra ID and Redis")]
pub struct IdentityArgs {
    /// Entra ID authority host, such as https://login.microsoftonline.com.
    #[arg(long, env = "AZURE_AUTHORITY_HOST", value_name = "URL")]
    pub authority_host: Option<Url>,
    /// Tenant used when a resource names none.
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "TENANT")]
    pub tenant_id: Option<String>,
    /// Managed identity endpoint that replaces the IMDS address 169.254.169.254.
    #[arg(long, env = "AZURE_POD_IDENTITY_AUTHORITY_HOST", value_name = "URL")]
    pub managed_identity_endpoint: Option<Url>,
    /// Extra trusted CA certificates (PEM), besides the built-in roots and SSL_CERT_FILE.
    #[arg(
        long = "ca-file",
        env = "AMR_CA_FILE",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub ca_files: Vec<PathBuf>,
    /// Token requests in flight at once.
    #[arg(long, env = "AMR_MAX_CONCURRENT_TOKEN_REQUESTS", default_value_t = 16)]
    pub max_concurrent_token_requests: usize,
    /// Seconds one token request may take before it counts as failed.
    #[arg(long, env = "AMR_TOKEN_REQUEST_TIMEOUT", default_value_t = 30)]
    pub token_request_timeout: u64,
    /// How new tokens are verified against Redis.
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// How `spec.verify` probes Redis with each new token.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// CA certificates (PEM) to trust when verifying tokens against Redis, besides the
    /// built-in roots (repeatable; comma-separated in the environment).
    #[arg(
        long = "redis-ca-file",
        env = "AMR_REDIS_CA_FILE",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub redis_ca_files: Vec<PathBuf>,
    /// Limit on each network step of a verification, such as `5s` or `500ms`; a bare number
    /// is seconds.
    #[arg(long, env = "AMR_REDIS_TIMEOUT", default_value = "5s", value_parser = crate::probe::cli::parse_timeout)]
    pub redis_timeout: Duration,
}

impl VerifyArgs {
    /// The probe options these arguments describe.
    ///
    /// # Errors
    /// A message for the user when a CA file cannot be read or holds no certificate.
    pub fn probe_options(&self) -> Result<ProbeOptions, String> {
        let mut options = ProbeOptions::new(self.redis_timeout).map_err(|e| e.to_string())?;
        for path in &self.redis_ca_files {
            options = options.trust_file(path).map_err(|e| e.to_string())?;
        }
        Ok(options)
    }
}

impl IdentityArgs {
    /// The token source configuration these arguments describe.
    pub fn source_config(&self) -> SourceConfig {
        let timeout = Duration::from_secs(self.token_request_timeout.max(1));
        SourceConfig {
            authority_host: self.authority_host.clone(),
            default_tenant: self.tenant_id.clone(),
            transport: TransportConfig {
                ca_files: ca_files_with_env(self.ca_files.clone()),
                managed_identity_endpoint: self.managed_identity_endpoint.clone(),
                request_timeout: Some(timeout),
            },
            ambient: AmbientEnv::from_env(),
            max_concurrent_requests: self.max_concurrent_token_requests,
            attempt_timeout: timeout,
        }
    }

    /// Builds the token source reading inputs from `material`.
    ///
    /// # Errors
    /// A message for the user when the transport cannot be built.
    pub fn token_source(&self, material: Arc<dyn Material>) -> Result<AzureTokenSource, String> {
        AzureTokenSource::new(self.source_config(), material).map_err(|e| e.to_string())
    }
}

/// Arguments of `run --local`.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Run without Kubernetes: read AmrCredentials from this YAML file (one or several
    /// documents) and write credential files instead of Secrets.
    #[arg(long = "local", env = "AMR_LOCAL_FILE", value_name = "FILE")]
    pub local: Option<PathBuf>,
    /// With --local: write one subdirectory per credential here.
    #[arg(long, env = "AMR_OUTPUT_DIR", value_name = "DIR", requires = "local")]
    pub output_dir: Option<PathBuf>,
    /// With --local: Secret key K of Secret S is read from DIR/S/K. Default: FILE's directory.
    #[arg(long, env = "AMR_SECRETS_DIR", value_name = "DIR", requires = "local")]
    pub secrets_dir: Option<PathBuf>,
}

/// Runs the file mode until Ctrl-C or SIGTERM.
pub async fn run_local(file: PathBuf, args: &LocalArgs, identity: &IdentityArgs) -> ExitCode {
    let Some(output_dir) = args.output_dir.clone() else {
        eprintln!("error: --local needs --output-dir");
        return ExitCode::from(2);
    };
    let (credentials, rejected) = match local::load(&file) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for r in &rejected {
        eprintln!(
            "error: {}: credential {:?} skipped: {}",
            file.display(),
            r.name,
            r.message
        );
    }
    if credentials.is_empty() {
        eprintln!("error: {} holds no usable AmrCredential", file.display());
        return ExitCode::from(2);
    }
    let secrets_dir = args.secrets_dir.clone().unwrap_or_else(|| {
        file.parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    });
    let material: Arc<dyn Material> = Arc::new(FileMaterial::new(secrets_dir));
    let source = match identity.token_source(material) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let probe = match identity.verify.probe_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<LocalEvent>();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    // Log lines are written by the loop itself; the events are only drained here.
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    let options = LocalOptions { output_dir };
    local::run_with(
        credentials,
        source,
        options,
        Some(probe),
        events_tx,
        stop_rx,
    )
    .await;
    ExitCode::SUCCESS
}

/// Resolves when the process receives Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Kubernetes-backed material for the controller.
pub fn kube_material(client: kube::Client) -> Arc<dyn Material> {
    Arc::new(KubeMaterial::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        identity: IdentityArgs,
    }

    fn verify_args(args: &[&str]) -> VerifyArgs {
        let argv = std::iter::once("run").chain(args.iter().copied());
        Run::try_parse_from(argv).unwrap().identity.verify
    }

    #[test]
    fn redis_ca_files_repeat_and_the_timeout_takes_units() {
        let args = ["--redis-ca-file", "a.pem", "--redis-ca-file", "b.pem"];
        let verify = verify_args(&[&args[..], &["--redis-timeout", "500ms"]].concat());
        assert_eq!(
            verify.redis_ca_files,
            [PathBuf::from("a.pem"), "b.pem".into()]
        );
        assert_eq!(verify.redis_timeout, Duration::from_millis(500));
    }

    #[test]
    fn the_redis_timeout_defaults_to_five_seconds_and_must_be_positive() {
        assert_eq!(verify_args(&[]).redis_timeout, Duration::from_secs(5));
        assert_eq!(
            crate::probe::cli::parse_timeout("2.5"),
            Ok(Duration::from_millis(2_500))
        );
        assert!(crate::probe::cli::parse_timeout("0s").is_err());
        assert!(crate::probe::cli::parse_timeout("soon").is_err());
    }

    #[test]
    fn a_redis_ca_file_that_is_not_pem_is_refused_with_its_path() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a certificate").unwrap();
        let mut verify = verify_args(&[]);
        verify.redis_ca_files = vec![file.path().to_owned()];
        let message = verify.probe_options().unwrap_err();
        assert!(
            message.contains(&file.path().display().to_string()),
            "{message}"
        );
    }
}
