//! The hidden `emulator` subcommand: runs the Entra ID emulator on 127.0.0.1 until
//! interrupted, and writes what clients need to reach it into a state directory.

use super::entra::{EmulatorError, EntraConfig, EntraEmulator};
use super::pki::Ca;
use secrecy::ExposeSecret;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Name of the CA certificate file in the state directory.
pub const CA_FILE: &str = "ca.crt";
/// Name of the connection details file (JSON) in the state directory.
pub const CONNECTION_FILE: &str = "entra.json";
/// Name of the file holding the App Service identity header secret.
pub const IDENTITY_HEADER_FILE: &str = "identity-header";

/// Arguments of `emulator`.
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// YAML file describing the emulator's tenant, token lifetime and identities.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory to write ca.crt, entra.json and identity-header into.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Runs the emulator until interrupted. Exits 2 on a configuration error, 1 on any other.
pub async fn main(args: EmulatorArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .try_init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            let config_error = matches!(
                error,
                EmulatorError::ConfigReadFailed { .. }
                    | EmulatorError::ConfigParseFailed(_)
                    | EmulatorError::ConfigInvalid(_)
                    | EmulatorError::KeyInvalid { .. }
            );
            ExitCode::from(if config_error { 2 } else { 1 })
        }
    }
}

async fn run(args: EmulatorArgs) -> Result<(), EmulatorError> {
    let config = match &args.config {
        Some(path) => EntraConfig::load(path)?,
        None => EntraConfig::default(),
    };
    let ca = Ca::new("amr-credential-operator emulator CA").map_err(EmulatorError::PkiFailed)?;
    let emulator = EntraEmulator::start(config, &ca).await?;

    let ca_path = match &args.state_dir {
        Some(dir) => Some(write_state(&emulator, dir)?),
        None => None,
    };
    print_endpoints(&emulator, ca_path.as_deref());

    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "Waiting for Ctrl-C failed; stopping");
    }
    emulator.shutdown();
    tracing::info!("Entra ID emulator stopped");
    Ok(())
}

/// Writes the CA certificate, the connection details and the identity header secret into
/// `dir`; returns the CA certificate's path.
fn write_state(emulator: &EntraEmulator, dir: &Path) -> Result<PathBuf, EmulatorError> {
    std::fs::create_dir_all(dir).map_err(|source| write_failed(dir, source))?;
    let ca_path = dir.join(CA_FILE);
    emulator.write_ca(&ca_path)?;

    let header_path = dir.join(IDENTITY_HEADER_FILE);
    write_private(&header_path, emulator.identity_header().expose_secret())?;
    let details = json!({
        "authority_host": emulator.authority_host().as_str(),
        "tenant": emulator.tenant(),
        "token_endpoint": emulator.token_endpoint(emulator.tenant()).as_str(),
        "imds_endpoint": emulator.imds_endpoint().as_str(),
        "app_service_endpoint": emulator.app_service_endpoint().as_str(),
        "identity_header_file": header_path,
        "ca_file": ca_path,
    });
    let path = dir.join(CONNECTION_FILE);
    let text = format!("{details:#}\n");
    std::fs::write(&path, text).map_err(|source| write_failed(&path, source))?;
    Ok(ca_path)
}

fn print_endpoints(emulator: &EntraEmulator, ca_path: Option<&Path>) {
    println!("authority host:       {}", emulator.authority_host());
    println!("tenant:               {}", emulator.tenant());
    println!("IMDS endpoint:        {}", emulator.imds_endpoint());
    println!("App Service endpoint: {}", emulator.app_service_endpoint());
    if let Some(path) = ca_path {
        println!("CA certificate:       {}", path.display());
    }
    println!("Press Ctrl-C to stop.");
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, contents: &str) -> Result<(), EmulatorError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|source| write_failed(path, source))?;
    file.write_all(contents.as_bytes())
        .map_err(|source| write_failed(path, source))
}

fn write_failed(path: &Path, source: std::io::Error) -> EmulatorError {
    EmulatorError::WriteFailed {
        path: path.display().to_string(),
        source,
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}
