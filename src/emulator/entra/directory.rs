//! The emulator's directory: registered identities with their keys parsed, and the
//! refresh tokens currently valid.

use super::EmulatorError;
use super::config::{AppRegistration, EntraConfig, FederatedCredential, ManagedIdentity, User};
use super::tokens::delegated_permissions;
use openssl::pkey::{PKey, Public};
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Who a token is issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub object_id: String,
    pub client_id: String,
    pub tenant: String,
    /// `app` or `user`, the `idtyp` claim.
    pub kind: &'static str,
    pub name: Option<String>,
    pub resource_id: Option<String>,
    /// Delegated permissions, the `scp` claim of a user's token.
    pub scp: Option<String>,
}

/// An app's certificate: its public key and thumbprints.
pub(crate) struct RegisteredCert {
    pub key: PKey<Public>,
    pub sha1: Vec<u8>,
    pub sha256: Vec<u8>,
}

pub(crate) struct App {
    pub config: AppRegistration,
    pub tenant: String,
    pub cert: Option<RegisteredCert>,
}

pub(crate) struct Federated {
    pub config: FederatedCredential,
    pub tenant: String,
    pub key: Option<PKey<Public>>,
}

/// An authorization code handed out by the authorize endpoint, waiting to be redeemed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthCode {
    /// Index of the user who signed in.
    pub user: usize,
    pub client_id: String,
    pub redirect_uri: String,
    /// The S256 `code_challenge`.
    pub challenge: String,
    pub scope: String,
    /// Unix time after which the code is refused.
    pub expires_at: i64,
}

/// Where a refresh token leads, and whether it still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshState {
    Valid(usize),
    Revoked,
}

pub(crate) struct Directory {
    pub tenant: String,
    pub apps: Vec<App>,
    pub managed_identities: Vec<ManagedIdentity>,
    pub federated: Vec<Federated>,
    pub users: Vec<User>,
    /// Refresh tokens by SHA-256, so the table holds no usable secret.
    refresh_tokens: Mutex<HashMap<String, RefreshState>>,
    /// Authorization codes not yet redeemed, by SHA-256.
    codes: Mutex<HashMap<String, AuthCode>>,
}

impl Directory {
    /// Parses the keys and certificates of `config`.
    pub fn new(config: &EntraConfig) -> Result<Directory, EmulatorError> {
        let tenant_or_default =
            |t: &Option<String>| t.clone().unwrap_or_else(|| config.tenant.clone());
        let apps = config
            .apps
            .iter()
            .map(|app| {
                let cert = app.certificate_pem.as_deref().map(parse_cert).transpose();
                Ok(App {
                    tenant: tenant_or_default(&app.tenant),
                    cert: cert.map_err(|source| invalid_key(&app.client_id, source))?,
                    config: app.clone(),
                })
            })
            .collect::<Result<_, EmulatorError>>()?;
        let federated = config
            .federated_credentials
            .iter()
            .map(|fc| {
                let key = fc
                    .issuer_public_key_pem
                    .as_deref()
                    .map(parse_public_key)
                    .transpose();
                Ok(Federated {
                    tenant: tenant_or_default(&fc.tenant),
                    key: key.map_err(|source| invalid_key(&fc.client_id, source))?,
                    config: fc.clone(),
                })
            })
            .collect::<Result<_, EmulatorError>>()?;
        let refresh_tokens = config
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (digest(&u.refresh_token), RefreshState::Valid(i)))
            .collect();
        Ok(Directory {
            tenant: config.tenant.clone(),
            apps,
            managed_identities: config.managed_identities.clone(),
            federated,
            users: config.users.clone(),
            refresh_tokens: Mutex::new(refresh_tokens),
            codes: Mutex::default(),
        })
    }

    pub fn app(&self, client_id: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.config.client_id == client_id)
    }

    pub fn federated_for(&self, client_id: &str) -> impl Iterator<Item = &Federated> {
        self.federated
            .iter()
            .filter(move |f| f.config.client_id == client_id)
    }

    pub fn refresh_state(&self, token: &str) -> Option<RefreshState> {
        self.tokens().get(&digest_str(token)).copied()
    }

    /// Replaces `old` by a fresh refresh token for the same user, which it returns.
    pub fn rotate_refresh_token(&self, old: &str, user: usize) -> SecretString {
        let fresh = format!("rt.{}", hex::encode(rand::random::<[u8; 32]>()));
        let mut tokens = self.tokens();
        tokens.remove(&digest_str(old));
        tokens.insert(digest_str(&fresh), RefreshState::Valid(user));
        SecretString::from(fresh)
    }

    /// A new refresh token for user `user`, as a sign-in hands out.
    pub fn issue_refresh_token(&self, user: usize) -> SecretString {
        let fresh = format!("rt.{}", hex::encode(rand::random::<[u8; 32]>()));
        self.tokens()
            .insert(digest_str(&fresh), RefreshState::Valid(user));
        SecretString::from(fresh)
    }

    /// Remembers `code` and returns the value handed to the client.
    pub fn issue_code(&self, code: AuthCode) -> SecretString {
        let value = hex::encode(rand::random::<[u8; 32]>());
        self.lock_codes().insert(digest_str(&value), code);
        SecretString::from(value)
    }

    /// Removes and returns the code: a code is redeemed at most once, even when refused.
    pub fn take_code(&self, value: &str) -> Option<AuthCode> {
        self.lock_codes().remove(&digest_str(value))
    }

    fn lock_codes(&self) -> std::sync::MutexGuard<'_, HashMap<String, AuthCode>> {
        self.codes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Revokes every refresh token of the users named (or with object id) `user`.
    pub fn revoke_refresh_tokens(&self, user: &str) -> usize {
        let mut revoked = 0;
        for state in self.tokens().values_mut() {
            if let RefreshState::Valid(i) = *state {
                let u = &self.users[i];
                if u.name == user || u.object_id == user {
                    *state = RefreshState::Revoked;
                    revoked += 1;
                }
            }
        }
        revoked
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, RefreshState>> {
        self.refresh_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn tenant_of(&self, tenant: &Option<String>) -> String {
        tenant.clone().unwrap_or_else(|| self.tenant.clone())
    }
}

impl Principal {
    /// A signed-in user of `tenant`, delegating the permissions `scope` asks for.
    pub fn of_user(user: &User, tenant: String, scope: &str) -> Principal {
        Principal {
            object_id: user.object_id.clone(),
            client_id: user.client_id.clone(),
            tenant,
            kind: "user",
            name: Some(user.name.clone()),
            resource_id: None,
            scp: delegated_permissions(scope),
        }
    }

    pub fn of_app(app: &App) -> Principal {
        Principal {
            object_id: app.config.object_id.clone(),
            client_id: app.config.client_id.clone(),
            tenant: app.tenant.clone(),
            kind: "app",
            name: None,
            resource_id: None,
            scp: None,
        }
    }
}

fn parse_cert(pem: &str) -> Result<RegisteredCert, openssl::error::ErrorStack> {
    let cert = openssl::x509::X509::from_pem(pem.as_bytes())?;
    let der = cert.to_der()?;
    Ok(RegisteredCert {
        key: cert.public_key()?,
        sha1: openssl::sha::sha1(&der).to_vec(),
        sha256: sha2::Sha256::digest(&der).to_vec(),
    })
}

fn parse_public_key(pem: &str) -> Result<PKey<Public>, openssl::error::ErrorStack> {
    PKey::public_key_from_pem(pem.as_bytes())
}

fn invalid_key(client_id: &str, source: openssl::error::ErrorStack) -> EmulatorError {
    EmulatorError::KeyInvalid {
        client_id: client_id.to_string(),
        source,
    }
}

fn digest(secret: &SecretString) -> String {
    digest_str(secret.expose_secret())
}

fn digest_str(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}
