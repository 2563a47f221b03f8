//! Reads AmrCredentials and their Secrets from the cluster for the command line.

use super::sources::{self, Credential};
use crate::api::{AmrCredential, RedisEndpoint, SecretKeys};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use secrecy::SecretString;
use std::time::Duration;
use tracing::debug;

/// Why the cluster could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No kubeconfig or in-cluster configuration works.
    #[error("connecting to the Kubernetes API failed: {0}")]
    ClientFailed(#[source] kube::Error),
    /// Listing or reading AmrCredentials failed.
    #[error("reading AmrCredentials {scope} failed: {source}")]
    ListFailed {
        /// Which namespace, or all of them.
        scope: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The named AmrCredential does not exist.
    #[error("there is no AmrCredential {namespace}/{name}")]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The API server did not answer in time.
    #[error("the Kubernetes API did not answer within {0:?}")]
    TimedOut(Duration),
}

/// Which AmrCredentials to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every one in a namespace.
    Namespace(String),
    /// One by name.
    One {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Every one in the cluster.
    All,
}

/// An AmrCredential with what its Secret holds, or why that could not be read.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) endpoint: Option<RedisEndpoint>,
    pub(crate) credential: Result<Credential, String>,
}

/// Lists the AmrCredentials in `scope` and reads each one's Secret.
pub(crate) async fn gather(scope: &Scope, timeout: Duration) -> Result<Vec<Found>, ClusterError> {
    let client = within(timeout, kube::Client::try_default())
        .await?
        .map_err(ClusterError::ClientFailed)?;
    let resources = list(&client, scope, timeout).await?;
    let mut found = Vec::with_capacity(resources.len());
    for resource in resources {
        found.push(read(&client, resource, timeout).await);
    }
    Ok(found)
}

async fn list(
    client: &kube::Client,
    scope: &Scope,
    timeout: Duration,
) -> Result<Vec<AmrCredential>, ClusterError> {
    let failed = |source| ClusterError::ListFailed {
        scope: describe(scope),
        source,
    };
    match scope {
        Scope::One { namespace, name } => {
            let api: Api<AmrCredential> = Api::namespaced(client.clone(), namespace);
            let one = within(timeout, api.get_opt(name)).await?.map_err(failed)?;
            let one = one.ok_or_else(|| ClusterError::NotFound {
                namespace: namespace.clone(),
                name: name.clone(),
            })?;
            Ok(vec![one])
        }
        Scope::Namespace(namespace) => {
            let api: Api<AmrCredential> = Api::namespaced(client.clone(), namespace);
            let list = within(timeout, api.list(&ListParams::default())).await?;
            Ok(list.map_err(failed)?.items)
        }
        Scope::All => {
            let api: Api<AmrCredential> = Api::all(client.clone());
            let list = within(timeout, api.list(&ListParams::default())).await?;
            Ok(list.map_err(failed)?.items)
        }
    }
}

async fn read(client: &kube::Client, resource: AmrCredential, timeout: Duration) -> Found {
    let namespace = resource.metadata.namespace.clone().unwrap_or_default();
    let name = resource.metadata.name.clone().unwrap_or_default();
    let secret_name = secret_name(&resource);
    let keys = &resource.spec.target.keys;
    debug!(namespace, name, secret = secret_name, "Reading credential");

    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let credential = match within(timeout, api.get_opt(&secret_name)).await {
        Ok(Ok(Some(secret))) => credential(&secret, keys, &namespace, &secret_name),
        Ok(Ok(None)) => Err(format!(
            "the Secret {namespace}/{secret_name} does not exist: the operator has not \
             written it yet; check the AmrCredential's status"
        )),
        Ok(Err(e)) => Err(format!(
            "reading the Secret {namespace}/{secret_name} failed: {e}"
        )),
        Err(e) => Err(format!("reading the Secret {namespace}/{secret_name}: {e}")),
    };
    Found {
        namespace,
        name,
        endpoint: resource.spec.redis.clone(),
        credential,
    }
}

/// The Secret an AmrCredential writes: `spec.target.secretName`, else its own name.
pub(crate) fn secret_name(resource: &AmrCredential) -> String {
    resource
        .spec
        .target
        .secret_name
        .clone()
        .or_else(|| resource.metadata.name.clone())
        .unwrap_or_default()
}

/// The username and password under `keys` in `secret`.
pub(crate) fn credential(
    secret: &Secret,
    keys: &SecretKeys,
    namespace: &str,
    secret_name: &str,
) -> Result<Credential, String> {
    let data = secret.data.clone().unwrap_or_default();
    let value = |key: &str| {
        let bytes = data
            .get(key)
            .ok_or_else(|| format!("the Secret {namespace}/{secret_name} has no key {key}"))?;
        let what = format!("key {key} of the Secret {namespace}/{secret_name}");
        sources::value(bytes.0.clone(), &what).map_err(|e| e.to_string())
    };
    Ok(Credential {
        username: value(&keys.username)?,
        password: SecretString::from(value(&keys.password)?),
    })
}

fn describe(scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) => format!("in namespace {ns}"),
        Scope::One { namespace, name } => format!("{namespace}/{name}"),
        Scope::All => "in all namespaces".to_string(),
    }
}

async fn within<T>(
    timeout: Duration,
    future: impl std::future::Future<Output = T>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| ClusterError::TimedOut(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use secrecy::ExposeSecret;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn the_secret_is_read_under_the_resource_keys() {
        let keys = SecretKeys {
            username: "user".to_string(),
            ..SecretKeys::default()
        };
        let s = secret(&[("user", "oid-1"), ("password", "a.b.c")]);
        let c = credential(&s, &keys, "shop", "orders").unwrap();
        assert_eq!(c.username, "oid-1");
        assert_eq!(c.password.expose_secret(), "a.b.c");
    }

    #[test]
    fn a_missing_key_names_the_secret_and_the_key() {
        let s = secret(&[("username", "oid-1")]);
        let err = credential(&s, &SecretKeys::default(), "shop", "orders").unwrap_err();
        assert_eq!(err, "the Secret shop/orders has no key password");
    }

    #[test]
    fn the_secret_name_defaults_to_the_resource_name() {
        let spec: crate::api::AmrCredentialSpec =
            serde_json::from_value(serde_json::json!({"flow": {"type": "WorkloadIdentity"}}))
                .unwrap();
        let mut resource = AmrCredential::new("orders", spec);
        assert_eq!(secret_name(&resource), "orders");
        resource.spec.target.secret_name = Some("orders-redis".to_string());
        assert_eq!(secret_name(&resource), "orders-redis");
    }
}
