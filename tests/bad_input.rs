//! Invalid AmrCredentials and what each one gets: refused at `kubectl apply` by the committed
//! CRD (its OpenAPI schema, or its CEL `x-kubernetes-validations` evaluated for real), and
//! otherwise reported by the controller and `run --local` with a message that names the field
//! or object to fix. One test per row of the README's "Bad input" table.
//!
//! The API server is stood in for by the committed CRD itself: defaults are applied, the
//! `openAPIV3Schema` is checked as JSON Schema draft 4 (where `exclusiveMinimum` is a boolean,
//! as in OpenAPI 3.0), and the CEL rules run through kube's client-side validator.

use amr_credential_operator::api::{AmrCredentialSpec, ResolvedSpec};
use amr_credential_operator::identity::material::FileMaterial;
use amr_credential_operator::identity::source::{AzureTokenSource, SourceConfig};
use amr_credential_operator::identity::{FailureKind, RefreshFailure};
use amr_credential_operator::local;
use kube::core::cel::{ErrorKind, Validator, apply_defaults};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, LazyLock};

const CRD: &str = include_str!("../crds/amrcredentials.amr.entraid.dev.yaml");

/// The committed CRD's `openAPIV3Schema`.
static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let crd: Value = serde_yaml_ng::from_str(CRD).expect("the committed CRD is YAML");
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .expect("the CRD has an openAPIV3Schema")
        .clone()
});

/// The same schema as JSON Schema draft 4, without the `x-kubernetes-*` extensions.
static OPENAPI: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let mut schema = SCHEMA.clone();
    strip_kubernetes_extensions(&mut schema);
    jsonschema::draft4::new(&schema).expect("the CRD schema is valid JSON Schema draft 4")
});

fn strip_kubernetes_extensions(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with("x-kubernetes-"));
            map.values_mut().for_each(strip_kubernetes_extensions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_kubernetes_extensions),
        _ => {}
    }
}

/// What `kubectl apply` of an object gets back, as `field.path: message` lines.
#[derive(Debug)]
struct Apply {
    openapi: Vec<String>,
    cel: Vec<String>,
}

/// Applies the object the way the API server admits it: defaults, schema, CEL rules.
fn apply(object: &Value) -> Apply {
    let defaulted = apply_defaults(&SCHEMA, object);
    let openapi = OPENAPI
        .iter_errors(&defaulted)
        .map(|e| format!("{}: {e}", dotted(e.instance_path().as_str())))
        .collect();
    let cel = match Validator::new().validate(&SCHEMA, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| {
                // A rule that cannot be evaluated would refuse everything, valid or not.
                assert_eq!(e.kind, ErrorKind::ValidationFailure, "{e}");
                format!("{}: {}", e.field_path, e.message)
            })
            .collect(),
    };
    Apply { openapi, cel }
}

fn dotted(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

impl Apply {
    fn is_accepted(&self) -> bool {
        self.openapi.is_empty() && self.cel.is_empty()
    }

    fn assert_accepted(&self) {
        assert!(self.is_accepted(), "{self:#?}");
    }

    /// Refused by the OpenAPI schema, for `field` and nothing else.
    fn assert_refused_by_schema_at(&self, field: &str) {
        assert!(!self.openapi.is_empty(), "accepted: {self:#?}");
        let prefix = format!("{field}: ");
        assert!(
            self.openapi.iter().all(|e| e.starts_with(&prefix)),
            "{self:#?}"
        );
    }

    /// Refused by exactly one CEL rule, whose message says `message`.
    fn assert_refused_by_cel(&self, field: &str, message: &str) {
        assert!(self.openapi.is_empty(), "{self:#?}");
        assert_eq!(self.cel, [format!("{field}: {message}")]);
    }
}

/// The example of the README: a ClientCredentials credential that every layer accepts.
fn orders_cache() -> Value {
    json!({
        "apiVersion": "amr.entraid.dev/v1alpha1",
        "kind": "AmrCredential",
        "metadata": {"name": "orders-cache", "namespace": "shop"},
        "spec": {
            "flow": {
                "type": "ClientCredentials",
                "clientId": "11111111-1111-1111-1111-111111111111",
                "clientSecretRef": {"name": "orders-sp", "key": "client-secret"}
            },
            "redis": {"host": "orders.westeurope.redis.azure.net"}
        }
    })
}

fn billing_cache() -> Value {
    let flow = json!({
        "type": "ClientCredentialsWithCertificate",
        "clientId": "22222222-2222-2222-2222-222222222222",
        "clientCertificateRef": {"name": "billing-cert"}
    });
    with(orders_cache(), "/spec/flow", flow)
}

/// `object` with the JSON pointer `at` set to `value`, creating objects on the way.
fn with(mut object: Value, at: &str, value: Value) -> Value {
    let mut node = &mut object;
    for part in at.trim_start_matches('/').split('/') {
        node = node
            .as_object_mut()
            .expect("the path runs through objects")
            .entry(part)
            .or_insert_with(|| json!({}));
    }
    *node = value;
    object
}

fn without(mut object: Value, at: &str) -> Value {
    let (parent, key) = at.rsplit_once('/').expect("a pointer");
    object
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("the parent exists")
        .remove(key);
    object
}

/// What `run --local` (and, through the same `validate`, the controller's `InvalidSpec`
/// condition and Event) says about the object.
fn local_rejection(object: &Value) -> String {
    let (ok, rejected) = parse_locally(object).expect("the document is an AmrCredential");
    assert!(ok.is_empty(), "accepted: {object}");
    let [only] = rejected.as_slice() else {
        panic!("expected one rejection, got {rejected:?}");
    };
    only.message.clone()
}

fn parse_locally(
    object: &Value,
) -> Result<(Vec<local::LocalCredential>, Vec<local::Rejected>), local::LoadError> {
    let text = serde_yaml_ng::to_string(object).expect("JSON is YAML");
    local::parse(&text, Path::new("credentials.yaml"))
}

fn resolved(object: &Value) -> (AmrCredentialSpec, ResolvedSpec) {
    let (ok, rejected) = parse_locally(object).expect("the document is an AmrCredential");
    assert!(rejected.is_empty(), "{rejected:?}");
    let cred = ok.into_iter().next().expect("one credential");
    (cred.spec, cred.resolved)
}

/// The failure of one refresh round, with Secrets read from `secrets` as mounted files.
///
/// Every row that uses it fails before any request is sent; the authority is on 127.0.0.1
/// all the same.
async fn refresh_failure(object: &Value, secrets: &Path) -> RefreshFailure {
    let config = SourceConfig {
        authority_host: Some("https://127.0.0.1:9/".parse().expect("a URL")),
        default_tenant: Some("contoso".into()),
        ..Default::default()
    };
    let material = Arc::new(FileMaterial::new(secrets));
    let source = AzureTokenSource::new(config, material).expect("the source builds");
    let (spec, resolved) = resolved(object);
    match source.fetch_with("shop", &spec, &resolved, true).await {
        Ok(_) => panic!("a token was issued for {object}"),
        Err(failure) => failure,
    }
}

fn write_secret(dir: &Path, secret: &str, key: &str, value: &[u8]) {
    std::fs::create_dir_all(dir.join(secret)).expect("a Secret directory");
    std::fs::write(dir.join(secret).join(key), value).expect("a Secret key");
}

#[test]
fn the_base_manifest_and_every_example_pass_every_layer() {
    let mut objects = vec![orders_cache(), billing_cache()];
    for entry in std::fs::read_dir("deploy/examples").expect("the examples") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("an example");
            objects.push(serde_yaml_ng::from_str(&text).expect("an example is YAML"));
        }
    }
    assert!(objects.len() >= 9, "examples missing");
    for object in &objects {
        apply(object).assert_accepted();
        let (ok, rejected) = parse_locally(object).expect("an AmrCredential");
        assert_eq!((ok.len(), rejected.len()), (1, 0), "{object}: {rejected:?}");
    }
}

#[test]
fn a_refresh_ratio_of_0_or_1_5_is_refused_by_the_schema() {
    for ratio in [json!(0), json!(1.5)] {
        let bad = with(
            orders_cache(),
            "/spec/tokenManagerConfig/expirationRefreshRatio",
            ratio,
        );
        apply(&bad).assert_refused_by_schema_at("spec.tokenManagerConfig.expirationRefreshRatio");
        let message = local_rejection(&bad);
        assert!(
            message.starts_with("tokenManagerConfig.expirationRefreshRatio must be in (0, 1]"),
            "{message}"
        );
    }
}

#[test]
fn max_attempts_0_is_refused_by_the_schema() {
    let bad = with(
        orders_cache(),
        "/spec/tokenManagerConfig/retry/maxAttempts",
        json!(0),
    );
    apply(&bad).assert_refused_by_schema_at("spec.tokenManagerConfig.retry.maxAttempts");
    assert_eq!(
        local_rejection(&bad),
        "tokenManagerConfig.retry.maxAttempts must be at least 1"
    );
}

#[test]
fn an_initial_delay_above_the_max_delay_is_refused_by_cel_even_when_max_is_defaulted() {
    let retry = "/spec/tokenManagerConfig/retry";
    let explicit = json!({"initialDelayMs": 5000, "maxDelayMs": 1000});
    let defaulted = json!({"initialDelayMs": 5000});
    for bad in [
        with(orders_cache(), retry, explicit),
        with(orders_cache(), retry, defaulted),
    ] {
        apply(&bad).assert_refused_by_cel(
            "spec.tokenManagerConfig.retry",
            "initialDelayMs must not exceed maxDelayMs",
        );
        assert_eq!(
            local_rejection(&bad),
            "tokenManagerConfig.retry.initialDelayMs (5000) must not exceed maxDelayMs (1000)"
        );
    }
}

#[test]
fn a_backoff_multiplier_of_0_5_is_refused_by_the_schema() {
    let bad = with(
        orders_cache(),
        "/spec/tokenManagerConfig/retry/backoffMultiplier",
        json!(0.5),
    );
    apply(&bad).assert_refused_by_schema_at("spec.tokenManagerConfig.retry.backoffMultiplier");
    assert_eq!(
        local_rejection(&bad),
        "tokenManagerConfig.retry.backoffMultiplier must be at least 1, got 0.5"
    );
}

#[test]
fn a_jitter_percentage_of_2_is_refused_by_the_schema() {
    let bad = with(
        orders_cache(),
        "/spec/tokenManagerConfig/retry/jitterPercentage",
        json!(2),
    );
    apply(&bad).assert_refused_by_schema_at("spec.tokenManagerConfig.retry.jitterPercentage");
    assert_eq!(
        local_rejection(&bad),
        "tokenManagerConfig.retry.jitterPercentage must be in [0, 1], got 2"
    );
}

#[test]
fn an_unknown_flow_type_is_refused_by_the_schema_enum() {
    let bad = with(orders_cache(), "/spec/flow/type", json!("Telepathy"));
    apply(&bad).assert_refused_by_schema_at("spec.flow.type");

    // With no schema in front of it, file mode names the document, the field and the value.
    let message = parse_locally(&bad).unwrap_err().to_string();
    assert!(
        message.contains("document 1 is not an AmrCredential: spec.flow.type:"),
        "{message}"
    );
    assert!(message.contains("unknown variant `Telepathy`"), "{message}");
}

#[test]
fn client_credentials_without_client_secret_ref_is_refused_by_cel() {
    let bad = without(orders_cache(), "/spec/flow/clientSecretRef");
    apply(&bad).assert_refused_by_cel(
        "spec.flow",
        "ClientCredentials needs clientId and clientSecretRef",
    );
    assert_eq!(
        local_rejection(&bad),
        "ClientCredentials needs flow.clientId and flow.clientSecretRef"
    );
}

#[test]
fn workload_identity_without_service_account_name_is_refused_by_cel() {
    let flow = json!({"type": "WorkloadIdentity", "clientId": "33333333"});
    let bad = with(orders_cache(), "/spec/flow", flow);
    apply(&bad).assert_refused_by_cel("spec.flow", "WorkloadIdentity needs serviceAccountName");
    assert_eq!(
        local_rejection(&bad),
        "WorkloadIdentity needs flow.serviceAccountName"
    );
}

#[test]
fn a_user_assigned_identity_with_two_ids_is_refused_by_cel() {
    let flow = json!({
        "type": "UserAssignedManagedIdentity",
        "userAssignedClientId": "44444444",
        "userAssignedObjectId": "55555555"
    });
    let bad = with(orders_cache(), "/spec/flow", flow);
    apply(&bad).assert_refused_by_cel(
        "spec.flow",
        "UserAssignedManagedIdentity needs exactly one of userAssignedClientId, \
         userAssignedObjectId, userAssignedResourceId",
    );
    assert_eq!(
        local_rejection(&bad),
        "UserAssignedManagedIdentity needs exactly one of flow.userAssignedClientId, \
         flow.userAssignedObjectId, flow.userAssignedResourceId"
    );
}

#[tokio::test]
async fn a_secret_ref_to_a_missing_secret_or_key_is_reported_as_invalid_input() {
    let cred = orders_cache();
    apply(&cred).assert_accepted();
    let secrets = tempfile::tempdir().expect("a directory");

    let failure = refresh_failure(&cred, secrets.path()).await;
    assert_eq!(failure.kind, FailureKind::InvalidInput);
    assert!(
        failure
            .message
            .starts_with(r#"Secret "orders-sp" key "client-secret" not found: no file "#),
        "{}",
        failure.message
    );

    write_secret(secrets.path(), "orders-sp", "clientSecret", b"s3cret");
    let failure = refresh_failure(&cred, secrets.path()).await;
    assert_eq!(failure.kind, FailureKind::InvalidInput);
    assert!(
        failure.message.ends_with("orders-sp/client-secret"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn a_certificate_that_does_not_parse_is_reported_as_invalid_input() {
    let cred = billing_cache();
    apply(&cred).assert_accepted();
    let good = amr_credential_operator::emulator::pki::rsa_client_certificate("billing")
        .expect("a certificate");
    let secrets = tempfile::tempdir().expect("a directory");
    let garbage = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
    write_secret(secrets.path(), "billing-cert", "tls.crt", garbage);
    write_secret(
        secrets.path(),
        "billing-cert",
        "tls.key",
        good.key_pem.as_bytes(),
    );

    let failure = refresh_failure(&cred, secrets.path()).await;
    assert_eq!(failure.kind, FailureKind::InvalidInput);
    assert!(
        failure
            .message
            .starts_with("the client certificate is not usable: "),
        "{}",
        failure.message
    );
    assert!(!failure.message.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_certificate_with_another_certificates_key_is_reported_as_invalid_input() {
    let cred = billing_cache();
    apply(&cred).assert_accepted();
    let pki = amr_credential_operator::emulator::pki::rsa_client_certificate;
    let (mine, other) = (
        pki("billing").expect("a pair"),
        pki("other").expect("a pair"),
    );
    let secrets = tempfile::tempdir().expect("a directory");
    write_secret(
        secrets.path(),
        "billing-cert",
        "tls.crt",
        mine.cert_pem.as_bytes(),
    );
    write_secret(
        secrets.path(),
        "billing-cert",
        "tls.key",
        other.key_pem.as_bytes(),
    );

    let failure = refresh_failure(&cred, secrets.path()).await;
    assert_eq!(failure.kind, FailureKind::InvalidInput);
    assert_eq!(
        failure.message,
        "the client certificate's private key does not match the certificate \
         (Secret \"billing-cert\")"
    );
}

#[test]
fn a_malformed_authority_url_is_refused_by_the_schema_pattern() {
    for url in [
        "not a url",
        "http://login.example.net/contoso",
        "https://h/a/b",
    ] {
        let authority = json!({"type": "custom", "authorityUrl": url});
        let bad = with(orders_cache(), "/spec/authorityConfig", authority);
        apply(&bad).assert_refused_by_schema_at("spec.authorityConfig.authorityUrl");
        let message = local_rejection(&bad);
        assert!(
            message.starts_with(&format!(
                "authorityConfig.authorityUrl {url:?} is not usable"
            )),
            "{message}"
        );
        assert!(
            message.ends_with("(expected https://<host>/<tenant>)"),
            "{message}"
        );
    }
}

#[test]
fn an_empty_scope_list_passes_apply_and_is_reported_as_invalid_spec() {
    let bad = with(orders_cache(), "/spec/scopes", json!([]));
    apply(&bad).assert_accepted();
    assert_eq!(
        local_rejection(&bad),
        "scopes must not be empty; omit the field to use the Redis scope"
    );
}

#[test]
fn colliding_target_keys_are_refused_by_cel() {
    let keys = json!({"username": "user", "password": "user", "expiresAt": "expires-at"});
    let bad = with(orders_cache(), "/spec/target/keys", keys);
    apply(&bad).assert_refused_by_cel(
        "spec.target.keys",
        "username, password and expiresAt keys must differ",
    );
    assert_eq!(
        local_rejection(&bad),
        "target.keys username, password and expiresAt must differ"
    );
}

fn token_manager_numbers() -> impl Strategy<Value = Value> {
    let ratio = prop::sample::select(vec![-1.0, 0.0, 1e-9, 0.5, 1.0, 1.000_001, 1.5]);
    let attempts = 0u32..3;
    let delay = prop::sample::select(vec![0u64, 1, 999, 1000, 1001, 60_000]);
    let multiplier = prop::sample::select(vec![0.0, 0.5, 0.999, 1.0, 2.0]);
    let jitter = prop::sample::select(vec![-0.1, 0.0, 0.5, 1.0, 1.01, 2.0]);
    (ratio, attempts, delay.clone(), delay, multiplier, jitter).prop_map(
        |(ratio, attempts, initial, max, multiplier, jitter)| {
            json!({
                "expirationRefreshRatio": ratio,
                "retry": {
                    "maxAttempts": attempts,
                    "initialDelayMs": initial,
                    "maxDelayMs": max,
                    "backoffMultiplier": multiplier,
                    "jitterPercentage": jitter
                }
            })
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None,
        ..ProptestConfig::default() })]

    /// Drift between the CRD and `validate` would let through at apply time what the
    /// controller then refuses, or refuse what it would run.
    #[test]
    fn apply_and_the_controller_agree_on_the_token_manager_numbers(
        numbers in token_manager_numbers()
    ) {
        let object = with(orders_cache(), "/spec/tokenManagerConfig", numbers);
        let applied = apply(&object);
        let (ok, _) = parse_locally(&object).expect("an AmrCredential");
        prop_assert_eq!(applied.is_accepted(), !ok.is_empty(), "{:#?}", applied);
    }
}
