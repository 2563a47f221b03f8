//! The `AmrCredential` custom resource: spec, status and the defaults users rely on.

mod validate;

pub use validate::{Authority, ResolvedSpec, SpecError, validate};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// API group of the custom resource.
pub const GROUP: &str = "amr.entraid.dev";
/// Annotation that asks for an immediate refresh when its value changes.
pub const REFRESH_REQUESTED_ANNOTATION: &str = "amr.entraid.dev/refresh-requested-at";
/// The scope requested when a resource names none.
pub const DEFAULT_SCOPE: &str = "https://redis.azure.com/.default";

/// Desired state of an AmrCredential: which Entra ID flow to use, for which scopes, how to
/// refresh, and where to write the resulting Redis username and password.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "amr.entraid.dev",
    version = "v1alpha1",
    kind = "AmrCredential",
    plural = "amrcredentials",
    shortname = "amrc",
    namespaced,
    status = "AmrCredentialStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".status.objectId"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Next refresh","type":"date","jsonPath":".status.refreshAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AmrCredentialSpec {
    /// The Entra ID flow that obtains the access token.
    pub flow: FlowSpec,
    /// OAuth scopes to request: a list, or a single string. Defaults to
    /// `https://redis.azure.com/.default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "scopes_schema")]
    pub scopes: Option<Scopes>,
    /// Which Entra ID authority issues the token. Defaults to the operator's authority host
    /// and tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_config: Option<AuthorityConfig>,
    /// When to refresh and how to retry failed token requests.
    #[serde(default)]
    pub token_manager_config: TokenManagerConfig,
    /// The Secret the credential is written to.
    #[serde(default)]
    pub target: SecretTarget,
    /// The Redis endpoint that `probe` and `verify` authenticate against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisEndpoint>,
    /// Verify every new token against `redis` right after it is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyConfig>,
    /// Workloads in the same namespace whose pods are restarted after the Secret changes,
    /// for apps that read the credential from environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,
}

/// The Entra ID flows the operator can run.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum FlowType {
    /// A service principal authenticating with a client secret.
    #[default]
    ClientCredentials,
    /// A service principal authenticating with a certificate (signed JWT assertion).
    ClientCredentialsWithCertificate,
    /// The system-assigned managed identity of the operator's node or pod.
    SystemAssignedManagedIdentity,
    /// A user-assigned managed identity available to the operator.
    UserAssignedManagedIdentity,
    /// A Kubernetes ServiceAccount federated with an Entra ID application.
    WorkloadIdentity,
    /// The operator's own ambient chain: environment, workload identity, managed identity.
    DefaultAzureCredential,
    /// A person's delegated identity, kept through a refresh token obtained by `login`.
    AuthorizationCodeWithPKCE,
}

impl FlowType {
    /// The name used in the resource, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowType::ClientCredentials => "ClientCredentials",
            FlowType::ClientCredentialsWithCertificate => "ClientCredentialsWithCertificate",
            FlowType::SystemAssignedManagedIdentity => "SystemAssignedManagedIdentity",
            FlowType::UserAssignedManagedIdentity => "UserAssignedManagedIdentity",
            FlowType::WorkloadIdentity => "WorkloadIdentity",
            FlowType::DefaultAzureCredential => "DefaultAzureCredential",
            FlowType::AuthorizationCodeWithPKCE => "AuthorizationCodeWithPKCE",
        }
    }

    /// Whether the flow uses the operator's own identity rather than one the resource names.
    pub fn uses_ambient_identity(self) -> bool {
        matches!(
            self,
            FlowType::SystemAssignedManagedIdentity
                | FlowType::UserAssignedManagedIdentity
                | FlowType::DefaultAzureCredential
        )
    }
}

/// Flow selection and the fields each flow needs.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'ClientCredentials' || (has(self.clientId) && has(self.clientSecretRef))",
     "message": "ClientCredentials needs clientId and clientSecretRef"},
    {"rule": "self.type != 'ClientCredentialsWithCertificate' || (has(self.clientId) && has(self.clientCertificateRef))",
     "message": "ClientCredentialsWithCertificate needs clientId and clientCertificateRef"},
    {"rule": "self.type != 'UserAssignedManagedIdentity' || [has(self.userAssignedClientId), has(self.userAssignedObjectId), has(self.userAssignedResourceId)].filter(x, x).size() == 1",
     "message": "UserAssignedManagedIdentity needs exactly one of userAssignedClientId, userAssignedObjectId, userAssignedResourceId"},
    {"rule": "self.type != 'WorkloadIdentity' || has(self.serviceAccountName)",
     "message": "WorkloadIdentity needs serviceAccountName"},
    {"rule": "self.type != 'AuthorizationCodeWithPKCE' || (has(self.clientId) && has(self.redirectUri) && has(self.refreshTokenSecretRef))",
     "message": "AuthorizationCodeWithPKCE needs clientId, redirectUri and refreshTokenSecretRef"}
]))]
pub struct FlowSpec {
    /// Which flow obtains the token.
    #[serde(rename = "type")]
    pub flow_type: FlowType,
    /// Application (client) id. Required for ClientCredentials, certificates and PKCE;
    /// for WorkloadIdentity it defaults to the ServiceAccount's
    /// `azure.workload.identity/client-id` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub client_id: Option<String>,
    /// Tenant id for this flow; overrides `authorityConfig.tenantId`. For WorkloadIdentity it
    /// defaults to the ServiceAccount's `azure.workload.identity/tenant-id` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub tenant_id: Option<String>,
    /// Secret key (in the resource's namespace) holding the client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
    /// Secret (in the resource's namespace) holding the client certificate and its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<CertificateRef>,
    /// Client id of a user-assigned managed identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user_assigned_client_id: Option<String>,
    /// Object (principal) id of a user-assigned managed identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user_assigned_object_id: Option<String>,
    /// Azure resource id of a user-assigned managed identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user_assigned_resource_id: Option<String>,
    /// ServiceAccount in the resource's own namespace whose tokens are exchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub service_account_name: Option<String>,
    /// Loopback redirect URI registered for the application (PKCE flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// Secret key (in the resource's namespace) holding the refresh token written by `login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the resource's own namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A client certificate kept in a Secret of the resource's own namespace, as PEM
/// (certificate and private key) or as PKCS#12.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key holding the PEM certificate. Defaults to `tls.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_key: Option<String>,
    /// Key holding the PEM private key. Defaults to `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_key: Option<String>,
    /// Key holding a PKCS#12 bundle instead of PEM files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12_key: Option<String>,
    /// Key holding the PKCS#12 password, if the bundle has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_key: Option<String>,
    /// Expected SHA-256 thumbprint (hex) of the certificate; a mismatch is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint_sha256: Option<String>,
}

/// Scopes as the resource gives them: one string or a list.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Scopes {
    /// A single scope.
    One(String),
    /// Several scopes.
    Many(Vec<String>),
}

impl Scopes {
    /// The scopes as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Scopes::One(s) => vec![s.clone()],
            Scopes::Many(v) => v.clone(),
        }
    }
}

fn scopes_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "OAuth scopes to request: a list, or a single string. \
            Defaults to https://redis.azure.com/.default.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Which Entra ID authority issues the token.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'multi-tenant' || has(self.tenantId)",
     "message": "multi-tenant authority needs tenantId"},
    {"rule": "self.type != 'custom' || has(self.authorityUrl)",
     "message": "custom authority needs authorityUrl"}
]))]
pub struct AuthorityConfig {
    /// `default` (the operator's authority host and tenant), `multi-tenant` (a given tenant)
    /// or `custom` (a full authority URL).
    #[serde(rename = "type")]
    pub authority_type: AuthorityType,
    /// Tenant id, for `multi-tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Authority URL such as `https://login.example.net/<tenant>`, for `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://[^/?#\s]+/[^/?#\s]+/?$"))]
    pub authority_url: Option<String>,
}

/// Kinds of authority configuration.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AuthorityType {
    /// The operator's configured authority host and default tenant.
    #[serde(rename = "default")]
    Default,
    /// A specific tenant on the operator's authority host.
    #[serde(rename = "multi-tenant")]
    MultiTenant,
    /// A complete authority URL.
    #[serde(rename = "custom")]
    Custom,
}

/// When tokens are refreshed and how failed requests are retried.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenManagerConfig {
    /// Fraction of a token's lifetime after which it is refreshed, in (0, 1].
    #[schemars(range(min = 0.0, max = 1.0), extend("exclusiveMinimum" = true))]
    pub expiration_refresh_ratio: f64,
    /// Refresh at the latest this many milliseconds before expiry.
    #[schemars(range(min = 0))]
    pub lower_refresh_bound_ms: u64,
    /// Retry policy for failed token requests.
    pub retry: RetryConfig,
}

impl Default for TokenManagerConfig {
    fn default() -> Self {
        TokenManagerConfig {
            expiration_refresh_ratio: 0.8,
            lower_refresh_bound_ms: 300_000,
            retry: RetryConfig::default(),
        }
    }
}

/// Retry with exponential backoff and jitter.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.initialDelayMs <= self.maxDelayMs",
     "message": "initialDelayMs must not exceed maxDelayMs"}
]))]
pub struct RetryConfig {
    /// Attempts per round, at least 1.
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// Delay before the second attempt, in milliseconds.
    #[schemars(range(min = 0))]
    pub initial_delay_ms: u64,
    /// Cap on the delay between attempts, in milliseconds.
    #[schemars(range(min = 0))]
    pub max_delay_ms: u64,
    /// Factor applied to the delay after each failed attempt, at least 1.
    #[schemars(range(min = 1.0))]
    pub backoff_multiplier: f64,
    /// Random spread of each delay, as a fraction in [0, 1] (0.1 means ±10 %).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jitter_percentage: f64,
    /// OAuth error codes (such as `invalid_client`) that end a round at once.
    pub non_retryable_errors: Vec<String>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_delay_ms: 100,
            max_delay_ms: 1000,
            backoff_multiplier: 2.0,
            jitter_percentage: 0.1,
            non_retryable_errors: vec![
                "invalid_client".to_string(),
                "unauthorized_client".to_string(),
                "invalid_grant".to_string(),
                "invalid_scope".to_string(),
                "invalid_request".to_string(),
            ],
        }
    }
}

/// Where and how the credential is written.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct SecretTarget {
    /// Name of the Secret; defaults to the resource's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Key names inside the Secret.
    pub keys: SecretKeys,
    /// Extra labels for the Secret.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations for the Secret.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Key names inside the written Secret.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.username != self.password && self.username != self.expiresAt && self.password != self.expiresAt",
     "message": "username, password and expiresAt keys must differ"}
]))]
pub struct SecretKeys {
    /// Key for the Redis username (the token's `oid`). Default `username`.
    #[schemars(length(min = 1), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub username: String,
    /// Key for the Redis password (the access token). Default `password`.
    #[schemars(length(min = 1), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub password: String,
    /// Key for the token's expiry, RFC 3339. Default `expires-at`.
    #[schemars(length(min = 1), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub expires_at: String,
}

impl Default for SecretKeys {
    fn default() -> Self {
        SecretKeys {
            username: "username".to_string(),
            password: "password".to_string(),
            expires_at: "expires-at".to_string(),
        }
    }
}

/// A Redis (AMR) endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedisEndpoint {
    /// Host name, such as `orders.westeurope.redis.azure.net`.
    #[schemars(length(min = 1))]
    pub host: String,
    /// Port; AMR listens on 10000.
    #[serde(default = "default_redis_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Whether to use TLS; AMR requires it.
    #[serde(default = "default_true")]
    pub tls: bool,
}

fn default_redis_port() -> u16 {
    10000
}

fn default_true() -> bool {
    true
}

/// Verification of each new token against `redis`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VerifyConfig {
    /// Run AUTH and PING with every new token.
    #[serde(default)]
    pub enabled: bool,
}

/// A workload restarted after the Secret's data changes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartTarget {
    /// Kind of the workload.
    pub kind: WorkloadKind,
    /// Name of the workload in the resource's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Workload kinds that can be restarted.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// Observed state of an AmrCredential.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AmrCredentialStatus {
    /// Ready, Verified, Degraded and RolloutRestarted conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Object id (`oid` claim) of the identity; the Redis username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// When the current token was issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// When the current token expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the next refresh is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_at: Option<String>,
    /// When the Secret last received a new token (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<String>,
    /// Failed refresh rounds since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The last refresh error, without any secret material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Name of the Secret written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CustomResourceDefinition as YAML, exactly as committed under `crds/`.
///
/// # Errors
/// When serialisation fails, which would be a bug in the types.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    serde_yaml_ng::to_string(&AmrCredential::crd())
}
