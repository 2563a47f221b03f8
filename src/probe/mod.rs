//! Verifies credentials against Redis for real: TCP, TLS, AUTH, PING, ACL WHOAMI.
//!
//! ```text
//! verify ─► checks (pure: token, expiry, audience, username)
//!        └► session (I/O: tcp ─► tls ─► auth ─► ping ─► whoami)
//!        ─► ProbeReport ─► output (table | json)
//! ```
//!
//! The controller calls [`verify`] after each refresh; the `probe` subcommand ([`cli`])
//! gathers credentials from the cluster, mounted files or the environment and calls it for
//! each.

mod checks;
pub mod cli;
mod cluster;
pub mod output;
mod report;
mod session;
mod sources;
mod tls;

pub use checks::human;
pub use report::{Check, CheckResult, ProbeReport, Status};
pub use tls::TlsFailure;

use report::Recorder;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info};

/// How long each network step may take unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The port AMR listens on.
pub const DEFAULT_PORT: u16 = 10000;

/// Why probe options could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A CA file could not be read.
    #[error("reading the CA file {path} failed: {source}")]
    CaFileReadFailed {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A CA file is not PEM certificates.
    #[error("the CA file {path} is not PEM: {source}")]
    CaFileInvalid {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A CA file holds no certificate.
    #[error("the CA file {path} holds no certificate")]
    CaFileEmpty {
        /// The file.
        path: String,
    },
    /// rustls refused the configuration.
    #[error("building the TLS configuration failed: {0}")]
    TlsConfigFailed(#[source] rustls::Error),
}

/// The Redis endpoint to probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeTarget {
    /// Host name or address; with TLS, the name the certificate must carry.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Whether to use TLS (AMR requires it).
    pub tls: bool,
}

impl ProbeTarget {
    /// A TLS endpoint.
    pub fn tls(host: impl Into<String>, port: u16) -> ProbeTarget {
        ProbeTarget {
            host: host.into(),
            port,
            tls: true,
        }
    }
}

impl From<&crate::api::RedisEndpoint> for ProbeTarget {
    fn from(endpoint: &crate::api::RedisEndpoint) -> ProbeTarget {
        ProbeTarget {
            host: endpoint.host.clone(),
            port: endpoint.port,
            tls: endpoint.tls,
        }
    }
}

/// How to probe: the timeout of each network step and the CAs to trust.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Limit on each of connect, handshake and every command.
    pub timeout: Duration,
    extra_cas: Vec<CertificateDer<'static>>,
    tls_config: Arc<rustls::ClientConfig>,
}

impl ProbeOptions {
    /// Options trusting the webpki (Mozilla) roots, the CAs public AMR endpoints use.
    ///
    /// # Errors
    /// When rustls refuses the configuration, which the built-in roots never cause.
    pub fn new(timeout: Duration) -> Result<ProbeOptions, ProbeError> {
        ProbeOptions::with_cas(timeout, Vec::new())
    }

    /// Also trusts the CA certificates in `pem` (one or more PEM blocks); `origin` names
    /// them in errors.
    ///
    /// # Errors
    /// When `pem` holds no valid certificate.
    pub fn trust_pem(self, pem: &[u8], origin: &str) -> Result<ProbeOptions, ProbeError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ProbeError::CaFileInvalid {
                path: origin.to_string(),
                source,
            })?;
        if certs.is_empty() {
            return Err(ProbeError::CaFileEmpty {
                path: origin.to_string(),
            });
        }
        let mut cas = self.extra_cas;
        cas.extend(certs);
        ProbeOptions::with_cas(self.timeout, cas)
    }

    /// Also trusts the CA certificates in the PEM file at `path`.
    ///
    /// # Errors
    /// When the file cannot be read or holds no valid certificate.
    pub fn trust_file(self, path: &Path) -> Result<ProbeOptions, ProbeError> {
        let origin = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| ProbeError::CaFileReadFailed {
            path: origin.clone(),
            source,
        })?;
        self.trust_pem(&pem, &origin)
    }

    fn with_cas(
        timeout: Duration,
        extra_cas: Vec<CertificateDer<'static>>,
    ) -> Result<ProbeOptions, ProbeError> {
        let roots = tls::root_store(&extra_cas);
        let tls_config = tls::client_config(roots).map_err(ProbeError::TlsConfigFailed)?;
        Ok(ProbeOptions {
            timeout,
            extra_cas,
            tls_config,
        })
    }
}

/// Checks one credential end to end and reports every check in order: the token parses,
/// has not expired, is meant for Redis and belongs to `username`; then TCP, TLS, `AUTH`,
/// `PING` and `ACL WHOAMI` against `target`. The first failed check skips the rest.
///
/// Never fails itself: every problem is a failed check in the report. Neither the report
/// nor the logs contain the password, only its fingerprint.
pub async fn verify(
    target: &ProbeTarget,
    username: &str,
    password: &SecretString,
    options: &ProbeOptions,
) -> ProbeReport {
    let now = jiff::Timestamp::now();
    let fingerprint = crate::identity::claims::fingerprint(password.expose_secret());
    let mut recorder = Recorder::new(&[]);

    // The token's own claims are checked first: they need no network and explain most
    // broken Secrets without touching Redis.
    let claims = checks::token(password.expose_secret());
    let expires_at = claims.as_ref().ok().map(|c| c.expires_at);
    match &claims {
        Ok(c) => {
            recorder.pass(Check::Token, format!("access token {fingerprint}"));
            recorder.outcome(Check::Expiry, checks::expiry(c, now));
            recorder.outcome(Check::Audience, checks::audience(c));
            recorder.outcome(Check::Username, checks::username(username, c));
        }
        Err(message) => recorder.fail(Check::Token, message.clone()),
    }
    if !recorder.failed() {
        session::exchange(&mut recorder, target, username, password, options).await;
    }

    let report = ProbeReport {
        target: Some(target.clone()),
        identity: username.to_string(),
        token_fingerprint: Some(fingerprint),
        expires_at,
        checks: recorder.finish(),
    };
    log(&report);
    report
}

fn log(report: &ProbeReport) {
    let (host, port) = report
        .target
        .as_ref()
        .map_or(("", 0), |t| (t.host.as_str(), t.port));
    match report.failure() {
        None => debug!(identity = report.identity, host, port, "Probe passed"),
        Some(failed) => info!(
            identity = report.identity,
            host,
            port,
            check = failed.check.name(),
            reason = failed.message,
            "Probe failed"
        ),
    }
}
