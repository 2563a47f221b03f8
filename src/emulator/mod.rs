//! Local emulators of Entra ID and Azure Managed Redis for tests and the demo.

pub mod cli;
pub mod pki;
