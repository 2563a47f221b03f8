//! The real [`TokenSource`]: gathers a flow's inputs, builds the `azure_identity`
//! credential, runs a retry round, checks the token, and shares it through the cache.

use super::cache::{Origin, SharedTokenCache};
use super::claims;
use super::flows::{self, AssertionSource, CertificateInput, CredentialContext, CredentialInput};
use super::material::{Material, MaterialError, TOKEN_EXCHANGE_AUDIENCE};
use super::pkce;
use super::transport::{
    ErrorResponse, Transport, TransportConfig, TransportError, capture_error_response,
    parse_error_response,
};
use super::{AcquiredToken, FailureKind, RefreshFailure, TokenSource};
use crate::api::RetryConfig;
use crate::api::{AmrCredentialSpec, Authority, FlowSpec, FlowType, ResolvedSpec};
use crate::token_manager::{AttemptError, Verdict, classify, run_round};
use azure_core::credentials::{SecretBytes, TokenCredential};
use azure_core::error::ErrorKind;
use azure_identity::UserAssignedId;
use jiff::Timestamp;
use secrecy::SecretString;
use sha2::Digest;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use url::Url;

/// The operator's own identity settings, read once from its environment, for the
/// `DefaultAzureCredential` flow.
#[derive(Debug, Clone, Default)]
pub struct AmbientEnv {
    /// `AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// `AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// `AZURE_CLIENT_SECRET`.
    pub client_secret: Option<SecretString>,
    /// `AZURE_CLIENT_CERTIFICATE_PATH` (PEM with certificate and key).
    pub client_certificate_path: Option<PathBuf>,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub federated_token_file: Option<PathBuf>,
}

impl AmbientEnv {
    /// Reads the standard `AZURE_*` variables.
    pub fn from_env() -> AmbientEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        AmbientEnv {
            tenant_id: var("AZURE_TENANT_ID"),
            client_id: var("AZURE_CLIENT_ID"),
            client_secret: var("AZURE_CLIENT_SECRET").map(SecretString::from),
            client_certificate_path: var("AZURE_CLIENT_CERTIFICATE_PATH").map(PathBuf::from),
            federated_token_file: var("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
        }
    }
}

/// Settings of the token source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Authority host; `None` keeps the `azure_identity` default.
    pub authority_host: Option<Url>,
    /// Tenant used when a resource names none.
    pub default_tenant: Option<String>,
    /// Outbound HTTP settings.
    pub transport: TransportConfig,
    /// The operator's environment, for `DefaultAzureCredential`.
    pub ambient: AmbientEnv,
    /// Token requests in flight at once.
    pub max_concurrent_requests: usize,
    /// Limit for one token request.
    pub attempt_timeout: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            authority_host: None,
            default_tenant: None,
            transport: TransportConfig::default(),
            ambient: AmbientEnv::default(),
            max_concurrent_requests: 16,
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// Gets tokens from Entra ID through `azure_identity`.
pub struct AzureTokenSource {
    config: SourceConfig,
    transport: Arc<Transport>,
    material: Arc<dyn Material>,
    cache: SharedTokenCache,
    permits: Semaphore,
    throttled_until: Mutex<HashMap<String, Instant>>,
    managed_identity: ManagedIdentityPacer,
    pkce: pkce::Redeemer,
}

/// A flow's inputs, gathered and ready to build a credential from.
struct Plan {
    key: String,
    authority_host: Option<Url>,
    input: CredentialInput,
}

impl AzureTokenSource {
    /// Creates the source.
    ///
    /// # Errors
    /// When the transport cannot be built (unreadable CA file, bad endpoint).
    pub fn new(
        config: SourceConfig,
        material: Arc<dyn Material>,
    ) -> Result<AzureTokenSource, TransportError> {
        let transport = Arc::new(Transport::new(&config.transport)?);
        let pkce = pkce::Redeemer::new(&config.transport)?;
        let permits = Semaphore::new(config.max_concurrent_requests.max(1));
        Ok(AzureTokenSource {
            config,
            transport,
            material,
            cache: SharedTokenCache::default(),
            permits,
            throttled_until: Mutex::default(),
            managed_identity: ManagedIdentityPacer::default(),
            pkce,
        })
    }

    /// The shared cache, for metrics.
    pub fn cache(&self) -> &SharedTokenCache {
        &self.cache
    }

    /// Fetches, bypassing a shared token that is still fresh.
    ///
    /// # Errors
    /// As [`TokenSource::fetch`].
    pub async fn fetch_with(
        &self,
        ns: &str,
        spec: &AmrCredentialSpec,
        resolved: &ResolvedSpec,
        force: bool,
    ) -> Result<(AcquiredToken, Origin), RefreshFailure> {
        self.fetch_named(ns, None, spec, resolved, force).await
    }

    /// As [`AzureTokenSource::fetch_with`]; `name`, the credential's name, completes the
    /// sign-in command of a `LoginRequired` failure.
    ///
    /// # Errors
    /// As [`TokenSource::fetch`].
    pub async fn fetch_named(
        &self,
        ns: &str,
        name: Option<&str>,
        spec: &AmrCredentialSpec,
        resolved: &ResolvedSpec,
        force: bool,
    ) -> Result<(AcquiredToken, Origin), RefreshFailure> {
        if resolved.flow == FlowType::AuthorizationCodeWithPKCE {
            return self.fetch_pkce(ns, name, spec, resolved, force).await;
        }
        let key = self.plan(ns, spec, resolved, true).await?.key;
        let cfg = &resolved.token_manager;
        self.cache
            .get_or_fetch(&key, cfg, force, || self.round(ns, spec, resolved))
            .await
    }

    /// The PKCE flow: redeems the refresh token `login` stored (see [`pkce`]); `name` names
    /// the credential in the sign-in command of a `LoginRequired` failure.
    async fn fetch_pkce(
        &self,
        ns: &str,
        name: Option<&str>,
        spec: &AmrCredentialSpec,
        resolved: &ResolvedSpec,
        force: bool,
    ) -> Result<(AcquiredToken, Origin), RefreshFailure> {
        let (host, tenant) = self.authority(&resolved.authority);
        let target = pkce::Target::new(ns, name, spec, resolved, host, tenant)?;
        let (cfg, retry) = (&resolved.token_manager, &resolved.token_manager.retry);
        let material = &*self.material;
        self.cache
            .get_or_fetch(&target.cache_key(), cfg, force, || {
                self.pkce.round(material, &target, retry, self)
            })
            .await
    }

    async fn round(
        &self,
        ns: &str,
        spec: &AmrCredentialSpec,
        resolved: &ResolvedSpec,
    ) -> Result<AcquiredToken, RefreshFailure> {
        let plan = self.plan(ns, spec, resolved, false).await?;
        // Throttling is per server: managed identities answer from their own endpoint.
        let host_key = match &plan.input {
            CredentialInput::ManagedIdentity { .. } => MANAGED_IDENTITY_KEY.to_string(),
            _ => plan
                .authority_host
                .as_ref()
                .map_or("default", Url::as_str)
                .to_string(),
        };
        let ctx = CredentialContext {
            authority_host: plan.authority_host.clone(),
            transport: self.transport.clone(),
        };
        let credential = flows::build(&ctx, plan.input).map_err(|e| {
            // Certificate problems name the Secret they came from.
            let origin = spec.flow.client_certificate_ref.as_ref();
            let origin = origin
                .map(|r| format!(" (Secret {:?})", r.name))
                .unwrap_or_default();
            failure(FailureKind::InvalidInput, &format!("{e}{origin}"))
        })?;
        let scopes: Vec<&str> = resolved.scopes.iter().map(String::as_str).collect();
        let retry = &resolved.token_manager.retry;
        let outcome = run_round(retry, |_| self.attempt(&*credential, &scopes, &host_key)).await;
        outcome
            .map(|(token, _)| token)
            .map_err(|(err, attempts)| round_failure(err, attempts, retry))
    }

    async fn attempt(
        &self,
        credential: &dyn TokenCredential,
        scopes: &[&str],
        host_key: &str,
    ) -> Result<AcquiredToken, AttemptError> {
        self.wait_for_throttle(host_key).await;
        let _endpoint = match host_key {
            MANAGED_IDENTITY_KEY => Some(self.managed_identity.admit().await),
            _ => None,
        };
        let _permit = self.permits.acquire().await.map_err(|_| AttemptError {
            message: "the operator is shutting down".into(),
            ..Default::default()
        })?;
        let started = Timestamp::now();
        let attempt = credential.get_token(scopes, None);
        let timed = tokio::time::timeout(self.config.attempt_timeout, attempt);
        let (result, response) = capture_error_response(timed).await;
        let token = match result {
            Err(_) => {
                let limit = self.config.attempt_timeout;
                return Err(AttemptError {
                    message: format!("no answer from Entra ID within {limit:?}"),
                    ..Default::default()
                });
            }
            Ok(Err(e)) => {
                let err = match response {
                    Some(r) => from_response(r),
                    None => attempt_error(&e),
                };
                if let Some(wait) = err.retry_after.filter(|_| err.status == Some(429)) {
                    self.throttle(host_key, wait);
                }
                return Err(err);
            }
            Ok(Ok(t)) => t,
        };
        check_token(token, started)
    }

    async fn wait_for_throttle(&self, host_key: &str) {
        let until = self.lock_throttle().get(host_key).copied();
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Holds every request to this authority until the server's Retry-After has passed.
    fn throttle(&self, host_key: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut map = self.lock_throttle();
        let entry = map.entry(host_key.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn lock_throttle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // Each critical section is a single read or write of the map.
        self.throttled_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gathers inputs. With `key_only`, inputs not needed for the cache key are not read.
    async fn plan(
        &self,
        ns: &str,
        spec: &AmrCredentialSpec,
        resolved: &ResolvedSpec,
        key_only: bool,
    ) -> Result<Plan, RefreshFailure> {
        let (host, tenant) = self.authority(&resolved.authority);
        let key = KeyParts {
            host: host.as_ref().map_or("default", Url::as_str).to_string(),
            scopes: resolved.scopes.join(" "),
        };
        let flow = &spec.flow;
        let (key, input) = match resolved.flow {
            FlowType::ClientCredentials => {
                self.plan_client_secret(ns, flow, need_tenant(tenant)?, &key)
                    .await?
            }
            FlowType::ClientCredentialsWithCertificate => {
                self.plan_certificate(ns, flow, need_tenant(tenant)?, &key)
                    .await?
            }
            FlowType::WorkloadIdentity => {
                self.plan_workload_identity(ns, flow, &resolved.authority, tenant, &key)
                    .await?
            }
            FlowType::SystemAssignedManagedIdentity => managed_identity(None, &key),
            FlowType::UserAssignedManagedIdentity => {
                managed_identity(Some(user_assigned_id(flow)?), &key)
            }
            FlowType::DefaultAzureCredential => {
                let (id, input) = self.ambient(key_only, &key.host)?;
                (format!("{id}|{}", key.scopes), input)
            }
            FlowType::AuthorizationCodeWithPKCE => {
                return Err(invalid(
                    "AuthorizationCodeWithPKCE redeems a refresh token, not an azure_identity \
                     credential",
                ));
            }
        };
        Ok(Plan {
            key,
            authority_host: host,
            input,
        })
    }

    async fn plan_client_secret(
        &self,
        ns: &str,
        flow: &FlowSpec,
        tenant: String,
        key: &KeyParts,
    ) -> Result<(String, CredentialInput), RefreshFailure> {
        let r = flow
            .client_secret_ref
            .as_ref()
            .ok_or_else(|| invalid("missing clientSecretRef"))?;
        let secret = self.secret(ns, &r.name, &r.key).await?;
        let secret = String::from_utf8(secret)
            .map_err(|_| invalid(&format!("Secret {:?} key {:?} is not UTF-8", r.name, r.key)))?;
        let secret = secret.trim().to_string();
        let client_id = flow.client_id.clone().unwrap_or_default();
        let id = format!(
            "secret|{}|{tenant}|{client_id}|{}",
            key.host,
            digest(secret.as_bytes())
        );
        let input = CredentialInput::ClientSecret {
            tenant,
            client_id,
            secret: SecretString::from(secret),
        };
        Ok((key.with(&id), input))
    }

    async fn plan_certificate(
        &self,
        ns: &str,
        flow: &FlowSpec,
        tenant: String,
        key: &KeyParts,
    ) -> Result<(String, CredentialInput), RefreshFailure> {
        let r = flow
            .client_certificate_ref
            .as_ref()
            .ok_or_else(|| invalid("missing clientCertificateRef"))?;
        let (certificate, fingerprint) = match &r.pkcs12_key {
            Some(k) => {
                let bundle = self.secret(ns, &r.name, k).await?;
                let password = match &r.password_key {
                    Some(pk) => Some(self.secret(ns, &r.name, pk).await?),
                    None => None,
                };
                let password = password
                    .map(|p| SecretString::from(String::from_utf8_lossy(&p).trim().to_string()));
                let fingerprint = digest(&bundle);
                (
                    CertificateInput::Pkcs12 {
                        bundle: SecretBytes::new(bundle),
                        password,
                    },
                    fingerprint,
                )
            }
            None => {
                let cert_key = r.certificate_key.as_deref().unwrap_or("tls.crt");
                let key_key = r.private_key_key.as_deref().unwrap_or("tls.key");
                let cert = self.secret(ns, &r.name, cert_key).await?;
                let private = self.secret(ns, &r.name, key_key).await?;
                let fingerprint = digest(&[cert.as_slice(), private.as_slice()].concat());
                (
                    CertificateInput::Pem {
                        cert,
                        key: SecretBytes::new(private),
                    },
                    fingerprint,
                )
            }
        };
        let client_id = flow.client_id.clone().unwrap_or_default();
        let id = format!("cert|{}|{tenant}|{client_id}|{fingerprint}", key.host);
        let thumbprint_sha256 = r.thumbprint_sha256.clone();
        let input = CredentialInput::Certificate {
            tenant,
            client_id,
            certificate,
            thumbprint_sha256,
        };
        Ok((key.with(&id), input))
    }

    async fn plan_workload_identity(
        &self,
        ns: &str,
        flow: &FlowSpec,
        authority: &Authority,
        tenant: Option<String>,
        key: &KeyParts,
    ) -> Result<(String, CredentialInput), RefreshFailure> {
        let sa = flow.service_account_name.clone().unwrap_or_default();
        let info = self
            .material
            .service_account(ns, &sa)
            .await
            .map_err(material_failure)?;
        let client_id = flow.client_id.clone().or(info.client_id).ok_or_else(|| {
            invalid(&format!(
                "no client id: set flow.clientId or annotate ServiceAccount {sa:?} with \
                 azure.workload.identity/client-id"
            ))
        })?;
        // The ServiceAccount's tenant wins over the operator default, not over the spec.
        let tenant = match (authority, info.tenant_id) {
            (Authority::OperatorDefault, Some(t)) => t,
            _ => need_tenant(tenant)?,
        };
        let id = format!("wi|{}|{tenant}|{client_id}|{ns}/{sa}", key.host);
        let source = Arc::new(ServiceAccountAssertion {
            material: self.material.clone(),
            namespace: ns.to_string(),
            service_account: sa,
        });
        Ok((
            key.with(&id),
            CredentialInput::Assertion {
                tenant,
                client_id,
                source,
            },
        ))
    }

    /// The operator's own chain: environment secret or certificate, then its workload
    /// identity token file, then managed identity.
    fn ambient(
        &self,
        key_only: bool,
        host_s: &str,
    ) -> Result<(String, CredentialInput), RefreshFailure> {
        let env = &self.config.ambient;
        let tenant = env
            .tenant_id
            .clone()
            .or_else(|| self.config.default_tenant.clone());
        if let (Some(tenant), Some(client_id)) = (&tenant, &env.client_id) {
            if let Some(secret) = &env.client_secret {
                let key = format!("default|secret|{host_s}|{tenant}|{client_id}");
                let input = CredentialInput::ClientSecret {
                    tenant: tenant.clone(),
                    client_id: client_id.clone(),
                    secret: secret.clone(),
                };
                return Ok((key, input));
            }
            if let Some(path) = &env.client_certificate_path {
                let key = format!("default|cert|{host_s}|{tenant}|{client_id}");
                let pem = if key_only {
                    Vec::new()
                } else {
                    std::fs::read(path).map_err(|e| {
                        invalid(&format!(
                            "reading AZURE_CLIENT_CERTIFICATE_PATH failed: {e}"
                        ))
                    })?
                };
                let input = CredentialInput::Certificate {
                    tenant: tenant.clone(),
                    client_id: client_id.clone(),
                    certificate: CertificateInput::Pem {
                        cert: pem.clone(),
                        key: SecretBytes::new(pem),
                    },
                    thumbprint_sha256: None,
                };
                return Ok((key, input));
            }
            if let Some(file) = &env.federated_token_file {
                let key = format!("default|wi|{host_s}|{tenant}|{client_id}");
                let input = CredentialInput::WorkloadIdentityFile {
                    tenant: tenant.clone(),
                    client_id: client_id.clone(),
                    token_file: file.clone(),
                };
                return Ok((key, input));
            }
        }
        let user_assigned = env.client_id.clone().map(UserAssignedId::ClientId);
        let key = format!(
            "default|mi|{}",
            env.client_id.as_deref().unwrap_or("system")
        );
        Ok((key, CredentialInput::ManagedIdentity { user_assigned }))
    }

    fn authority(&self, authority: &Authority) -> (Option<Url>, Option<String>) {
        let host = self.config.authority_host.clone();
        match authority {
            Authority::OperatorDefault => (host, self.config.default_tenant.clone()),
            Authority::Tenant(t) => (host, Some(t.clone())),
            Authority::Custom { host, tenant } => (Some(host.clone()), Some(tenant.clone())),
        }
    }

    async fn secret(&self, ns: &str, name: &str, key: &str) -> Result<Vec<u8>, RefreshFailure> {
        self.material
            .secret_value(ns, name, key)
            .await
            .map_err(material_failure)
    }
}

#[async_trait::async_trait]
impl TokenSource for AzureTokenSource {
    async fn fetch(
        &self,
        namespace: &str,
        name: &str,
        spec: &AmrCredentialSpec,
        resolved: &ResolvedSpec,
    ) -> Result<AcquiredToken, RefreshFailure> {
        let fetched = self.fetch_named(namespace, Some(name), spec, resolved, false);
        fetched.await.map(|(t, _)| t)
    }

    fn saved_requests(&self) -> u64 {
        self.cache.saved_requests()
    }
}

#[async_trait::async_trait]
impl pkce::Gate for AzureTokenSource {
    async fn admit(
        &self,
        host_key: &str,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, AttemptError> {
        self.wait_for_throttle(host_key).await;
        self.permits.acquire().await.map_err(|_| AttemptError {
            message: "the operator is shutting down".into(),
            ..Default::default()
        })
    }

    fn hold_back(&self, host_key: &str, wait: Duration) {
        self.throttle(host_key, wait);
    }

    fn attempt_timeout(&self) -> Duration {
        self.config.attempt_timeout
    }
}

/// A new ServiceAccount token for every exchange.
struct ServiceAccountAssertion {
    material: Arc<dyn Material>,
    namespace: String,
    service_account: String,
}

impl std::fmt::Debug for ServiceAccountAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountAssertion")
            .field("namespace", &self.namespace)
            .field("service_account", &self.service_account)
            .finish()
    }
}

#[async_trait::async_trait]
impl AssertionSource for ServiceAccountAssertion {
    async fn assertion(&self) -> Result<SecretString, String> {
        self.material
            .service_account_token(
                &self.namespace,
                &self.service_account,
                TOKEN_EXCHANGE_AUDIENCE,
            )
            .await
            .map_err(|e| e.to_string())
    }
}

/// Throttling key of the managed identity endpoint.
const MANAGED_IDENTITY_KEY: &str = "managed-identity";
/// Spacing of requests to the managed identity endpoint: IMDS accepts about 20 a second and
/// 5 at once per machine; the operator stays at half the rate.
const MANAGED_IDENTITY_INTERVAL: Duration = Duration::from_millis(100);
/// Requests to the managed identity endpoint in flight at once.
const MANAGED_IDENTITY_CONCURRENCY: usize = 5;

/// Keeps requests to the managed identity endpoint inside its rate and concurrency limits.
struct ManagedIdentityPacer {
    next_slot: Mutex<tokio::time::Instant>,
    in_flight: Semaphore,
}

impl Default for ManagedIdentityPacer {
    fn default() -> Self {
        ManagedIdentityPacer {
            next_slot: Mutex::new(tokio::time::Instant::now()),
            in_flight: Semaphore::new(MANAGED_IDENTITY_CONCURRENCY),
        }
    }
}

impl ManagedIdentityPacer {
    /// Waits for the next free slot and a place in flight; the place is held until the
    /// returned permit drops.
    async fn admit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let slot = {
            // A single read-modify-write of the next slot.
            let mut next = self
                .next_slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + MANAGED_IDENTITY_INTERVAL;
            slot
        };
        tokio::time::sleep_until(slot).await;
        self.in_flight.acquire().await.ok()
    }
}

/// The parts every cache key shares: the authority host and the scopes.
struct KeyParts {
    host: String,
    scopes: String,
}

impl KeyParts {
    /// The cache key of the identity `id` for these scopes.
    fn with(&self, id: &str) -> String {
        format!("{id}|{}", self.scopes)
    }
}

fn need_tenant(tenant: Option<String>) -> Result<String, RefreshFailure> {
    tenant.ok_or_else(|| {
        invalid(
            "no tenant: set authorityConfig.tenantId, flow.tenantId or the operator's --tenant-id",
        )
    })
}

fn managed_identity(id: Option<UserAssignedId>, key: &KeyParts) -> (String, CredentialInput) {
    let shown = match &id {
        None => "system".to_string(),
        Some(UserAssignedId::ClientId(v)) => format!("client:{v}"),
        Some(UserAssignedId::ObjectId(v)) => format!("object:{v}"),
        Some(UserAssignedId::ResourceId(v)) => format!("resource:{v}"),
        Some(_) => "other".to_string(),
    };
    (
        key.with(&format!("mi|{shown}")),
        CredentialInput::ManagedIdentity { user_assigned: id },
    )
}

fn user_assigned_id(flow: &FlowSpec) -> Result<UserAssignedId, RefreshFailure> {
    let f = flow;
    if let Some(v) = &f.user_assigned_client_id {
        Ok(UserAssignedId::ClientId(v.clone()))
    } else if let Some(v) = &f.user_assigned_object_id {
        Ok(UserAssignedId::ObjectId(v.clone()))
    } else if let Some(v) = &f.user_assigned_resource_id {
        Ok(UserAssignedId::ResourceId(v.clone()))
    } else {
        Err(invalid("UserAssignedManagedIdentity needs an identity id"))
    }
}

fn failure(kind: FailureKind, message: &str) -> RefreshFailure {
    RefreshFailure {
        kind,
        message: message.to_string(),
        retry_after: None,
        attempts: 0,
    }
}

fn invalid(message: &str) -> RefreshFailure {
    failure(FailureKind::InvalidInput, message)
}

fn material_failure(e: MaterialError) -> RefreshFailure {
    let kind = if e.is_missing() {
        FailureKind::InvalidInput
    } else {
        FailureKind::RetriesExhausted
    };
    failure(kind, &e.to_string())
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(bytes)[..8])
}

pub(super) fn round_failure(
    err: AttemptError,
    attempts: u32,
    retry: &RetryConfig,
) -> RefreshFailure {
    let stopped = err.unusable_token || classify(&err, retry) == Verdict::Stop;
    let kind = if stopped {
        FailureKind::NonRetryable
    } else {
        FailureKind::RetriesExhausted
    };
    let message = if stopped {
        err.message
    } else {
        format!("{} (after {attempts} attempts)", err.message)
    };
    RefreshFailure {
        kind,
        message,
        retry_after: err.retry_after,
        attempts,
    }
}

/// Checks an issued token: its claims parse, it has an `oid`, it is not expired, and the
/// response's lifetime does not exceed the token's own.
fn check_token(
    token: azure_core::credentials::AccessToken,
    started: Timestamp,
) -> Result<AcquiredToken, AttemptError> {
    let said = token.expires_on.unix_timestamp();
    let said = (said > started.as_second()).then_some(said);
    checked_token(token.token.secret().to_string(), said)
}

/// Checks an issued token: its claims parse, it has an `oid`, it has not expired, and the
/// response's promised expiry (`said`, Unix seconds) does not exceed the token's own `exp`.
///
/// # Errors
/// An unusable-token [`AttemptError`] saying which check failed.
pub(crate) fn checked_token(
    secret: String,
    said: Option<i64>,
) -> Result<AcquiredToken, AttemptError> {
    let unusable = |message: &str| AttemptError {
        unusable_token: true,
        message: message.to_string(),
        ..Default::default()
    };
    let claims = claims::decode(&secret).map_err(|e| {
        unusable(&format!(
            "Entra ID returned a token the operator cannot use: {e}"
        ))
    })?;
    if claims.expires_at <= Timestamp::now() {
        return Err(unusable(
            "Entra ID returned a token that has already expired",
        ));
    }
    if said.is_some_and(|said| said > claims.expires_at.as_second() + 120) {
        return Err(unusable(
            "the token response claims a longer lifetime than the token's own exp claim",
        ));
    }
    Ok(AcquiredToken {
        token: SecretString::from(secret),
        claims,
    })
}

/// Reads status, OAuth error code and Retry-After from an `azure_identity` error, whose
/// HTTP error may be wrapped in credential errors.
fn attempt_error(e: &azure_core::Error) -> AttemptError {
    let mut out = AttemptError {
        message: String::new(),
        ..Default::default()
    };
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(az) = err.downcast_ref::<azure_core::Error>()
            && let ErrorKind::HttpResponse {
                status,
                raw_response,
                ..
            } = az.kind()
        {
            if let Some(raw) = raw_response {
                return from_response(parse_error_response(*status, raw.headers(), raw.body()));
            }
            out.status = Some(u16::from(*status));
            out.message = http_message(out.status, None, "");
            return out;
        }
        current = err.source();
    }
    out.message = format!("token request failed: {}", innermost(e));
    out
}

/// Longest wait a server's Retry-After may impose on one round.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

pub(super) fn from_response(r: ErrorResponse) -> AttemptError {
    AttemptError {
        status: Some(r.status),
        message: http_message(Some(r.status), r.oauth_error.as_deref(), &r.description),
        oauth_error: r.oauth_error,
        retry_after: r.retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
        unusable_token: false,
    }
}

fn http_message(status: Option<u16>, code: Option<&str>, description: &str) -> String {
    let status = status.map_or_else(String::new, |s| format!("HTTP {s}"));
    let code = code.map_or_else(String::new, |c| format!(" {c}"));
    let first_line = description
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    if first_line.is_empty() {
        format!("Entra ID answered {status}{code}")
    } else {
        format!("Entra ID answered {status}{code}: {first_line}")
    }
}

pub(super) fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut current = e.source();
    while let Some(err) = current {
        last = err.to_string();
        current = err.source();
    }
    last.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

impl std::fmt::Debug for AzureTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureTokenSource").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::material::KubeMaterial;
    use http::{Request, Response};
    use kube::client::Body;

    /// A source whose Entra ID is an address nothing listens on, reading inputs through a
    /// mocked Kubernetes API; the returned handle sees every API request.
    fn source_over_mock_api() -> (
        AzureTokenSource,
        tower_test::mock::Handle<Request<Body>, Response<Body>>,
    ) {
        let (mock, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let material = Arc::new(KubeMaterial::new(kube::Client::new(mock, "default")));
        let config = SourceConfig {
            authority_host: Some(Url::parse("https://127.0.0.1:1/").expect("a URL")),
            default_tenant: Some("tenant".into()),
            ..SourceConfig::default()
        };
        (
            AzureTokenSource::new(config, material).expect("a source"),
            api,
        )
    }

    fn spec(yaml: &str) -> (AmrCredentialSpec, ResolvedSpec) {
        let spec: AmrCredentialSpec = serde_yaml_ng::from_str(yaml).expect("the spec parses");
        let resolved = crate::api::validate("c", &spec).expect("the spec is valid");
        (spec, resolved)
    }

    /// Answers API requests with `replies` in order and returns "METHOD path" of each.
    async fn answer(
        mut api: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        replies: Vec<(u16, &'static str)>,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        for (status, reply) in replies {
            let Some((req, send)) = api.next_request().await else {
                break;
            };
            seen.push(format!("{} {}", req.method(), req.uri().path()));
            let body = Body::from(reply.as_bytes().to_vec());
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(body)
                    .expect("a reply"),
            );
        }
        seen
    }

    #[tokio::test]
    async fn a_secret_reference_is_read_in_the_resources_own_namespace() {
        let (source, api) = source_over_mock_api();
        let (spec, resolved) = spec(
            "flow: {type: ClientCredentials, clientId: app, clientSecretRef: {name: sp, key: k}}\n\
             tokenManagerConfig: {retry: {maxAttempts: 1}}",
        );
        let secret = r#"{"apiVersion":"v1","kind":"Secret","data":{"k":"czNjcmV0"}}"#;
        let api = tokio::spawn(answer(api, vec![(200, secret), (200, secret)]));
        let failed = source.fetch_with("shop", &spec, &resolved, false).await;
        assert!(failed.is_err(), "nothing listens at the authority");
        drop(source);
        let seen = api.await.expect("no panic");
        assert!(
            seen.iter()
                .all(|r| r == "GET /api/v1/namespaces/shop/secrets/sp"),
            "{seen:?}"
        );
        assert!(!seen.is_empty());
    }

    #[tokio::test]
    async fn workload_identity_asks_only_its_own_namespace_for_a_service_account_token() {
        let (source, api) = source_over_mock_api();
        let (spec, resolved) = spec(
            "flow: {type: WorkloadIdentity, serviceAccountName: inventory, clientId: app}\n\
             tokenManagerConfig: {retry: {maxAttempts: 1}}",
        );
        let sa = r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"inventory"}}"#;
        let token = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest",
            "spec":{"audiences":["api://AzureADTokenExchange"]},"status":{"token":"sa-jwt",
            "expirationTimestamp":"2030-01-01T00:00:00Z"}}"#;
        let replies = vec![(200, sa), (200, sa), (201, token)];
        let api = tokio::spawn(answer(api, replies));
        let failed = source.fetch_with("shop", &spec, &resolved, false).await;
        assert!(failed.is_err(), "nothing listens at the authority");
        drop(source);
        let seen = api.await.expect("no panic");
        let own = "/api/v1/namespaces/shop/serviceaccounts/inventory";
        assert!(
            seen.iter()
                .all(|r| r.ends_with(own) || r.ends_with(&format!("{own}/token")))
        );
        assert!(seen.contains(&format!("POST {own}/token")), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn managed_identity_requests_are_spaced_to_stay_inside_imds_limits() {
        let pacer = Arc::new(ManagedIdentityPacer::default());
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    let _held = pacer.admit().await;
                    tokio::time::Instant::now()
                })
            })
            .collect();
        let mut admitted = Vec::new();
        for t in tasks {
            admitted.push(t.await.expect("no panic") - start);
        }
        admitted.sort();
        let expected: Vec<_> = (0..5).map(|n| MANAGED_IDENTITY_INTERVAL * n).collect();
        assert_eq!(admitted, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_five_managed_identity_requests_are_in_flight() {
        let pacer = ManagedIdentityPacer::default();
        let mut held = Vec::new();
        for _ in 0..MANAGED_IDENTITY_CONCURRENCY {
            held.push(pacer.admit().await);
        }
        let sixth = tokio::time::timeout(Duration::from_secs(5), pacer.admit()).await;
        assert!(
            sixth.is_err(),
            "a sixth request went out while five were in flight"
        );
        held.pop();
        assert!(pacer.admit().await.is_some());
    }
}
