//! The measured side's view of its API exchanges: a `tower` layer under the operator's
//! `kube::Client` that keeps the AmrCredential store up to date from status patches, as a
//! watch would, and follows the Secrets being written: how many hold a token, when each
//! refresh cycle is complete, and how late every rewrite came after its refresh time.

use super::stats;
use amr_credential_operator::api::AmrCredential;
use amr_credential_operator::controller::secret::{CONTENT_HASH_ANNOTATION, REFRESH_AT_ANNOTATION};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use jiff::Timestamp;
use kube::client::{Body, DynBody};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The moment a write completed a cycle: every managed Secret written `cycle + 1` times.
#[derive(Debug, Clone, Copy)]
pub struct Milestone {
    /// When, on the wall clock.
    pub wall: Timestamp,
    /// CPU time of the process by then.
    pub cpu: Duration,
    /// Secret rewrites (writes after the first) by then.
    pub rewrites: u64,
    /// Resident memory and heap in use by then, MiB.
    pub memory_mib: [f64; 2],
}

/// What the bookkeeping keeps of a managed Secret's last write.
#[derive(Default)]
struct Written {
    refresh_at: Option<Timestamp>,
    content_hash: u64,
    writes: u32,
}

/// The AmrCredentials as a reflector would hold them, and the Secret writes seen.
pub struct Tracker {
    credentials: Mutex<HashMap<String, Arc<AmrCredential>>>,
    secrets: Mutex<HashMap<String, Written>>,
    /// Managed Secrets expected; a cycle is complete when all of them reached its write.
    expected: usize,
    /// `reached[w]`: Secrets written at least `w` times.
    reached: Vec<AtomicUsize>,
    /// `milestones[w]`: when the last Secret reached `w` writes.
    milestones: Vec<OnceLock<Milestone>>,
    rewrites: AtomicU64,
    /// Rewrite time minus the refresh time it replaced, in microseconds.
    lateness_us: Mutex<Vec<i64>>,
}

impl Tracker {
    /// A tracker expecting `expected` managed Secrets written `writes` times each.
    pub fn new(expected: usize, writes: u32) -> Arc<Tracker> {
        let slots = writes as usize + 1;
        Arc::new(Tracker {
            credentials: Mutex::default(),
            secrets: Mutex::default(),
            expected,
            reached: (0..slots).map(|_| AtomicUsize::new(0)).collect(),
            milestones: (0..slots).map(|_| OnceLock::new()).collect(),
            rewrites: AtomicU64::new(0),
            lateness_us: Mutex::default(),
        })
    }

    /// Stores a credential as the watch delivered it.
    pub fn store(&self, credential: AmrCredential) {
        let name = credential.metadata.name.clone().unwrap_or_default();
        lock(&self.credentials).insert(name, Arc::new(credential));
    }

    /// The stored credential, as a reflector hands it to reconcile.
    pub fn credential(&self, name: &str) -> Option<Arc<AmrCredential>> {
        lock(&self.credentials).get(name).cloned()
    }

    /// Forgets every credential.
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

    /// Records an accepted server-side apply of the Secret `key`.
    fn secret_written(&self, key: String, applied: &Applied) {
        let now = Timestamp::now();
        let annotation = |k: &str| applied.metadata.annotations.get(k);
        let refresh_at = annotation(REFRESH_AT_ANNOTATION).and_then(|v| v.parse().ok());
        let content_hash = annotation(CONTENT_HASH_ANNOTATION).map_or(0, |v| {
            let mut hasher = DefaultHasher::new();
            v.hash(&mut hasher);
            hasher.finish()
        });
        let mut secrets = lock(&self.secrets);
        let entry = secrets.entry(key).or_default();
        let changed = entry.writes == 0 || entry.content_hash != content_hash;
        if changed && entry.writes > 0 {
            self.record_rewrite(now, entry.refresh_at);
        }
        entry.refresh_at = refresh_at;
        entry.content_hash = content_hash;
        if changed {
            entry.writes += 1;
            let writes = entry.writes;
            drop(secrets);
            self.record_write(writes, now);
        }
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
            rewrites: self.rewrites(),
            memory_mib: stats::memory_mib(),
        };
        let _ = self.milestones[writes as usize].set(milestone);
    }
}

/// The part of an applied Secret the bookkeeping reads.
#[derive(Deserialize)]
struct Applied {
    metadata: AppliedMeta,
}

#[derive(Deserialize)]
struct AppliedMeta {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Which exchange a request starts.
enum Exchange {
    /// Server-side apply of the Secret with this key.
    SecretApply(String),
    /// Merge patch of an AmrCredential's status.
    StatusPatch,
    Other,
}

impl Exchange {
    fn of(method: &Method, path: &str) -> Exchange {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::PATCH, ["api", "v1", "namespaces", ns, "secrets", name]) => {
                Exchange::SecretApply(format!("{ns}/{name}"))
            }
            (
                &Method::PATCH,
                [
                    "apis",
                    "amr.entraid.dev",
                    _,
                    "namespaces",
                    _,
                    _,
                    _,
                    "status",
                ],
            ) => Exchange::StatusPatch,
            _ => Exchange::Other,
        }
    }
}

/// Puts a [`Tracker`] under a `kube::Client`.
#[derive(Clone)]
pub struct Observe(pub Arc<Tracker>);

impl<S> tower::Layer<S> for Observe {
    type Service = Observing<S>;

    fn layer(&self, inner: S) -> Observing<S> {
        Observing {
            inner,
            tracker: self.0.clone(),
        }
    }
}

/// The service [`Observe`] makes.
pub struct Observing<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

impl<S> tower::Service<Request<Body>> for Observing<S>
where
    S: tower::Service<Request<Body>, Response = Response<Box<DynBody>>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Box<DynBody>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let tracker = self.tracker.clone();
        let exchange = Exchange::of(request.method(), request.uri().path());
        // kube sends a body it holds whole: a copy of it is ready at once.
        let applied = match &exchange {
            Exchange::SecretApply(_) => request
                .body()
                .try_clone()
                .and_then(|body| body.collect_bytes().now_or_never())
                .and_then(Result::ok)
                .and_then(|body| serde_json::from_slice::<Applied>(&body).ok()),
            _ => None,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if !response.status().is_success() {
                return Ok(response);
            }
            match exchange {
                Exchange::SecretApply(key) => {
                    if let Some(applied) = applied {
                        tracker.secret_written(key, &applied);
                    }
                    Ok(response)
                }
                Exchange::StatusPatch => {
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await?.to_bytes();
                    if let Ok(credential) = serde_json::from_slice::<AmrCredential>(&body) {
                        tracker.store(credential);
                    }
                    Ok(Response::from_parts(parts, boxed(body)))
                }
                Exchange::Other => Ok(response),
            }
        })
    }
}

fn boxed(bytes: Bytes) -> Box<DynBody> {
    Box::new(Full::new(bytes).map_err(|never| match never {}))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
