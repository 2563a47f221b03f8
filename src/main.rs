//! Command line of the AMR credential operator.

use amr_credential_operator::cli::{IdentityArgs, LocalArgs};
use amr_credential_operator::telemetry::logging::{self, LogFormat};
use amr_credential_operator::{demo, emulator, login, probe, runner};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc keeps the resident size closer to the live heap than glibc's per-thread arenas,
/// and is faster; the image sets its one option (see the Dockerfile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps Entra ID access tokens for Azure Managed Redis fresh in Kubernetes Secrets.
#[derive(Parser)]
#[command(name = "amr-credential-operator", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "AMR_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log level (RUST_LOG, when set, wins).
    #[arg(long, global = true, env = "AMR_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

/// Arguments of `run`.
#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    local: LocalArgs,
    #[command(flatten)]
    cluster: runner::ClusterArgs,
    #[command(flatten)]
    identity: IdentityArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster, or with --local against files.
    Run(Box<RunArgs>),
    /// Verify credentials against Redis: TLS, AUTH, PING, ACL WHOAMI.
    Probe(probe::cli::ProbeArgs),
    /// Sign a person in for an AuthorizationCodeWithPKCE credential and store the refresh token.
    Login(Box<login::cli::LoginArgs>),
    /// Run the whole loop on this machine against local Entra ID and AMR emulators.
    Demo(demo::DemoArgs),
    /// Print the AmrCredential CustomResourceDefinition as YAML.
    Crd,
    /// Run the local Entra ID and AMR emulators until interrupted.
    #[command(hide = true)]
    Emulator(emulator::cli::EmulatorArgs),
    /// Print the version.
    Version,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print_crd(),
        Command::Version => {
            println!("amr-credential-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Probe(args) => probe::cli::main(args).await,
        Command::Login(args) => {
            // The command prints its own story; library logs only for warnings.
            logging::init(cli.log_format, "warn");
            login::cli::main(*args).await
        }
        Command::Emulator(args) => {
            logging::init(cli.log_format, &cli.log_level);
            emulator::cli::main(args).await
        }
        Command::Demo(args) => {
            // The demo prints its own story; library logs only for warnings.
            logging::init(cli.log_format, "warn");
            demo::main(args).await
        }
        Command::Run(args) => {
            let RunArgs {
                local,
                cluster,
                identity,
            } = *args;
            logging::init(cli.log_format, &cli.log_level);
            match local.local.clone() {
                Some(file) => {
                    amr_credential_operator::cli::run_local(file, &local, &identity).await
                }
                None => runner::run(cluster, identity).await,
            }
        }
    }
}

fn print_crd() -> ExitCode {
    match amr_credential_operator::api::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
