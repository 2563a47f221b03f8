//! `login`: signs a person in for an `AuthorizationCodeWithPKCE` credential (authorization
//! code flow with PKCE, through the `oauth2` crate) and stores the refresh token where the
//! credential reads it.
//!
//! ```text
//!   start:  PKCE verifier + S256 challenge, random state, listener on the redirect URI
//!           ──▶ authorize URL (the credential's scopes + offline_access)
//!   finish: browser ──▶ redirect URI ?code&state ── state checked ──▶ code + verifier
//!           ──▶ token endpoint ──▶ refresh token ──▶ Secret key (or DIR/<secret>/<key>)
//! ```

pub mod cli;
mod loopback;

use crate::api::{AmrCredentialSpec, Authority, FlowType, ResolvedSpec, SecretKeyRef};
use crate::identity::material::{FileMaterial, Material};
use crate::identity::pkce::{
    DEFAULT_AUTHORITY_HOST, DEFAULT_TENANT, Endpoints, EntraClient, OAuthHttp, attempt_error,
    check_response, http_client, scopes_with_offline_access,
};
use crate::identity::transport::{TransportConfig, TransportError};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use loopback::Callback;
use oauth2::{AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use url::Url;

/// Why a sign-in did not end with a stored refresh token. Messages never hold a token.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The AmrCredential could not be read.
    #[error("{0}")]
    CredentialUnavailable(String),
    /// The credential does not use the PKCE flow.
    #[error(
        "AmrCredential {name:?} uses the flow {flow}; only AuthorizationCodeWithPKCE signs a \
         person in"
    )]
    WrongFlow {
        /// The credential.
        name: String,
        /// Its flow.
        flow: &'static str,
    },
    /// The credential's spec is incomplete.
    #[error("AmrCredential {name:?}: {message}")]
    InvalidSpec {
        /// The credential.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The redirect URI is not one this command can listen on.
    #[error(
        "flow.redirectUri {0:?} is not a loopback address; use http://127.0.0.1:PORT/PATH or \
         http://localhost:PORT/PATH (and register it for the application)"
    )]
    RedirectNotLoopback(String),
    /// The redirect URI's address could not be listened on.
    #[error("listening on {address} (the redirect URI) failed: {source}")]
    ListenFailed {
        /// The address.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTPS client could not be built.
    #[error("{0}")]
    TransportFailed(#[source] TransportError),
    /// Nobody completed the sign-in in time.
    #[error("no sign-in reached the redirect URI within {} s; run the command again", .0.as_secs())]
    TimedOut(Duration),
    /// The browser came back with a state this sign-in did not send.
    #[error(
        "the answer at the redirect URI carries a state this sign-in did not send; it was \
         refused (run the command again and use the URL it prints)"
    )]
    StateMismatch,
    /// Entra ID refused to sign the person in.
    #[error("Entra ID refused the sign-in: {error}: {description}")]
    Refused {
        /// The OAuth `error`.
        error: String,
        /// The first line of `error_description`.
        description: String,
    },
    /// Redeeming the authorization code failed.
    #[error("redeeming the authorization code failed: {0}")]
    ExchangeFailed(String),
    /// Entra ID issued no refresh token.
    #[error(
        "Entra ID returned no refresh token: the application must allow the offline_access \
         scope"
    )]
    NoRefreshToken,
    /// The refresh token could not be stored.
    #[error("storing the refresh token failed: {0}")]
    StoreFailed(String),
}

impl LoginError {
    /// Whether the command line or the credential is at fault (exit status 2) rather than
    /// the sign-in itself (exit status 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LoginError::CredentialUnavailable(_)
                | LoginError::WrongFlow { .. }
                | LoginError::InvalidSpec { .. }
                | LoginError::RedirectNotLoopback(_)
                | LoginError::TransportFailed(_)
        )
    }
}

/// The credential a person signs in for.
#[derive(Debug, Clone)]
pub struct LoginCredential {
    /// Its namespace (in file mode `crate::local::LOCAL_NAMESPACE`).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The spec as written.
    pub spec: AmrCredentialSpec,
    /// The spec with defaults applied.
    pub resolved: ResolvedSpec,
}

/// Where Entra ID is and how it is reached.
#[derive(Debug, Clone, Default)]
pub struct LoginSettings {
    /// Authority host; `None` for the public cloud.
    pub authority_host: Option<Url>,
    /// Tenant used when the credential names none; `organizations` when this is `None` too.
    pub default_tenant: Option<String>,
    /// CA files and request timeout.
    pub transport: TransportConfig,
    /// Listen on a free port when the redirect URI's port is taken.
    pub any_port: bool,
}

/// Where the refresh token is written.
#[derive(Clone)]
pub enum RefreshTokenStore {
    /// The Secret of the credential's namespace, with the person's own credentials.
    Kubernetes(kube::Client),
    /// `DIR/<secret>/<key>`, as file mode reads it.
    Files(PathBuf),
}

impl std::fmt::Debug for RefreshTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefreshTokenStore::Kubernetes(_) => f.write_str("Kubernetes"),
            RefreshTokenStore::Files(dir) => f.debug_tuple("Files").field(dir).finish(),
        }
    }
}

/// Who signed in, and where the refresh token went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The `oid` claim: the Redis username of the credential.
    pub object_id: String,
    /// The `name` claim, when present.
    pub name: Option<String>,
    /// Where the refresh token was stored, for people.
    pub stored_in: String,
}

/// A sign-in waiting for the browser: the authorize URL is ready and the redirect URI is
/// being listened on.
pub struct PendingLogin {
    credential: LoginCredential,
    secret: SecretKeyRef,
    client: EntraClient,
    http: reqwest::Client,
    verifier: PkceCodeVerifier,
    state: CsrfToken,
    authorize_url: Url,
    redirect: Url,
    listener: TcpListener,
    scope: String,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("credential", &self.credential.name)
            .field("redirect", &self.redirect.as_str())
            .finish_non_exhaustive()
    }
}

impl PendingLogin {
    /// Prepares the sign-in: checks the credential, makes the PKCE verifier, its S256
    /// challenge and a random state, listens on the redirect URI and builds the URL.
    ///
    /// # Errors
    /// When the credential is not a usable PKCE credential, the redirect URI is not a
    /// loopback address or cannot be listened on, or a CA file is unusable.
    pub async fn start(
        credential: LoginCredential,
        settings: &LoginSettings,
    ) -> Result<PendingLogin, LoginError> {
        let (client_id, redirect, secret) = pkce_fields(&credential)?;
        let (host, tenant) = authority(&credential.resolved.authority, settings)?;
        let http = http_client(&settings.transport).map_err(LoginError::TransportFailed)?;
        let (listener, redirect) = loopback::listen(&redirect, settings.any_port).await?;

        let client = Endpoints::new(&host, &tenant)
            .client(&client_id)
            .set_redirect_uri(RedirectUrl::from_url(redirect.clone()));
        let scopes = scopes_with_offline_access(&credential.resolved.scopes);
        let scope = scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (authorize_url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(scopes)
            .set_pkce_challenge(challenge)
            .url();
        Ok(PendingLogin {
            credential,
            secret,
            client,
            http,
            verifier,
            state,
            authorize_url,
            redirect,
            listener,
            scope,
        })
    }

    /// The URL the person opens in a browser.
    pub fn authorize_url(&self) -> &Url {
        &self.authorize_url
    }

    /// The redirect URI being listened on (its port may differ from the spec's when
    /// [`LoginSettings::any_port`] allowed it).
    pub fn redirect_uri(&self) -> &Url {
        &self.redirect
    }

    /// Waits up to `timeout` for the browser, checks the state, redeems the code with the
    /// verifier and stores the refresh token.
    ///
    /// # Errors
    /// On timeout, a wrong state, a refusal by Entra ID, a failed exchange or store.
    pub async fn finish(
        self,
        store: &RefreshTokenStore,
        timeout: Duration,
    ) -> Result<SignedIn, LoginError> {
        let waited = loopback::receive(self.listener, &self.redirect, self.state.secret());
        let callback = tokio::time::timeout(timeout, waited)
            .await
            .map_err(|_| LoginError::TimedOut(timeout))?;
        let code = match callback {
            Callback::Code(code) => code,
            Callback::StateMismatch => return Err(LoginError::StateMismatch),
            Callback::Refused { error, description } => {
                return Err(LoginError::Refused { error, description });
            }
        };

        let started = Timestamp::now();
        let http = OAuthHttp::new(&self.http);
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.expose_secret().to_string()))
            .set_pkce_verifier(self.verifier)
            .add_extra_param("scope", self.scope.clone())
            .request_async(&http)
            .await
            .map_err(|e| {
                LoginError::ExchangeFailed(attempt_error(&e, http.take_error()).message)
            })?;
        let redeemed = check_response(&response, started)
            .map_err(|e| LoginError::ExchangeFailed(e.message))?;
        let refresh_token = redeemed.refresh_token.ok_or(LoginError::NoRefreshToken)?;

        let c = &self.credential;
        let stored_in = store_refresh_token(store, &c.namespace, &self.secret, &refresh_token)
            .await
            .map_err(LoginError::StoreFailed)?;
        let claims = redeemed.access.claims;
        tracing::info!(namespace = %c.namespace, credential = %c.name, oid = %claims.oid,
            "Signed in; refresh token stored");
        Ok(SignedIn {
            object_id: claims.oid,
            name: claims.name,
            stored_in,
        })
    }
}

/// Signs a person in for `credential`: [`PendingLogin::start`], then `show` receives the
/// authorize URL (to print it or open a browser), then [`PendingLogin::finish`].
///
/// # Errors
/// As [`PendingLogin::start`] and [`PendingLogin::finish`].
pub async fn login(
    credential: LoginCredential,
    settings: &LoginSettings,
    store: &RefreshTokenStore,
    timeout: Duration,
    show: impl FnOnce(&Url, &Url),
) -> Result<SignedIn, LoginError> {
    let pending = PendingLogin::start(credential, settings).await?;
    show(pending.authorize_url(), pending.redirect_uri());
    pending.finish(store, timeout).await
}

/// The client id, loopback redirect URI and refresh token Secret key of a PKCE credential.
fn pkce_fields(c: &LoginCredential) -> Result<(String, Url, SecretKeyRef), LoginError> {
    if c.resolved.flow != FlowType::AuthorizationCodeWithPKCE {
        return Err(LoginError::WrongFlow {
            name: c.name.clone(),
            flow: c.resolved.flow.as_str(),
        });
    }
    let missing = |field: &str| LoginError::InvalidSpec {
        name: c.name.clone(),
        message: format!("AuthorizationCodeWithPKCE needs flow.{field}"),
    };
    let flow = &c.spec.flow;
    let client_id = flow.client_id.clone().ok_or_else(|| missing("clientId"))?;
    let raw = flow
        .redirect_uri
        .as_deref()
        .ok_or_else(|| missing("redirectUri"))?;
    let secret = flow
        .refresh_token_secret_ref
        .clone()
        .ok_or_else(|| missing("refreshTokenSecretRef"))?;
    Ok((client_id, loopback::loopback_redirect(raw)?, secret))
}

/// The authority host and tenant, as the operator resolves them, with the public cloud and
/// `organizations` as the last defaults.
fn authority(authority: &Authority, settings: &LoginSettings) -> Result<(Url, String), LoginError> {
    let default_host = || match &settings.authority_host {
        Some(h) => Ok(h.clone()),
        None => Url::parse(DEFAULT_AUTHORITY_HOST)
            .map_err(|e| LoginError::CredentialUnavailable(e.to_string())),
    };
    let default_tenant = || {
        settings
            .default_tenant
            .clone()
            .unwrap_or_else(|| DEFAULT_TENANT.to_string())
    };
    Ok(match authority {
        Authority::OperatorDefault => (default_host()?, default_tenant()),
        Authority::Tenant(t) => (default_host()?, t.clone()),
        Authority::Custom { host, tenant } => (host.clone(), tenant.clone()),
    })
}

/// Writes the refresh token into `secret` of `namespace`; returns where, for people.
async fn store_refresh_token(
    store: &RefreshTokenStore,
    namespace: &str,
    secret: &SecretKeyRef,
    value: &SecretString,
) -> Result<String, String> {
    let bytes = value.expose_secret().as_bytes();
    match store {
        RefreshTokenStore::Files(dir) => {
            let secret_dir = dir.join(&secret.name);
            create_private_dir(&secret_dir)
                .map_err(|e| format!("creating {}: {e}", secret_dir.display()))?;
            FileMaterial::new(dir)
                .write_secret_value(namespace, &secret.name, &secret.key, bytes)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("file {}", secret_dir.join(&secret.key).display()))
        }
        RefreshTokenStore::Kubernetes(client) => {
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            create_or_merge(&api, secret, bytes).await?;
            Ok(format!(
                "Secret {namespace}/{}, key {}",
                secret.name, secret.key
            ))
        }
    }
}

/// Merge-patches the key into the Secret, or creates the Secret when it does not exist.
async fn create_or_merge(api: &Api<Secret>, r: &SecretKeyRef, value: &[u8]) -> Result<(), String> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    let patch = serde_json::json!({ "data": { &r.key: encoded } });
    let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
    let merge = || api.patch(&r.name, &params, &patch);
    let failed = |e: kube::Error| format!("Secret {:?}: {e}", r.name);
    match merge().await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(failed(e)),
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(r.name.clone()),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            r.key.clone(),
            ByteString(value.to_vec()),
        )])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        // Created meanwhile by someone else: merge into theirs.
        Err(kube::Error::Api(s)) if s.code == 409 => merge().await.map(|_| ()).map_err(failed),
        Err(e) => Err(failed(e)),
    }
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validate;

    fn credential(flow: &str) -> LoginCredential {
        let yaml = format!(
            "flow:\n  type: {flow}\n  clientId: cli\n  redirectUri: http://127.0.0.1:0/cb\n  \
             refreshTokenSecretRef: {{name: ops-login, key: refresh-token}}\n  \
             clientSecretRef: {{name: s, key: k}}\n"
        );
        let spec: AmrCredentialSpec = serde_yaml_ng::from_str(&yaml).unwrap();
        let resolved = validate("ops", &spec).unwrap();
        LoginCredential {
            namespace: "shop".into(),
            name: "ops".into(),
            spec,
            resolved,
        }
    }

    #[tokio::test]
    async fn the_secret_is_created_when_merging_the_key_finds_none() {
        use http::{Method, Request, Response};
        use kube::client::Body;
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Secret> = Api::namespaced(kube::Client::new(mock, "default"), "shop");
        let r = SecretKeyRef {
            name: "ops-login".into(),
            key: "refresh-token".into(),
        };
        let write = tokio::spawn(async move { create_or_merge(&api, &r, b"rt").await });
        let not_found = r#"{"kind":"Status","apiVersion":"v1","status":"Failure",
            "reason":"NotFound","code":404}"#;
        let expected = [
            (
                Method::PATCH,
                "/api/v1/namespaces/shop/secrets/ops-login",
                404,
            ),
            (Method::POST, "/api/v1/namespaces/shop/secrets", 201),
        ];
        for (method, path, status) in expected {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!((req.method(), req.uri().path()), (&method, path));
            let body = req.into_body().collect_bytes().await.unwrap().to_vec();
            assert!(
                String::from_utf8(body.clone())
                    .unwrap()
                    .contains(r#""refresh-token":"cnQ=""#)
            );
            let reply = if status == 404 {
                not_found.as_bytes().to_vec()
            } else {
                body
            };
            let response = Response::builder().status(status).body(Body::from(reply));
            send.send_response(response.unwrap());
        }
        write.await.unwrap().unwrap();
    }

    #[test]
    fn a_credential_of_another_flow_is_refused() {
        let e = pkce_fields(&credential("ClientCredentials")).unwrap_err();
        assert!(matches!(e, LoginError::WrongFlow { .. }), "{e}");
        assert!(e.is_usage());
    }

    #[test]
    fn the_tenant_defaults_to_the_settings_then_to_organizations() {
        let none = LoginSettings::default();
        let (host, tenant) = authority(&Authority::OperatorDefault, &none).unwrap();
        assert_eq!(
            (host.as_str(), tenant.as_str()),
            (DEFAULT_AUTHORITY_HOST, "organizations")
        );
        let set = LoginSettings {
            default_tenant: Some("t".into()),
            ..Default::default()
        };
        let (_, tenant) = authority(&Authority::OperatorDefault, &set).unwrap();
        assert_eq!(tenant, "t");
        let (_, tenant) = authority(&Authority::Tenant("own".into()), &set).unwrap();
        assert_eq!(tenant, "own");
    }

    #[tokio::test]
    async fn the_authorize_url_carries_an_s256_challenge_state_and_offline_access() {
        let settings = LoginSettings {
            authority_host: Some(Url::parse("https://127.0.0.1:1/").unwrap()),
            default_tenant: Some("t".into()),
            ..Default::default()
        };
        let pending = PendingLogin::start(credential("AuthorizationCodeWithPKCE"), &settings)
            .await
            .unwrap();
        let url = pending.authorize_url();
        assert_eq!(url.path(), "/t/oauth2/v2.0/authorize");
        let q: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"].len(), 43);
        assert_eq!(
            q["scope"],
            "https://redis.azure.com/.default offline_access"
        );
        assert!(q["state"].len() >= 16);
        assert_eq!(q["redirect_uri"], pending.redirect_uri().as_str());
        assert_ne!(pending.redirect_uri().port(), Some(0));
    }
}
