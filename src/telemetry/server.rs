//! HTTP server for `/metrics`, `/healthz` and `/readyz`.

use super::TelemetryError;
use super::metrics::{CONTENT_TYPE, Metrics};
use super::readiness::Readiness;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Serves telemetry on `addr` until `shutdown` completes, then finishes open requests.
///
/// # Errors
/// [`TelemetryError::BindFailed`] when `addr` cannot be bound, and
/// [`TelemetryError::ServeFailed`] when the listener fails.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    let server = TelemetryServer::bind(addr).await?;
    server.serve(metrics, readiness, shutdown).await
}

/// A bound telemetry listener, not serving yet: binding first tells the address early.
#[derive(Debug)]
pub struct TelemetryServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl TelemetryServer {
    /// Binds `addr`; port 0 picks a free port, which [`Self::local_addr`] then tells.
    ///
    /// # Errors
    /// [`TelemetryError::BindFailed`] when the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> Result<TelemetryServer, TelemetryError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::BindFailed { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(TelemetryError::LocalAddrFailed)?;
        Ok(TelemetryServer {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then finishes open requests.
    ///
    /// # Errors
    /// [`TelemetryError::ServeFailed`] when the listener fails.
    pub async fn serve(
        self,
        metrics: Metrics,
        readiness: Readiness,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), TelemetryError> {
        tracing::info!(addr = %self.local_addr, "Serving metrics and health endpoints");
        axum::serve(self.listener, router(metrics, readiness))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(TelemetryError::ServeFailed)
    }
}

/// The telemetry routes, for embedding in another server.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler).with_state(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz).with_state(readiness))
}

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    match readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Role;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::Arc;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    const LOOPBACK: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

    /// A running server on a free loopback port, stopped by sending on `stop`.
    struct Running {
        base: String,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), TelemetryError>>,
    }

    async fn start(metrics: Metrics, readiness: Readiness) -> Running {
        let server = TelemetryServer::bind(LOOPBACK).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        let (stop, stopped) = oneshot::channel();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(server.serve(metrics, readiness, shutdown));
        Running { base, stop, task }
    }

    fn client() -> reqwest::Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .build()
            .unwrap()
    }

    async fn get(url: String) -> (u16, Option<String>, String) {
        let response = client().get(url).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        (status, content_type, response.text().await.unwrap())
    }

    fn ready(role: Role, synced: bool) -> Readiness {
        let readiness = Readiness::new();
        readiness.set_role(role);
        readiness.set_synced(synced);
        readiness
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let metrics = Metrics::new();
        metrics.set_expiry("shop", "orders", 42);
        let server = start(metrics, Readiness::new()).await;
        let (status, content_type, body) = get(format!("{}/metrics", server.base)).await;
        assert_eq!(status, 200);
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
        assert!(body.contains(
            "amr_credential_token_expiry_timestamp_seconds{namespace=\"shop\",name=\"orders\"} 42"
        ));
    }

    #[tokio::test]
    async fn healthz_answers_ok_even_when_not_ready() {
        let server = start(Metrics::new(), Readiness::new()).await;
        let (status, _, body) = get(format!("{}/healthz", server.base)).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }

    #[tokio::test]
    async fn readyz_says_why_it_is_not_ready() {
        let readiness = ready(Role::Leader, false);
        let server = start(Metrics::new(), readiness).await;
        let (status, _, body) = get(format!("{}/readyz", server.base)).await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready: caches have not synced\n")
        );
    }

    #[tokio::test]
    async fn readyz_follows_readiness_changes() {
        let readiness = Readiness::new();
        let server = start(Metrics::new(), readiness.clone()).await;
        let url = format!("{}/readyz", server.base);
        let (before, _, body) = get(url.clone()).await;
        assert_eq!(
            (before, body.as_str()),
            (503, "not ready: leader election has not settled\n")
        );

        readiness.set_role(Role::Standby);
        let (after, _, body) = get(url).await;
        assert_eq!((after, body.as_str()), (200, "ready\n"));
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let server = start(Metrics::new(), ready(Role::Single, true)).await;
        let (status, _, _) = get(format!("{}/secrets", server.base)).await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn the_server_stops_when_shutdown_completes() {
        let server = start(Metrics::new(), Readiness::new()).await;
        server.stop.send(()).unwrap();
        server.task.await.unwrap().unwrap();
        let refused = client()
            .get(format!("{}/healthz", server.base))
            .send()
            .await;
        assert!(refused.is_err());
    }

    #[tokio::test]
    async fn binding_a_taken_address_fails_with_the_address() {
        let taken = TelemetryServer::bind(LOOPBACK).await.unwrap();
        let addr = taken.local_addr();
        let err = serve(
            addr,
            Metrics::new(),
            Readiness::new(),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, TelemetryError::BindFailed { addr: a, .. } if a == addr));
        assert_eq!(
            err.to_string(),
            format!("binding the telemetry server to {addr} failed")
        );
    }
}
