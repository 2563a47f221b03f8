//! The authorize endpoint and the authorization code grant: a configured user signs in to a
//! public client at once, and the code is redeemed with its PKCE verifier (S256 only).
//!
//! ```text
//!   browser ─GET /{tenant}/oauth2/v2.0/authorize─▶ 302 redirect_uri?code=…&state=…
//!   client  ─POST /{tenant}/oauth2/v2.0/token (code, code_verifier)─▶ tokens
//! ```

use super::directory::{AuthCode, Directory, Principal};
use super::grants::{Grant, MULTI_TENANT, TokenForm};
use super::oauth::{OAuthError, refusals};
use super::tokens::audience_of;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::ExposeSecret;
use sha2::Digest;
use std::collections::HashMap;
use url::Url;

/// How long a code may wait before it is redeemed, in seconds.
pub(crate) const CODE_LIFETIME_SECS: i64 = 60;

/// What the authorize endpoint answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthorizeAnswer {
    /// Send the browser to the redirect URI, with `code` and `state`, or with `error`.
    Redirect {
        /// The redirect URI with the answer in its query.
        location: Url,
        /// The OAuth error sent, for the request log.
        error: Option<String>,
    },
    /// Show an error page: the request names no redirect URI that may receive an answer.
    Refuse(OAuthError),
}

/// Decides an authorize request of `tenant` at `now` (Unix seconds).
pub(crate) fn authorize(
    dir: &Directory,
    tenant: &str,
    query: &HashMap<String, String>,
    now: i64,
) -> AuthorizeAnswer {
    let param = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client_id) = param("client_id") else {
        return AuthorizeAnswer::Refuse(refusals::missing_parameter("client_id"));
    };
    let Some(raw_redirect) = param("redirect_uri") else {
        return AuthorizeAnswer::Refuse(refusals::missing_parameter("redirect_uri"));
    };
    // Answers only ever go back to this machine.
    let Some(redirect) = loopback(raw_redirect) else {
        return AuthorizeAnswer::Refuse(refusals::redirect_uri_not_loopback(raw_redirect));
    };
    let Some(user) = signing_in(dir, tenant, client_id, param("login_hint")) else {
        return AuthorizeAnswer::Refuse(refusals::unknown_client(client_id, tenant));
    };

    let state = param("state");
    match approve(dir, user, client_id, raw_redirect, query, now) {
        Ok(code) => AuthorizeAnswer::Redirect {
            location: with_answer(&redirect, &[("code", Some(&code)), ("state", state)]),
            error: None,
        },
        Err(e) => {
            let description = format!("AADSTS{}: {}", e.code, e.description);
            let answer = [
                ("error", Some(e.error.as_str())),
                ("error_description", Some(description.as_str())),
                ("state", state),
            ];
            AuthorizeAnswer::Redirect {
                location: with_answer(&redirect, &answer),
                error: Some(e.error),
            }
        }
    }
}

/// Checks the request and, when the user may sign in without interaction, issues a code.
fn approve(
    dir: &Directory,
    user: usize,
    client_id: &str,
    redirect_uri: &str,
    query: &HashMap<String, String>,
    now: i64,
) -> Result<String, OAuthError> {
    let param = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let response_type = param("response_type").unwrap_or("");
    if response_type != "code" {
        return Err(refusals::unsupported_response_type(response_type));
    }
    let scope = param("scope").ok_or_else(|| refusals::missing_parameter("scope"))?;
    let challenge =
        param("code_challenge").ok_or_else(|| refusals::missing_parameter("code_challenge"))?;
    // RFC 7636 makes `plain` the default method; the emulator accepts S256 only.
    let method = param("code_challenge_method").unwrap_or("plain");
    if method != "S256" {
        return Err(refusals::challenge_method_unsupported(method));
    }
    if dir.users[user].requires_interaction {
        return Err(refusals::interaction_required());
    }
    let code = dir.issue_code(AuthCode {
        user,
        client_id: client_id.to_string(),
        redirect_uri: redirect_uri.to_string(),
        challenge: challenge.to_string(),
        scope: scope.to_string(),
        expires_at: now + CODE_LIFETIME_SECS,
    });
    Ok(code.expose_secret().to_string())
}

/// Redeems an authorization code: single use, before it expires, by the client and with the
/// redirect URI it was issued for, and with the verifier of its challenge.
pub(crate) fn redeem_code(
    dir: &Directory,
    tenant: &str,
    client_id: &str,
    form: &TokenForm,
    now: i64,
) -> Result<Grant, OAuthError> {
    let value = form.required("code")?;
    let code = dir.take_code(value).ok_or_else(refusals::code_unknown)?;
    if now > code.expires_at {
        return Err(refusals::code_expired());
    }
    if code.client_id != client_id {
        return Err(refusals::code_of_other_client());
    }
    if form.get("redirect_uri") != Some(code.redirect_uri.as_str()) {
        return Err(refusals::code_redirect_mismatch());
    }
    let verifier = form.required("code_verifier")?;
    if !verifier_matches(verifier, &code.challenge) {
        return Err(refusals::verifier_mismatch());
    }

    let user = &dir.users[code.user];
    let user_tenant = dir.tenant_of(&user.tenant);
    if user_tenant != tenant && !MULTI_TENANT.contains(&tenant) {
        return Err(refusals::code_unknown());
    }
    let scope = form.get("scope").unwrap_or(&code.scope).to_string();
    let audience = audience_of(&scope).ok_or_else(|| refusals::invalid_scope(&scope))?;
    let offline = scope.split_whitespace().any(|s| s == "offline_access");
    Ok(Grant {
        principal: Principal::of_user(user, user_tenant, &scope),
        audience,
        refresh_token: offline.then(|| dir.issue_refresh_token(code.user)),
        scope,
    })
}

/// The S256 challenge of a verifier: base64url of its SHA-256, without padding.
pub(crate) fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    (43..=128).contains(&verifier.len()) && s256_challenge(verifier) == challenge
}

/// The user who signs in to `client_id`: the one `login_hint` names, else the first one
/// registered for the client in that tenant.
fn signing_in(
    dir: &Directory,
    tenant: &str,
    client_id: &str,
    login_hint: Option<&str>,
) -> Option<usize> {
    dir.users.iter().position(|u| {
        let tenant_ok = dir.tenant_of(&u.tenant) == tenant || MULTI_TENANT.contains(&tenant);
        let hinted = login_hint.is_none_or(|h| h == u.name || h == u.object_id);
        u.client_id == client_id && tenant_ok && hinted
    })
}

/// An `http` URL of 127.0.0.1, `[::1]` or `localhost`, without a fragment.
fn loopback(raw: &str) -> Option<Url> {
    let url = Url::parse(raw).ok()?;
    let host_ok = matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
    (url.scheme() == "http" && host_ok && url.fragment().is_none()).then_some(url)
}

fn with_answer(redirect: &Url, pairs: &[(&str, Option<&str>)]) -> Url {
    let mut url = redirect.clone();
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in pairs {
            if let Some(v) = v {
                query.append_pair(k, v);
            }
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::entra::config::{EntraConfig, User};

    const VERIFIER: &str = "a-verifier-of-at-least-forty-three-characters-000";
    const REDIRECT: &str = "http://127.0.0.1:8400/callback";

    fn directory() -> Directory {
        let config = EntraConfig::default()
            .with_tenant("t")
            .with_user(User::new("alice", "oid-alice", "cli", "rt-1"))
            .with_user(User::new("bob", "oid-bob", "cli", "rt-2").requiring_interaction());
        Directory::new(&config).unwrap()
    }

    fn query(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let challenge = s256_challenge(VERIFIER);
        let base = [
            ("response_type", "code"),
            ("client_id", "cli"),
            ("redirect_uri", REDIRECT),
            ("scope", "https://redis.azure.com/.default offline_access"),
            ("state", "st"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let mut q: HashMap<String, String> = base
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        q.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        q
    }

    fn answer(location: &Url, key: &str) -> Option<String> {
        location
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    fn code(dir: &Directory) -> String {
        match authorize(dir, "t", &query(&[]), 0) {
            AuthorizeAnswer::Redirect { location, .. } => answer(&location, "code").unwrap(),
            AuthorizeAnswer::Refuse(e) => panic!("refused: {e:?}"),
        }
    }

    fn redeem(dir: &Directory, code: &str, verifier: &str, now: i64) -> Result<Grant, OAuthError> {
        let form = TokenForm::parse(
            format!(
                "grant_type=authorization_code&client_id=cli&code={code}&code_verifier=\
                 {verifier}&redirect_uri={}",
                url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
            )
            .as_bytes(),
        );
        redeem_code(dir, "t", "cli", &form, now)
    }

    #[test]
    fn the_user_is_sent_back_to_the_redirect_uri_with_a_code_and_the_state() {
        let AuthorizeAnswer::Redirect { location, error } =
            authorize(&directory(), "t", &query(&[]), 0)
        else {
            panic!("refused")
        };
        assert_eq!(error, None);
        assert!(location.as_str().starts_with(REDIRECT), "{location}");
        assert_eq!(answer(&location, "state").as_deref(), Some("st"));
        assert!(answer(&location, "code").is_some());
    }

    #[test]
    fn a_redirect_uri_off_this_machine_gets_no_redirect() {
        let q = query(&[("redirect_uri", "https://example.net/callback")]);
        let AuthorizeAnswer::Refuse(e) = authorize(&directory(), "t", &q, 0) else {
            panic!("redirected")
        };
        assert_eq!((e.error.as_str(), e.code), ("invalid_request", 50011));
    }

    #[test]
    fn a_plain_challenge_and_a_user_needing_interaction_are_answered_with_errors() {
        let cases = [
            (
                query(&[("code_challenge_method", "plain")]),
                "invalid_request",
            ),
            (query(&[("login_hint", "bob")]), "interaction_required"),
            (
                query(&[("response_type", "token")]),
                "unsupported_response_type",
            ),
        ];
        for (q, expected) in cases {
            let AuthorizeAnswer::Redirect { location, error } = authorize(&directory(), "t", &q, 0)
            else {
                panic!("refused")
            };
            assert_eq!(error.as_deref(), Some(expected));
            assert_eq!(answer(&location, "error").as_deref(), Some(expected));
            assert_eq!(answer(&location, "state").as_deref(), Some("st"));
        }
    }

    #[test]
    fn a_code_is_redeemed_once_for_a_user_token_and_a_refresh_token() {
        let dir = directory();
        let code = code(&dir);
        let grant = redeem(&dir, &code, VERIFIER, 1).unwrap();
        assert_eq!(grant.principal.object_id, "oid-alice");
        assert_eq!(grant.principal.scp.as_deref(), Some("user_impersonation"));
        assert_eq!(grant.audience, "https://redis.azure.com");
        assert!(grant.refresh_token.is_some());
        assert_eq!(redeem(&dir, &code, VERIFIER, 1).unwrap_err().code, 54005);
    }

    #[test]
    fn a_wrong_verifier_is_refused_and_uses_up_the_code() {
        let dir = directory();
        let code = code(&dir);
        let wrong = "another-verifier-of-at-least-forty-three-characters";
        let e = redeem(&dir, &code, wrong, 1).unwrap_err();
        assert_eq!((e.error.as_str(), e.code), ("invalid_grant", 501481));
        assert_eq!(redeem(&dir, &code, VERIFIER, 1).unwrap_err().code, 54005);
    }

    #[test]
    fn a_code_only_works_for_its_client_and_redirect_uri() {
        let dir = directory();
        let form = |code: &str, client: &str, redirect: &str| {
            let pairs = [
                ("code", code),
                ("code_verifier", VERIFIER),
                ("redirect_uri", redirect),
            ];
            let body: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            redeem_code(&dir, "t", client, &TokenForm::parse(body.as_bytes()), 0)
        };
        let other_client = form(&code(&dir), "intruder", REDIRECT).unwrap_err();
        assert_eq!(other_client.code, 70000);
        let other_redirect = form(&code(&dir), "cli", "http://127.0.0.1:1/x").unwrap_err();
        assert_eq!(other_redirect.code, 500112);
    }

    #[test]
    fn an_expired_code_is_refused() {
        let dir = directory();
        let code = code(&dir);
        let e = redeem(&dir, &code, VERIFIER, CODE_LIFETIME_SECS + 1).unwrap_err();
        assert_eq!((e.error.as_str(), e.code), ("invalid_grant", 70008));
    }
}
