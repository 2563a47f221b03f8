//! The properties the `fuzz/` targets check, as property tests in the normal suite: the token
//! claims parser, spec validation, the credentials file parser and the Entra ID error response
//! parser never panic, and what they accept is usable. Each runs a modest number of cases;
//! the `#[ignore]`d `_at_volume` variants run many more
//! (`cargo test --test arbitrary_input -- --ignored`).

use amr_credential_operator::api::{
    AmrCredentialSpec, AuthorityConfig, AuthorityType, CertificateRef, FlowSpec, FlowType,
    ResolvedSpec, RetryConfig, Scopes, SecretKeyRef, SecretKeys, SecretTarget, TokenManagerConfig,
    validate,
};
use amr_credential_operator::identity::claims::decode;
use amr_credential_operator::identity::transport::parse_error_body;
use amr_credential_operator::local;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseResult, TestRunner};
use serde_json::{Value, json};
use std::path::Path;

const CASES: u32 = 256;
const VOLUME: u32 = 200_000;

/// Runs `test` on `cases` values of `strategy`, shrinking any failure or panic.
fn check<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult) {
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if let Err(e) = TestRunner::new(config).run(&strategy, test) {
        panic!("{e}");
    }
}

// Token claims.

fn claim_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![
            0i64,
            1,
            -1,
            253_402_300_799,
            253_402_300_800,
            -377_705_116_800
        ])
        .prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
        prop::collection::vec(".{0,8}", 0..3).prop_map(Value::from),
    ]
}

fn claims_payload() -> impl Strategy<Value = Vec<u8>> {
    let names = prop::sample::select(vec![
        "oid", "tid", "aud", "iat", "nbf", "exp", "appid", "azp", "name", "x",
    ]);
    let object = prop::collection::btree_map(names, claim_value(), 0..9)
        .prop_map(|m| serde_json::to_vec(&m).expect("JSON"));
    prop_oneof![object, prop::collection::vec(any::<u8>(), 0..64)]
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_=.-]{0,120}",
        claims_payload()
            .prop_map(|p| format!("eyJhbGciOiJSUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(p))),
    ]
}

fn decode_accepts_only_usable_claims(cases: u32) {
    check(cases, token(), |token| {
        if let Ok(claims) = decode(&token) {
            prop_assert!(!claims.oid.is_empty());
            prop_assert!(claims.issued_at <= claims.expires_at);
        }
        Ok(())
    });
}

#[test]
fn decode_never_panics_and_accepts_only_usable_claims() {
    decode_accepts_only_usable_claims(CASES);
}

#[test]
#[ignore = "high volume: run with --ignored"]
fn decode_never_panics_and_accepts_only_usable_claims_at_volume() {
    decode_accepts_only_usable_claims(VOLUME);
}

// Spec validation.

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_string()),
        "[a-z0-9.-]{1,12}",
        ".{0,16}",
        "https?://[a-z0-9.]{0,10}(:[0-9]{1,6})?(/[^/ ]{0,6}){0,3}([?#]x)?",
    ]
    .boxed()
}

fn some_text() -> BoxedStrategy<Option<String>> {
    prop::option::of(text()).boxed()
}

fn number() -> BoxedStrategy<f64> {
    prop_oneof![
        any::<f64>(),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1e-12,
            0.5,
            1.0,
            1.5,
            2.0,
            f64::NAN,
            f64::INFINITY
        ]),
    ]
    .boxed()
}

fn key_ref() -> BoxedStrategy<Option<SecretKeyRef>> {
    prop::option::of((text(), text()).prop_map(|(name, key)| SecretKeyRef { name, key })).boxed()
}

fn flow() -> BoxedStrategy<FlowSpec> {
    let flow_type = prop::sample::select(vec![
        FlowType::ClientCredentials,
        FlowType::ClientCredentialsWithCertificate,
        FlowType::SystemAssignedManagedIdentity,
        FlowType::UserAssignedManagedIdentity,
        FlowType::WorkloadIdentity,
        FlowType::DefaultAzureCredential,
        FlowType::AuthorizationCodeWithPKCE,
    ]);
    let thumbprint = prop_oneof![some_text(), "[0-9a-fA-F]{64}".prop_map(Some)];
    let certificate = prop::option::of((text(), some_text(), some_text(), thumbprint).prop_map(
        |(name, certificate_key, pkcs12_key, thumbprint_sha256)| CertificateRef {
            name,
            certificate_key,
            private_key_key: None,
            pkcs12_key,
            password_key: None,
            thumbprint_sha256,
        },
    ));
    let ids = (some_text(), some_text(), some_text(), some_text());
    (
        flow_type,
        some_text(),
        some_text(),
        key_ref(),
        certificate,
        ids,
        key_ref(),
    )
        .prop_map(
            |(flow_type, client_id, tenant_id, secret, cert, ids, refresh)| FlowSpec {
                flow_type,
                client_id,
                tenant_id,
                client_secret_ref: secret,
                client_certificate_ref: cert,
                user_assigned_client_id: ids.0,
                user_assigned_object_id: ids.1,
                user_assigned_resource_id: ids.2,
                service_account_name: ids.3,
                redirect_uri: None,
                refresh_token_secret_ref: refresh,
            },
        )
        .boxed()
}

fn authority() -> BoxedStrategy<Option<AuthorityConfig>> {
    let kind = prop::sample::select(vec![
        AuthorityType::Default,
        AuthorityType::MultiTenant,
        AuthorityType::Custom,
    ]);
    prop::option::of(
        (kind, some_text(), some_text()).prop_map(|(authority_type, t, url)| AuthorityConfig {
            authority_type,
            tenant_id: t,
            authority_url: url,
        }),
    )
    .boxed()
}

fn token_manager() -> BoxedStrategy<TokenManagerConfig> {
    let delay = || prop_oneof![0u64..2000, any::<u64>()];
    let retry = (0u32..3, delay(), delay(), number(), number()).prop_map(
        |(max_attempts, initial_delay_ms, max_delay_ms, backoff_multiplier, jitter)| RetryConfig {
            max_attempts,
            initial_delay_ms,
            max_delay_ms,
            backoff_multiplier,
            jitter_percentage: jitter,
            non_retryable_errors: vec!["invalid_client".into()],
        },
    );
    (number(), any::<u64>(), retry)
        .prop_map(|(ratio, lower, retry)| TokenManagerConfig {
            expiration_refresh_ratio: ratio,
            lower_refresh_bound_ms: lower,
            retry,
        })
        .boxed()
}

fn secret_key() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(vec!["username", "password", "expires-at", "", "a b", "ü"])
            .prop_map(str::to_string),
        text(),
    ]
    .boxed()
}

fn target() -> BoxedStrategy<SecretTarget> {
    (some_text(), secret_key(), secret_key(), secret_key())
        .prop_map(|(name, u, p, e)| SecretTarget {
            secret_name: name,
            keys: SecretKeys {
                username: u,
                password: p,
                expires_at: e,
            },
            ..SecretTarget::default()
        })
        .boxed()
}

fn spec() -> BoxedStrategy<AmrCredentialSpec> {
    let scopes = prop::option::of(prop_oneof![
        text().prop_map(Scopes::One),
        prop::collection::vec(text(), 0..3).prop_map(Scopes::Many),
    ]);
    (flow(), scopes, authority(), token_manager(), target())
        .prop_map(
            |(flow, scopes, authority_config, token_manager_config, target)| AmrCredentialSpec {
                flow,
                scopes,
                authority_config,
                token_manager_config,
                target,
                redis: None,
                verify: None,
                rollout_restart_targets: Vec::new(),
            },
        )
        .boxed()
}

fn assert_usable(r: &ResolvedSpec) -> TestCaseResult {
    let tm = &r.token_manager;
    prop_assert!(!r.scopes.is_empty());
    prop_assert!(tm.expiration_refresh_ratio > 0.0 && tm.expiration_refresh_ratio <= 1.0);
    prop_assert!(tm.retry.max_attempts >= 1);
    prop_assert!(tm.retry.initial_delay_ms <= tm.retry.max_delay_ms);
    prop_assert!(tm.retry.backoff_multiplier >= 1.0 && tm.retry.backoff_multiplier.is_finite());
    prop_assert!((0.0..=1.0).contains(&tm.retry.jitter_percentage));
    let k = &r.keys;
    prop_assert!(k.username != k.password && k.username != k.expires_at);
    prop_assert!(k.password != k.expires_at);
    Ok(())
}

fn validate_accepts_only_usable_specs(cases: u32) {
    check(cases, (text(), spec()), |(name, spec)| {
        match validate(&name, &spec) {
            Ok(resolved) => assert_usable(&resolved),
            Err(e) => {
                prop_assert!(!e.0.is_empty());
                Ok(())
            }
        }
    });
}

#[test]
fn validate_never_panics_and_accepts_only_usable_specs() {
    validate_accepts_only_usable_specs(CASES);
}

#[test]
#[ignore = "high volume: run with --ignored"]
fn validate_never_panics_and_accepts_only_usable_specs_at_volume() {
    validate_accepts_only_usable_specs(VOLUME);
}

// The credentials file of `run --local`.

const DOCUMENT: &str = "apiVersion: amr.entraid.dev/v1alpha1\nkind: AmrCredential\n\
    metadata: {name: a}\nspec:\n  flow: {type: WorkloadIdentity, serviceAccountName: sa}\n  \
    scopes: [x]\n  tokenManagerConfig: {retry: {maxAttempts: 2}}\n---\n";

/// Arbitrary text, and valid documents with a stretch replaced by arbitrary text.
fn credentials_file() -> impl Strategy<Value = String> {
    let spliced = (0..DOCUMENT.len(), 0usize..12, ".{0,12}", 1usize..3).prop_map(
        |(at, len, insert, copies)| {
            let text = DOCUMENT.repeat(copies);
            let end = (at + len).min(text.len());
            format!("{}{insert}{}", &text[..at], &text[end..])
        },
    );
    prop_oneof![any::<String>(), spliced]
}

fn parse_is_consistent(cases: u32) {
    check(cases, credentials_file(), |text| {
        if let Ok((loaded, rejected)) = local::parse(&text, Path::new("c.yaml")) {
            for c in loaded {
                prop_assert_eq!(validate(&c.name, &c.spec), Ok(c.resolved));
            }
            prop_assert!(rejected.iter().all(|r| !r.message.is_empty()));
        }
        Ok(())
    });
}

#[test]
fn local_parse_never_panics_and_loads_only_valid_documents() {
    parse_is_consistent(CASES);
}

#[test]
#[ignore = "high volume: run with --ignored"]
fn local_parse_never_panics_and_loads_only_valid_documents_at_volume() {
    parse_is_consistent(VOLUME);
}

// Entra ID error responses.

fn error_body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop::sample::select(vec!["error", "error_description", "message", "x"]);
    let value = prop_oneof![".{0,300}".prop_map(Value::from), claim_value()];
    let object = prop::collection::btree_map(field, value, 0..4)
        .prop_map(|m| serde_json::to_vec(&m).expect("JSON"));
    prop_oneof![object, prop::collection::vec(any::<u8>(), 0..64)]
}

fn error_parsing_keeps_one_short_line(cases: u32) {
    let retry_after = prop::option::of(prop_oneof![any::<String>(), "[ 0-9+-]{0,24}"]);
    check(
        cases,
        (any::<u16>(), retry_after, error_body()),
        |(status, ra, body)| {
            let parsed = parse_error_body(status, ra.as_deref(), &body);
            prop_assert_eq!(parsed.status, status);
            prop_assert!(!parsed.description.contains('\n'));
            prop_assert!(parsed.description.chars().count() <= 200);
            let expected = ra.and_then(|v| v.trim().parse::<u64>().ok());
            prop_assert_eq!(parsed.retry_after.map(|d| d.as_secs()), expected);
            Ok(())
        },
    );
}

#[test]
fn error_response_parsing_never_panics_and_keeps_one_short_line() {
    error_parsing_keeps_one_short_line(CASES);
}

#[test]
#[ignore = "high volume: run with --ignored"]
fn error_response_parsing_never_panics_and_keeps_one_short_line_at_volume() {
    error_parsing_keeps_one_short_line(VOLUME);
}
