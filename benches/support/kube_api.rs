//! An in-memory Kubernetes API answering just the calls a reconcile makes: Secret GET and
//! server-side apply, AmrCredential GET and status merge patch, Event POST and PATCH.
//!
//! It also watches the Secrets being written: how many credentials hold a token, when each
//! refresh cycle is complete, and how late every rewrite came after its refresh time.

use super::stats;
use amr_credential_operator::api::AmrCredential;
use amr_credential_operator::controller::secret::{CONTENT_HASH_ANNOTATION, REFRESH_AT_ANNOTATION};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use kube::client::Body;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

/// The moment a write completed a cycle: every managed Secret written `cycle + 1` times.
#[derive(Debug, Clone, Copy)]
pub struct Milestone {
    /// When, on the wall clock.
    pub wall: Timestamp,
    /// CPU time of the whole process by then.
    pub cpu: Duration,
    /// CPU time spent answering API requests by then.
    pub api_cpu: Duration,
    /// Secret rewrites (writes after the first) by then.
    pub rewrites: u64,
    /// Resident memory and heap in use by then, MiB.
    pub memory_mib: [f64; 2],
}

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

/// A Secret as stored: its JSON, and what the bookkeeping needs from it.
struct StoredSecret {
    json: Bytes,
    refresh_at: Option<Timestamp>,
    content_hash: Option<String>,
    /// Writes through server-side apply; zero for Secrets created by the benchmark itself.
    writes: u32,
}

/// The objects and the bookkeeping shared by every clone of the service.
pub struct ApiState {
    secrets: Mutex<HashMap<String, StoredSecret>>,
    credentials: Mutex<HashMap<String, Arc<AmrCredential>>>,
    resource_version: AtomicU64,
    /// Managed Secrets expected; a cycle is complete when all of them reached its write.
    expected: usize,
    /// `reached[w]`: Secrets written at least `w` times.
    reached: Vec<AtomicUsize>,
    /// `milestones[w]`: when the last Secret reached `w` writes.
    milestones: Vec<OnceLock<Milestone>>,
    rewrites: AtomicU64,
    /// Rewrite time minus the refresh time it replaced, in microseconds.
    lateness_us: Mutex<Vec<i64>>,
    secret_bytes: AtomicUsize,
    api_cpu_ns: AtomicU64,
    /// Calls answered, by kind.
    pub calls: Calls,
}

impl ApiState {
    /// An empty API expecting `expected` managed Secrets written `writes` times each.
    pub fn new(expected: usize, writes: u32) -> Arc<ApiState> {
        let slots = writes as usize + 1;
        Arc::new(ApiState {
            secrets: Mutex::default(),
            credentials: Mutex::default(),
            resource_version: AtomicU64::new(1),
            expected,
            reached: (0..slots).map(|_| AtomicUsize::new(0)).collect(),
            milestones: (0..slots).map(|_| OnceLock::new()).collect(),
            rewrites: AtomicU64::new(0),
            lateness_us: Mutex::default(),
            secret_bytes: AtomicUsize::new(0),
            api_cpu_ns: AtomicU64::new(0),
            calls: Calls::default(),
        })
    }

    /// Stores a Secret as if someone had created it.
    pub fn insert_secret(&self, namespace: &str, name: &str, secret: &Value) {
        let mut secret = secret.clone();
        self.stamp(&mut secret);
        let json = compact_json(&secret);
        let stored = StoredSecret {
            json,
            refresh_at: None,
            content_hash: None,
            writes: 0,
        };
        lock(&self.secrets).insert(key(namespace, name), stored);
    }

    /// Stores an AmrCredential as if someone had applied it.
    pub fn insert_credential(&self, credential: AmrCredential) {
        let meta = &credential.metadata;
        let k = key(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        lock(&self.credentials).insert(k, Arc::new(credential));
    }

    /// The current AmrCredential, as a reflector would hand it to reconcile.
    pub fn credential(&self, namespace: &str, name: &str) -> Option<Arc<AmrCredential>> {
        lock(&self.credentials).get(&key(namespace, name)).cloned()
    }

    /// Forgets every Secret.
    pub fn clear_secrets(&self) {
        lock(&self.secrets).clear();
        self.secret_bytes.store(0, Ordering::Relaxed);
    }

    /// Forgets every AmrCredential.
    pub fn clear_credentials(&self) {
        lock(&self.credentials).clear();
    }

    /// When every managed Secret had been written `writes` times.
    pub fn milestone(&self, writes: u32) -> Option<Milestone> {
        self.milestones.get(writes as usize)?.get().copied()
    }

    /// Whether the last expected write has happened.
    pub fn finished(&self) -> bool {
        self.milestones.last().is_some_and(|m| m.get().is_some())
    }

    /// Managed Secrets written at least `writes` times.
    pub fn reached(&self, writes: u32) -> usize {
        self.reached
            .get(writes as usize)
            .map_or(0, |r| r.load(Ordering::Relaxed))
    }

    /// Rewrites so far.
    pub fn rewrites(&self) -> u64 {
        self.rewrites.load(Ordering::Relaxed)
    }

    /// Lateness of every rewrite so far, sorted, in milliseconds.
    pub fn lateness_ms(&self) -> Vec<f64> {
        let mut ms: Vec<f64> = lock(&self.lateness_us)
            .iter()
            .map(|&us| us as f64 / 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    }

    /// Bytes of Secret JSON held.
    pub fn secret_bytes(&self) -> usize {
        self.secret_bytes.load(Ordering::Relaxed)
    }

    /// CPU time spent answering requests.
    pub fn api_cpu(&self) -> Duration {
        Duration::from_nanos(self.api_cpu_ns.load(Ordering::Relaxed))
    }

    fn handle(&self, method: &Method, path: &str, body: &Bytes) -> Response<Body> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["api", "v1", "namespaces", ns, "secrets", name]) => {
                self.calls.secret_gets.fetch_add(1, Ordering::Relaxed);
                self.get_secret(ns, name)
            }
            (&Method::PATCH, ["api", "v1", "namespaces", ns, "secrets", name]) => {
                self.calls.secret_applies.fetch_add(1, Ordering::Relaxed);
                self.apply_secret(ns, name, body)
            }
            (
                &Method::GET,
                [
                    "apis",
                    "amr.entraid.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    _,
                    name,
                ],
            )
            | (
                &Method::GET,
                [
                    "apis",
                    "amr.entraid.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    _,
                    name,
                    "status",
                ],
            ) => {
                self.calls.credential_gets.fetch_add(1, Ordering::Relaxed);
                self.get_credential(ns, name)
            }
            (
                &Method::PATCH,
                [
                    "apis",
                    "amr.entraid.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    _,
                    name,
                    "status",
                ],
            ) => {
                self.calls.status_patches.fetch_add(1, Ordering::Relaxed);
                self.patch_status(ns, name, body)
            }
            (&Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
                self.calls.events.fetch_add(1, Ordering::Relaxed);
                reply(StatusCode::CREATED, body.clone())
            }
            (&Method::PATCH, ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => {
                self.calls.events.fetch_add(1, Ordering::Relaxed);
                reply(StatusCode::OK, body.clone())
            }
            _ => {
                self.calls.unexpected.fetch_add(1, Ordering::Relaxed);
                not_found(&format!("{method} {path} is not served here"))
            }
        }
    }

    fn get_secret(&self, ns: &str, name: &str) -> Response<Body> {
        match lock(&self.secrets).get(&key(ns, name)) {
            Some(s) => reply(StatusCode::OK, s.json.clone()),
            None => not_found(&format!("secrets {name:?} not found")),
        }
    }

    /// Stores the applied Secret whole (the only field manager is the controller) and
    /// records the write.
    fn apply_secret(&self, ns: &str, name: &str, body: &Bytes) -> Response<Body> {
        let Ok(mut secret) = serde_json::from_slice::<Value>(body) else {
            return bad_request("the body is not JSON");
        };
        self.stamp(&mut secret);
        let annotation = |k: &str| secret["metadata"]["annotations"][k].as_str();
        let refresh_at = annotation(REFRESH_AT_ANNOTATION).and_then(|v| v.parse().ok());
        let content_hash = annotation(CONTENT_HASH_ANNOTATION).map(str::to_string);
        let json = compact_json(&secret);

        let now = Timestamp::now();
        let mut secrets = lock(&self.secrets);
        let entry = secrets.entry(key(ns, name)).or_insert(StoredSecret {
            json: Bytes::new(),
            refresh_at: None,
            content_hash: None,
            writes: 0,
        });
        let changed = entry.writes == 0 || entry.content_hash != content_hash;
        if changed && entry.writes > 0 {
            self.record_rewrite(now, entry.refresh_at);
        }
        self.secret_bytes.fetch_add(json.len(), Ordering::Relaxed);
        self.secret_bytes
            .fetch_sub(entry.json.len(), Ordering::Relaxed);
        entry.json = json.clone();
        entry.refresh_at = refresh_at;
        entry.content_hash = content_hash;
        if changed {
            entry.writes += 1;
            let writes = entry.writes;
            drop(secrets);
            self.record_write(writes, now);
        }
        reply(StatusCode::OK, json)
    }

    fn record_rewrite(&self, now: Timestamp, due: Option<Timestamp>) {
        self.rewrites.fetch_add(1, Ordering::Relaxed);
        if let Some(due) = due {
            let late = now.duration_since(due).as_micros();
            let late = i64::try_from(late).unwrap_or(i64::MAX);
            lock(&self.lateness_us).push(late);
        }
    }

    fn record_write(&self, writes: u32, now: Timestamp) {
        let Some(reached) = self.reached.get(writes as usize) else {
            return;
        };
        if reached.fetch_add(1, Ordering::Relaxed) + 1 != self.expected {
            return;
        }
        let milestone = Milestone {
            wall: now,
            cpu: stats::process_cpu(),
            api_cpu: self.api_cpu(),
            rewrites: self.rewrites(),
            memory_mib: stats::memory_mib(),
        };
        let _ = self.milestones[writes as usize].set(milestone);
    }

    fn get_credential(&self, ns: &str, name: &str) -> Response<Body> {
        match self.credential(ns, name) {
            Some(c) => {
                let json = serde_json::to_vec(&*c).expect("a credential serialises");
                reply(StatusCode::OK, Bytes::from(json))
            }
            None => not_found(&format!("amrcredentials {name:?} not found")),
        }
    }

    fn patch_status(&self, ns: &str, name: &str, body: &Bytes) -> Response<Body> {
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return bad_request("the body is not JSON");
        };
        let mut credentials = lock(&self.credentials);
        let Some(current) = credentials.get_mut(&key(ns, name)) else {
            return not_found(&format!("amrcredentials {name:?} not found"));
        };
        let mut value = serde_json::to_value(&**current).expect("a credential serialises");
        // A status patch changes nothing but the status.
        if let Some(status) = patch.get("status") {
            merge(&mut value["status"], status);
        }
        self.stamp(&mut value);
        match serde_json::from_value::<AmrCredential>(value) {
            Ok(updated) => {
                let json = serde_json::to_vec(&updated).expect("a credential serialises");
                *current = Arc::new(updated);
                reply(StatusCode::OK, Bytes::from(json))
            }
            Err(e) => bad_request(&format!("the patched object is invalid: {e}")),
        }
    }

    /// Sets a new `resourceVersion`, as every write does.
    fn stamp(&self, object: &mut Value) {
        let version = self.resource_version.fetch_add(1, Ordering::Relaxed);
        object["metadata"]["resourceVersion"] = Value::String(version.to_string());
    }
}

/// A `tower::Service` over [`ApiState`], for `kube::Client::new`.
#[derive(Clone)]
pub struct FakeApi(pub Arc<ApiState>);

impl tower::Service<Request<Body>> for FakeApi {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap_or_default();
            // The answer is computed without awaiting, so the thread's CPU clock is exact.
            let started = stats::thread_cpu();
            let response = state.handle(&parts.method, parts.uri.path(), &body);
            let spent = stats::thread_cpu().saturating_sub(started);
            let spent = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
            state.api_cpu_ns.fetch_add(spent, Ordering::Relaxed);
            Ok(response)
        })
    }
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

fn reply(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
}

fn not_found(message: &str) -> Response<Body> {
    failure(StatusCode::NOT_FOUND, "NotFound", message)
}

fn bad_request(message: &str) -> Response<Body> {
    failure(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn failure(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "code": status.as_u16()});
    reply(status, Bytes::from(body.to_string()))
}
