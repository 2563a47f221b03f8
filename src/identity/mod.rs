//! Entra ID flows turned into `azure_identity` credentials, token claims, and the shared cache.

pub mod cache;
pub mod claims;
pub mod flows;
pub mod material;
pub mod pkce;
pub mod source;
pub mod transport;

use crate::api::AmrCredentialSpec;
use crate::api::ResolvedSpec;
use claims::TokenClaims;
use secrecy::SecretString;
use std::time::Duration;

/// An access token with the claims read from it.
#[derive(Debug, Clone)]
pub struct AcquiredToken {
    /// The access token; its `Debug` output is redacted.
    pub token: SecretString,
    /// Claims decoded from the token.
    pub claims: TokenClaims,
}

/// Why a refresh round ended without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// An input the spec names (a Secret, a key, a ServiceAccount) is missing or unusable.
    InvalidInput,
    /// The flow may not be used in this namespace.
    NotAllowed,
    /// The flow is not supported yet.
    Unsupported,
    /// Entra ID refused in a way retrying cannot fix (`invalid_client`, a 4xx, no `oid`).
    NonRetryable,
    /// The refresh token is no longer accepted; a person must sign in again.
    LoginRequired,
    /// Every attempt of the round failed with retryable errors.
    RetriesExhausted,
}

impl FailureKind {
    /// The PascalCase reason used in conditions and Events.
    pub fn reason(self) -> &'static str {
        match self {
            FailureKind::InvalidInput => "InvalidInput",
            FailureKind::NotAllowed => "NotAllowed",
            FailureKind::Unsupported => "FlowNotSupported",
            FailureKind::NonRetryable => "NonRetryableError",
            FailureKind::LoginRequired => "LoginRequired",
            FailureKind::RetriesExhausted => "RetriesExhausted",
        }
    }
}

/// A failed refresh round, described without any secret material.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RefreshFailure {
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// A message a person can act on; never contains a token or secret.
    pub message: String,
    /// The server asked not to be called again before this long.
    pub retry_after: Option<Duration>,
    /// Attempts made in the round.
    pub attempts: u32,
}

/// Where the controller and the file mode get tokens from.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// Runs one refresh round (with retries per the spec's retry policy) for the credential
    /// `name` in `namespace`.
    ///
    /// # Errors
    /// A [`RefreshFailure`] when the round ends without a token.
    async fn fetch(
        &self,
        namespace: &str,
        name: &str,
        spec: &AmrCredentialSpec,
        resolved: &ResolvedSpec,
    ) -> Result<AcquiredToken, RefreshFailure>;

    /// Entra ID requests saved so far because a shared token served a credential; sources
    /// without a shared cache save none.
    fn saved_requests(&self) -> u64 {
        0
    }
}
