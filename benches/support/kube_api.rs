//! A Kubernetes API stand-in, served over HTTP on loopback, answering just the calls a
//! reconcile makes: Secret GET and server-side apply, AmrCredential GET and status merge
//! patch, Event POST and PATCH. It runs in the benchmark's parent process, so that the
//! objects it keeps count against the parent, not against the measured operator.

use amr_credential_operator::api::AmrCredential;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, StatusCode, Uri, header};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Counts of the API calls answered.
#[derive(Debug, Default)]
pub struct Calls {
    /// GET of a Secret.
    pub secret_gets: AtomicU64,
    /// Server-side apply of a Secret.
    pub secret_applies: AtomicU64,
    /// GET of an AmrCredential or its status.
    pub credential_gets: AtomicU64,
    /// Merge patch of an AmrCredential's status.
    pub status_patches: AtomicU64,
    /// Event POST or PATCH.
    pub events: AtomicU64,
    /// Anything else, answered 404.
    pub unexpected: AtomicU64,
}

impl Calls {
    /// Secret GET, Secret apply, AmrCredential GET, status patch, Event, other.
    pub fn counts(&self) -> [u64; 6] {
        [
            &self.secret_gets,
            &self.secret_applies,
            &self.credential_gets,
            &self.status_patches,
            &self.events,
            &self.unexpected,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// The objects, shared by every connection.
#[derive(Default)]
pub struct ApiState {
    /// Secrets as compact JSON.
    secrets: Mutex<HashMap<String, Bytes>>,
    credentials: Mutex<HashMap<String, Value>>,
    resource_version: AtomicU64,
    secret_bytes: AtomicUsize,
    /// Calls answered, by kind.
    pub calls: Calls,
}

impl ApiState {
    /// Stores a Secret as if someone had created it.
    pub fn insert_secret(&self, namespace: &str, name: &str, secret: &Value) {
        let mut secret = secret.clone();
        self.stamp(&mut secret);
        self.store_secret(key(namespace, name), compact_json(&secret));
    }

    /// Stores an AmrCredential as if someone had applied it.
    pub fn insert_credential(&self, credential: &AmrCredential) {
        let meta = &credential.metadata;
        let k = key(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        let value = serde_json::to_value(credential).expect("a credential serialises");
        lock(&self.credentials).insert(k, value);
    }

    /// Bytes of Secret JSON held.
    pub fn secret_bytes(&self) -> usize {
        self.secret_bytes.load(Ordering::Relaxed)
    }

    /// Serves the API on an ephemeral loopback port until the returned task is aborted.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<(SocketAddr, AbortOnDrop)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(self.clone());
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((addr, AbortOnDrop(task)))
    }

    fn handle(&self, method: &Method, path: &str, body: &Bytes) -> (StatusCode, Bytes) {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let credential = ["apis", "amr.entraid.dev", "v1alpha1", "namespaces"];
        match (method, segments.as_slice()) {
            (&Method::GET, ["api", "v1", "namespaces", ns, "secrets", name]) => {
                self.calls.secret_gets.fetch_add(1, Ordering::Relaxed);
                self.get_secret(ns, name)
            }
            (&Method::PATCH, ["api", "v1", "namespaces", ns, "secrets", name]) => {
                self.calls.secret_applies.fetch_add(1, Ordering::Relaxed);
                self.apply_secret(ns, name, body)
            }
            (&Method::GET, [a, b, c, d, ns, _, name] | [a, b, c, d, ns, _, name, "status"])
                if [*a, *b, *c, *d] == credential =>
            {
                self.calls.credential_gets.fetch_add(1, Ordering::Relaxed);
                self.get_credential(ns, name)
            }
            (&Method::PATCH, [a, b, c, d, ns, _, name, "status"])
                if [*a, *b, *c, *d] == credential =>
            {
                self.calls.status_patches.fetch_add(1, Ordering::Relaxed);
                self.patch_status(ns, name, body)
            }
            (&Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
                self.calls.events.fetch_add(1, Ordering::Relaxed);
                (StatusCode::CREATED, body.clone())
            }
            (&Method::PATCH, ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => {
                self.calls.events.fetch_add(1, Ordering::Relaxed);
                (StatusCode::OK, body.clone())
            }
            _ => {
                self.calls.unexpected.fetch_add(1, Ordering::Relaxed);
                not_found(&format!("{method} {path} is not served here"))
            }
        }
    }

    fn get_secret(&self, ns: &str, name: &str) -> (StatusCode, Bytes) {
        match lock(&self.secrets).get(&key(ns, name)) {
            Some(json) => (StatusCode::OK, json.clone()),
            None => not_found(&format!("secrets {name:?} not found")),
        }
    }

    /// Stores the applied Secret whole: the only field manager is the controller.
    fn apply_secret(&self, ns: &str, name: &str, body: &Bytes) -> (StatusCode, Bytes) {
        let Ok(mut secret) = serde_json::from_slice::<Value>(body) else {
            return bad_request("the body is not JSON");
        };
        self.stamp(&mut secret);
        let json = compact_json(&secret);
        self.store_secret(key(ns, name), json.clone());
        (StatusCode::OK, json)
    }

    fn store_secret(&self, key: String, json: Bytes) {
        self.secret_bytes.fetch_add(json.len(), Ordering::Relaxed);
        if let Some(old) = lock(&self.secrets).insert(key, json) {
            self.secret_bytes.fetch_sub(old.len(), Ordering::Relaxed);
        }
    }

    fn get_credential(&self, ns: &str, name: &str) -> (StatusCode, Bytes) {
        match lock(&self.credentials).get(&key(ns, name)) {
            Some(c) => (StatusCode::OK, Bytes::from(c.to_string())),
            None => not_found(&format!("amrcredentials {name:?} not found")),
        }
    }

    /// Merges the patch's status into the stored credential.
    fn patch_status(&self, ns: &str, name: &str, body: &Bytes) -> (StatusCode, Bytes) {
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return bad_request("the body is not JSON");
        };
        let mut credentials = lock(&self.credentials);
        let Some(current) = credentials.get_mut(&key(ns, name)) else {
            return not_found(&format!("amrcredentials {name:?} not found"));
        };
        // A status patch changes nothing but the status. The operator parses the answer as
        // an AmrCredential, so a malformed status still fails its reconcile.
        if let Some(status) = patch.get("status") {
            merge(&mut current["status"], status);
        }
        self.stamp(current);
        (StatusCode::OK, Bytes::from(current.to_string()))
    }

    /// Sets a new `resourceVersion`, as every write does.
    fn stamp(&self, object: &mut Value) {
        let version = self.resource_version.fetch_add(1, Ordering::Relaxed) + 1;
        object["metadata"]["resourceVersion"] = Value::String(version.to_string());
    }
}

/// Stops the server when dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<std::io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn answer(
    State(api): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let (status, body) = api.handle(&method, uri.path(), &body);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(object) = target else {
        return;
    };
    for (k, v) in fields {
        if v.is_null() {
            object.remove(k);
        } else {
            merge(object.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// JSON of `value` in a buffer of exactly its length: a Secret is kept for the whole run.
fn compact_json(value: &Value) -> Bytes {
    let json = serde_json::to_vec(value).expect("a JSON value serialises");
    Bytes::from(json.into_boxed_slice())
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(message: &str) -> (StatusCode, Bytes) {
    failure(StatusCode::NOT_FOUND, "NotFound", message)
}

fn bad_request(message: &str) -> (StatusCode, Bytes) {
    failure(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn failure(status: StatusCode, reason: &str, message: &str) -> (StatusCode, Bytes) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "code": status.as_u16()});
    (status, Bytes::from(body.to_string()))
}
