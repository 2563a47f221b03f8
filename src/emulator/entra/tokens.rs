//! Access tokens: the emulator's signing key, its JWKS, and the RS256 JWTs it issues.

use super::EmulatorError;
use super::directory::Principal;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Value, json};

/// A token the emulator issued, as announced to subscribers.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// Object id of the identity (the `oid` claim).
    pub oid: String,
    /// Client id of the identity or app (the `appid` claim).
    pub client_id: String,
    /// The `aud` claim.
    pub audience: String,
    /// The access token; its `Debug` output is redacted.
    pub token: SecretString,
    /// The `iat` claim.
    pub issued_at: Timestamp,
    /// The `exp` claim.
    pub expires_at: Timestamp,
}

/// The claims of an issued access token.
#[derive(Debug, Serialize)]
pub(crate) struct AccessClaims {
    pub aud: String,
    pub iss: String,
    pub tid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
    pub sub: String,
    pub appid: String,
    pub azp: String,
    pub idtyp: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xms_mirid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scp: Option<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub uti: String,
    pub ver: &'static str,
}

impl AccessClaims {
    /// Claims for `principal`, valid from `now` for `lifetime` seconds.
    pub fn new(
        principal: &Principal,
        audience: &str,
        issuer: String,
        now: i64,
        lifetime: i64,
    ) -> Self {
        AccessClaims {
            aud: audience.to_string(),
            iss: issuer,
            tid: principal.tenant.clone(),
            oid: Some(principal.object_id.clone()),
            sub: principal.object_id.clone(),
            appid: principal.client_id.clone(),
            azp: principal.client_id.clone(),
            idtyp: principal.kind,
            name: principal.name.clone(),
            xms_mirid: principal.resource_id.clone(),
            scp: principal.scp.clone(),
            iat: now,
            nbf: now,
            exp: now + lifetime,
            uti: hex::encode(rand::random::<[u8; 12]>()),
            ver: "2.0",
        }
    }
}

/// The RSA key that signs access tokens.
pub(crate) struct TokenSigner {
    key: EncodingKey,
    kid: String,
    jwk: Value,
}

impl TokenSigner {
    /// Generates a fresh RSA-2048 signing key.
    pub fn generate() -> Result<TokenSigner, EmulatorError> {
        let pem = crate::emulator::pki::rsa_private_key_pem().map_err(EmulatorError::PkiFailed)?;
        let rsa = openssl::rsa::Rsa::private_key_from_pem(pem.as_bytes())
            .map_err(EmulatorError::SigningKeyFailed)?;
        let n = URL_SAFE_NO_PAD.encode(rsa.n().to_vec());
        let e = URL_SAFE_NO_PAD.encode(rsa.e().to_vec());
        let kid = hex::encode(&openssl::sha::sha256(n.as_bytes())[..10]);
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(EmulatorError::JwtFailed)?;
        let jwk = json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e });
        Ok(TokenSigner { key, kid, jwk })
    }

    /// The JSON Web Key Set that verifies issued tokens.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// Signs `claims` as an RS256 JWT with the key's `kid`.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, EmulatorError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(EmulatorError::JwtFailed)
    }
}

/// The audience a scope asks for: `https://redis.azure.com/.default` gives
/// `https://redis.azure.com`; OpenID scopes are skipped.
pub(crate) fn audience_of(scope: &str) -> Option<String> {
    const OPENID: [&str; 4] = ["openid", "profile", "offline_access", "email"];
    let scope = scope.split_whitespace().find(|s| !OPENID.contains(s))?;
    if let Some(resource) = scope.strip_suffix("/.default") {
        return Some(resource.to_string());
    }
    match scope.rsplit_once('/') {
        Some((resource, _permission)) if resource.contains("://") => Some(resource.to_string()),
        _ => Some(scope.to_string()),
    }
}

/// The delegated permissions (`scp`) a user's token carries for `scope`: the permission
/// each scope names, `user_impersonation` for `/.default`; OpenID scopes are skipped.
pub(crate) fn delegated_permissions(scope: &str) -> Option<String> {
    const OPENID: [&str; 4] = ["openid", "profile", "offline_access", "email"];
    let mut permissions: Vec<&str> = Vec::new();
    for s in scope.split_whitespace().filter(|s| !OPENID.contains(s)) {
        let permission = match s.rsplit_once('/') {
            Some((_, ".default")) | None => "user_impersonation",
            Some((_, permission)) => permission,
        };
        if !permissions.contains(&permission) {
            permissions.push(permission);
        }
    }
    (!permissions.is_empty()).then(|| permissions.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_scope_names_its_resource() {
        let redis = audience_of("https://redis.azure.com/.default");
        assert_eq!(redis.as_deref(), Some("https://redis.azure.com"));
        let app_id = audience_of("acca5fbb-b7e4-4009-81f1-37e38fd66d78/.default");
        assert_eq!(
            app_id.as_deref(),
            Some("acca5fbb-b7e4-4009-81f1-37e38fd66d78")
        );
    }

    #[test]
    fn openid_scopes_are_skipped_and_permissions_dropped() {
        let aud = audience_of("openid offline_access https://redis.azure.com/user_impersonation");
        assert_eq!(aud.as_deref(), Some("https://redis.azure.com"));
        assert_eq!(audience_of("openid profile"), None);
    }

    #[test]
    fn delegated_permissions_name_what_the_scope_asks_for() {
        let scp = delegated_permissions("https://redis.azure.com/.default offline_access");
        assert_eq!(scp.as_deref(), Some("user_impersonation"));
        let scp = delegated_permissions("https://x/read https://x/write openid");
        assert_eq!(scp.as_deref(), Some("read write"));
        assert_eq!(delegated_permissions("offline_access"), None);
    }
}
