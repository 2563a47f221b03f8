//! One reconcile: gather the credential and its Secret, decide, then act.

use super::conditions::{self, Outcome, TokenState, next_status, set_condition, status_patch};
use super::decide::{Decision, Observed, Why, decide};
use super::rollout::{self, Restart, RestartResult};
use super::secret::{self, DesiredSecret, ExistingSecret, RenderedSecret};
use super::verification::{self, Verification};
use super::{Context, Error, object_key};
use crate::api::{
    AmrCredential, AmrCredentialStatus, REFRESH_REQUESTED_ANNOTATION, ResolvedSpec, SpecError,
    validate,
};
use crate::identity::claims::TokenClaims;
use crate::identity::{AcquiredToken, RefreshFailure};
use crate::probe::{self, ProbeTarget};
use crate::token_manager::{ROUND_BACKOFF_MAX, next_round_at, refresh_at, stable_hash, staggered};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Longest Event note the API server accepts.
const NOTE_MAX: usize = 1024;

/// Reconciles one AmrCredential; runs in a span carrying its namespace, name and flow.
///
/// # Errors
/// When reading or writing the Secret or the status fails; the error policy retries.
pub async fn reconcile(obj: Arc<AmrCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let span = tracing::info_span!(
        "reconcile",
        namespace = %namespace,
        name = %obj.name_any(),
        flow = obj.spec.flow.flow_type.as_str(),
    );
    let result = Reconcile::new(&obj, &ctx, &namespace)?
        .run()
        .instrument(span)
        .await;
    if result.is_ok() {
        ctx.clear_errors(&object_key(&obj));
    }
    result
}

/// The state of one reconcile.
struct Reconcile<'a> {
    obj: &'a AmrCredential,
    ctx: &'a Context,
    namespace: &'a str,
    name: String,
    uid: String,
    now: Timestamp,
    old: AmrCredentialStatus,
}

impl<'a> Reconcile<'a> {
    fn new(obj: &'a AmrCredential, ctx: &'a Context, namespace: &'a str) -> Result<Self, Error> {
        Ok(Reconcile {
            obj,
            ctx,
            namespace,
            name: obj.name_any(),
            uid: obj.uid().ok_or(Error::MissingObjectKey("uid"))?,
            now: ctx.now(),
            old: obj.status.clone().unwrap_or_default(),
        })
    }

    async fn run(&self) -> Result<Action, Error> {
        let resolved = validate(&self.name, &self.obj.spec);
        let found = match &resolved {
            Ok(r) => self.get_secret(r).await?,
            Err(_) => None,
        };
        let existing = found.as_ref().zip(resolved.as_ref().ok());
        let existing = existing.map(|(s, r)| secret::read_back(s, &self.uid, &self.name, &r.keys));

        let requested = self.obj.annotations().get(REFRESH_REQUESTED_ANNOTATION);
        let decision = decide(&Observed {
            now: self.now,
            started_at: self.ctx.started_at,
            spread_window: self.ctx.config.startup_spread,
            namespace: self.namespace,
            name: &self.name,
            spec: &self.obj.spec,
            resolved: resolved.as_ref(),
            existing: existing.as_ref(),
            refresh_requested: requested.map(String::as_str),
            ambient_namespaces: &self.ctx.config.ambient_identity_namespaces,
        });

        let (action, status) = self
            .act(
                &decision,
                resolved.as_ref(),
                existing.as_ref(),
                found.as_ref(),
            )
            .await?;
        self.ctx.metrics.status(self.namespace, &self.name, &status);
        Ok(action)
    }

    /// Acts on the decision; returns the requeue and the status the credential ends with.
    async fn act(
        &self,
        decision: &Decision,
        resolved: Result<&ResolvedSpec, &SpecError>,
        existing: Option<&ExistingSecret>,
        found: Option<&Secret>,
    ) -> Result<(Action, AmrCredentialStatus), Error> {
        match (decision, resolved) {
            // decide turns every invalid spec into InvalidSpec; both arms say so.
            (Decision::InvalidSpec(m), _) | (_, Err(SpecError(m))) => {
                let status = self
                    .report(Outcome::InvalidSpec(m), conditions::INVALID_SPEC)
                    .await?;
                Ok((Action::await_change(), status))
            }
            (Decision::NotAllowed(m), _) => {
                let status = self
                    .report(Outcome::NotAllowed(m), conditions::NOT_ALLOWED)
                    .await?;
                Ok((Action::await_change(), status))
            }
            (Decision::Conflict(m), Ok(r)) => {
                let outcome = Outcome::Conflict {
                    secret: &r.secret_name,
                    message: m,
                };
                let status = self.report(outcome, conditions::SECRET_CONFLICT).await?;
                Ok((Action::requeue(ROUND_BACKOFF_MAX), status))
            }
            (Decision::Fresh { requeue_at }, Ok(r)) => {
                let status = self.fresh(r, existing, found).await?;
                Ok((requeue_until(self.now, *requeue_at), status))
            }
            (Decision::Refresh(why), Ok(r)) => self.refresh(r, existing, *why).await,
        }
    }

    async fn get_secret(&self, r: &ResolvedSpec) -> Result<Option<Secret>, Error> {
        self.secrets()
            .get_opt(&r.secret_name)
            .await
            .map_err(|source| Error::SecretGetFailed {
                name: r.secret_name.clone(),
                source,
            })
    }

    /// Reports a problem with the spec or the Secret, with a Warning Event when it is new.
    async fn report(
        &self,
        outcome: Outcome<'_>,
        reason: &str,
    ) -> Result<AmrCredentialStatus, Error> {
        let new = next_status(&self.old, &outcome, self.generation(), self.now);
        if new == self.old {
            return Ok(new);
        }
        let message = new.last_error.clone().unwrap_or_default();
        tracing::warn!(reason, message = %message, "Credential cannot be refreshed");
        self.patch_status(&self.old, &new).await?;
        self.publish(EventType::Warning, reason, "Reconcile", &message)
            .await;
        Ok(new)
    }

    /// A current Secret: nothing is requested or written; the status only catches up, and
    /// the token is verified when that is due.
    async fn fresh(
        &self,
        r: &ResolvedSpec,
        existing: Option<&ExistingSecret>,
        found: Option<&Secret>,
    ) -> Result<AmrCredentialStatus, Error> {
        let Some((claims, refresh_at)) =
            existing.and_then(|e| Some((e.claims.as_ref()?, e.refresh_at?)))
        else {
            return Ok(self.old.clone());
        };
        tracing::debug!(refresh_at = %refresh_at, "Secret is current");
        let token = token_state(claims);
        let outcome = Outcome::Fresh {
            secret: &r.secret_name,
            token: token.clone(),
            refresh_at,
        };
        let unverified =
            self.verify_enabled() && verification::due(&self.old, self.generation(), &token);
        let new = next_status(&self.old, &outcome, self.generation(), self.now);
        if new == self.old && !unverified {
            return Ok(new);
        }

        // The cache may lag behind a status written moments ago: catch up from a fresh read.
        let current = self.current_status().await?;
        let password = found.and_then(|s| secret::password(s, &r.keys));
        let verified = match password {
            Some(p) => self.verify(&current, &token, &p, false).await,
            None => None,
        };
        let mut new = next_status(&current, &outcome, self.generation(), self.now);
        self.set_verified(&mut new, verified.as_ref());
        if new != current {
            self.patch_status(&current, &new).await?;
        }
        self.announce_verification(verified.as_ref()).await;
        Ok(new)
    }

    async fn refresh(
        &self,
        r: &ResolvedSpec,
        existing: Option<&ExistingSecret>,
        why: Why,
    ) -> Result<(Action, AmrCredentialStatus), Error> {
        tracing::debug!(why = why.as_str(), "Requesting a token");
        let started = Instant::now();
        let fetched = self
            .ctx
            .tokens
            .fetch(self.namespace, &self.name, &self.obj.spec, r)
            .await;
        let flow = self.obj.spec.flow.flow_type.as_str();
        let metrics = &self.ctx.metrics;
        let failure = fetched.as_ref().err();
        metrics.refresh(flow, failure, started.elapsed());
        metrics.saved_requests(self.ctx.tokens.saved_requests());
        match fetched {
            Ok(token) => self.write(r, existing, &token, why).await,
            Err(failure) => self.failed(r, existing, &failure).await,
        }
    }

    /// Writes a new token, restarts workloads when the data changed, and records it.
    async fn write(
        &self,
        r: &ResolvedSpec,
        existing: Option<&ExistingSecret>,
        token: &AcquiredToken,
        why: Why,
    ) -> Result<(Action, AmrCredentialStatus), Error> {
        let claims = &token.claims;
        let due = refresh_at(claims.issued_at, claims.expires_at, &r.token_manager);
        let key = stable_hash(&format!("{}/{}", self.namespace, self.name));
        let due = staggered(due, claims.issued_at, key);
        let rendered = self.render(r, token, due)?;
        let data_changed = existing.and_then(|e| e.content_hash.as_deref())
            != Some(rendered.content_hash.as_str());
        if needs_apply(existing, &rendered, &self.uid, &self.name, r) {
            self.apply(&rendered.secret, &r.secret_name).await?;
        }
        // Only a replaced Secret restarts workloads: a first one is picked up on its own.
        let restarts = match existing {
            Some(_) if data_changed => self.restart_workloads().await,
            _ => Vec::new(),
        };
        let state = token_state(claims);
        let verified = self
            .verify(&self.old, &state, &token.token, data_changed)
            .await;

        let status = self
            .record_refresh(r, state, due, &restarts, verified.as_ref())
            .await?;
        if data_changed {
            self.announce_refresh(r, claims, due, why).await;
        }
        self.announce_verification(verified.as_ref()).await;
        self.publish_restarts(&restarts).await;
        // A token already due when issued is retried like a failure, not in a tight loop.
        let next = if due > self.now {
            due
        } else {
            next_round_at(self.now, 1, Some(claims.expires_at))
        };
        Ok((requeue_until(self.now, next), status))
    }

    async fn record_refresh(
        &self,
        r: &ResolvedSpec,
        token: TokenState,
        due: Timestamp,
        restarts: &[RestartResult],
        verified: Option<&Verification>,
    ) -> Result<AmrCredentialStatus, Error> {
        let outcome = Outcome::Refreshed {
            secret: &r.secret_name,
            token,
            refresh_at: due,
        };
        let mut new = next_status(&self.old, &outcome, self.generation(), self.now);
        if let Some(update) = rollout::summarize(restarts) {
            new = conditions::with_rollout(new, update, self.generation(), self.now);
        }
        self.set_verified(&mut new, verified);
        self.update_status(&new).await?;
        Ok(new)
    }

    fn verify_enabled(&self) -> bool {
        self.obj.spec.verify.as_ref().is_some_and(|v| v.enabled)
    }

    /// Verifies `token` against `spec.redis` when `spec.verify` asks for it and `status`
    /// shows no verification of it yet, or when the token `changed`.
    async fn verify(
        &self,
        status: &AmrCredentialStatus,
        token: &TokenState,
        password: &SecretString,
        changed: bool,
    ) -> Option<Verification> {
        let due = changed || verification::due(status, self.generation(), token);
        if !self.verify_enabled() || !due {
            return None;
        }
        let Some(endpoint) = &self.obj.spec.redis else {
            return Some(Verification::no_endpoint());
        };
        let target = ProbeTarget::from(endpoint);
        let options = &self.ctx.observers.probe;
        let report = probe::verify(&target, &token.object_id, password, options).await;
        Some(Verification::from_report(&report))
    }

    fn set_verified(&self, status: &mut AmrCredentialStatus, verified: Option<&Verification>) {
        if let Some(v) = verified {
            let (generation, now) = (self.generation(), self.now);
            set_condition(&mut status.conditions, v.condition.clone(), generation, now);
        }
    }

    /// Counts a probe that ran, and warns when it failed; the token stays as it is.
    async fn announce_verification(&self, verified: Option<&Verification>) {
        let Some(v) = verified.filter(|v| v.probed) else {
            return;
        };
        self.ctx
            .metrics
            .verification(self.namespace, &self.name, v.passed());
        let message = &v.condition.message;
        if v.passed() {
            tracing::info!(message = %message, "Token verified");
            return;
        }
        tracing::warn!(message = %message, "Token verification failed");
        let reason = conditions::VERIFICATION_FAILED;
        self.publish(EventType::Warning, reason, "Verify", message)
            .await;
    }

    async fn announce_refresh(
        &self,
        r: &ResolvedSpec,
        claims: &TokenClaims,
        due: Timestamp,
        why: Why,
    ) {
        tracing::info!(
            identity = %claims.oid, expires_at = %claims.expires_at, refresh_at = %due,
            why = why.as_str(), "Token refreshed"
        );
        let note = format!(
            "Secret {} holds a token for {} valid until {}",
            r.secret_name, claims.oid, claims.expires_at
        );
        // A scheduled refresh of a healthy credential is routine: status, metrics and the log
        // line above record it. An Event for each would add one per credential and refresh to
        // the API server, which at scale costs more than it tells.
        let routine = why == Why::Due && self.old.consecutive_failures == 0;
        if routine {
            return;
        }
        let reason = conditions::TOKEN_REFRESHED;
        self.publish(EventType::Normal, reason, "Refresh", &note)
            .await;
    }

    fn render(
        &self,
        r: &ResolvedSpec,
        token: &AcquiredToken,
        due: Timestamp,
    ) -> Result<RenderedSecret, Error> {
        let owner = self
            .obj
            .controller_owner_ref(&())
            .ok_or(Error::MissingObjectKey("uid"))?;
        let requested = self.obj.annotations().get(REFRESH_REQUESTED_ANNOTATION);
        Ok(secret::render(&DesiredSecret {
            credential: &self.name,
            namespace: self.namespace,
            owner,
            spec: &self.obj.spec,
            resolved: r,
            token,
            refresh_at: due,
            refresh_requested: requested.map(String::as_str),
        }))
    }

    /// A failed round: the Secret is left as it is; the status and Events say why.
    async fn failed(
        &self,
        r: &ResolvedSpec,
        existing: Option<&ExistingSecret>,
        failure: &RefreshFailure,
    ) -> Result<(Action, AmrCredentialStatus), Error> {
        let failures = self.old.consecutive_failures.saturating_add(1);
        let expires_at = existing.and_then(|e| e.expires_at);
        let mut next = next_round_at(self.now, failures, expires_at);
        if let Some(wait) = failure.retry_after {
            next = next.max(later(self.now, wait));
        }
        tracing::info!(
            reason = failure.kind.reason(), attempts = failure.attempts, failures,
            next_round_at = %next, error = %failure.message, "Refresh failed"
        );

        let current = existing.and_then(|e| e.claims.as_ref()).map(token_state);
        let outcome = Outcome::Failed {
            secret: &r.secret_name,
            current,
            failure,
            next_round_at: next,
        };
        let new = next_status(&self.old, &outcome, self.generation(), self.now);
        self.update_status(&new).await?;
        self.announce_failure(failure, &new).await;
        Ok((requeue_until(self.now, next), new))
    }

    /// A Warning per failed round, and one more when the token has just expired.
    async fn announce_failure(&self, failure: &RefreshFailure, new: &AmrCredentialStatus) {
        // A dead sign-in has its own reason: a person must act, waiting does not help.
        let reason = match failure.kind {
            crate::identity::FailureKind::LoginRequired => failure.kind.reason(),
            _ => conditions::REFRESH_FAILED,
        };
        let message = &failure.message;
        self.publish(EventType::Warning, reason, "Refresh", message)
            .await;
        if !newly_expired(&self.old, new) {
            return;
        }
        let note = conditions::find(new, conditions::READY).map(|c| c.message.clone());
        let reason = conditions::TOKEN_EXPIRED;
        self.publish(
            EventType::Warning,
            reason,
            "Refresh",
            &note.unwrap_or_default(),
        )
        .await;
    }

    async fn restart_workloads(&self) -> Vec<RestartResult> {
        let targets = &self.obj.spec.rollout_restart_targets;
        rollout::restart_all(&self.ctx.client, self.namespace, targets, self.now).await
    }

    async fn publish_restarts(&self, restarts: &[RestartResult]) {
        for r in restarts {
            let ok = r.restart == Restart::Done;
            self.ctx
                .metrics
                .rollout_restart(self.namespace, &self.name, ok);
            let what = rollout::describe(&r.target);
            let (kind, reason, note) = match &r.restart {
                Restart::Done => (
                    EventType::Normal,
                    conditions::ROLLOUT_RESTART_DONE,
                    format!("Restarted {what}"),
                ),
                Restart::NotFound => (
                    EventType::Warning,
                    conditions::ROLLOUT_TARGET_NOT_FOUND,
                    format!("{what} not found"),
                ),
                Restart::Failed(e) => (
                    EventType::Warning,
                    conditions::ROLLOUT_RESTART_FAILED,
                    format!("{what}: {e}"),
                ),
            };
            self.publish(kind, reason, "RolloutRestart", &note).await;
        }
    }

    async fn apply(&self, secret: &Secret, name: &str) -> Result<(), Error> {
        let params = PatchParams::apply(secret::FIELD_MANAGER).force();
        self.secrets()
            .patch(name, &params, &Patch::Apply(secret))
            .await
            .map_err(|source| Error::SecretApplyFailed {
                name: name.to_string(),
                source,
            })?;
        Ok(())
    }

    async fn update_status(&self, new: &AmrCredentialStatus) -> Result<(), Error> {
        if *new == self.old {
            return Ok(());
        }
        self.patch_status(&self.old, new).await
    }

    async fn patch_status(
        &self,
        old: &AmrCredentialStatus,
        new: &AmrCredentialStatus,
    ) -> Result<(), Error> {
        let patch = status_patch(old, new);
        self.credentials()
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::StatusPatchFailed)?;
        Ok(())
    }

    async fn current_status(&self) -> Result<AmrCredentialStatus, Error> {
        let current = self.credentials().get_status(&self.name).await;
        let current = current.map_err(Error::StatusGetFailed)?;
        Ok(current.status.unwrap_or_default())
    }

    /// Publishes an Event; a failure is logged, never raised.
    async fn publish(&self, type_: EventType, reason: &str, action: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(note, NOTE_MAX).to_string()),
            action: action.to_string(),
            secondary: None,
        };
        let reference = self.obj.object_ref(&());
        // Normal Events mark changes (a first token, a new spec, a recovery, a rollout restart
        // after a token change) that do not repeat within minutes, so they skip the shared
        // recorder's cache: after thousands of credentials got their first token, it would
        // hold an Event for each for six minutes.
        let recorder = match type_ {
            EventType::Warning => self.ctx.warnings.clone(),
            EventType::Normal => Recorder::new(self.ctx.client.clone(), self.ctx.reporter.clone()),
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(reason, error = %e, "Publishing an Event failed");
        }
    }

    fn credentials(&self) -> Api<AmrCredential> {
        Api::namespaced(self.ctx.client.clone(), self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.ctx.client.clone(), self.namespace)
    }

    fn generation(&self) -> Option<i64> {
        self.obj.metadata.generation
    }
}

/// Whether the rendered Secret differs from the existing one in data or bookkeeping.
fn needs_apply(
    existing: Option<&ExistingSecret>,
    rendered: &RenderedSecret,
    uid: &str,
    name: &str,
    r: &ResolvedSpec,
) -> bool {
    let Some(existing) = existing else {
        return true;
    };
    let desired = secret::read_back(&rendered.secret, uid, name, &r.keys);
    (
        &existing.content_hash,
        &existing.spec_hash,
        existing.refresh_at,
        &existing.honoured_request,
    ) != (
        &desired.content_hash,
        &desired.spec_hash,
        desired.refresh_at,
        &desired.honoured_request,
    )
}

fn newly_expired(old: &AmrCredentialStatus, new: &AmrCredentialStatus) -> bool {
    let reason = |s| conditions::find(s, conditions::READY).map(|c| c.reason.as_str());
    reason(new) == Some(conditions::TOKEN_EXPIRED) && reason(old) != Some(conditions::TOKEN_EXPIRED)
}

fn token_state(claims: &TokenClaims) -> TokenState {
    TokenState {
        object_id: claims.oid.clone(),
        issued_at: claims.issued_at,
        expires_at: claims.expires_at,
    }
}

/// Requeues at `at`, and never sooner than a second from now.
fn requeue_until(now: Timestamp, at: Timestamp) -> Action {
    let wait = Duration::try_from(now.duration_until(at)).unwrap_or_default();
    Action::requeue(wait.max(Duration::from_secs(1)))
}

fn later(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}
