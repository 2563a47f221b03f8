//! The `AuthorizationCodeWithPKCE` flow, with the `oauth2` crate over our own TLS trust: the
//! pieces `login` signs a person in with, and the redemption of the refresh token it stored.
//!
//! ```text
//!   login ──authorize + PKCE──▶ code ──▶ refresh token ──▶ Secret key (credential's namespace)
//!   token source ──refresh_token grant──▶ access token + rotated refresh token ──▶ same key
//! ```
//!
//! A rotated refresh token is written back before the old one is forgotten; when that write
//! fails the new token is kept in memory and used (and written) by the next round.

use super::material::Material;
use super::source::{from_response, innermost, round_failure};
use super::transport::{
    ErrorResponse, TransportConfig, TransportError, parse_error_body, tls_config,
};
use super::{AcquiredToken, FailureKind, RefreshFailure};
use crate::api::{AmrCredentialSpec, ResolvedSpec, RetryConfig, SecretKeyRef};
use crate::local::LOCAL_NAMESPACE;
use crate::token_manager::{AttemptError, run_round};
use jiff::Timestamp;
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse};
use oauth2::{
    AsyncHttpClient, AuthUrl, ClientId, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse,
    RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use url::Url;

/// The authority host used when neither the resource nor the command line names one.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
/// The tenant used when none is configured: any work or school account.
pub const DEFAULT_TENANT: &str = "organizations";
/// The scope that makes Entra ID hand out a refresh token.
pub const OFFLINE_ACCESS: &str = "offline_access";

/// An `oauth2` client of Entra ID with its authorize and token endpoints set.
pub type EntraClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The OAuth endpoints of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `{authority}/{tenant}/oauth2/v2.0/authorize`.
    pub authorize: Url,
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub token: Url,
}

impl Endpoints {
    /// The endpoints of `tenant` below `authority_host` (whose own path becomes a prefix).
    pub fn new(authority_host: &Url, tenant: &str) -> Endpoints {
        let at = |suffix: &str| {
            let mut url = authority_host.clone();
            let prefix = authority_host.path().trim_end_matches('/');
            url.set_path(&format!("{prefix}/{tenant}/oauth2/v2.0/{suffix}"));
            url.set_query(None);
            url
        };
        Endpoints {
            authorize: at("authorize"),
            token: at("token"),
        }
    }

    /// An `oauth2` public client (no secret) of `client_id` at these endpoints.
    pub fn client(&self, client_id: &str) -> EntraClient {
        BasicClient::new(ClientId::new(client_id.to_string()))
            .set_auth_uri(AuthUrl::from_url(self.authorize.clone()))
            .set_token_uri(TokenUrl::from_url(self.token.clone()))
    }
}

/// The scopes to ask for: the credential's, plus `offline_access` for a refresh token.
pub fn scopes_with_offline_access(scopes: &[String]) -> Vec<Scope> {
    let mut out: Vec<Scope> = scopes.iter().map(|s| Scope::new(s.clone())).collect();
    if !scopes.iter().any(|s| s == OFFLINE_ACCESS) {
        out.push(Scope::new(OFFLINE_ACCESS.to_string()));
    }
    out
}

/// The HTTPS client for Entra ID: built-in roots plus the CA files, no proxy, no redirects.
///
/// # Errors
/// When a CA file is unusable or the client cannot be built.
pub fn http_client(transport: &TransportConfig) -> Result<reqwest::Client, TransportError> {
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&transport.ca_files)?)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(t) = transport.request_timeout {
        builder = builder.timeout(t);
    }
    builder.build().map_err(TransportError::ClientBuildFailed)
}

/// Why one HTTP exchange of the `oauth2` client failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer: connection, TLS or timeout.
    #[error("{0}")]
    RequestFailed(#[source] reqwest::Error),
    /// The answer could not be handed to `oauth2`.
    #[error("the answer could not be read: {0}")]
    ResponseInvalid(#[source] http::Error),
}

/// The `oauth2` HTTP client over reqwest; it keeps the last error answer, whose status and
/// Retry-After the `oauth2` error types do not carry.
#[derive(Debug)]
pub struct OAuthHttp {
    client: reqwest::Client,
    last_error: Mutex<Option<ErrorResponse>>,
}

impl OAuthHttp {
    /// Sends requests with `client` (a cheap clone of a shared client).
    pub fn new(client: &reqwest::Client) -> OAuthHttp {
        OAuthHttp {
            client: client.clone(),
            last_error: Mutex::default(),
        }
    }

    /// The last error answer (HTTP 400 or above) received, if any.
    pub fn take_error(&self) -> Option<ErrorResponse> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let request = reqwest::Request::try_from(request).map_err(HttpError::RequestFailed)?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| HttpError::RequestFailed(e.without_url()))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| HttpError::RequestFailed(e.without_url()))?;
        if status.as_u16() >= 400 {
            let retry_after = headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok());
            let error = parse_error_body(status.as_u16(), retry_after, &body);
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(error);
        }
        let mut out = http::Response::builder()
            .status(status)
            .body(body.to_vec())
            .map_err(HttpError::ResponseInvalid)?;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

impl<'c> AsyncHttpClient<'c> for OAuthHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// What a successful token request returned.
pub struct Redeemed {
    /// The access token and its claims.
    pub access: AcquiredToken,
    /// The refresh token handed out with it, when there was one.
    pub refresh_token: Option<SecretString>,
}

impl std::fmt::Debug for Redeemed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redeemed")
            .field("access", &self.access)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Checks a token response: the access token's claims parse, it has an `oid`, it is not
/// expired, and `expires_in` does not promise more than the token's own `exp`.
///
/// # Errors
/// An unusable-token [`AttemptError`].
pub fn check_response(
    response: &BasicTokenResponse,
    started: Timestamp,
) -> Result<Redeemed, AttemptError> {
    let said = response
        .expires_in()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .map(|s| started.as_second().saturating_add(s));
    let access = super::source::checked_token(response.access_token().secret().clone(), said)?;
    Ok(Redeemed {
        access,
        refresh_token: response
            .refresh_token()
            .map(|r| SecretString::from(r.secret().clone())),
    })
}

/// Describes a failed `oauth2` request for the token manager, preferring what the error
/// answer itself said.
pub fn attempt_error(
    error: &RequestTokenError<HttpError, BasicErrorResponse>,
    answer: Option<ErrorResponse>,
) -> AttemptError {
    if let Some(answer) = answer {
        return from_response(answer);
    }
    let message = match error {
        RequestTokenError::ServerResponse(r) => {
            return AttemptError {
                oauth_error: Some(r.error().as_ref().to_string()),
                message: format!("Entra ID answered {}", r.error().as_ref()),
                ..Default::default()
            };
        }
        RequestTokenError::Request(e) => format!("token request failed: {}", innermost(e)),
        RequestTokenError::Parse(..) => "Entra ID answered with something not a token".into(),
        RequestTokenError::Other(why) => format!("token request failed: {why}"),
    };
    AttemptError {
        message,
        ..Default::default()
    }
}

/// The command a person runs to sign in again for credential `name` of `namespace`; in file
/// mode (`crate::local::LOCAL_NAMESPACE`) the `--file` form.
pub fn login_command(namespace: &str, name: Option<&str>) -> String {
    let name = name.unwrap_or("<credential>");
    if namespace == LOCAL_NAMESPACE {
        format!(
            "amr-credential-operator login --file <credentials.yaml> --name {name} \
             --local-secrets-dir <secrets dir>"
        )
    } else {
        format!("amr-credential-operator login --namespace {namespace} --name {name}")
    }
}

/// Where a credential's refresh token lives and what it is redeemed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The credential's namespace, which holds the Secret.
    pub namespace: String,
    /// The credential's name, when known (for the sign-in command).
    pub credential: Option<String>,
    /// The Secret key holding the refresh token.
    pub secret: SecretKeyRef,
    /// The public client the refresh token was issued to.
    pub client_id: String,
    /// The tenant.
    pub tenant: String,
    /// The authority host; `None` for the default.
    pub authority_host: Option<Url>,
    /// The credential's scopes.
    pub scopes: Vec<String>,
}

impl Target {
    /// The target of a credential whose authority resolved to `host` and `tenant`.
    ///
    /// # Errors
    /// An `InvalidInput` failure when the spec lacks `clientId` or `refreshTokenSecretRef`.
    pub fn new(
        namespace: &str,
        credential: Option<&str>,
        spec: &AmrCredentialSpec,
        resolved: &ResolvedSpec,
        host: Option<Url>,
        tenant: Option<String>,
    ) -> Result<Target, RefreshFailure> {
        let missing = |field: &str| RefreshFailure {
            kind: FailureKind::InvalidInput,
            message: format!("AuthorizationCodeWithPKCE needs flow.{field}"),
            retry_after: None,
            attempts: 0,
        };
        let client_id = spec
            .flow
            .client_id
            .clone()
            .ok_or_else(|| missing("clientId"))?;
        let secret = spec
            .flow
            .refresh_token_secret_ref
            .clone()
            .ok_or_else(|| missing("refreshTokenSecretRef"))?;
        Ok(Target {
            namespace: namespace.to_string(),
            credential: credential.map(str::to_string),
            secret,
            client_id,
            tenant: tenant.unwrap_or_else(|| DEFAULT_TENANT.to_string()),
            authority_host: host,
            scopes: resolved.scopes.clone(),
        })
    }

    /// The shared cache key: `pkce|host|tenant|client|ns/secret/key|scopes`.
    pub fn cache_key(&self) -> String {
        format!(
            "pkce|{}|{}|{}|{}|{}",
            self.host_key(),
            self.tenant,
            self.client_id,
            self.location(),
            self.scopes.join(" ")
        )
    }

    /// The authority as throttling knows it: its URL, or `default`.
    pub fn host_key(&self) -> String {
        self.authority_host
            .as_ref()
            .map_or("default", Url::as_str)
            .to_string()
    }

    fn location(&self) -> String {
        format!(
            "{}/{}/{}",
            self.namespace, self.secret.name, self.secret.key
        )
    }

    fn endpoints(&self) -> Result<Endpoints, RefreshFailure> {
        let host = match &self.authority_host {
            Some(h) => h.clone(),
            None => Url::parse(DEFAULT_AUTHORITY_HOST)
                .map_err(|e| failure(FailureKind::InvalidInput, e.to_string()))?,
        };
        Ok(Endpoints::new(&host, &self.tenant))
    }

    fn login_required(&self, why: &str) -> RefreshFailure {
        let command = login_command(&self.namespace, self.credential.as_deref());
        failure(
            FailureKind::LoginRequired,
            format!("{why}; a person must sign in: {command}"),
        )
    }
}

/// What the token source lends a round: the wait for an authority's Retry-After, the limit
/// on requests in flight, and the time one request may take.
#[async_trait::async_trait]
pub(crate) trait Gate: Send + Sync {
    /// Waits until a request to `host_key` may be sent; hold the permit while sending.
    async fn admit(&self, host_key: &str)
    -> Result<tokio::sync::SemaphorePermit<'_>, AttemptError>;
    /// Holds back every request to `host_key` for `wait`.
    fn hold_back(&self, host_key: &str, wait: Duration);
    /// Limit for one token request.
    fn attempt_timeout(&self) -> Duration;
}

/// A rotated refresh token that could not be written yet.
struct Unsaved {
    /// Digest of the stored value it replaces.
    replaces: String,
    token: SecretString,
}

type Slot = Arc<tokio::sync::Mutex<Option<Unsaved>>>;

/// Redeems stored refresh tokens, one round at a time per Secret key, and writes back the
/// rotated ones.
pub(crate) struct Redeemer {
    http: reqwest::Client,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Redeemer {
    /// A redeemer sending requests with the trust of `transport`.
    pub fn new(transport: &TransportConfig) -> Result<Redeemer, TransportError> {
        Ok(Redeemer {
            http: http_client(transport)?,
            slots: Mutex::default(),
        })
    }

    /// Runs one refresh round for `target`: reads its refresh token, redeems it (with
    /// retries per `retry`), and stores the rotated refresh token in the same key.
    ///
    /// # Errors
    /// A [`RefreshFailure`]; `LoginRequired` when Entra ID no longer accepts the token.
    pub async fn round(
        &self,
        material: &dyn Material,
        target: &Target,
        retry: &RetryConfig,
        gate: &dyn Gate,
    ) -> Result<AcquiredToken, RefreshFailure> {
        // One round at a time per key, so two credentials never redeem the same token.
        let slot = self.slot(&target.location());
        let mut unsaved = slot.lock().await;
        let stored = self.stored(material, target).await?;
        let current = choose(&stored, unsaved.as_ref()).clone();

        let client = target.endpoints()?.client(&target.client_id);
        let refresh_token = RefreshToken::new(current.expose_secret().to_string());
        let scopes = scopes_with_offline_access(&target.scopes);
        let attempt = |_| self.attempt(&client, &refresh_token, &scopes, target, gate);
        let (redeemed, _) = run_round(retry, attempt)
            .await
            .map_err(|(err, attempts)| pkce_failure(err, attempts, retry, target))?;

        let latest = redeemed.refresh_token.unwrap_or(current);
        *unsaved = self.keep(material, target, &stored, latest).await;
        Ok(redeemed.access)
    }

    fn slot(&self, location: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.entry(location.to_string()).or_default().clone()
    }

    async fn stored(
        &self,
        material: &dyn Material,
        target: &Target,
    ) -> Result<SecretString, RefreshFailure> {
        let r = &target.secret;
        let bytes = match material
            .secret_value(&target.namespace, &r.name, &r.key)
            .await
        {
            Ok(bytes) => bytes,
            Err(e) if e.is_missing() => {
                return Err(target.login_required(&format!("{e}: nobody has signed in yet")));
            }
            Err(e) => return Err(failure(FailureKind::RetriesExhausted, e.to_string())),
        };
        let text = String::from_utf8(bytes).map_err(|_| {
            let why = format!("Secret {:?} key {:?} is not UTF-8", r.name, r.key);
            failure(FailureKind::InvalidInput, why)
        })?;
        let token = text.trim();
        if token.is_empty() {
            let why = format!("Secret {:?} key {:?} is empty", r.name, r.key);
            return Err(target.login_required(&why));
        }
        Ok(SecretString::from(token.to_string()))
    }

    async fn attempt(
        &self,
        client: &EntraClient,
        refresh_token: &RefreshToken,
        scopes: &[Scope],
        target: &Target,
        gate: &dyn Gate,
    ) -> Result<Redeemed, AttemptError> {
        let host_key = target.host_key();
        let _permit = gate.admit(&host_key).await?;
        let started = Timestamp::now();
        let http = OAuthHttp::new(&self.http);
        let request = client
            .exchange_refresh_token(refresh_token)
            .add_scopes(scopes.iter().cloned())
            .request_async(&http);
        let limit = gate.attempt_timeout();
        let Ok(result) = tokio::time::timeout(limit, request).await else {
            return Err(AttemptError {
                message: format!("no answer from Entra ID within {limit:?}"),
                ..Default::default()
            });
        };
        match result {
            Ok(response) => check_response(&response, started),
            Err(e) => {
                let err = attempt_error(&e, http.take_error());
                if let Some(wait) = err.retry_after.filter(|_| err.status == Some(429)) {
                    gate.hold_back(&host_key, wait);
                }
                Err(err)
            }
        }
    }

    /// Writes `latest` over `stored` when they differ; returns it as unsaved when the write
    /// fails, so the next round redeems and writes it instead of the stale stored value.
    async fn keep(
        &self,
        material: &dyn Material,
        target: &Target,
        stored: &SecretString,
        latest: SecretString,
    ) -> Option<Unsaved> {
        if latest.expose_secret() == stored.expose_secret() {
            return None;
        }
        let r = &target.secret;
        let value = latest.expose_secret().as_bytes();
        match material
            .write_secret_value(&target.namespace, &r.name, &r.key, value)
            .await
        {
            Ok(()) => {
                tracing::debug!(namespace = %target.namespace, secret = %r.name, key = %r.key,
                    "Rotated refresh token stored");
                None
            }
            Err(error) => {
                tracing::warn!(namespace = %target.namespace, secret = %r.name, key = %r.key,
                    %error, "Storing the rotated refresh token failed; kept in memory for the \
                    next refresh");
                Some(Unsaved {
                    replaces: digest(stored),
                    token: latest,
                })
            }
        }
    }
}

/// The refresh token to redeem: the unsaved rotated one while the Secret still holds the
/// value it replaces, else the stored one (a new sign-in wins).
fn choose<'a>(stored: &'a SecretString, unsaved: Option<&'a Unsaved>) -> &'a SecretString {
    match unsaved {
        Some(u) if u.replaces == digest(stored) => &u.token,
        _ => stored,
    }
}

/// `invalid_grant` means the refresh token is dead (expired, revoked, password changed,
/// consent withdrawn): only a new sign-in helps. Other errors end as for every flow.
fn pkce_failure(
    err: AttemptError,
    attempts: u32,
    retry: &RetryConfig,
    target: &Target,
) -> RefreshFailure {
    if err.oauth_error.as_deref() == Some("invalid_grant") {
        let r = &target.secret;
        let why = format!(
            "Entra ID no longer accepts the refresh token in Secret {:?} key {:?} ({})",
            r.name, r.key, err.message
        );
        return RefreshFailure {
            attempts,
            ..target.login_required(&why)
        };
    }
    round_failure(err, attempts, retry)
}

fn failure(kind: FailureKind, message: String) -> RefreshFailure {
    RefreshFailure {
        kind,
        message,
        retry_after: None,
        attempts: 0,
    }
}

fn digest(secret: &SecretString) -> String {
    hex::encode(sha2::Sha256::digest(secret.expose_secret().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(namespace: &str, credential: Option<&str>) -> Target {
        Target {
            namespace: namespace.into(),
            credential: credential.map(str::to_string),
            secret: SecretKeyRef {
                name: "ops-login".into(),
                key: "refresh-token".into(),
            },
            client_id: "cli".into(),
            tenant: "t".into(),
            authority_host: None,
            scopes: vec!["https://redis.azure.com/.default".into()],
        }
    }

    fn oauth_error(status: u16, code: &str) -> AttemptError {
        AttemptError {
            status: Some(status),
            oauth_error: Some(code.into()),
            message: format!("Entra ID answered HTTP {status} {code}"),
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_keep_a_path_prefix_of_the_authority() {
        let host = Url::parse("https://127.0.0.1:9/prefix/").unwrap();
        let e = Endpoints::new(&host, "t");
        assert_eq!(
            e.token.as_str(),
            "https://127.0.0.1:9/prefix/t/oauth2/v2.0/token"
        );
        assert_eq!(e.authorize.path(), "/prefix/t/oauth2/v2.0/authorize");
    }

    #[test]
    fn offline_access_is_asked_for_once() {
        let with = scopes_with_offline_access(&["s".into(), OFFLINE_ACCESS.into()]);
        let without = scopes_with_offline_access(&["s".into()]);
        assert_eq!(with, without);
        assert_eq!(without.len(), 2);
    }

    #[test]
    fn the_sign_in_command_names_the_credential_or_the_file_form() {
        assert_eq!(
            login_command("shop", Some("ops-cache")),
            "amr-credential-operator login --namespace shop --name ops-cache"
        );
        let file_mode = login_command(LOCAL_NAMESPACE, Some("ops-cache"));
        assert!(file_mode.contains("--file"), "{file_mode}");
        assert!(file_mode.contains("--name ops-cache --local-secrets-dir"));
    }

    #[test]
    fn the_cache_key_names_the_identity_and_the_secret_key_but_no_secret() {
        assert_eq!(
            target("shop", None).cache_key(),
            "pkce|default|t|cli|shop/ops-login/refresh-token|https://redis.azure.com/.default"
        );
    }

    #[test]
    fn an_unsaved_rotated_token_is_used_only_while_the_secret_holds_what_it_replaced() {
        let stored = SecretString::from("rt-old".to_string());
        let unsaved = Unsaved {
            replaces: digest(&stored),
            token: SecretString::from("rt-new".to_string()),
        };
        assert_eq!(choose(&stored, Some(&unsaved)).expose_secret(), "rt-new");
        let signed_in_again = SecretString::from("rt-login".to_string());
        let chosen = choose(&signed_in_again, Some(&unsaved));
        assert_eq!(chosen.expose_secret(), "rt-login");
        assert_eq!(choose(&stored, None).expose_secret(), "rt-old");
    }

    #[test]
    fn invalid_grant_asks_for_a_new_sign_in_with_the_command() {
        let t = target("shop", Some("ops-cache"));
        let f = pkce_failure(
            oauth_error(400, "invalid_grant"),
            1,
            &RetryConfig::default(),
            &t,
        );
        assert_eq!(f.kind, FailureKind::LoginRequired);
        assert!(
            f.message
                .ends_with("amr-credential-operator login --namespace shop --name ops-cache"),
            "{}",
            f.message
        );
        assert!(f.message.contains("\"ops-login\""), "{}", f.message);
    }

    #[test]
    fn other_refusals_end_the_round_as_for_every_flow() {
        let t = target("shop", Some("ops-cache"));
        let retry = RetryConfig::default();
        let f = pkce_failure(oauth_error(401, "invalid_client"), 1, &retry, &t);
        assert_eq!(f.kind, FailureKind::NonRetryable);
        let f = pkce_failure(oauth_error(503, "temporarily_unavailable"), 3, &retry, &t);
        assert_eq!(f.kind, FailureKind::RetriesExhausted);
    }
}
