//! Command line of the AMR credential operator.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Keeps Entra ID access tokens for Azure Managed Redis fresh in Kubernetes Secrets.
#[derive(Parser)]
#[command(name = "amr-credential-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify credentials against Redis: TLS, AUTH, PING, ACL WHOAMI.
    Probe(amr_credential_operator::probe::cli::ProbeArgs),
    /// Print the AmrCredential CustomResourceDefinition as YAML.
    Crd,
    /// Run the local Entra ID and AMR emulators until interrupted.
    #[command(hide = true)]
    Emulator(amr_credential_operator::emulator::cli::EmulatorArgs),
    /// Print the version.
    Version,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match amr_credential_operator::api::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("amr-credential-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Probe(args) => amr_credential_operator::probe::cli::main(args).await,
        Command::Emulator(args) => amr_credential_operator::emulator::cli::main(args).await,
    }
}
