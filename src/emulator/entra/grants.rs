//! Decides token endpoint requests: which principal a grant authenticates, or the OAuth
//! error Entra ID would answer.

use super::authorize;
use super::directory::{App, Directory, Principal, RefreshState};
use super::jwt::{Jwt, decode_thumbprint};
use super::log::Flow;
use super::oauth::{OAuthError, refusals};
use super::tokens::audience_of;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;

/// The `client_assertion_type` of JWT client assertions.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew tolerated on assertion times, in seconds.
const LEEWAY_SECS: i64 = 5;

/// Tenants that stand for "whichever tenant the user belongs to".
pub(crate) const MULTI_TENANT: [&str; 2] = ["common", "organizations"];

/// The form fields of a token request.
#[derive(Debug, Default)]
pub(crate) struct TokenForm(HashMap<String, String>);

impl TokenForm {
    pub fn parse(body: &[u8]) -> TokenForm {
        TokenForm(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The field's value, when present and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The field's value, or the `invalid_request` Entra ID answers when it is missing.
    pub fn required(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| refusals::missing_parameter(name))
    }

    /// The flow the request uses, judged from its fields alone.
    pub fn flow(&self) -> Option<Flow> {
        match (
            self.get("grant_type")?,
            self.get("client_secret"),
            self.get("client_assertion"),
        ) {
            ("refresh_token", _, _) => Some(Flow::RefreshToken),
            ("authorization_code", _, _) => Some(Flow::AuthorizationCode),
            ("client_credentials", Some(_), _) => Some(Flow::ClientSecret),
            ("client_credentials", None, Some(assertion)) => {
                let jwt = Jwt::parse(assertion).ok()?;
                let self_issued = jwt.claims.iss.as_deref() == self.get("client_id");
                Some(if self_issued {
                    Flow::ClientCertificate
                } else {
                    Flow::Federated
                })
            }
            _ => None,
        }
    }
}

/// A request that may have its token.
#[derive(Debug)]
pub(crate) struct Grant {
    pub principal: Principal,
    pub audience: String,
    pub scope: String,
    /// The rotated refresh token, for the refresh token grant.
    pub refresh_token: Option<SecretString>,
}

/// Decides a request to `/{tenant}/oauth2/v2.0/token`, served at `endpoint`, at `now`.
pub(crate) fn decide(
    dir: &Directory,
    tenant: &str,
    form: &TokenForm,
    endpoint: &str,
    now: i64,
) -> Result<Grant, OAuthError> {
    let grant_type = form.required("grant_type")?;
    let client_id = form.required("client_id")?;
    if grant_type == "authorization_code" {
        return authorize::redeem_code(dir, tenant, client_id, form, now);
    }
    let scope = form.required("scope")?;
    match grant_type {
        "client_credentials" => {
            let audience = scope
                .strip_suffix("/.default")
                .filter(|a| !a.contains(' '))
                .ok_or_else(|| refusals::invalid_scope(scope))?;
            let principal = authenticate(dir, tenant, client_id, form, endpoint, now)?;
            let audience = audience.to_string();
            Ok(Grant {
                principal,
                audience,
                scope: scope.to_string(),
                refresh_token: None,
            })
        }
        "refresh_token" => redeem(dir, tenant, client_id, form, scope),
        other => Err(refusals::unsupported_grant(other)),
    }
}

fn authenticate(
    dir: &Directory,
    tenant: &str,
    client_id: &str,
    form: &TokenForm,
    endpoint: &str,
    now: i64,
) -> Result<Principal, OAuthError> {
    if let Some(secret) = form.get("client_secret") {
        return by_secret(dir, tenant, client_id, secret);
    }
    let (Some(ASSERTION_TYPE), Some(assertion)) = (
        form.get("client_assertion_type"),
        form.get("client_assertion"),
    ) else {
        return Err(refusals::no_client_credential());
    };
    let jwt = Jwt::parse(assertion).map_err(|e| refusals::malformed_assertion(&e.to_string()))?;
    if jwt.claims.iss.as_deref() == Some(client_id) {
        by_certificate(registered_app(dir, tenant, client_id)?, &jwt, endpoint, now)
    } else {
        by_federation(dir, tenant, client_id, &jwt, now)
    }
}

fn registered_app<'d>(
    dir: &'d Directory,
    tenant: &str,
    client_id: &str,
) -> Result<&'d App, OAuthError> {
    dir.app(client_id)
        .filter(|app| app.tenant == tenant)
        .ok_or_else(|| refusals::unknown_client(client_id, tenant))
}

fn by_secret(
    dir: &Directory,
    tenant: &str,
    client_id: &str,
    secret: &str,
) -> Result<Principal, OAuthError> {
    let app = registered_app(dir, tenant, client_id)?;
    match &app.config.client_secret {
        Some(expected) if expected.expose_secret() == secret => Ok(Principal::of_app(app)),
        _ => Err(refusals::wrong_secret(client_id)),
    }
}

fn by_certificate(app: &App, jwt: &Jwt, endpoint: &str, now: i64) -> Result<Principal, OAuthError> {
    let cert = app
        .cert
        .as_ref()
        .ok_or_else(|| refusals::assertion_not_trusted("the application has no certificate"))?;
    let header = &jwt.header;
    let s256 = header.x5t_s256.as_deref().and_then(decode_thumbprint);
    let sha1 = header.x5t.as_deref().and_then(decode_thumbprint);
    if s256.as_ref() != Some(&cert.sha256) && sha1.as_ref() != Some(&cert.sha1) {
        return Err(refusals::assertion_not_trusted(
            "the signing certificate is not registered",
        ));
    }
    if !jwt.signed_rs256_by(&cert.key) {
        return Err(refusals::assertion_not_trusted(
            "the signature does not match",
        ));
    }
    if jwt.claims.sub.as_deref() != Some(app.config.client_id.as_str()) {
        return Err(refusals::assertion_for_other_client());
    }
    let trimmed = endpoint.trim_end_matches('/');
    if !jwt.claims.aud.contains(endpoint) && !jwt.claims.aud.contains(trimmed) {
        return Err(refusals::assertion_audience_wrong());
    }
    if !jwt.is_current(now, LEEWAY_SECS) {
        return Err(refusals::assertion_expired());
    }
    Ok(Principal::of_app(app))
}

fn by_federation(
    dir: &Directory,
    tenant: &str,
    client_id: &str,
    jwt: &Jwt,
    now: i64,
) -> Result<Principal, OAuthError> {
    let claims = &jwt.claims;
    let (iss, sub) = (
        claims.iss.as_deref().unwrap_or(""),
        claims.sub.as_deref().unwrap_or(""),
    );
    let known: Vec<_> = dir
        .federated_for(client_id)
        .filter(|f| f.tenant == tenant)
        .collect();
    if known.is_empty() {
        return Err(refusals::unknown_client(client_id, tenant));
    }
    let issuer_ok: Vec<_> = known
        .into_iter()
        .filter(|f| f.config.issuer == iss)
        .collect();
    let subject_ok: Vec<_> = issuer_ok
        .iter()
        .filter(|f| f.config.subject == sub)
        .collect();
    let Some(fc) = subject_ok
        .iter()
        .find(|f| claims.aud.contains(&f.config.audience))
    else {
        return Err(match (issuer_ok.is_empty(), subject_ok.is_empty()) {
            (true, _) => refusals::no_federated_match("issuer", iss, 700211),
            (false, true) => refusals::no_federated_match("subject", sub, 700213),
            _ => refusals::no_federated_match("audience", &claims.aud.describe(), 700212),
        });
    };
    if fc.key.as_ref().is_some_and(|key| !jwt.signed_rs256_by(key)) {
        return Err(refusals::assertion_not_trusted(
            "the issuer's key did not sign the assertion",
        ));
    }
    if !jwt.is_current(now, LEEWAY_SECS) {
        return Err(refusals::assertion_expired());
    }
    Ok(Principal {
        object_id: fc.config.object_id.clone(),
        client_id: client_id.to_string(),
        tenant: fc.tenant.clone(),
        kind: "app",
        name: None,
        resource_id: None,
        scp: None,
    })
}

fn redeem(
    dir: &Directory,
    tenant: &str,
    client_id: &str,
    form: &TokenForm,
    scope: &str,
) -> Result<Grant, OAuthError> {
    let token = form.required("refresh_token")?;
    let index = match dir.refresh_state(token) {
        None => return Err(refusals::unknown_refresh_token()),
        Some(RefreshState::Revoked) => return Err(refusals::refresh_token_revoked()),
        Some(RefreshState::Valid(i)) => i,
    };
    let user = &dir.users[index];
    let user_tenant = dir.tenant_of(&user.tenant);
    if user.client_id != client_id {
        return Err(refusals::refresh_token_of_other_client());
    }
    if user_tenant != tenant && !MULTI_TENANT.contains(&tenant) {
        return Err(refusals::unknown_refresh_token());
    }
    // A confidential client proves itself as well.
    if let Some(secret) = form.get("client_secret") {
        by_secret(dir, &user_tenant, client_id, secret)?;
    }
    let audience = audience_of(scope).ok_or_else(|| refusals::invalid_scope(scope))?;

    let principal = Principal::of_user(user, user_tenant, scope);
    let refresh_token = Some(dir.rotate_refresh_token(token, index));
    Ok(Grant {
        principal,
        audience,
        scope: scope.to_string(),
        refresh_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::entra::config::{AppRegistration, EntraConfig, User};

    fn directory() -> Directory {
        let config = EntraConfig::default()
            .with_tenant("t")
            .with_app(AppRegistration::new("app", "oid-app").with_secret("pw"))
            .with_user(User::new("alice", "oid-alice", "cli", "rt-1"));
        Directory::new(&config).unwrap()
    }

    fn form(pairs: &[(&str, &str)]) -> TokenForm {
        TokenForm(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn secret_form(scope: &str) -> TokenForm {
        let pairs = [("grant_type", "client_credentials"), ("client_id", "app")];
        form(&[&pairs[..], &[("client_secret", "pw"), ("scope", scope)]].concat())
    }

    #[test]
    fn client_credentials_need_a_default_scope() {
        let refusal = decide(&directory(), "t", &secret_form("https://x/read"), "", 0);
        assert_eq!(refusal.unwrap_err().code, 1002012);
        let grant = decide(&directory(), "t", &secret_form("https://x/.default"), "", 0);
        assert_eq!(grant.unwrap().audience, "https://x");
    }

    #[test]
    fn an_app_is_unknown_in_another_tenant() {
        let refusal = decide(
            &directory(),
            "other",
            &secret_form("https://x/.default"),
            "",
            0,
        );
        assert_eq!(refusal.unwrap_err().code, 700016);
    }

    #[test]
    fn a_refresh_token_only_works_for_the_client_it_was_issued_to() {
        let redeem = |client| {
            let pairs = [("grant_type", "refresh_token"), ("client_id", client)];
            form(
                &[
                    &pairs[..],
                    &[("refresh_token", "rt-1"), ("scope", "https://x/.default")],
                ]
                .concat(),
            )
        };
        let dir = directory();
        let refusal = decide(&dir, "t", &redeem("intruder"), "", 0).unwrap_err();
        assert_eq!(refusal.error, "invalid_grant");
        let grant = decide(&dir, "common", &redeem("cli"), "", 0).unwrap();
        assert_eq!(
            (grant.principal.kind, grant.principal.tenant.as_str()),
            ("user", "t")
        );
    }

    #[test]
    fn a_request_without_grant_type_names_the_missing_parameter() {
        let refusal = decide(&directory(), "t", &form(&[("client_id", "app")]), "", 0);
        assert!(refusal.unwrap_err().description.contains("'grant_type'"));
    }
}
