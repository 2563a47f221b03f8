//! Reads the claims of an Entra ID access token without verifying it: the operator needs
//! `oid` (the Redis username), `exp` and `iat`; Redis verifies the signature itself.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use serde::Deserialize;

/// Why a token could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimsError {
    /// Not three dot-separated parts.
    #[error("the token is not a JWT (expected three dot-separated parts)")]
    NotAJwt,
    /// The payload is not base64url.
    #[error("the token payload is not base64url")]
    PayloadNotBase64,
    /// The payload is not a JSON object of the expected shape.
    #[error("the token payload is not valid JSON claims: {0}")]
    PayloadNotJson(String),
    /// A claim the operator needs is absent.
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A time claim is outside the representable range.
    #[error("the token's `{0}` claim is out of range")]
    TimeOutOfRange(&'static str),
    /// `exp` is not after `iat`.
    #[error("the token expires before it was issued")]
    ExpiresBeforeIssued,
}

/// Audience values AMR accepts.
pub const REDIS_AUDIENCES: [&str; 2] = [
    "https://redis.azure.com",
    "acca5fbb-b7e4-4009-81f1-37e38fd66d78",
];

/// The claims of an access token that matter to the operator and the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// Object id of the identity: the Redis username.
    pub oid: String,
    /// Tenant id, when present.
    pub tid: Option<String>,
    /// Audience values.
    pub aud: Vec<String>,
    /// Issued at; falls back to `nbf`, then to `exp` minus nothing when both are absent.
    pub issued_at: Timestamp,
    /// Expiry.
    pub expires_at: Timestamp,
    /// Application id of the client, from `appid` or `azp`.
    pub app_id: Option<String>,
    /// Display name, for delegated tokens.
    pub name: Option<String>,
}

impl TokenClaims {
    /// Whether the audience is one AMR accepts.
    pub fn has_redis_audience(&self) -> bool {
        self.aud.iter().any(|a| {
            let a = a.trim_end_matches('/');
            REDIS_AUDIENCES.contains(&a)
        })
    }
}

#[derive(Deserialize)]
struct RawClaims {
    oid: Option<String>,
    tid: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    iat: Option<i64>,
    nbf: Option<i64>,
    exp: Option<i64>,
    appid: Option<String>,
    azp: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Decodes the payload of `token`.
///
/// # Errors
/// A [`ClaimsError`] naming what is wrong; the message never contains the token.
pub fn decode(token: &str) -> Result<TokenClaims, ClaimsError> {
    let mut parts = token.trim().split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ClaimsError::NotAJwt);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| ClaimsError::PayloadNotBase64)?;
    let raw: RawClaims = serde_json::from_slice(&bytes)
        .map_err(|e| ClaimsError::PayloadNotJson(json_problem(&e).to_string()))?;

    let oid = raw
        .oid
        .filter(|o| !o.is_empty())
        .ok_or(ClaimsError::MissingClaim("oid"))?;
    let exp = raw.exp.ok_or(ClaimsError::MissingClaim("exp"))?;
    let expires_at = ts(exp, "exp")?;
    let issued_at = match raw.iat.or(raw.nbf) {
        Some(i) => ts(i, "iat")?,
        None => expires_at,
    };
    if expires_at < issued_at {
        return Err(ClaimsError::ExpiresBeforeIssued);
    }
    let aud = match raw.aud {
        None => Vec::new(),
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(v)) => v,
    };
    Ok(TokenClaims {
        oid,
        tid: raw.tid,
        aud,
        issued_at,
        expires_at,
        app_id: raw.appid.or(raw.azp),
        name: raw.name,
    })
}

fn ts(secs: i64, claim: &'static str) -> Result<Timestamp, ClaimsError> {
    Timestamp::from_second(secs).map_err(|_| ClaimsError::TimeOutOfRange(claim))
}

/// A short, non-reversible fingerprint of a secret value, safe to print.
pub fn fingerprint(secret: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(secret.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..4]))
}

/// What kind of JSON problem `e` is, without quoting the input.
fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected claim types",
        serde_json::error::Category::Eof => "truncated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJub25lIn0.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_oid_expiry_and_issue_time() {
        let c = decode(&jwt(
            r#"{"oid":"o-1","iat":1000,"exp":4600,"aud":"https://redis.azure.com"}"#,
        ))
        .unwrap();
        assert_eq!(c.oid, "o-1");
        assert_eq!(c.issued_at.as_second(), 1000);
        assert_eq!(c.expires_at.as_second(), 4600);
        assert!(c.has_redis_audience());
    }

    #[test]
    fn a_token_without_oid_is_an_error() {
        assert_eq!(
            decode(&jwt(r#"{"exp":10}"#)),
            Err(ClaimsError::MissingClaim("oid"))
        );
        assert_eq!(
            decode(&jwt(r#"{"oid":"","exp":10}"#)),
            Err(ClaimsError::MissingClaim("oid"))
        );
    }

    #[test]
    fn a_token_without_exp_is_an_error() {
        assert_eq!(
            decode(&jwt(r#"{"oid":"o"}"#)),
            Err(ClaimsError::MissingClaim("exp"))
        );
    }

    #[test]
    fn malformed_tokens_give_errors() {
        assert_eq!(decode("abc"), Err(ClaimsError::NotAJwt));
        assert_eq!(decode("a.b.c.d"), Err(ClaimsError::NotAJwt));
        assert_eq!(decode("a.!!!.c"), Err(ClaimsError::PayloadNotBase64));
        assert!(matches!(
            decode(&jwt("[1,2]")),
            Err(ClaimsError::PayloadNotJson(_))
        ));
        assert!(matches!(
            decode(&jwt(r#"{"oid":"o","exp":"#)),
            Err(ClaimsError::PayloadNotJson(_))
        ));
    }

    #[test]
    fn expiry_before_issue_is_an_error() {
        let t = jwt(r#"{"oid":"o","iat":100,"exp":50}"#);
        assert_eq!(decode(&t), Err(ClaimsError::ExpiresBeforeIssued));
    }

    #[test]
    fn out_of_range_times_are_errors_not_panics() {
        let t = jwt(r#"{"oid":"o","exp":9223372036854775807}"#);
        assert_eq!(decode(&t), Err(ClaimsError::TimeOutOfRange("exp")));
    }

    #[test]
    fn audience_may_be_a_list_or_the_app_id() {
        let c = decode(&jwt(
            r#"{"oid":"o","exp":10,"aud":["x","acca5fbb-b7e4-4009-81f1-37e38fd66d78"]}"#,
        ))
        .unwrap();
        assert!(c.has_redis_audience());
        let c = decode(&jwt(r#"{"oid":"o","exp":10,"aud":"api://other"}"#)).unwrap();
        assert!(!c.has_redis_audience());
    }

    #[test]
    fn error_messages_never_echo_the_token() {
        let t = jwt(r#"{"oid":"o","exp":"secretish"}"#);
        let msg = decode(&t).unwrap_err().to_string();
        assert!(!msg.contains("secretish"));
    }

    #[test]
    fn fingerprint_is_short_and_stable() {
        assert_eq!(fingerprint("abc"), fingerprint("abc"));
        assert_eq!(fingerprint("abc").len(), "sha256:".len() + 8);
        assert_ne!(fingerprint("abc"), fingerprint("abd"));
    }
}
