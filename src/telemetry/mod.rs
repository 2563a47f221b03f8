//! Logging, metrics and health endpoints.

pub mod logging;
pub mod metrics;
pub mod readiness;
pub mod server;

pub use logging::LogFormat;
pub use metrics::Metrics;
pub use readiness::{Readiness, Role};
pub use server::{TelemetryServer, serve};

use std::net::SocketAddr;

/// What can fail while serving telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The metrics and health listener could not be bound.
    #[error("binding the telemetry server to {addr} failed")]
    BindFailed {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The bound listener could not report its address.
    #[error("reading the telemetry server's local address failed")]
    LocalAddrFailed(#[source] std::io::Error),
    /// The server stopped with an I/O error.
    #[error("serving telemetry failed")]
    ServeFailed(#[source] std::io::Error),
}
