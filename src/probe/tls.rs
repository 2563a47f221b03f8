//! The probe's TLS client: its own root store (webpki roots plus extra CAs), the handshake,
//! and plain words for why a handshake failed.

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, RootCertStore};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Why a TLS handshake failed, in the terms a person fixes it by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The host is neither a DNS name nor an IP address.
    #[error("{host} is not a valid host name for TLS")]
    InvalidHost {
        /// The host probed.
        host: String,
    },
    /// The certificate chains to no trusted CA.
    #[error(
        "the server's certificate is signed by an unknown CA: trust that CA with --ca-file \
         (probe) or --redis-ca-file (run), or check that {host} is the Redis endpoint"
    )]
    UnknownCa {
        /// The host probed.
        host: String,
    },
    /// The certificate does not name the host.
    #[error(
        "the server's certificate is not valid for {host} (it names {presented}): connect \
         with a host name the certificate lists"
    )]
    NameMismatch {
        /// The host probed.
        host: String,
        /// The names the certificate lists, comma separated, or `other names`.
        presented: String,
    },
    /// The certificate is outside its validity period.
    #[error("the server's certificate has expired or is not yet valid")]
    CertificateExpired,
    /// The peer does not speak TLS.
    #[error("the server did not answer TLS: this may be a plain-text port ({detail})")]
    NotTls {
        /// What rustls saw.
        detail: String,
    },
    /// No handshake within the timeout.
    #[error("no TLS handshake within {0:?}")]
    TimedOut(std::time::Duration),
    /// Any other handshake failure.
    #[error("the TLS handshake failed: {0}")]
    Other(String),
}

/// The trust roots: the webpki (Mozilla) roots plus `extra` CAs.
pub(crate) fn root_store(extra: &[CertificateDer<'static>]) -> RootCertStore {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Certificates were parsed already; one webpki rejects adds no trust and is not fatal.
    let (_added, _ignored) = roots.add_parsable_certificates(extra.iter().cloned());
    roots
}

/// A client configuration on the ring provider trusting `roots`.
pub(crate) fn client_config(
    roots: RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Runs the handshake over `tcp` with SNI and certificate name `host`.
pub(crate) async fn handshake(
    tcp: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: std::time::Duration,
) -> Result<TlsStream<TcpStream>, TlsFailure> {
    let name = ServerName::try_from(host.to_string()).map_err(|_| TlsFailure::InvalidHost {
        host: host.to_string(),
    })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(classify(&error, host)),
        Err(_) => Err(TlsFailure::TimedOut(timeout)),
    }
}

/// Names the cause of a failed handshake.
pub(crate) fn classify(error: &std::io::Error, host: &str) -> TlsFailure {
    let host = host.to_string();
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                TlsFailure::NotTls {
                    detail: "the connection closed during the handshake".to_string(),
                }
            }
            _ => TlsFailure::Other(error.to_string()),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => classify_certificate(cert, host),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            TlsFailure::NotTls {
                detail: tls.to_string(),
            }
        }
        other => TlsFailure::Other(other.to_string()),
    }
}

fn classify_certificate(error: &CertificateError, host: String) -> TlsFailure {
    match error {
        CertificateError::UnknownIssuer => TlsFailure::UnknownCa { host },
        CertificateError::NotValidForName => TlsFailure::NameMismatch {
            host,
            presented: "other names".to_string(),
        },
        CertificateError::NotValidForNameContext { presented, .. } => TlsFailure::NameMismatch {
            host,
            presented: presented_names(presented),
        },
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => TlsFailure::CertificateExpired,
        other => TlsFailure::Other(format!("invalid server certificate: {other}")),
    }
}

/// rustls quotes each name as `DnsName("x")` or `IpAddress(..)`; people want `x`.
fn presented_names(presented: &[String]) -> String {
    if presented.is_empty() {
        return "no names".to_string();
    }
    presented
        .iter()
        .map(|p| {
            let inner = p
                .split_once('(')
                .map_or(p.as_str(), |(_, rest)| rest.trim_end_matches(')'));
            inner.trim_matches('"').to_string()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use std::io;

    fn wrapped(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn an_unknown_issuer_is_an_unknown_ca() {
        let e = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        let failure = classify(&e, "h");
        assert_eq!(failure, TlsFailure::UnknownCa { host: "h".into() });
        assert!(failure.to_string().contains("--ca-file"));
    }

    #[test]
    fn a_name_mismatch_lists_the_names_the_certificate_has() {
        let e = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("127.0.0.1").unwrap(),
                presented: vec!["DnsName(\"localhost\")".to_string()],
            },
        ));
        let msg = classify(&e, "127.0.0.1").to_string();
        assert!(
            msg.contains("not valid for 127.0.0.1 (it names localhost)"),
            "{msg}"
        );
    }

    #[test]
    fn a_garbled_answer_means_the_port_is_not_tls() {
        let e = wrapped(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert!(matches!(classify(&e, "h"), TlsFailure::NotTls { .. }));
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(matches!(classify(&eof, "h"), TlsFailure::NotTls { .. }));
    }

    #[test]
    fn extra_cas_are_added_to_the_webpki_roots() {
        let ca = crate::emulator::pki::Ca::new("probe test CA").unwrap();
        let der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        let roots = root_store(&[der]);
        assert_eq!(roots.len(), webpki_roots::TLS_SERVER_ROOTS.len() + 1);
    }
}
