//! Entra ID emulator: an HTTPS token endpoint, managed identity endpoints and discovery on
//! 127.0.0.1, issuing RS256 access tokens, with faults a test can inject at runtime.
//!
//! ```text
//!   azure_identity ──TLS──▶ /{tenant}/oauth2/v2.0/token       secret, certificate,
//!                           /metadata/identity/oauth2/token   federated, refresh token,
//!                           /msi/token                        IMDS, App Service
//!   browser ─────────TLS──▶ /{tenant}/oauth2/v2.0/authorize   a user signs in; the code is
//!                                                             redeemed with PKCE at /token
//!                                   │
//!                                   └─▶ subscribe(): IssuedToken { oid, token, expires_at }
//! ```

mod authorize;
mod config;
mod directory;
mod faults;
mod grants;
mod jwt;
mod log;
mod managed;
mod oauth;
mod responses;
mod serve;
mod server;
mod tokens;

pub use config::{
    AppRegistration, DEFAULT_TENANT, EntraConfig, FederatedCredential, ManagedIdentity,
    TOKEN_EXCHANGE_AUDIENCE, User,
};
pub use faults::{Fault, FaultRule};
pub use grants::ASSERTION_TYPE;
pub use log::{Flow, RequestRecord};
pub use managed::APP_SERVICE_API_VERSION;
pub use oauth::OAuthError;
pub use server::{APP_SERVICE_PATH, IMDS_PATH};
pub use tokens::IssuedToken;

use crate::emulator::pki::{Ca, PkiError};
use directory::Directory;
use secrecy::SecretString;
use server::{Shared, tenant_url};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use url::Url;

/// Why the emulator could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The configuration file could not be read.
    #[error("reading the configuration {path} failed: {source}")]
    ConfigReadFailed {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not valid YAML of the expected shape.
    #[error("the Entra ID emulator configuration is invalid: {0}")]
    ConfigParseFailed(#[source] serde_yaml_ng::Error),
    /// The configuration parses but cannot be served.
    #[error("the Entra ID emulator configuration is unusable: {0}")]
    ConfigInvalid(String),
    /// A certificate or public key registered for a client is not valid PEM.
    #[error("the key or certificate registered for {client_id} is invalid: {source}")]
    KeyInvalid {
        /// The client the key belongs to.
        client_id: String,
        /// The cause.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// A certificate or key could not be made.
    #[error("creating a certificate or key failed: {0}")]
    PkiFailed(#[source] PkiError),
    /// The generated signing key could not be read back.
    #[error("reading the token signing key failed: {0}")]
    SigningKeyFailed(#[source] openssl::error::ErrorStack),
    /// A JWT could not be signed.
    #[error("signing a token failed: {0}")]
    JwtFailed(#[source] jsonwebtoken::errors::Error),
    /// rustls refused the TLS configuration.
    #[error("the TLS configuration was refused: {0}")]
    TlsFailed(#[source] rustls::Error),
    /// No port could be bound on 127.0.0.1.
    #[error("binding 127.0.0.1 failed: {0}")]
    BindFailed(#[source] std::io::Error),
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed: {0}")]
    ClientBuildFailed(#[source] reqwest::Error),
    /// The automatic sign-in of [`EntraEmulator::sign_in`] did not reach the redirect URI.
    #[error("the emulated sign-in failed: {0}")]
    SignInFailed(String),
    /// A file could not be written.
    #[error("writing {path} failed: {source}")]
    WriteFailed {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running Entra ID emulator. Dropping it stops the server.
pub struct EntraEmulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for EntraEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraEmulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl EntraEmulator {
    /// Starts the emulator on an ephemeral port of 127.0.0.1, with a TLS certificate
    /// issued by `ca`.
    ///
    /// # Errors
    /// When the configuration is unusable, or the key, certificate or port cannot be had.
    pub async fn start(config: EntraConfig, ca: &Ca) -> Result<EntraEmulator, EmulatorError> {
        if config.token_lifetime_secs == 0 {
            return Err(EmulatorError::ConfigInvalid(
                "token_lifetime_secs must be positive".into(),
            ));
        }
        let lifetime = i64::try_from(config.token_lifetime_secs)
            .map_err(|_| EmulatorError::ConfigInvalid("token_lifetime_secs is too large".into()))?;
        let directory = Directory::new(&config)?;
        let signer = tokens::TokenSigner::generate()?;
        let tls = serve::tls_acceptor(ca)?;
        let listener = serve::bind().await?;
        let addr = listener.local_addr().map_err(EmulatorError::BindFailed)?;

        let authority = Url::parse(&format!("https://{addr}/"))
            .map_err(|e| EmulatorError::ConfigInvalid(e.to_string()))?;
        let identity_header = config
            .identity_header
            .clone()
            .unwrap_or_else(|| SecretString::from(hex::encode(rand::random::<[u8; 16]>())));
        let shared = Arc::new(Shared {
            directory,
            signer,
            authority,
            lifetime,
            identity_header,
            faults: Mutex::default(),
            log: Mutex::default(),
            events: broadcast::channel(256).0,
        });
        let server = serve::spawn(listener, tls, server::router(Arc::clone(&shared)));
        tracing::info!(%addr, tenant = %config.tenant, "Entra ID emulator started");
        Ok(EntraEmulator {
            shared,
            addr,
            ca_pem: ca.cert_pem().to_string(),
            server,
        })
    }

    /// The authority host clients use: `https://127.0.0.1:PORT/`.
    pub fn authority_host(&self) -> Url {
        self.shared.authority.clone()
    }

    /// The tenant of managed identities and of entries that name none.
    pub fn tenant(&self) -> &str {
        &self.shared.directory.tenant
    }

    /// The token endpoint of `tenant`, also the audience of certificate assertions.
    pub fn token_endpoint(&self, tenant: &str) -> Url {
        tenant_url(&self.shared.authority, tenant, "oauth2/v2.0/token")
    }

    /// The authorize endpoint of `tenant`, where a browser signs a user in.
    pub fn authorize_endpoint(&self, tenant: &str) -> Url {
        tenant_url(&self.shared.authority, tenant, "oauth2/v2.0/authorize")
    }

    /// The `iss` of tokens issued for `tenant`.
    pub fn issuer(&self, tenant: &str) -> Url {
        tenant_url(&self.shared.authority, tenant, "v2.0")
    }

    /// The JSON Web Key Set that verifies issued tokens.
    pub fn jwks_uri(&self, tenant: &str) -> Url {
        tenant_url(&self.shared.authority, tenant, "discovery/v2.0/keys")
    }

    /// The base that replaces `http://169.254.169.254`: requests go to
    /// `<base>/metadata/identity/oauth2/token`.
    pub fn imds_endpoint(&self) -> Url {
        self.shared.authority.clone()
    }

    /// The App Service endpoint (`IDENTITY_ENDPOINT`).
    pub fn app_service_endpoint(&self) -> Url {
        let mut url = self.shared.authority.clone();
        url.set_path(APP_SERVICE_PATH);
        url
    }

    /// The secret App Service requests must send in `X-IDENTITY-HEADER` (`IDENTITY_HEADER`).
    pub fn identity_header(&self) -> SecretString {
        self.shared.identity_header.clone()
    }

    /// The CA certificate (PEM) that clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `path`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_ca(&self, path: &Path) -> Result<(), EmulatorError> {
        std::fs::write(path, &self.ca_pem).map_err(|source| EmulatorError::WriteFailed {
            path: path.display().to_string(),
            source,
        })
    }

    /// A reqwest client that trusts the emulator's CA (and nothing else).
    ///
    /// # Errors
    /// When the TLS configuration or the client cannot be built.
    pub fn https_client(&self) -> Result<reqwest::Client, EmulatorError> {
        serve::client_trusting(&self.ca_pem)
    }

    /// Plays the browser of a sign-in: opens `authorize_url` (an authorize URL of this
    /// emulator), where a configured user approves at once, and follows the redirect to the
    /// loopback redirect URI, as a browser would. Returns the redirect URI's HTTP status.
    ///
    /// # Errors
    /// When the emulator does not redirect, or not to a loopback `http` address, or the
    /// redirect URI does not answer.
    pub async fn sign_in(&self, authorize_url: &Url) -> Result<u16, EmulatorError> {
        let ours = authorize_url.host_str() == self.shared.authority.host_str()
            && authorize_url.port() == self.shared.authority.port();
        if !ours {
            return Err(EmulatorError::SignInFailed(
                "the authorize URL is not this emulator's".into(),
            ));
        }
        let browser = serve::client_builder_trusting(&self.ca_pem)?
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(EmulatorError::ClientBuildFailed)?;
        let failed = |e: reqwest::Error| EmulatorError::SignInFailed(e.without_url().to_string());
        let answer = browser
            .get(authorize_url.clone())
            .send()
            .await
            .map_err(failed)?;
        let location = answer
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Url::parse(v).ok())
            .ok_or_else(|| {
                let status = answer.status();
                EmulatorError::SignInFailed(format!("the emulator answered {status}, no redirect"))
            })?;
        let loopback = matches!(
            location.host_str(),
            Some("127.0.0.1" | "localhost" | "[::1]")
        );
        if location.scheme() != "http" || !loopback {
            return Err(EmulatorError::SignInFailed(
                "the redirect URI is not a loopback http address".into(),
            ));
        }
        let landed = browser.get(location).send().await.map_err(failed)?;
        Ok(landed.status().as_u16())
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.log().clone()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.shared.log().clear();
    }

    /// Adds a fault rule; rules apply in the order added.
    pub fn inject(&self, rule: FaultRule) {
        tracing::info!(fault = rule.fault.name(), target = ?rule.target, "Fault injected");
        self.shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(rule);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Revokes every refresh token of the user with this name or object id; returns how
    /// many were revoked.
    pub fn revoke_refresh_tokens(&self, user: &str) -> usize {
        self.shared.directory.revoke_refresh_tokens(user)
    }

    /// Subscribes to the tokens issued from now on (not those a fault left without `oid`).
    /// A receiver more than 256 tokens behind loses the oldest ones.
    pub fn subscribe(&self) -> broadcast::Receiver<IssuedToken> {
        self.shared.events.subscribe()
    }

    /// Stops serving and closes every open connection.
    pub fn shutdown(&self) {
        self.server.abort();
    }
}

impl Drop for EntraEmulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}
