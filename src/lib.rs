//! The AMR credential operator: keeps Entra ID access tokens for Azure Managed Redis fresh
//! in Kubernetes Secrets or in files.

pub mod api;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod emulator;
pub mod identity;
pub mod leader;
pub mod local;
pub mod login;
pub mod probe;
pub mod runner;
pub mod telemetry;
pub mod token_manager;
