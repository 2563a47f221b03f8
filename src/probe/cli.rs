//! The `probe` subcommand's arguments and entry point.

use std::process::ExitCode;

/// Arguments of `probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {}

/// Runs `probe`.
pub async fn main(_args: ProbeArgs) -> ExitCode {
    ExitCode::from(2)
}
