//! Where flow inputs come from: Secrets and ServiceAccounts of the resource's own namespace,
//! through the Kubernetes API or, in file mode, a directory laid out like mounted Secrets.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use secrecy::SecretString;
use std::path::PathBuf;

/// Annotation on a ServiceAccount naming the Entra ID application it is federated with.
pub const SA_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// Annotation on a ServiceAccount naming the application's tenant.
pub const SA_TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// Audience of ServiceAccount tokens exchanged with Entra ID.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Why an input could not be read. Messages name objects, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    /// The Secret does not exist.
    #[error("Secret {name:?} not found in namespace {namespace:?}")]
    SecretNotFound {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// The Secret exists but lacks the key.
    #[error("Secret {name:?} has no key {key:?}")]
    KeyNotFound {
        /// Secret name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// In file mode, the file that holds a Secret key does not exist.
    #[error("Secret {name:?} key {key:?} not found: no file {path}")]
    FileNotFound {
        /// Secret name.
        name: String,
        /// The key.
        key: String,
        /// The file that was looked for.
        path: String,
    },
    /// The ServiceAccount does not exist.
    #[error("ServiceAccount {name:?} not found in namespace {namespace:?}")]
    ServiceAccountNotFound {
        /// Namespace.
        namespace: String,
        /// ServiceAccount name.
        name: String,
    },
    /// The source could not be reached or refused; trying again later may help.
    #[error("{0}")]
    Unavailable(String),
}

impl MaterialError {
    /// Whether the error names something missing that the user must create or fix.
    pub fn is_missing(&self) -> bool {
        !matches!(self, MaterialError::Unavailable(_))
    }
}

/// Annotations of a ServiceAccount that workload identity uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAccountInfo {
    /// `azure.workload.identity/client-id`.
    pub client_id: Option<String>,
    /// `azure.workload.identity/tenant-id`.
    pub tenant_id: Option<String>,
}

/// Reads flow inputs. Every call names the namespace of the resource asking, so nothing
/// outside that namespace can be named.
#[async_trait::async_trait]
pub trait Material: Send + Sync + 'static {
    /// The value of `key` in Secret `name`.
    async fn secret_value(&self, ns: &str, name: &str, key: &str)
    -> Result<Vec<u8>, MaterialError>;
    /// The workload identity annotations of ServiceAccount `name`.
    async fn service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<ServiceAccountInfo, MaterialError>;
    /// A fresh token of ServiceAccount `name` for `audience`.
    async fn service_account_token(
        &self,
        ns: &str,
        name: &str,
        audience: &str,
    ) -> Result<SecretString, MaterialError>;
    /// Replaces the value of `key` in the existing Secret `name` in one atomic step, leaving
    /// its other keys alone; a missing Secret is an error, never created.
    async fn write_secret_value(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), MaterialError> {
        let _ = (ns, key, value);
        Err(MaterialError::Unavailable(format!(
            "this source cannot write Secret {name:?}"
        )))
    }
}

/// Reads inputs through the Kubernetes API.
#[derive(Clone)]
pub struct KubeMaterial {
    client: kube::Client,
}

impl KubeMaterial {
    /// Reads through `client`.
    pub fn new(client: kube::Client) -> KubeMaterial {
        KubeMaterial { client }
    }
}

fn api_error(what: &str, e: &kube::Error) -> MaterialError {
    MaterialError::Unavailable(format!("reading {what} failed: {e}"))
}

#[async_trait::async_trait]
impl Material for KubeMaterial {
    async fn secret_value(
        &self,
        ns: &str,
        name: &str,
        key: &str,
    ) -> Result<Vec<u8>, MaterialError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| api_error("a Secret", &e))?;
        let secret = secret.ok_or_else(|| MaterialError::SecretNotFound {
            namespace: ns.to_string(),
            name: name.to_string(),
        })?;
        secret
            .data
            .and_then(|mut d| d.remove(key))
            .map(|b| b.0)
            .ok_or_else(|| MaterialError::KeyNotFound {
                name: name.into(),
                key: key.into(),
            })
    }

    async fn service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<ServiceAccountInfo, MaterialError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let sa = api
            .get_opt(name)
            .await
            .map_err(|e| api_error("a ServiceAccount", &e))?;
        let sa = sa.ok_or_else(|| MaterialError::ServiceAccountNotFound {
            namespace: ns.to_string(),
            name: name.to_string(),
        })?;
        let annotations = sa.metadata.annotations.unwrap_or_default();
        Ok(ServiceAccountInfo {
            client_id: annotations.get(SA_CLIENT_ID_ANNOTATION).cloned(),
            tenant_id: annotations.get(SA_TENANT_ID_ANNOTATION).cloned(),
        })
    }

    async fn service_account_token(
        &self,
        ns: &str,
        name: &str,
        audience: &str,
    ) -> Result<SecretString, MaterialError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_string()]),
                expiration_seconds: Some(600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let issued: TokenRequest = api
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 404 => MaterialError::ServiceAccountNotFound {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                },
                _ => api_error("a ServiceAccount token", &e),
            })?;
        let token = issued.status.and_then(|s| s.token).unwrap_or_default();
        if token.is_empty() {
            return Err(MaterialError::Unavailable(
                "the TokenRequest returned no token".into(),
            ));
        }
        Ok(SecretString::from(token))
    }

    async fn write_secret_value(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), MaterialError> {
        use base64::Engine;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        // A merge patch of one key: the other keys stay, and a missing Secret is a 404.
        let patch = serde_json::json!({ "data": { key: encoded } });
        let params = PatchParams::default();
        match api.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(MaterialError::SecretNotFound {
                namespace: ns.to_string(),
                name: name.to_string(),
            }),
            Err(e) => Err(MaterialError::Unavailable(format!(
                "writing key {key:?} of Secret {name:?} failed: {e}"
            ))),
        }
    }
}

/// Reads inputs from files: Secret key `k` of Secret `s` is the file `DIR/s/k`, as a mounted
/// Secret lays it out. A ServiceAccount token is the file `DIR/<serviceaccount>/token`, and
/// its annotations the files `client-id` and `tenant-id` beside it, when present.
#[derive(Debug, Clone)]
pub struct FileMaterial {
    dir: PathBuf,
}

impl FileMaterial {
    /// Reads below `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> FileMaterial {
        FileMaterial { dir: dir.into() }
    }

    fn read(&self, name: &str, key: &str) -> Result<Vec<u8>, MaterialError> {
        let path = self.dir.join(name).join(key);
        std::fs::read(&path).map_err(|_| MaterialError::FileNotFound {
            name: name.into(),
            key: key.into(),
            path: path.display().to_string(),
        })
    }

    /// Writes `DIR/name/key` through a temporary file renamed over it, so a reader sees the
    /// old value or the new one, never a part.
    fn write(&self, name: &str, key: &str, value: &[u8]) -> Result<(), MaterialError> {
        use std::io::Write;
        let secret_dir = self.dir.join(name);
        if !secret_dir.is_dir() {
            return Err(MaterialError::SecretNotFound {
                namespace: self.dir.display().to_string(),
                name: name.to_string(),
            });
        }
        let target = secret_dir.join(key);
        let failed = |e: std::io::Error| {
            MaterialError::Unavailable(format!("writing {} failed: {e}", target.display()))
        };
        // The temporary file is created with mode 0600 beside the target.
        let mut tmp = tempfile::NamedTempFile::new_in(&secret_dir).map_err(failed)?;
        tmp.write_all(value).map_err(failed)?;
        tmp.as_file().sync_all().map_err(failed)?;
        tmp.persist(&target).map_err(|e| failed(e.error))?;
        Ok(())
    }

    fn read_optional(&self, name: &str, key: &str) -> Option<String> {
        let value = std::fs::read_to_string(self.dir.join(name).join(key)).ok()?;
        Some(value.trim().to_string()).filter(|v| !v.is_empty())
    }
}

#[async_trait::async_trait]
impl Material for FileMaterial {
    async fn secret_value(
        &self,
        _ns: &str,
        name: &str,
        key: &str,
    ) -> Result<Vec<u8>, MaterialError> {
        self.read(name, key)
    }

    async fn service_account(
        &self,
        _ns: &str,
        name: &str,
    ) -> Result<ServiceAccountInfo, MaterialError> {
        Ok(ServiceAccountInfo {
            client_id: self.read_optional(name, "client-id"),
            tenant_id: self.read_optional(name, "tenant-id"),
        })
    }

    async fn service_account_token(
        &self,
        _ns: &str,
        name: &str,
        _audience: &str,
    ) -> Result<SecretString, MaterialError> {
        let bytes =
            self.read(name, "token")
                .map_err(|_| MaterialError::ServiceAccountNotFound {
                    namespace: self.dir.display().to_string(),
                    name: name.to_string(),
                })?;
        let token = String::from_utf8_lossy(&bytes).trim().to_string();
        Ok(SecretString::from(token))
    }

    async fn write_secret_value(
        &self,
        _ns: &str,
        name: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), MaterialError> {
        self.write(name, key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn dir_with(files: &[(&str, &str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (secret, key, value) in files {
            std::fs::create_dir_all(dir.path().join(secret)).unwrap();
            std::fs::write(dir.path().join(secret).join(key), value).unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn file_material_reads_a_secret_key_as_a_file() {
        let dir = dir_with(&[("sp", "client-secret", "s3cret")]);
        let m = FileMaterial::new(dir.path());
        assert_eq!(
            m.secret_value("ns", "sp", "client-secret").await.unwrap(),
            b"s3cret"
        );
    }

    #[tokio::test]
    async fn a_missing_secret_file_names_the_path_to_create() {
        let dir = dir_with(&[("sp", "client-secret", "x")]);
        let m = FileMaterial::new(dir.path());
        let e = m.secret_value("ns", "sp", "nope").await.unwrap_err();
        assert!(matches!(e, MaterialError::FileNotFound { .. }), "{e}");
        let expected = dir.path().join("sp").join("nope").display().to_string();
        assert!(
            e.to_string().ends_with(&format!("no file {expected}")),
            "{e}"
        );
        assert!(e.is_missing());
    }

    #[tokio::test]
    async fn a_written_value_replaces_only_its_key() {
        let dir = dir_with(&[
            ("login", "refresh-token", "old"),
            ("login", "other", "keep"),
        ]);
        let m = FileMaterial::new(dir.path());
        m.write_secret_value("ns", "login", "refresh-token", b"new")
            .await
            .unwrap();
        assert_eq!(
            m.secret_value("ns", "login", "refresh-token")
                .await
                .unwrap(),
            b"new"
        );
        assert_eq!(
            m.secret_value("ns", "login", "other").await.unwrap(),
            b"keep"
        );
        let leftovers = std::fs::read_dir(dir.path().join("login")).unwrap().count();
        assert_eq!(leftovers, 2);
    }

    #[tokio::test]
    async fn writing_into_a_missing_secret_creates_nothing() {
        let dir = dir_with(&[]);
        let m = FileMaterial::new(dir.path());
        let e = m
            .write_secret_value("ns", "login", "k", b"v")
            .await
            .unwrap_err();
        assert!(matches!(e, MaterialError::SecretNotFound { .. }), "{e}");
        assert!(!dir.path().join("login").exists());
    }

    #[tokio::test]
    async fn kube_material_merge_patches_one_key_and_never_creates_a_secret() {
        use http::{Method, Request, Response};
        use kube::client::Body;
        let (mock, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let m = KubeMaterial::new(kube::Client::new(mock, "default"));
        let writes = tokio::spawn(async move {
            let first = m.write_secret_value("shop", "login", "refresh-token", b"rt-2");
            let second = m.write_secret_value("shop", "gone", "refresh-token", b"rt-2");
            (first.await, second.await)
        });
        let answers = [
            (200, r#"{"apiVersion":"v1","kind":"Secret"}"#),
            (404, NOT_FOUND),
        ];
        for (status, reply) in answers {
            let (req, send) = api.next_request().await.unwrap();
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(
                req.headers()["content-type"],
                "application/merge-patch+json"
            );
            let body = req.into_body().collect_bytes().await.unwrap();
            assert_eq!(&body[..], br#"{"data":{"refresh-token":"cnQtMg=="}}"#);
            let reply = Body::from(reply.as_bytes().to_vec());
            send.send_response(Response::builder().status(status).body(reply).unwrap());
        }
        let (first, second) = writes.await.unwrap();
        assert!(first.is_ok());
        assert!(matches!(second, Err(MaterialError::SecretNotFound { .. })));
        assert!(api.next_request().await.is_none(), "nothing else was sent");
    }

    const NOT_FOUND: &str = r#"{"kind":"Status","apiVersion":"v1","status":"Failure",
        "message":"not found","reason":"NotFound","code":404}"#;

    #[tokio::test]
    async fn service_account_files_give_token_and_annotations() {
        let dir = dir_with(&[
            ("inventory", "token", "jwt\n"),
            ("inventory", "client-id", "c"),
        ]);
        let m = FileMaterial::new(dir.path());
        let t = m
            .service_account_token("ns", "inventory", TOKEN_EXCHANGE_AUDIENCE)
            .await;
        assert_eq!(t.unwrap().expose_secret(), "jwt");
        let info = m.service_account("ns", "inventory").await.unwrap();
        assert_eq!(info.client_id.as_deref(), Some("c"));
        assert_eq!(info.tenant_id, None);
    }
}
