//! Local emulators of Entra ID and Azure Managed Redis for tests and the demo.

pub mod amr;
pub mod cli;
pub mod entra;
pub mod pki;
