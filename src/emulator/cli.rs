//! The hidden `emulator` subcommand: runs both emulators on their own.

use std::process::ExitCode;

/// Arguments of `emulator`.
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {}

/// Runs the emulators until interrupted.
pub async fn main(_args: EmulatorArgs) -> ExitCode {
    ExitCode::from(2)
}
