//! The TLS listener on 127.0.0.1: serves the router over HTTP/1.1, and closes without an
//! answer the connections whose response is marked as dropped.

use super::EmulatorError;
use crate::emulator::pki::Ca;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// Response extension asking the listener to close the connection instead of answering.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropConnection;

/// The error that makes hyper close a connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
struct Dropped;

/// Binds an ephemeral port on 127.0.0.1.
pub(crate) async fn bind() -> Result<TcpListener, EmulatorError> {
    TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(EmulatorError::BindFailed)
}

/// A TLS acceptor whose certificate, issued by `ca`, names 127.0.0.1 and localhost.
pub(crate) fn tls_acceptor(ca: &Ca) -> Result<TlsAcceptor, EmulatorError> {
    let leaf = ca
        .issue_server(&["127.0.0.1", "localhost"])
        .map_err(EmulatorError::PkiFailed)?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
        .map_err(|e| EmulatorError::TlsFailed(rustls::Error::General(e.to_string())))?;
    let chain = vec![CertificateDer::from(leaf.cert_der)];
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(EmulatorError::TlsFailed)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(EmulatorError::TlsFailed)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A reqwest client that trusts only `ca_pem`.
pub(crate) fn client_trusting(ca_pem: &str) -> Result<reqwest::Client, EmulatorError> {
    client_builder_trusting(ca_pem)?
        .build()
        .map_err(EmulatorError::ClientBuildFailed)
}

/// A reqwest client builder that trusts only `ca_pem` and ignores proxies.
pub(crate) fn client_builder_trusting(
    ca_pem: &str,
) -> Result<reqwest::ClientBuilder, EmulatorError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert =
            cert.map_err(|e| EmulatorError::TlsFailed(rustls::Error::General(e.to_string())))?;
        roots.add(cert).map_err(EmulatorError::TlsFailed)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(EmulatorError::TlsFailed)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy())
}

/// Serves `router` on `listener` until the returned task is aborted; aborting it closes
/// every open connection too.
pub(crate) fn spawn(
    listener: TcpListener,
    tls: TlsAcceptor,
    router: axum::Router,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _peer)) => {
                        connections.spawn(serve_connection(tcp, tls.clone(), router.clone()));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

async fn serve_connection(tcp: TcpStream, tls: TlsAcceptor, router: axum::Router) {
    let stream = match tls.accept(tcp).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%error, "TLS handshake failed");
            return;
        }
    };
    let router = TowerToHyperService::new(router);
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let answer = router.call(request);
        async move {
            let Ok(response) = answer.await;
            if response.extensions().get::<DropConnection>().is_some() {
                return Err(Dropped);
            }
            Ok(response)
        }
    });
    let served = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "Connection closed");
    }
}
