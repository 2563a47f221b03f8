//! Conditions, reasons, and the status an outcome leads to (pure code).

use crate::api::AmrCredentialStatus;
use crate::identity::RefreshFailure;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;

/// Condition: the Secret holds a valid token.
pub const READY: &str = "Ready";
/// Condition: the last refresh, or the spec, has a problem.
pub const DEGRADED: &str = "Degraded";
/// Condition: the current token was verified against Redis.
pub const VERIFIED: &str = "Verified";
/// Condition: the rollout restart after the last Secret change.
pub const ROLLOUT_RESTARTED: &str = "RolloutRestarted";

/// Reason: a new token was written.
pub const TOKEN_REFRESHED: &str = "TokenRefreshed";
/// Reason: the refresh failed but the Secret's token is still valid.
pub const TOKEN_VALID: &str = "TokenValid";
/// Reason: a refresh round failed.
pub const REFRESH_FAILED: &str = "RefreshFailed";
/// Reason: the spec cannot be acted on.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// Reason: the target Secret belongs to something else.
pub const SECRET_CONFLICT: &str = "SecretConflict";
/// Reason: the Secret's token expired and no new one could be obtained.
pub const TOKEN_EXPIRED: &str = "TokenExpired";
/// Reason: the flow uses the operator's identity, which this namespace may not use.
pub const NOT_ALLOWED: &str = "NotAllowed";
/// Reason: nothing is wrong.
pub const HEALTHY: &str = "Healthy";
/// Reason: every rollout restart target was restarted.
pub const ROLLOUT_RESTART_DONE: &str = "RolloutRestarted";
/// Reason: a rollout restart target does not exist.
pub const ROLLOUT_TARGET_NOT_FOUND: &str = "RolloutTargetNotFound";
/// Reason: a rollout restart target could not be patched.
pub const ROLLOUT_RESTART_FAILED: &str = "RolloutRestartFailed";
/// Reason: the token passed every check against `spec.redis`.
pub const VERIFICATION_PASSED: &str = "VerificationPassed";
/// Reason: the token failed a check against `spec.redis`.
pub const VERIFICATION_FAILED: &str = "VerificationFailed";
/// Reason: verification is enabled but `spec.redis` names no endpoint.
pub const NO_REDIS_ENDPOINT: &str = "NoRedisEndpoint";

/// A condition to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// Condition type, such as [`READY`].
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Message for people.
    pub message: String,
}

impl ConditionUpdate {
    fn new(type_: &'static str, status: bool, reason: &'static str, message: &str) -> Self {
        let message = message.to_string();
        ConditionUpdate {
            type_,
            status,
            reason,
            message,
        }
    }
}

/// Sets a condition, keeping `lastTransitionTime` when its status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if update.status { "True" } else { "False" };
    let old = conditions.iter().position(|c| c.type_ == update.type_);
    let since = match old.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        last_transition_time: since,
        message: update.message,
        observed_generation: generation,
        reason: update.reason.to_string(),
        status: status.to_string(),
        type_: update.type_.to_string(),
    };
    match old {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// The condition of type `type_`, if set.
pub fn find<'a>(status: &'a AmrCredentialStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The token a Secret holds, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenState {
    /// The `oid` claim: the Redis username.
    pub object_id: String,
    /// Issue time.
    pub issued_at: Timestamp,
    /// Expiry.
    pub expires_at: Timestamp,
}

/// What one reconcile found or did.
#[derive(Debug, Clone)]
pub enum Outcome<'a> {
    /// The spec cannot be acted on.
    InvalidSpec(&'a str),
    /// The flow is not allowed in this namespace.
    NotAllowed(&'a str),
    /// The Secret exists and is not ours.
    Conflict {
        /// The Secret's name.
        secret: &'a str,
        /// Why.
        message: &'a str,
    },
    /// The Secret holds a current token; nothing was done.
    Fresh {
        /// The Secret's name.
        secret: &'a str,
        /// Its token.
        token: TokenState,
        /// When it is due.
        refresh_at: Timestamp,
    },
    /// A new token was written.
    Refreshed {
        /// The Secret's name.
        secret: &'a str,
        /// The new token.
        token: TokenState,
        /// When it is due.
        refresh_at: Timestamp,
    },
    /// The refresh round failed.
    Failed {
        /// The Secret's name.
        secret: &'a str,
        /// The token the Secret still holds, if any.
        current: Option<TokenState>,
        /// Why the round failed.
        failure: &'a RefreshFailure,
        /// When the next round starts.
        next_round_at: Timestamp,
    },
}

/// The status after `outcome`; equal to `old` when nothing changed.
pub fn next_status(
    old: &AmrCredentialStatus,
    outcome: &Outcome<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> AmrCredentialStatus {
    let mut new = old.clone();
    new.observed_generation = generation;
    let updates = match outcome {
        Outcome::InvalidSpec(m) => problem(&mut new, INVALID_SPEC, m),
        Outcome::NotAllowed(m) => problem(&mut new, NOT_ALLOWED, m),
        Outcome::Conflict { secret, message } => {
            new.secret_name = Some((*secret).to_string());
            problem(&mut new, SECRET_CONFLICT, message)
        }
        Outcome::Fresh {
            secret,
            token,
            refresh_at,
        } => healthy(&mut new, secret, token, *refresh_at),
        Outcome::Refreshed {
            secret,
            token,
            refresh_at,
        } => {
            new.last_refresh_time = Some(now.to_string());
            healthy(&mut new, secret, token, *refresh_at)
        }
        Outcome::Failed { .. } => failed(&mut new, outcome, now),
    };
    for update in updates {
        set_condition(&mut new.conditions, update, generation, now);
    }
    new
}

fn problem(s: &mut AmrCredentialStatus, reason: &'static str, msg: &str) -> Vec<ConditionUpdate> {
    s.last_error = Some(msg.to_string());
    vec![
        ConditionUpdate::new(READY, false, reason, msg),
        ConditionUpdate::new(DEGRADED, true, reason, msg),
    ]
}

fn healthy(
    s: &mut AmrCredentialStatus,
    secret: &str,
    token: &TokenState,
    refresh_at: Timestamp,
) -> Vec<ConditionUpdate> {
    show_token(s, secret, token);
    s.refresh_at = Some(refresh_at.to_string());
    s.consecutive_failures = 0;
    s.last_error = None;
    vec![
        ConditionUpdate::new(READY, true, TOKEN_REFRESHED, &valid_message(secret, token)),
        ConditionUpdate::new(DEGRADED, false, HEALTHY, "The last refresh succeeded"),
    ]
}

fn failed(
    s: &mut AmrCredentialStatus,
    outcome: &Outcome<'_>,
    now: Timestamp,
) -> Vec<ConditionUpdate> {
    let Outcome::Failed {
        secret,
        current,
        failure,
        next_round_at,
    } = outcome
    else {
        return Vec::new();
    };
    s.consecutive_failures = s.consecutive_failures.saturating_add(1);
    s.last_error = Some(failure.message.clone());
    s.refresh_at = Some(next_round_at.to_string());
    if let Some(token) = current {
        show_token(s, secret, token);
    }
    let degraded = ConditionUpdate::new(DEGRADED, true, failure.kind.reason(), &failure.message);
    let ready = match current {
        Some(t) if t.expires_at > now => still_valid(s, secret, t),
        Some(t) => Some(expired(secret, t, failure)),
        None => Some(ConditionUpdate::new(
            READY,
            false,
            failure.kind.reason(),
            &failure.message,
        )),
    };
    ready.into_iter().chain([degraded]).collect()
}

/// Ready stays as it is while True; otherwise it becomes True because the token is valid.
fn still_valid(s: &AmrCredentialStatus, secret: &str, t: &TokenState) -> Option<ConditionUpdate> {
    let ready = find(s, READY).is_some_and(|c| c.status == "True");
    (!ready).then(|| ConditionUpdate::new(READY, true, TOKEN_VALID, &valid_message(secret, t)))
}

fn expired(secret: &str, t: &TokenState, failure: &RefreshFailure) -> ConditionUpdate {
    let message = format!(
        "The token in Secret {secret} expired at {} and no new one could be obtained: {}",
        t.expires_at, failure.message
    );
    ConditionUpdate::new(READY, false, TOKEN_EXPIRED, &message)
}

fn show_token(s: &mut AmrCredentialStatus, secret: &str, token: &TokenState) {
    s.secret_name = Some(secret.to_string());
    s.object_id = Some(token.object_id.clone());
    s.issued_at = Some(token.issued_at.to_string());
    s.expires_at = Some(token.expires_at.to_string());
}

fn valid_message(secret: &str, token: &TokenState) -> String {
    format!(
        "Secret {secret} holds a token for {} valid until {}",
        token.object_id, token.expires_at
    )
}

/// Sets the RolloutRestarted condition from the result of the restarts.
pub fn with_rollout(
    mut status: AmrCredentialStatus,
    update: ConditionUpdate,
    generation: Option<i64>,
    now: Timestamp,
) -> AmrCredentialStatus {
    set_condition(&mut status.conditions, update, generation, now);
    status
}

/// A merge patch turning `old` into `new` on the status subresource: fields `new` no longer
/// has are sent as `null`, since a merge patch leaves absent fields untouched.
pub fn status_patch(old: &AmrCredentialStatus, new: &AmrCredentialStatus) -> Value {
    let (Ok(Value::Object(old)), Ok(Value::Object(mut new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Value::Null;
    };
    for key in old.keys() {
        new.entry(key.clone()).or_insert(Value::Null);
    }
    serde_json::json!({ "status": new })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::FailureKind;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("in range")
    }

    fn token(expires: i64) -> TokenState {
        TokenState {
            object_id: "oid-1".into(),
            issued_at: at(0),
            expires_at: at(expires),
        }
    }

    fn failure() -> RefreshFailure {
        RefreshFailure {
            kind: FailureKind::RetriesExhausted,
            message: "3 attempts failed: HTTP 503".into(),
            retry_after: None,
            attempts: 3,
        }
    }

    fn refreshed(now: i64) -> AmrCredentialStatus {
        let outcome = Outcome::Refreshed {
            secret: "s",
            token: token(3600),
            refresh_at: at(2880),
        };
        next_status(&AmrCredentialStatus::default(), &outcome, Some(1), at(now))
    }

    fn fail(
        old: &AmrCredentialStatus,
        current: Option<TokenState>,
        now: i64,
    ) -> AmrCredentialStatus {
        let f = failure();
        let outcome = Outcome::Failed {
            secret: "s",
            current,
            failure: &f,
            next_round_at: at(now + 30),
        };
        next_status(old, &outcome, Some(1), at(now))
    }

    fn ready(s: &AmrCredentialStatus) -> (&str, &str) {
        let c = find(s, READY).expect("Ready is set");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn setting_the_same_status_keeps_the_transition_time() {
        let mut conditions = Vec::new();
        let update = |reason| ConditionUpdate::new(READY, true, reason, "m");
        set_condition(&mut conditions, update(TOKEN_REFRESHED), Some(1), at(10));
        set_condition(&mut conditions, update(TOKEN_VALID), Some(2), at(20));
        assert_eq!(conditions[0].last_transition_time, Time(at(10)));
        assert_eq!(
            (
                conditions[0].reason.as_str(),
                conditions[0].observed_generation
            ),
            ("TokenValid", Some(2))
        );
    }

    #[test]
    fn a_changed_status_moves_the_transition_time() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ConditionUpdate::new(READY, true, HEALTHY, ""),
            None,
            at(10),
        );
        set_condition(
            &mut conditions,
            ConditionUpdate::new(READY, false, HEALTHY, ""),
            None,
            at(20),
        );
        assert_eq!(conditions[0].last_transition_time, Time(at(20)));
    }

    #[test]
    fn a_fresh_secret_after_a_refresh_changes_nothing() {
        let old = refreshed(0);
        let outcome = Outcome::Fresh {
            secret: "s",
            token: token(3600),
            refresh_at: at(2880),
        };
        assert_eq!(next_status(&old, &outcome, Some(1), at(100)), old);
    }

    #[test]
    fn a_failure_with_a_valid_token_degrades_but_stays_ready() {
        let s = fail(&refreshed(0), Some(token(3600)), 2900);
        assert_eq!(ready(&s), ("True", TOKEN_REFRESHED));
        let degraded = find(&s, DEGRADED).expect("Degraded is set");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "RetriesExhausted")
        );
        assert_eq!(
            (s.consecutive_failures, s.last_error.as_deref()),
            (1, Some("3 attempts failed: HTTP 503"))
        );
    }

    #[test]
    fn a_failure_after_expiry_makes_ready_false_with_token_expired() {
        let s = fail(&refreshed(0), Some(token(3600)), 3601);
        assert_eq!(ready(&s), ("False", TOKEN_EXPIRED));
    }

    #[test]
    fn a_failure_without_any_token_uses_the_failure_reason() {
        let s = fail(&AmrCredentialStatus::default(), None, 10);
        assert_eq!(ready(&s), ("False", "RetriesExhausted"));
    }

    #[test]
    fn a_success_after_failures_resets_the_counter_and_error() {
        let failing = fail(&refreshed(0), Some(token(3600)), 2900);
        let outcome = Outcome::Refreshed {
            secret: "s",
            token: token(7200),
            refresh_at: at(6000),
        };
        let s = next_status(&failing, &outcome, Some(1), at(2950));
        assert_eq!((s.consecutive_failures, s.last_error.as_deref()), (0, None));
        assert_eq!(find(&s, DEGRADED).map(|c| c.status.as_str()), Some("False"));
    }

    #[test]
    fn the_status_patch_clears_fields_that_disappeared() {
        let failing = fail(&refreshed(0), Some(token(3600)), 2900);
        let mut healed = failing.clone();
        healed.last_error = None;
        let patch = status_patch(&failing, &healed);
        assert_eq!(patch["status"]["lastError"], Value::Null);
        assert!(
            patch["status"]
                .as_object()
                .is_some_and(|o| o.contains_key("lastError"))
        );
    }
}
