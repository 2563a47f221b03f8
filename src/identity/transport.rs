//! The HTTP transport `azure_identity` uses: our own TLS trust (system roots plus extra CA
//! files) and a rewrite of the hard-coded IMDS address to a configurable endpoint.

use azure_core::http::{AsyncRawResponse, HttpClient, Request};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The address `azure_identity` sends IMDS requests to.
pub const IMDS_HOST: &str = "169.254.169.254";

/// Why the transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A CA file could not be read.
    #[error("reading CA file {path} failed: {source}")]
    CaFileReadFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A CA file holds no usable certificate.
    #[error("CA file {path} holds no PEM certificate")]
    CaFileEmpty {
        /// The file.
        path: PathBuf,
    },
    /// A certificate was refused by the root store.
    #[error("CA file {path} holds a certificate rustls cannot use: {source}")]
    CaCertificateInvalid {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed: {0}")]
    ClientBuildFailed(#[source] reqwest::Error),
    /// The managed identity endpoint is not an http(s) URL with a host.
    #[error("managed identity endpoint {0:?} must be an http or https URL with a host")]
    EndpointInvalid(String),
}

/// Settings of the outbound HTTP transport.
#[derive(Debug, Clone, Default)]
pub struct TransportConfig {
    /// Extra PEM files whose certificates are trusted besides the built-in roots.
    pub ca_files: Vec<PathBuf>,
    /// Where requests for the IMDS address go instead; `None` keeps IMDS.
    pub managed_identity_endpoint: Option<Url>,
    /// Limit for one HTTP request, connection included.
    pub request_timeout: Option<Duration>,
}

/// Builds a rustls client configuration trusting the built-in roots and `ca_files`.
///
/// # Errors
/// When a CA file is missing, empty or invalid.
pub fn tls_config(ca_files: &[PathBuf]) -> Result<rustls::ClientConfig, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in ca_files {
        for cert in read_pem_certs(path)? {
            roots
                .add(cert)
                .map_err(|source| TransportError::CaCertificateInvalid {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TransportError::CaCertificateInvalid {
            path: PathBuf::new(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// When the file cannot be read or holds no certificate.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = std::fs::read(path).map_err(|source| TransportError::CaFileReadFailed {
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TransportError::CaFileEmpty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The CA files to trust: the given ones plus `SSL_CERT_FILE` when it is set.
pub fn ca_files_with_env(mut files: Vec<PathBuf>) -> Vec<PathBuf> {
    if let Some(extra) = std::env::var_os("SSL_CERT_FILE") {
        let extra = PathBuf::from(extra);
        if !files.contains(&extra) {
            files.push(extra);
        }
    }
    files
}

/// An `azure_core` HTTP client over reqwest that sends IMDS requests to a configurable
/// endpoint.
#[derive(Debug, Clone)]
pub struct Transport {
    client: reqwest::Client,
    imds: Option<Url>,
}

impl Transport {
    /// Builds the transport.
    ///
    /// # Errors
    /// When the TLS trust or the HTTP client cannot be built, or the endpoint is not usable.
    pub fn new(config: &TransportConfig) -> Result<Transport, TransportError> {
        if let Some(url) = &config.managed_identity_endpoint {
            let scheme_ok = matches!(url.scheme(), "http" | "https");
            if !scheme_ok || url.host_str().is_none() {
                return Err(TransportError::EndpointInvalid(url.to_string()));
            }
        }
        let tls = tls_config(&config.ca_files)?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .no_proxy();
        if let Some(t) = config.request_timeout {
            builder = builder.timeout(t);
        }
        let client = builder.build().map_err(TransportError::ClientBuildFailed)?;
        Ok(Transport {
            client,
            imds: config.managed_identity_endpoint.clone(),
        })
    }

    /// The URL a request for `url` is actually sent to.
    pub fn route(&self, url: &Url) -> Url {
        match (&self.imds, url.host_str()) {
            (Some(base), Some(IMDS_HOST)) => rebase(base, url),
            _ => url.clone(),
        }
    }
}

/// Moves `url`'s path and query onto `base` (whose own path becomes a prefix).
fn rebase(base: &Url, url: &Url) -> Url {
    let mut out = base.clone();
    let prefix = base.path().trim_end_matches('/');
    out.set_path(&format!("{prefix}{}", url.path()));
    out.set_query(url.query());
    out
}

/// What an error response said, kept by the transport because `azure_identity` does not
/// always surface it: it fails to parse Entra ID error bodies whose description spans lines,
/// and drops the OAuth `error` code and the Retry-After header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorResponse {
    /// HTTP status.
    pub status: u16,
    /// The OAuth `error` code, such as `invalid_client`.
    pub oauth_error: Option<String>,
    /// The first line of `error_description`, at most 200 characters.
    pub description: String,
    /// The Retry-After header, in seconds.
    pub retry_after: Option<Duration>,
}

tokio::task_local! {
    static LAST_ERROR: std::cell::RefCell<Option<ErrorResponse>>;
}

/// Runs `f` and returns, besides its output, the last error response any request made
/// inside it received.
pub async fn capture_error_response<F: std::future::Future>(
    f: F,
) -> (F::Output, Option<ErrorResponse>) {
    let slot = std::cell::RefCell::new(None);
    LAST_ERROR
        .scope(slot, async {
            let out = f.await;
            let seen = LAST_ERROR.with(|c| c.borrow_mut().take());
            (out, seen)
        })
        .await
}

fn record(response: ErrorResponse) {
    let _ = LAST_ERROR.try_with(|c| *c.borrow_mut() = Some(response));
}

/// [`parse_error_body`] of a response's status, headers and body.
pub(crate) fn parse_error_response(
    status: impl Into<u16>,
    headers: &azure_core::http::headers::Headers,
    body: &[u8],
) -> ErrorResponse {
    let retry_after = azure_core::http::headers::HeaderName::from_static("retry-after");
    parse_error_body(status.into(), headers.get_optional_str(&retry_after), body)
}

/// Reads an error response of Entra ID or a managed identity endpoint: the OAuth `error`
/// code and the first line of `error_description` (or `message`) from a JSON `body`, and a
/// `retry_after` header value in whole seconds. Never fails: whatever is missing or not
/// understood is left empty.
pub fn parse_error_body(status: u16, retry_after: Option<&str>, body: &[u8]) -> ErrorResponse {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
    ErrorResponse {
        status,
        oauth_error: text("error"),
        description: text("error_description")
            .or_else(|| text("message"))
            .map(|d| d.lines().next().unwrap_or("").chars().take(200).collect())
            .unwrap_or_default(),
        retry_after: retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
    }
}

/// An error `azure_identity` does not retry on its own: the token manager owns retrying.
fn final_error(message: String) -> azure_core::Error {
    azure_core::Error::with_message(azure_core::error::ErrorKind::Other, message)
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let target = self.route(request.url());
        let rerouted = &target != request.url();
        let result = if rerouted {
            let mut copy = request.clone();
            *copy.url_mut() = target;
            self.client.execute_request(&copy).await
        } else {
            self.client.execute_request(request).await
        };
        let response = match result {
            Ok(r) => r,
            // The managed identity credential retries connection failures for over a minute
            // whatever its options say; hand the decision to the token manager instead.
            Err(e) if rerouted => {
                return Err(final_error(format!("managed identity endpoint: {e}")));
            }
            Err(e) => return Err(e),
        };
        let status = u16::from(response.status());
        if status < 400 {
            return Ok(response);
        }
        let (code, headers, body) = response.deconstruct();
        let bytes = body.collect().await?;
        let error = parse_error_response(status, &headers, &bytes);
        record(error);
        if rerouted {
            return Err(final_error(format!(
                "managed identity endpoint answered HTTP {status}"
            )));
        }
        Ok(AsyncRawResponse::from_bytes(code, headers, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(imds: Option<&str>) -> Transport {
        let config = TransportConfig {
            managed_identity_endpoint: imds.map(|u| Url::parse(u).unwrap()),
            ..Default::default()
        };
        Transport::new(&config).unwrap()
    }

    #[test]
    fn imds_requests_go_to_the_configured_endpoint() {
        let t = transport(Some("https://127.0.0.1:9443"));
        let imds = Url::parse(
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2019-08-01&resource=r",
        )
        .unwrap();
        assert_eq!(
            t.route(&imds).as_str(),
            "https://127.0.0.1:9443/metadata/identity/oauth2/token?api-version=2019-08-01&resource=r"
        );
    }

    #[test]
    fn a_path_prefix_of_the_endpoint_is_kept() {
        let t = transport(Some("http://127.0.0.1:1/prefix/"));
        let imds = Url::parse("http://169.254.169.254/metadata/identity/oauth2/token").unwrap();
        assert_eq!(
            t.route(&imds).as_str(),
            "http://127.0.0.1:1/prefix/metadata/identity/oauth2/token"
        );
    }

    #[test]
    fn other_hosts_are_not_rewritten() {
        let t = transport(Some("https://127.0.0.1:9443"));
        let url = Url::parse("https://127.0.0.1:5/tenant/oauth2/v2.0/token").unwrap();
        assert_eq!(t.route(&url), url);
    }

    #[test]
    fn a_non_http_endpoint_is_refused() {
        let config = TransportConfig {
            managed_identity_endpoint: Some(Url::parse("file:///tmp/x").unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            Transport::new(&config),
            Err(TransportError::EndpointInvalid(_))
        ));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(matches!(
            tls_config(&[path]),
            Err(TransportError::CaFileEmpty { .. })
        ));
    }
}
