//! The Secret the controller writes: rendered for server-side apply, and read back.

use crate::api::{AmrCredentialSpec, REFRESH_REQUESTED_ANNOTATION, ResolvedSpec, SecretKeys};
use crate::identity::AcquiredToken;
use crate::identity::claims::{self, TokenClaims};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "amr-credential-operator";
/// Standard label naming the tool that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on the Secrets the controller writes.
pub const MANAGED_BY: &str = "amr-credential-operator";
/// Label selector matching every Secret the controller writes.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=amr-credential-operator";
/// Label naming the AmrCredential a Secret belongs to.
pub const CREDENTIAL_LABEL: &str = "amr.entraid.dev/credential";
/// Annotation: when the token in the Secret expires (RFC 3339).
pub const EXPIRES_AT_ANNOTATION: &str = "amr.entraid.dev/expires-at";
/// Annotation: when the token in the Secret is due for refresh (RFC 3339).
pub const REFRESH_AT_ANNOTATION: &str = "amr.entraid.dev/refresh-at";
/// Annotation: hash of the spec that produced the token.
pub const SPEC_HASH_ANNOTATION: &str = "amr.entraid.dev/spec-hash";
/// Annotation: hash of the Secret's data.
pub const CONTENT_HASH_ANNOTATION: &str = "amr.entraid.dev/content-hash";
/// Annotation on the Secret: the last refresh-request value of the credential that was honoured.
pub const HONOURED_REQUEST_ANNOTATION: &str = REFRESH_REQUESTED_ANNOTATION;

/// Everything the desired Secret is made of.
pub struct DesiredSecret<'a> {
    /// Name of the AmrCredential.
    pub credential: &'a str,
    /// Namespace of the AmrCredential and of the Secret.
    pub namespace: &'a str,
    /// Controller owner reference to the AmrCredential.
    pub owner: OwnerReference,
    /// The spec that produced the token.
    pub spec: &'a AmrCredentialSpec,
    /// The same spec with defaults applied.
    pub resolved: &'a ResolvedSpec,
    /// The token to write.
    pub token: &'a AcquiredToken,
    /// When the token is due for refresh.
    pub refresh_at: Timestamp,
    /// The credential's refresh-request annotation value this write honours.
    pub refresh_requested: Option<&'a str>,
}

/// A rendered Secret and the hashes it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedSecret {
    /// The object to apply.
    pub secret: Secret,
    /// Hash of its data.
    pub content_hash: String,
}

/// Renders the Secret for server-side apply.
pub fn render(d: &DesiredSecret<'_>) -> RenderedSecret {
    let data = render_data(&d.resolved.keys, d.token);
    let content_hash = content_hash(&data);
    let annotations = render_annotations(d, &content_hash);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(d.resolved.secret_name.clone()),
            namespace: Some(d.namespace.to_string()),
            owner_references: Some(vec![d.owner.clone()]),
            labels: Some(render_labels(d)),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        data: Some(data),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    };
    RenderedSecret {
        secret,
        content_hash,
    }
}

fn render_data(keys: &SecretKeys, token: &AcquiredToken) -> BTreeMap<String, ByteString> {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    BTreeMap::from([
        (keys.username.clone(), bytes(&token.claims.oid)),
        (keys.password.clone(), bytes(token.token.expose_secret())),
        (
            keys.expires_at.clone(),
            bytes(&token.claims.expires_at.to_string()),
        ),
    ])
}

fn render_labels(d: &DesiredSecret<'_>) -> BTreeMap<String, String> {
    let mut labels = d.spec.target.labels.clone();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels.insert(CREDENTIAL_LABEL.to_string(), d.credential.to_string());
    labels
}

fn render_annotations(d: &DesiredSecret<'_>, content_hash: &str) -> BTreeMap<String, String> {
    let mut annotations = d.spec.target.annotations.clone();
    let ours = [
        (EXPIRES_AT_ANNOTATION, d.token.claims.expires_at.to_string()),
        (REFRESH_AT_ANNOTATION, d.refresh_at.to_string()),
        (SPEC_HASH_ANNOTATION, spec_hash(d.spec)),
        (CONTENT_HASH_ANNOTATION, content_hash.to_string()),
    ];
    for (key, value) in ours {
        annotations.insert(key.to_string(), value);
    }
    match d.refresh_requested {
        Some(v) => annotations.insert(HONOURED_REQUEST_ANNOTATION.to_string(), v.to_string()),
        None => annotations.remove(HONOURED_REQUEST_ANNOTATION),
    };
    annotations
}

/// A hash of the spec; any change to the spec changes it.
pub fn spec_hash(spec: &AmrCredentialSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_else(|e| e.to_string().into_bytes());
    format!("sha256:{}", hex::encode(Sha256::digest(json)))
}

/// A hash of a Secret's data: keys and values, length-prefixed so no two maps collide.
pub fn content_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut hasher = Sha256::new();
    for (key, ByteString(value)) in data {
        for part in [key.as_bytes(), value.as_slice()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// What the controller needs to know about a Secret that already exists.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingSecret {
    /// Written by the controller for this credential; anything else is never overwritten.
    pub ours: bool,
    /// Claims of the token under the password key, when it can be read.
    pub claims: Option<TokenClaims>,
    /// Expiry of the token: its `exp` claim, else the expires-at annotation.
    pub expires_at: Option<Timestamp>,
    /// The refresh-at annotation.
    pub refresh_at: Option<Timestamp>,
    /// The spec-hash annotation.
    pub spec_hash: Option<String>,
    /// The content-hash annotation.
    pub content_hash: Option<String>,
    /// The refresh-request value last honoured.
    pub honoured_request: Option<String>,
    /// The data still hashes to the content-hash annotation.
    pub intact: bool,
}

/// Reads back `secret` for the credential `credential` whose uid is `owner_uid`.
pub fn read_back(
    secret: &Secret,
    owner_uid: &str,
    credential: &str,
    keys: &SecretKeys,
) -> ExistingSecret {
    let meta = &secret.metadata;
    let annotation = |key: &str| meta.annotations.as_ref()?.get(key).cloned();
    let data = secret.data.clone().unwrap_or_default();
    let content = annotation(CONTENT_HASH_ANNOTATION);
    let claims = data
        .get(&keys.password)
        .and_then(|ByteString(b)| std::str::from_utf8(b).ok())
        .and_then(|token| claims::decode(token).ok());
    let expires_at = claims
        .as_ref()
        .map(|c| c.expires_at)
        .or_else(|| parse_time(annotation(EXPIRES_AT_ANNOTATION)));
    ExistingSecret {
        ours: is_ours(meta, owner_uid, credential),
        expires_at,
        claims,
        refresh_at: parse_time(annotation(REFRESH_AT_ANNOTATION)),
        spec_hash: annotation(SPEC_HASH_ANNOTATION),
        intact: content.as_deref() == Some(content_hash(&data).as_str()),
        content_hash: content,
        honoured_request: annotation(HONOURED_REQUEST_ANNOTATION),
    }
}

/// The token under the password key of `secret`, when it is text.
pub fn password(secret: &Secret, keys: &SecretKeys) -> Option<SecretString> {
    let ByteString(bytes) = secret.data.as_ref()?.get(&keys.password)?;
    let text = std::str::from_utf8(bytes).ok()?;
    Some(SecretString::from(text.to_owned()))
}

/// Ours when our credential is its controller, or when it has no controller and carries our
/// labels (the credential was recreated and the old owner reference is gone).
pub fn is_ours(meta: &ObjectMeta, owner_uid: &str, credential: &str) -> bool {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    if let Some(owner) = controller {
        return owner.uid == owner_uid;
    }
    let label = |key: &str| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    };
    label(MANAGED_BY_LABEL) == Some(MANAGED_BY) && label(CREDENTIAL_LABEL) == Some(credential)
}

fn parse_time(value: Option<String>) -> Option<Timestamp> {
    value?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validate;
    use crate::controller::testing::{NOW, credential, token_at};

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "amr.entraid.dev/v1alpha1".into(),
            kind: "AmrCredential".into(),
            name: "orders".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn rendered(requested: Option<&str>) -> RenderedSecret {
        let cred = credential("orders");
        let resolved = validate("orders", &cred.spec).expect("fixture is valid");
        render(&DesiredSecret {
            credential: "orders",
            namespace: "shop",
            owner: owner(),
            spec: &cred.spec,
            resolved: &resolved,
            token: &token_at(NOW, 3600),
            refresh_at: Timestamp::from_second(NOW + 2880).expect("in range"),
            refresh_requested: requested,
        })
    }

    fn text(secret: &Secret, key: &str) -> String {
        let data = secret.data.as_ref().expect("data");
        String::from_utf8(data[key].0.clone()).expect("utf-8")
    }

    #[test]
    fn rendered_secret_holds_oid_token_and_expiry_under_the_configured_keys() {
        let s = rendered(None).secret;
        assert_eq!(text(&s, "username"), "oid-1");
        assert!(text(&s, "password").starts_with("eyJ"));
        assert_eq!(text(&s, "expires-at"), "2025-06-15T16:06:40Z");
    }

    #[test]
    fn rendered_secret_is_labelled_owned_and_annotated() {
        let s = rendered(Some("now")).secret;
        let labels = s.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[CREDENTIAL_LABEL], "orders");
        assert_eq!(labels["team"], "shop");
        let notes = s.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(notes[REFRESH_AT_ANNOTATION], "2025-06-15T15:54:40Z");
        assert_eq!(notes[HONOURED_REQUEST_ANNOTATION], "now");
        assert!(notes[SPEC_HASH_ANNOTATION].starts_with("sha256:"));
        assert_eq!(s.metadata.owner_references, Some(vec![owner()]));
    }

    #[test]
    fn a_rendered_secret_reads_back_as_ours_fresh_and_intact() {
        let r = rendered(Some("now"));
        let back = read_back(&r.secret, "uid-1", "orders", &SecretKeys::default());
        assert!(back.ours && back.intact);
        assert_eq!(back.expires_at.map(|t| t.as_second()), Some(NOW + 3600));
        assert_eq!(back.refresh_at.map(|t| t.as_second()), Some(NOW + 2880));
        assert_eq!(back.honoured_request.as_deref(), Some("now"));
        assert_eq!(back.content_hash, Some(r.content_hash));
    }

    #[test]
    fn a_secret_controlled_by_another_object_is_not_ours() {
        let s = rendered(None).secret;
        assert!(!read_back(&s, "uid-2", "orders", &SecretKeys::default()).ours);
    }

    #[test]
    fn a_labelled_secret_without_controller_is_ours_only_for_the_named_credential() {
        let mut s = rendered(None).secret;
        s.metadata.owner_references = None;
        assert!(is_ours(&s.metadata, "uid-2", "orders"));
        assert!(!is_ours(&s.metadata, "uid-2", "payments"));
    }

    #[test]
    fn edited_data_is_no_longer_intact() {
        let mut s = rendered(None).secret;
        let data = s.data.as_mut().expect("data");
        data.insert("username".into(), ByteString(b"someone-else".to_vec()));
        assert!(!read_back(&s, "uid-1", "orders", &SecretKeys::default()).intact);
    }

    #[test]
    fn content_hash_separates_keys_from_values() {
        let a = BTreeMap::from([("ab".to_string(), ByteString(b"c".to_vec()))]);
        let b = BTreeMap::from([("a".to_string(), ByteString(b"bc".to_vec()))]);
        assert_ne!(content_hash(&a), content_hash(&b));
    }
}
