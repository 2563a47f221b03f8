//! Fixtures for the controller's tests: a fixed clock, credentials, tokens, a fake source.

use super::secret::{self, DesiredSecret};
use crate::api::{AmrCredential, AmrCredentialSpec, ResolvedSpec, validate};
use crate::identity::claims;
use crate::identity::{AcquiredToken, FailureKind, RefreshFailure, TokenSource};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use std::collections::VecDeque;
use std::sync::Mutex;

/// The tests' "now", in seconds since the epoch (2025-06-15T15:06:40Z).
pub const NOW: i64 = 1_750_000_000;

/// The fixed clock.
pub fn now() -> Timestamp {
    Timestamp::from_second(NOW).expect("NOW is in range")
}

/// An unsigned JWT carrying `oid`, `iat` and `exp`.
pub fn jwt(oid: &str, iat: i64, exp: i64) -> String {
    let payload = format!(r#"{{"oid":"{oid}","iat":{iat},"exp":{exp}}}"#);
    format!(
        "eyJhbGciOiJub25lIn0.{}.c2ln",
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// A token for `oid-1` issued at `iat` that lives `lifetime` seconds.
pub fn token_at(iat: i64, lifetime: i64) -> AcquiredToken {
    let token = jwt("oid-1", iat, iat + lifetime);
    AcquiredToken {
        claims: claims::decode(&token).expect("the fixture token decodes"),
        token: token.into(),
    }
}

/// A token for `oid` meant for Redis, issued now by the system clock, valid for an hour:
/// what the probe accepts.
pub fn redis_token(oid: &str) -> AcquiredToken {
    let iat = Timestamp::now().as_second();
    let payload = serde_json::json!({
        "oid": oid, "aud": "https://redis.azure.com", "iat": iat, "exp": iat + 3600,
    });
    let token = format!(
        "eyJhbGciOiJub25lIn0.{}.c2ln",
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    AcquiredToken {
        claims: claims::decode(&token).expect("the fixture token decodes"),
        token: token.into(),
    }
}

/// A failed round that exhausted its retries.
pub fn outage() -> RefreshFailure {
    RefreshFailure {
        kind: FailureKind::RetriesExhausted,
        message: "3 attempts failed: HTTP 503 from the token endpoint".into(),
        retry_after: None,
        attempts: 3,
    }
}

/// A valid ClientCredentials credential `name` in namespace `shop`, generation 1.
pub fn credential(name: &str) -> AmrCredential {
    let spec: AmrCredentialSpec = serde_yaml_ng::from_str(
        "flow: {type: ClientCredentials, clientId: app, clientSecretRef: {name: s, key: k}}\n\
         target: {labels: {team: shop}}",
    )
    .expect("the fixture spec parses");
    let mut cred = AmrCredential::new(name, spec);
    cred.meta_mut().namespace = Some("shop".into());
    cred.meta_mut().uid = Some("uid-1".into());
    cred.meta_mut().generation = Some(1);
    cred
}

/// When the controller schedules the next refresh of credential `name` in namespace `shop`
/// holding `token`: its refresh time, staggered per credential.
pub fn due_of(name: &str, token: &AcquiredToken, resolved: &ResolvedSpec) -> Timestamp {
    let c = &token.claims;
    let due = crate::token_manager::refresh_at(c.issued_at, c.expires_at, &resolved.token_manager);
    let key = crate::token_manager::stable_hash(&format!("shop/{name}"));
    crate::token_manager::staggered(due, c.issued_at, key)
}

/// The Secret the controller would have written for `cred` holding `token`.
pub fn written_secret(cred: &AmrCredential, token: &AcquiredToken) -> Secret {
    let name = cred.meta().name.clone().expect("fixture has a name");
    let resolved: ResolvedSpec = validate(&name, &cred.spec).expect("fixture is valid");
    let due = due_of(&name, token, &resolved);
    secret::render(&DesiredSecret {
        credential: &name,
        namespace: "shop",
        owner: cred.controller_owner_ref(&()).expect("fixture has a uid"),
        spec: &cred.spec,
        resolved: &resolved,
        token,
        refresh_at: due,
        refresh_requested: None,
    })
    .secret
}

/// A token source answering from a script; a request beyond it fails the test.
pub struct FakeTokens(Mutex<VecDeque<Result<AcquiredToken, RefreshFailure>>>);

impl FakeTokens {
    /// Answers each request with the next of `answers`.
    pub fn answering(answers: Vec<Result<AcquiredToken, RefreshFailure>>) -> Self {
        FakeTokens(Mutex::new(answers.into()))
    }
}

#[async_trait::async_trait]
impl TokenSource for FakeTokens {
    async fn fetch(
        &self,
        _namespace: &str,
        _name: &str,
        _spec: &AmrCredentialSpec,
        _resolved: &ResolvedSpec,
    ) -> Result<AcquiredToken, RefreshFailure> {
        let mut answers = self.0.lock().expect("no test panicked holding the lock");
        answers.pop_front().expect("no token request was expected")
    }
}
