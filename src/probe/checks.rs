//! The pure decisions of a probe: what the token says, and what Redis's answers mean. Each
//! returns `Ok(message)` for a pass and `Err(message)` for a failure a person can act on.

use crate::identity::claims::{self, REDIS_AUDIENCES, TokenClaims};
use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// How Redis answered a command, reduced to what the decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A normal answer.
    Value(String),
    /// An error reply: its code (`WRONGPASS`, `NOPERM`, ...) and text.
    Refused { code: String, text: String },
    /// The connection failed or closed.
    Broken(String),
    /// No answer within the timeout.
    TimedOut(Duration),
}

/// Decodes the password as an access token.
pub(crate) fn token(password: &str) -> Result<TokenClaims, String> {
    claims::decode(password)
        .map_err(|e| format!("the password is not an Entra ID access token: {e}"))
}

/// Passes while the token is valid, saying how long it has left.
pub(crate) fn expiry(claims: &TokenClaims, now: Timestamp) -> Result<String, String> {
    let left = claims.expires_at.duration_since(now);
    if left.is_positive() {
        Ok(format!(
            "valid for {} more (until {})",
            human(left),
            claims.expires_at
        ))
    } else {
        Err(format!(
            "the token expired {} ago (at {}): the Secret is not being refreshed; \
             check the AmrCredential's status and the operator's logs",
            human(left.abs()),
            claims.expires_at
        ))
    }
}

/// Passes when the audience is one AMR accepts.
pub(crate) fn audience(claims: &TokenClaims) -> Result<String, String> {
    if claims.has_redis_audience() {
        return Ok(format!("audience {}", claims.aud.join(", ")));
    }
    let found = if claims.aud.is_empty() {
        "no audience".to_string()
    } else {
        format!("audience {}", claims.aud.join(", "))
    };
    Err(format!(
        "the token has {found}, not Redis ({}): request the scope {}",
        REDIS_AUDIENCES[0],
        crate::api::DEFAULT_SCOPE
    ))
}

/// Passes when the username is the token's object id, as AMR requires.
pub(crate) fn username(username: &str, claims: &TokenClaims) -> Result<String, String> {
    if username == claims.oid {
        Ok(format!("username is the token's oid {}", claims.oid))
    } else if username.is_empty() {
        Err(format!(
            "the username is empty; it must be the token's oid {}",
            claims.oid
        ))
    } else {
        Err(format!(
            "the username {username} is not the token's oid {}: AMR only accepts the \
             token for its own object id",
            claims.oid
        ))
    }
}

/// Judges the answer to `AUTH username password`.
pub(crate) fn auth(reply: &Reply, username: &str) -> Result<String, String> {
    match reply {
        Reply::Value(_) => Ok(format!("authenticated as {username}")),
        Reply::Refused { code, text } if code == "WRONGPASS" => Err(format!(
            "Redis refused the token for user {username} ({code} {text}): the identity may \
             lack a data access policy on this cache, or the token was revoked"
        )),
        Reply::Refused { code, text } => Err(format!("Redis refused AUTH: {code} {text}")),
        Reply::Broken(why) => Err(format!(
            "the connection broke during AUTH ({why}): if the server expects TLS, do not \
             disable it"
        )),
        Reply::TimedOut(t) => Err(format!("no answer to AUTH within {}", human_std(*t))),
    }
}

/// Judges the answer to `PING`.
pub(crate) fn ping(reply: &Reply) -> Result<String, String> {
    match reply {
        Reply::Value(v) if v == "PONG" => Ok("PONG".to_string()),
        Reply::Value(v) => Err(format!("PING answered {v:?} instead of PONG")),
        Reply::Refused { code, text } => Err(format!("Redis refused PING: {code} {text}")),
        Reply::Broken(why) => Err(format!("the connection broke during PING: {why}")),
        Reply::TimedOut(t) => Err(format!("no answer to PING within {}", human_std(*t))),
    }
}

/// How `ACL WHOAMI` ended; a refused command is skipped, not failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whoami {
    /// The server named the expected user.
    Same(String),
    /// The command is not allowed here; nothing is known.
    Refused(String),
    /// The server named another user, or broke.
    Failed(String),
}

/// Judges the answer to `ACL WHOAMI`.
pub(crate) fn whoami(reply: &Reply, username: &str) -> Whoami {
    match reply {
        Reply::Value(v) if v == username => Whoami::Same(format!("the server names {v}")),
        Reply::Value(v) => Whoami::Failed(format!(
            "the server took the credentials as user {v}, not {username}"
        )),
        Reply::Refused { code, text } => Whoami::Refused(format!(
            "the server does not allow ACL WHOAMI ({code} {text})"
        )),
        Reply::Broken(why) => Whoami::Failed(format!("the connection broke: {why}")),
        Reply::TimedOut(t) => Whoami::Failed(format!("no answer within {}", human_std(*t))),
    }
}

/// Replaces every occurrence of `secret` in `text` by its fingerprint.
pub(crate) fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    text.replace(secret, &claims::fingerprint(secret))
}

/// A duration the way people say it: `54m`, `1h 3m`, `12s`, `3d 2h`.
pub fn human(d: SignedDuration) -> String {
    let sign = if d.is_negative() { "-" } else { "" };
    let secs = d.as_secs().unsigned_abs();
    let (days, hours, mins) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60);
    let text = match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{mins}m"),
        3_600..86_400 if mins == 0 => format!("{hours}h"),
        3_600..86_400 => format!("{hours}h {mins}m"),
        _ if hours == 0 => format!("{days}d"),
        _ => format!("{days}d {hours}h"),
    };
    format!("{sign}{text}")
}

fn human_std(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        human(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(oid: &str, aud: &[&str], exp: i64) -> TokenClaims {
        TokenClaims {
            oid: oid.to_string(),
            tid: None,
            aud: aud.iter().map(|a| (*a).to_string()).collect(),
            issued_at: Timestamp::from_second(0).unwrap(),
            expires_at: Timestamp::from_second(exp).unwrap(),
            app_id: None,
            name: None,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn a_valid_token_says_how_long_it_has_left() {
        let c = claims("o", &["https://redis.azure.com"], 3_600);
        let msg = expiry(&c, at(360)).unwrap();
        assert!(msg.starts_with("valid for 54m more"), "{msg}");
    }

    #[test]
    fn an_expired_token_fails_and_says_since_when() {
        let c = claims("o", &[], 100);
        let msg = expiry(&c, at(280)).unwrap_err();
        assert!(msg.starts_with("the token expired 3m ago"), "{msg}");
        assert!(expiry(&c, at(100)).is_err());
    }

    #[test]
    fn a_token_for_another_audience_names_the_scope_to_request() {
        let msg = audience(&claims("o", &["api://other"], 10)).unwrap_err();
        assert!(msg.contains("api://other"));
        assert!(msg.contains("https://redis.azure.com/.default"));
        assert!(
            audience(&claims("o", &[], 10))
                .unwrap_err()
                .contains("no audience")
        );
    }

    #[test]
    fn the_username_must_be_the_oid() {
        let c = claims("oid-1", &[], 10);
        assert!(username("oid-1", &c).is_ok());
        let msg = username("someone", &c).unwrap_err();
        assert!(msg.contains("someone") && msg.contains("oid-1"));
        assert!(username("", &c).unwrap_err().contains("empty"));
    }

    #[test]
    fn wrongpass_is_explained_as_a_refused_token() {
        let reply = Reply::Refused {
            code: "WRONGPASS".to_string(),
            text: "invalid username-password pair".to_string(),
        };
        let msg = auth(&reply, "oid-1").unwrap_err();
        assert!(msg.contains("refused the token for user oid-1"), "{msg}");
    }

    #[test]
    fn ping_must_answer_pong() {
        assert!(ping(&Reply::Value("PONG".to_string())).is_ok());
        assert!(ping(&Reply::Value("OK".to_string())).is_err());
        assert!(ping(&Reply::TimedOut(Duration::from_millis(200))).is_err());
    }

    #[test]
    fn a_refused_whoami_is_skipped_but_another_user_fails() {
        let refused = Reply::Refused {
            code: "NOPERM".to_string(),
            text: "no permissions".to_string(),
        };
        assert!(matches!(whoami(&refused, "u"), Whoami::Refused(_)));
        let other = Reply::Value("default".to_string());
        assert!(matches!(whoami(&other, "u"), Whoami::Failed(_)));
        assert!(matches!(
            whoami(&Reply::Value("u".into()), "u"),
            Whoami::Same(_)
        ));
    }

    #[test]
    fn redaction_replaces_the_secret_with_its_fingerprint() {
        let text = redact("bad password <abc.def.ghi>", "abc.def.ghi");
        assert!(!text.contains("abc.def.ghi"));
        assert!(text.contains("sha256:"));
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(human(SignedDuration::from_secs(12)), "12s");
        assert_eq!(human(SignedDuration::from_secs(54 * 60 + 5)), "54m");
        assert_eq!(human(SignedDuration::from_secs(3_600)), "1h");
        assert_eq!(human(SignedDuration::from_secs(3_780)), "1h 3m");
        assert_eq!(human(SignedDuration::from_secs(-180)), "-3m");
        assert_eq!(
            human(SignedDuration::from_secs(2 * 86_400 + 7_200)),
            "2d 2h"
        );
    }
}
