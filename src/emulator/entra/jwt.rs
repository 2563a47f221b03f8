//! Reads client assertions the way Entra ID does: base64url with or without padding,
//! RS256 signatures checked against a registered key.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Padding is optional: `azure_identity` pads the parts of its certificate assertions.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

/// Why a JWT could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwtError {
    /// Not three dot-separated base64url parts.
    #[error("not three base64url parts")]
    NotThreeParts,
    /// The header or claims are not the expected JSON.
    #[error("header or claims are not valid JSON")]
    NotJson,
}

/// The header fields that matter for assertions.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    pub alg: String,
    pub x5t: Option<String>,
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: Option<String>,
}

/// The claims of a client assertion.
#[derive(Debug, Deserialize)]
pub(crate) struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    #[serde(default)]
    pub aud: Audience,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
}

/// One audience or several.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(a) => a == wanted,
            Audience::Many(v) => v.iter().any(|a| a == wanted),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Audience::None => String::new(),
            Audience::One(a) => a.clone(),
            Audience::Many(v) => v.join(","),
        }
    }
}

/// A decoded, not yet verified JWT.
#[derive(Debug)]
pub(crate) struct Jwt {
    pub header: Header,
    pub claims: Claims,
    signing_input: String,
    signature: Vec<u8>,
}

impl Jwt {
    /// Decodes `token` without checking anything but its shape.
    pub fn parse(token: &str) -> Result<Jwt, JwtError> {
        let mut parts = token.trim().split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::NotThreeParts);
        };
        Ok(Jwt {
            header: json_part(header)?,
            claims: json_part(claims)?,
            signing_input: format!("{header}.{claims}"),
            signature: URL_SAFE
                .decode(signature)
                .map_err(|_| JwtError::NotThreeParts)?,
        })
    }

    /// Whether the JWT is RS256 and signed by the private half of `key`.
    pub fn signed_rs256_by(&self, key: &PKey<Public>) -> bool {
        if self.header.alg != "RS256" {
            return false;
        }
        Verifier::new(MessageDigest::sha256(), key)
            .and_then(|mut v| {
                v.update(self.signing_input.as_bytes())?;
                v.verify(&self.signature)
            })
            .unwrap_or(false)
    }

    /// Whether `now` (Unix seconds) is before `exp` and not before `nbf`, with `leeway`.
    pub fn is_current(&self, now: i64, leeway: i64) -> bool {
        let not_expired = self.claims.exp.is_some_and(|exp| now < exp + leeway);
        let started = self.claims.nbf.is_none_or(|nbf| nbf <= now + leeway);
        not_expired && started
    }
}

/// Decodes a thumbprint header value sent as base64url or standard base64.
pub(crate) fn decode_thumbprint(value: &str) -> Option<Vec<u8>> {
    URL_SAFE
        .decode(value)
        .or_else(|_| STANDARD.decode(value))
        .ok()
}

fn json_part<T: DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE.decode(part).map_err(|_| JwtError::NotThreeParts)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::NotJson)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE as PADDED;

    fn signed(key: &PKey<openssl::pkey::Private>, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", PADDED.encode(header), PADDED.encode(claims));
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), key).unwrap();
        signer.update(input.as_bytes()).unwrap();
        format!("{input}.{}", PADDED.encode(signer.sign_to_vec().unwrap()))
    }

    fn key_pair() -> (PKey<openssl::pkey::Private>, PKey<Public>) {
        let private = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let public = PKey::public_key_from_pem(&private.public_key_to_pem().unwrap()).unwrap();
        (private, public)
    }

    #[test]
    fn a_padded_assertion_is_read_and_its_signature_verified() {
        let (private, public) = key_pair();
        let token = signed(
            &private,
            r#"{"alg":"RS256","x5t":"q+/wqw=="}"#,
            r#"{"exp":10}"#,
        );
        let jwt = Jwt::parse(&token).unwrap();
        assert!(jwt.signed_rs256_by(&public));
        assert_eq!(
            decode_thumbprint(jwt.header.x5t.as_deref().unwrap()),
            Some(vec![171, 239, 240, 171])
        );
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let (private, _) = key_pair();
        let (_, other) = key_pair();
        let jwt = Jwt::parse(&signed(&private, r#"{"alg":"RS256"}"#, "{}")).unwrap();
        assert!(!jwt.signed_rs256_by(&other));
    }

    #[test]
    fn time_checks_use_exp_and_nbf() {
        let jwt = Jwt::parse(&format!(
            "{}.{}.c2ln",
            PADDED.encode(r#"{"alg":"RS256"}"#),
            PADDED.encode(r#"{"exp":100,"nbf":50}"#)
        ))
        .unwrap();
        assert!(jwt.is_current(60, 0));
        assert!(!jwt.is_current(100, 0));
        assert!(!jwt.is_current(40, 0));
        assert!(jwt.is_current(40, 10));
    }

    #[test]
    fn garbage_is_not_a_jwt() {
        assert_eq!(Jwt::parse("a.b").unwrap_err(), JwtError::NotThreeParts);
        assert_eq!(Jwt::parse("e30.W10.c2ln").unwrap_err(), JwtError::NotJson);
    }
}
