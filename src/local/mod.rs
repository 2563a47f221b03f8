//! File output mode: AmrCredential YAML in, refreshed credential files out, with no
//! Kubernetes API at all. `demo` and sidecar deployments use it.

pub mod atomic;

use crate::api::{AmrCredential, AmrCredentialSpec, ResolvedSpec, validate};
use crate::identity::AcquiredToken;
use crate::identity::claims;
use crate::identity::source::AzureTokenSource;
use crate::probe::{self, ProbeOptions, ProbeTarget};
use crate::token_manager::{next_round_at, refresh_at, stable_hash, staggered};
use jiff::Timestamp;
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The namespace file-mode credentials are treated as belonging to.
pub const LOCAL_NAMESPACE: &str = "local";

/// Why the credentials file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("reading {path} failed: {source}")]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A document is not an AmrCredential.
    #[error("{path}: document {index} is not an AmrCredential: {message}")]
    ParseFailed {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// A credential of the file, checked and resolved.
#[derive(Debug, Clone)]
pub struct LocalCredential {
    /// `metadata.name`; also the name of its output directory.
    pub name: String,
    /// The spec as written.
    pub spec: AmrCredentialSpec,
    /// The spec with defaults applied.
    pub resolved: ResolvedSpec,
}

/// A credential of the file that cannot be used, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// `metadata.name`, or the document number when it has none.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// Loads every AmrCredential document of `path`.
///
/// # Errors
/// When the file cannot be read or a document is not an AmrCredential at all; documents
/// that parse but fail validation are returned as [`Rejected`].
pub fn load(path: &Path) -> Result<(Vec<LocalCredential>, Vec<Rejected>), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::ReadFailed {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses every AmrCredential document of `text`; `path` names it in errors.
///
/// # Errors
/// When a document is not an AmrCredential at all.
pub fn parse(text: &str, path: &Path) -> Result<(Vec<LocalCredential>, Vec<Rejected>), LoadError> {
    let (mut ok, mut rejected) = (Vec::new(), Vec::new());
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc)
            .map_err(|e| parse_error(path, i, e.to_string()))?;
        if value.is_null() {
            continue;
        }
        check_type(&value).map_err(|message| parse_error(path, i, message))?;
        let cred: AmrCredential = serde_path_to_error::deserialize(value).map_err(|e| {
            // The path of the field at fault, such as `spec.tokenManagerConfig.retry`.
            let message = match e.path().to_string().as_str() {
                "." => e.inner().to_string(),
                field => format!("{field}: {}", e.inner()),
            };
            parse_error(path, i, message)
        })?;
        let name = cred
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| format!("document-{}", i + 1));
        match validate(&name, &cred.spec) {
            Ok(resolved) => ok.push(LocalCredential {
                name,
                spec: cred.spec,
                resolved,
            }),
            Err(e) => rejected.push(Rejected { name, message: e.0 }),
        }
    }
    Ok((ok, rejected))
}

/// Refuses documents of another kind, which could otherwise parse as a spec by accident.
fn check_type(value: &serde_yaml_ng::Value) -> Result<(), String> {
    if !value.is_mapping() {
        return Err(
            "expected a mapping with apiVersion amr.entraid.dev/v1alpha1 and kind \
             AmrCredential, found a scalar or a list"
                .to_string(),
        );
    }
    let field = |k: &str| {
        value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version == "amr.entraid.dev/v1alpha1" && kind == "AmrCredential" {
        return Ok(());
    }
    Err(format!(
        "expected apiVersion amr.entraid.dev/v1alpha1 and kind AmrCredential, \
         found apiVersion {api_version:?} and kind {kind:?}"
    ))
}

/// Document `index` (from 0) of `path` is not an AmrCredential, because of `message`.
fn parse_error(path: &Path, index: usize, message: String) -> LoadError {
    LoadError::ParseFailed {
        path: path.to_owned(),
        index: index + 1,
        message,
    }
}

/// Something that happened to one credential, for display.
#[derive(Debug, Clone)]
pub enum LocalEvent {
    /// New credential files were written.
    Refreshed {
        /// Credential name.
        name: String,
        /// The identity's object id.
        oid: String,
        /// Expiry of the new token.
        expires_at: Timestamp,
        /// When the next refresh is due.
        refresh_at: Timestamp,
        /// Whether another credential's request supplied the token.
        shared: bool,
        /// Short fingerprint of the token.
        fingerprint: String,
        /// What verifying the token against `spec.redis` found, when the spec asks for it:
        /// the first failing check and why, as `check: why`.
        verified: Option<Result<(), String>>,
    },
    /// Files from an earlier run still hold a fresh token; nothing was requested.
    Reused {
        /// Credential name.
        name: String,
        /// When the next refresh is due.
        refresh_at: Timestamp,
    },
    /// A refresh round failed; the files were left as they were.
    Failed {
        /// Credential name.
        name: String,
        /// What went wrong.
        message: String,
        /// When the next round starts.
        next_attempt_at: Timestamp,
    },
}

/// Settings of the file mode.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// One subdirectory per credential is written below it.
    pub output_dir: PathBuf,
}

/// Keeps every credential's files fresh until `shutdown` turns true, verifying nothing:
/// for callers that check the files themselves, such as `demo`.
pub async fn run(
    credentials: Vec<LocalCredential>,
    source: Arc<AzureTokenSource>,
    options: LocalOptions,
    events: mpsc::UnboundedSender<LocalEvent>,
    shutdown: watch::Receiver<bool>,
) {
    run_with(credentials, source, options, None, events, shutdown).await;
}

/// Keeps every credential's files fresh until `shutdown` turns true; with `probe`, every
/// new token of a credential whose `spec.verify` is enabled is verified against
/// `spec.redis` once its files are written.
pub async fn run_with(
    credentials: Vec<LocalCredential>,
    source: Arc<AzureTokenSource>,
    options: LocalOptions,
    probe: Option<ProbeOptions>,
    events: mpsc::UnboundedSender<LocalEvent>,
    shutdown: watch::Receiver<bool>,
) {
    let tasks: Vec<_> = credentials
        .into_iter()
        .map(|cred| {
            let dir = options.output_dir.join(&cred.name);
            let job = CredentialLoop {
                cred,
                dir,
                source: source.clone(),
                probe: probe.clone(),
                events: events.clone(),
            };
            tokio::spawn(job.run(shutdown.clone()))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

struct CredentialLoop {
    cred: LocalCredential,
    dir: PathBuf,
    source: Arc<AzureTokenSource>,
    probe: Option<ProbeOptions>,
    events: mpsc::UnboundedSender<LocalEvent>,
}

impl CredentialLoop {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut current = existing_token_times(&self.dir, &self.cred.resolved);
        let mut due = match current {
            Some((issued, expires)) if Timestamp::now() < self.due(issued, expires) => {
                let at = self.due(issued, expires);
                self.emit(LocalEvent::Reused {
                    name: self.cred.name.clone(),
                    refresh_at: at,
                });
                at
            }
            _ => Timestamp::now(),
        };
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = sleep_until(due) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            match self.refresh_once().await {
                Ok((issued, expires)) => {
                    failures = 0;
                    current = Some((issued, expires));
                    due = self.due(issued, expires);
                }
                Err(message) => {
                    failures += 1;
                    due = next_round_at(Timestamp::now(), failures, current.map(|c| c.1));
                    tracing::warn!(credential = %self.cred.name, %message, next_attempt_at = %due,
                        "Refresh failed; files left unchanged");
                    let name = self.cred.name.clone();
                    self.emit(LocalEvent::Failed {
                        name,
                        message,
                        next_attempt_at: due,
                    });
                }
            }
        }
    }

    /// The refresh time of this credential's token, staggered per credential like the
    /// controller's.
    fn due(&self, issued: Timestamp, expires: Timestamp) -> Timestamp {
        let at = refresh_at(issued, expires, &self.cred.resolved.token_manager);
        staggered(at, issued, stable_hash(&self.cred.name))
    }

    async fn refresh_once(&self) -> Result<(Timestamp, Timestamp), String> {
        let c = &self.cred;
        let (token, origin) = self
            .source
            .fetch_named(LOCAL_NAMESPACE, Some(&c.name), &c.spec, &c.resolved, false)
            .await
            .map_err(|f| format!("{}: {}", f.kind.reason(), f.message))?;
        let keys = &c.resolved.keys;
        let expires = token.claims.expires_at.to_string();
        let files: [(&str, &[u8]); 3] = [
            (&keys.username, token.claims.oid.as_bytes()),
            (&keys.password, token.token.expose_secret().as_bytes()),
            (&keys.expires_at, expires.as_bytes()),
        ];
        atomic::write_atomic(&self.dir, &files)
            .map_err(|e| format!("writing {} failed: {e}", self.dir.display()))?;
        let (issued, expires_at) = (token.claims.issued_at, token.claims.expires_at);
        let next = self.due(issued, expires_at);
        let shared = origin == crate::identity::cache::Origin::Shared;
        tracing::info!(credential = %c.name, oid = %token.claims.oid, expires_at = %expires_at,
            refresh_at = %next, shared, "Token refreshed");
        let verified = self.verify(&token).await;
        self.emit(LocalEvent::Refreshed {
            name: c.name.clone(),
            oid: token.claims.oid.clone(),
            expires_at,
            refresh_at: next,
            shared,
            fingerprint: claims::fingerprint(token.token.expose_secret()),
            verified,
        });
        Ok((issued, expires_at))
    }

    /// Verifies the token just written when verification is on and the spec asks for it.
    /// A failure is reported, never acted on: the files keep the token.
    async fn verify(&self, token: &AcquiredToken) -> Option<Result<(), String>> {
        let c = &self.cred;
        let options = self.probe.as_ref()?;
        if !c.spec.verify.as_ref().is_some_and(|v| v.enabled) {
            return None;
        }
        let Some(endpoint) = &c.spec.redis else {
            let why = "spec.verify.enabled is true but spec.redis names no endpoint";
            tracing::warn!(credential = %c.name, reason = why, "Token not verified");
            return Some(Err(format!("input: {why}")));
        };
        let target = ProbeTarget::from(endpoint);
        let oid = &token.claims.oid;
        let report = probe::verify(&target, oid, &token.token, options).await;
        let (host, port) = (&target.host, target.port);
        match report.first_failure() {
            None => {
                tracing::info!(credential = %c.name, %host, port, "Token verified");
                Some(Ok(()))
            }
            Some((check, why)) => {
                tracing::warn!(credential = %c.name, %host, port, check, reason = %why,
                    "Token verification failed; the files keep the token");
                Some(Err(format!("{check}: {why}")))
            }
        }
    }

    fn emit(&self, event: LocalEvent) {
        let _ = self.events.send(event);
    }
}

/// Issue and expiry of the token an earlier run left in `dir`, if it is readable.
fn existing_token_times(dir: &Path, resolved: &ResolvedSpec) -> Option<(Timestamp, Timestamp)> {
    let password = std::fs::read_to_string(dir.join(&resolved.keys.password)).ok()?;
    let claims = claims::decode(password.trim()).ok()?;
    Some((claims.issued_at, claims.expires_at))
}

async fn sleep_until(at: Timestamp) {
    let wait = at.duration_since(Timestamp::now());
    if let Ok(wait) = std::time::Duration::try_from(wait) {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    const GOOD: &str = "apiVersion: amr.entraid.dev/v1alpha1\nkind: AmrCredential\n\
        metadata: {name: a}\nspec:\n  flow: {type: SystemAssignedManagedIdentity}\n";

    #[test]
    fn several_documents_load_and_invalid_ones_are_reported() {
        let bad = "---\napiVersion: amr.entraid.dev/v1alpha1\nkind: AmrCredential\n\
            metadata: {name: b}\nspec:\n  flow: {type: ClientCredentials}\n";
        let f = file(&format!("{GOOD}{bad}"));
        let (ok, rejected) = load(f.path()).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(rejected[0].name, "b");
        assert!(rejected[0].message.contains("clientSecretRef"));
    }

    /// A loop for credential `a` of [`GOOD`] with verification on against `redis`.
    fn verifying(redis: &str, probe: Option<ProbeOptions>) -> CredentialLoop {
        let text = format!("{GOOD}  verify: {{enabled: true}}\n{redis}");
        let (mut creds, _) = parse(&text, Path::new("creds.yaml")).unwrap();
        let material = Arc::new(crate::identity::material::FileMaterial::new("."));
        let config = crate::identity::source::SourceConfig::default();
        CredentialLoop {
            cred: creds.remove(0),
            dir: PathBuf::from("unused"),
            source: Arc::new(AzureTokenSource::new(config, material).unwrap()),
            probe,
            events: mpsc::unbounded_channel().0,
        }
    }

    fn probe_options() -> Option<ProbeOptions> {
        Some(ProbeOptions::new(std::time::Duration::from_secs(1)).unwrap())
    }

    /// A token for `oid-1` meant for Redis, valid for an hour from now.
    fn token() -> AcquiredToken {
        use base64::Engine;
        let iat = Timestamp::now().as_second();
        let payload = serde_json::json!({
            "oid": "oid-1", "aud": "https://redis.azure.com", "iat": iat, "exp": iat + 3600,
        });
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string());
        let token = format!("eyJhbGciOiJub25lIn0.{body}.c2ln");
        AcquiredToken {
            claims: claims::decode(&token).unwrap(),
            token: token.into(),
        }
    }

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_failed_verification_names_the_failing_check() {
        let redis = format!("  redis: {{host: 127.0.0.1, port: {}}}\n", closed_port());
        let verified = verifying(&redis, probe_options()).verify(&token()).await;
        let why = verified.unwrap().unwrap_err();
        assert!(why.starts_with("tcp: "), "{why}");
    }

    #[tokio::test]
    async fn verification_without_an_endpoint_fails_at_the_input() {
        let verified = verifying("", probe_options()).verify(&token()).await;
        assert!(verified.unwrap().unwrap_err().starts_with("input: "));
    }

    #[tokio::test]
    async fn without_probe_options_nothing_is_verified() {
        let redis = format!("  redis: {{host: 127.0.0.1, port: {}}}\n", closed_port());
        assert_eq!(verifying(&redis, None).verify(&token()).await, None);
    }

    #[test]
    fn a_document_of_another_kind_is_refused() {
        let f = file(&GOOD.replace("kind: AmrCredential", "kind: Deployment"));
        let e = load(f.path()).unwrap_err().to_string();
        assert!(
            e.contains("found apiVersion \"amr.entraid.dev/v1alpha1\" and kind \"Deployment\""),
            "{e}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_reported_with_the_field_path() {
        let text = format!("{GOOD}  tokenManagerConfig: {{expirationRefreshRatio: high}}\n");
        let e = parse(&text, Path::new("creds.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "document 1 is not an AmrCredential: \
                        spec.tokenManagerConfig.expirationRefreshRatio: invalid type"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_refused_as_such() {
        let e = parse("hello world\n", Path::new("creds.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a mapping"), "{e}");
    }

    #[test]
    fn an_unknown_flow_type_is_a_parse_error_naming_the_document() {
        let f = file(&GOOD.replace("SystemAssignedManagedIdentity", "Telepathy"));
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains("document 1"), "{e}");
        assert!(e.contains("Telepathy"), "{e}");
    }
}
