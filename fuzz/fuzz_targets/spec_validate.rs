//! `api::validate` on every AmrCredentialSpec that arbitrary YAML or JSON deserialises into;
//! what it accepts must be something the token manager can run.

#![no_main]

use amr_credential_operator::api::{AmrCredentialSpec, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = serde_yaml_ng::from_str::<AmrCredentialSpec>(text) {
        check(&spec);
    }
    if let Ok(spec) = serde_json::from_str::<AmrCredentialSpec>(text) {
        check(&spec);
    }
});

fn check(spec: &AmrCredentialSpec) {
    let Ok(resolved) = validate("fuzz", spec) else {
        return;
    };
    let tm = &resolved.token_manager;
    assert!(!resolved.scopes.is_empty());
    assert!(tm.expiration_refresh_ratio > 0.0 && tm.expiration_refresh_ratio <= 1.0);
    assert!(tm.retry.max_attempts >= 1);
    assert!(tm.retry.initial_delay_ms <= tm.retry.max_delay_ms);
    assert!(tm.retry.backoff_multiplier >= 1.0 && tm.retry.backoff_multiplier.is_finite());
    assert!((0.0..=1.0).contains(&tm.retry.jitter_percentage));
    let keys = &resolved.keys;
    assert!(keys.username != keys.password && keys.password != keys.expires_at);
    assert!(keys.username != keys.expires_at);
}
