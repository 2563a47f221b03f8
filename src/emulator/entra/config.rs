//! Configuration of the Entra ID emulator: the apps, managed identities, federated
//! credentials and users it knows, built in code or loaded from YAML.

use super::EmulatorError;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};
use std::path::Path;
use std::time::Duration;

/// Tenant used when the configuration names none.
pub const DEFAULT_TENANT: &str = "7e5a0000-0000-4000-8000-00000000e1d0";

/// Audience a federated (workload identity) assertion must carry by default.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// What the emulator knows: its tenant, token lifetime and registered identities.
///
/// In YAML (every key optional):
///
/// ```yaml
/// tenant: 7e5a0000-0000-4000-8000-00000000e1d0
/// token_lifetime_secs: 60
/// apps:
///   - { client_id: app-1, object_id: oid-app-1, client_secret: s3cret }
/// managed_identities:
///   - { client_id: mi-1, object_id: oid-mi-1, system_assigned: true }
/// federated_credentials:
///   - client_id: app-1
///     object_id: oid-app-1
///     issuer: https://kubernetes.default.svc.cluster.local
///     subject: system:serviceaccount:shop:cart
/// users:
///   - { name: alice, object_id: oid-alice, client_id: cli, refresh_token: rt-1 }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntraConfig {
    /// Tenant of managed identities and of entries that name none.
    pub tenant: String,
    /// Lifetime of issued access tokens, in seconds.
    pub token_lifetime_secs: u64,
    /// Secret App Service style requests must send in `X-IDENTITY-HEADER`; random when absent.
    #[serde(deserialize_with = "optional_secret")]
    pub identity_header: Option<SecretString>,
    /// Application registrations (service principals).
    pub apps: Vec<AppRegistration>,
    /// Managed identities reachable through the IMDS and App Service endpoints.
    pub managed_identities: Vec<ManagedIdentity>,
    /// Federated credentials that accept workload identity assertions.
    pub federated_credentials: Vec<FederatedCredential>,
    /// Users whose refresh tokens the emulator redeems.
    pub users: Vec<User>,
}

impl Default for EntraConfig {
    fn default() -> Self {
        EntraConfig {
            tenant: DEFAULT_TENANT.to_string(),
            token_lifetime_secs: 3600,
            identity_header: None,
            apps: Vec::new(),
            managed_identities: Vec::new(),
            federated_credentials: Vec::new(),
            users: Vec::new(),
        }
    }
}

impl EntraConfig {
    /// Parses a YAML configuration.
    ///
    /// # Errors
    /// When the YAML does not describe an `EntraConfig`.
    pub fn from_yaml(yaml: &str) -> Result<EntraConfig, EmulatorError> {
        serde_yaml_ng::from_str(yaml).map_err(EmulatorError::ConfigParseFailed)
    }

    /// Reads and parses a YAML configuration file.
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn load(path: &Path) -> Result<EntraConfig, EmulatorError> {
        let yaml =
            std::fs::read_to_string(path).map_err(|source| EmulatorError::ConfigReadFailed {
                path: path.display().to_string(),
                source,
            })?;
        EntraConfig::from_yaml(&yaml)
    }

    /// Sets the default tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// Sets the lifetime of issued access tokens (whole seconds).
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime_secs = lifetime.as_secs();
        self
    }

    /// Sets the secret App Service style requests must send.
    pub fn with_identity_header(mut self, secret: impl Into<String>) -> Self {
        self.identity_header = Some(SecretString::from(secret.into()));
        self
    }

    /// Registers an application.
    pub fn with_app(mut self, app: AppRegistration) -> Self {
        self.apps.push(app);
        self
    }

    /// Registers a managed identity.
    pub fn with_managed_identity(mut self, identity: ManagedIdentity) -> Self {
        self.managed_identities.push(identity);
        self
    }

    /// Registers a federated credential.
    pub fn with_federated_credential(mut self, credential: FederatedCredential) -> Self {
        self.federated_credentials.push(credential);
        self
    }

    /// Registers a user with a refresh token.
    pub fn with_user(mut self, user: User) -> Self {
        self.users.push(user);
        self
    }
}

/// An application registration that authenticates with a secret or a certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRegistration {
    /// Application (client) id.
    pub client_id: String,
    /// Tenant of the app; the configuration's tenant when absent.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Object id of the service principal: the `oid` of its tokens.
    pub object_id: String,
    /// Client secret the app may authenticate with.
    #[serde(default, deserialize_with = "optional_secret")]
    pub client_secret: Option<SecretString>,
    /// Certificate (PEM) whose key may sign the app's client assertions.
    #[serde(default)]
    pub certificate_pem: Option<String>,
}

impl AppRegistration {
    /// An app with no credential yet.
    pub fn new(client_id: impl Into<String>, object_id: impl Into<String>) -> Self {
        AppRegistration {
            client_id: client_id.into(),
            tenant: None,
            object_id: object_id.into(),
            client_secret: None,
            certificate_pem: None,
        }
    }

    /// Sets the app's tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Accepts `secret` as the app's client secret.
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// Accepts assertions signed by the key of this certificate (PEM).
    pub fn with_certificate(mut self, certificate_pem: impl Into<String>) -> Self {
        self.certificate_pem = Some(certificate_pem.into());
        self
    }
}

/// A system- or user-assigned managed identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedIdentity {
    /// Client id of the identity.
    pub client_id: String,
    /// Object (principal) id of the identity: the `oid` of its tokens.
    pub object_id: String,
    /// Azure resource id of the identity.
    #[serde(default)]
    pub resource_id: Option<String>,
    /// Whether requests naming no identity get this one.
    #[serde(default)]
    pub system_assigned: bool,
}

impl ManagedIdentity {
    /// A user-assigned identity.
    pub fn user_assigned(client_id: impl Into<String>, object_id: impl Into<String>) -> Self {
        ManagedIdentity {
            client_id: client_id.into(),
            object_id: object_id.into(),
            resource_id: None,
            system_assigned: false,
        }
    }

    /// A system-assigned identity.
    pub fn system_assigned(client_id: impl Into<String>, object_id: impl Into<String>) -> Self {
        ManagedIdentity {
            system_assigned: true,
            ..Self::user_assigned(client_id, object_id)
        }
    }

    /// Sets the identity's Azure resource id.
    pub fn with_resource_id(mut self, resource_id: impl Into<String>) -> Self {
        self.resource_id = Some(resource_id.into());
        self
    }
}

/// Trust in tokens of an external issuer (such as a Kubernetes ServiceAccount issuer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedCredential {
    /// Client id of the app or managed identity the credential belongs to.
    pub client_id: String,
    /// Tenant; the configuration's tenant when absent.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Object id of the identity: the `oid` of its tokens.
    pub object_id: String,
    /// Expected `iss` of the assertion.
    pub issuer: String,
    /// Expected `sub`, such as `system:serviceaccount:NAMESPACE:NAME`.
    pub subject: String,
    /// Expected `aud`.
    #[serde(default = "exchange_audience")]
    pub audience: String,
    /// Public key (PEM) of the issuer; when present the assertion's RS256 signature is checked.
    #[serde(default)]
    pub issuer_public_key_pem: Option<String>,
}

impl FederatedCredential {
    /// A credential for `subject` tokens of `issuer`, with the token exchange audience.
    pub fn new(
        client_id: impl Into<String>,
        object_id: impl Into<String>,
        issuer: impl Into<String>,
        subject: impl Into<String>,
    ) -> Self {
        FederatedCredential {
            client_id: client_id.into(),
            tenant: None,
            object_id: object_id.into(),
            issuer: issuer.into(),
            subject: subject.into(),
            audience: exchange_audience(),
            issuer_public_key_pem: None,
        }
    }

    /// Checks assertion signatures against this public key (PEM).
    pub fn with_issuer_key(mut self, public_key_pem: impl Into<String>) -> Self {
        self.issuer_public_key_pem = Some(public_key_pem.into());
        self
    }
}

/// A user whose refresh token a client redeems, and who signs in to that client through
/// the authorize endpoint (approving at once unless `requires_interaction` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Display name, the `name` claim.
    pub name: String,
    /// Object id of the user: the `oid` of their tokens.
    pub object_id: String,
    /// Client id the refresh token was issued to.
    pub client_id: String,
    /// Tenant; the configuration's tenant when absent.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The refresh token first handed out.
    #[serde(deserialize_with = "secret")]
    pub refresh_token: SecretString,
    /// Whether signing in needs the person at the browser (consent, multi-factor): the
    /// authorize endpoint then answers `interaction_required` instead of approving.
    #[serde(default)]
    pub requires_interaction: bool,
}

impl User {
    /// A user holding `refresh_token` for `client_id`.
    pub fn new(
        name: impl Into<String>,
        object_id: impl Into<String>,
        client_id: impl Into<String>,
        refresh_token: impl Into<String>,
    ) -> Self {
        User {
            name: name.into(),
            object_id: object_id.into(),
            client_id: client_id.into(),
            tenant: None,
            refresh_token: SecretString::from(refresh_token.into()),
            requires_interaction: false,
        }
    }

    /// Makes the authorize endpoint refuse to sign this user in without interaction.
    pub fn requiring_interaction(mut self) -> Self {
        self.requires_interaction = true;
        self
    }
}

fn exchange_audience() -> String {
    TOKEN_EXCHANGE_AUDIENCE.to_string()
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

fn optional_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(SecretString::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
tenant: t-1
token_lifetime_secs: 5
identity_header: hdr-secret
apps:
  - { client_id: app-1, object_id: oid-1, client_secret: s3cret-value }
managed_identities:
  - { client_id: mi-1, object_id: oid-mi, system_assigned: true }
federated_credentials:
  - client_id: app-1
    object_id: oid-1
    issuer: "https://k8s"
    subject: "system:serviceaccount:ns:sa"
users:
  - { name: alice, object_id: oid-u, client_id: cli, refresh_token: rt-secret-value }
"#;

    #[test]
    fn yaml_configuration_loads_with_defaults() {
        let config = EntraConfig::from_yaml(YAML).unwrap();
        assert_eq!(config.token_lifetime_secs, 5);
        assert_eq!(
            config.federated_credentials[0].audience,
            TOKEN_EXCHANGE_AUDIENCE
        );
        assert!(config.managed_identities[0].system_assigned);
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let debug = format!("{:?}", EntraConfig::from_yaml(YAML).unwrap());
        for secret in ["hdr-secret", "s3cret-value", "rt-secret-value"] {
            assert!(!debug.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(EntraConfig::from_yaml("tenant: t\nlifetime: 3\n").is_err());
    }
}
