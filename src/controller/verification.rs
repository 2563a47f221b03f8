//! Verification of a credential's token against its Redis endpoint: when it is due, and
//! what the `Verified` condition says about a probe (pure code).

use super::conditions::{
    self, ConditionUpdate, NO_REDIS_ENDPOINT, TokenState, VERIFICATION_FAILED, VERIFICATION_PASSED,
    VERIFIED,
};
use crate::api::AmrCredentialStatus;
use crate::probe::ProbeReport;

/// What verifying one token found, ready to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The `Verified` condition to set.
    pub condition: ConditionUpdate,
    /// Whether a probe ran; none runs without an endpoint.
    pub probed: bool,
}

impl Verification {
    /// Whether the token passed.
    pub fn passed(&self) -> bool {
        self.condition.status
    }

    /// Verification is enabled but there is nothing to verify against.
    pub fn no_endpoint() -> Verification {
        let message = "spec.verify.enabled is true but spec.redis names no endpoint";
        Verification {
            condition: verified(false, NO_REDIS_ENDPOINT, message.to_string()),
            probed: false,
        }
    }

    /// What a probe's report amounts to: the first failed check and why, or a pass.
    pub fn from_report(report: &ProbeReport) -> Verification {
        let condition = match report.first_failure() {
            Some((check, why)) => verified(false, VERIFICATION_FAILED, format!("{check}: {why}")),
            None => {
                let endpoint = report
                    .target
                    .as_ref()
                    .map_or(String::new(), |t| format!(" on {}:{}", t.host, t.port));
                let message = format!("AUTH and PING succeeded{endpoint}");
                verified(true, VERIFICATION_PASSED, message)
            }
        };
        Verification {
            condition,
            probed: true,
        }
    }
}

/// Whether `token` still needs verifying: the status has no `Verified` condition for this
/// generation, or it shows another token, which was the one verified.
pub fn due(status: &AmrCredentialStatus, generation: Option<i64>, token: &TokenState) -> bool {
    let Some(verified) = conditions::find(status, VERIFIED) else {
        return true;
    };
    let issued_at = token.issued_at.to_string();
    verified.observed_generation != generation
        || status.object_id.as_deref() != Some(token.object_id.as_str())
        || status.issued_at.as_deref() != Some(issued_at.as_str())
}

fn verified(status: bool, reason: &'static str, message: String) -> ConditionUpdate {
    ConditionUpdate {
        type_: VERIFIED,
        status,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::conditions::{Outcome, next_status, set_condition};
    use jiff::Timestamp;

    fn token(issued: i64) -> TokenState {
        TokenState {
            object_id: "oid-1".into(),
            issued_at: Timestamp::from_second(issued).expect("in range"),
            expires_at: Timestamp::from_second(issued + 3600).expect("in range"),
        }
    }

    /// The status after a refresh that wrote `token(issued)` and, if given, a verification.
    fn status(issued: i64, verification: Option<Verification>) -> AmrCredentialStatus {
        let outcome = Outcome::Refreshed {
            secret: "orders",
            token: token(issued),
            refresh_at: Timestamp::from_second(issued + 2880).expect("in range"),
        };
        let now = Timestamp::from_second(issued).expect("in range");
        let mut s = next_status(&AmrCredentialStatus::default(), &outcome, Some(1), now);
        if let Some(v) = verification {
            set_condition(&mut s.conditions, v.condition, Some(1), now);
        }
        s
    }

    #[test]
    fn a_token_never_verified_is_due() {
        assert!(due(&status(0, None), Some(1), &token(0)));
    }

    #[test]
    fn a_verified_token_is_not_due_again() {
        let s = status(0, Some(Verification::no_endpoint()));
        assert!(!due(&s, Some(1), &token(0)));
    }

    #[test]
    fn a_new_token_or_a_new_generation_is_due() {
        let s = status(0, Some(Verification::no_endpoint()));
        assert!(due(&s, Some(1), &token(60)));
        assert!(due(&s, Some(2), &token(0)));
    }

    #[test]
    fn without_an_endpoint_verified_is_false_and_no_probe_ran() {
        let v = Verification::no_endpoint();
        assert_eq!((v.passed(), v.probed), (false, false));
        assert_eq!(v.condition.reason, "NoRedisEndpoint");
    }

    #[test]
    fn an_unreadable_credential_names_its_failing_check() {
        let report = ProbeReport::unreadable(None, "oid-1", "no password");
        let v = Verification::from_report(&report);
        assert_eq!(
            (v.condition.reason, v.condition.message.as_str()),
            ("VerificationFailed", "input: no password")
        );
    }
}
