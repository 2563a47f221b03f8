//! Faults a test injects into the emulator at runtime, and which of them a request meets.

use super::oauth::OAuthError;
use std::time::Duration;

/// A misbehaviour the emulator shows instead of, or on top of, its normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer HTTP 500.
    InternalServerError,
    /// Answer HTTP 503.
    ServiceUnavailable,
    /// Answer HTTP 429 with a `Retry-After` of this many seconds.
    TooManyRequests {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// Answer this OAuth error in Entra ID's shape.
    OAuth(OAuthError),
    /// Wait this long, then answer as the other faults (or none) say.
    Delay(Duration),
    /// Close the connection without answering.
    DropConnection,
    /// Issue a token without the `oid` claim.
    TokenWithoutOid,
    /// Answer 200 with a body that is not JSON.
    MalformedBody,
    /// Report this lifetime in seconds (`expires_in`, `expires_on`) whatever the token says.
    LyingExpiresIn(i64),
}

impl Fault {
    /// An OAuth error fault, such as `Fault::oauth("invalid_client", 7000215, "...")`.
    pub fn oauth(error: &str, code: u32, description: &str) -> Fault {
        Fault::OAuth(OAuthError::new(error, code, description))
    }

    /// A short name for the request log.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::InternalServerError => "internal_server_error",
            Fault::ServiceUnavailable => "service_unavailable",
            Fault::TooManyRequests { .. } => "too_many_requests",
            Fault::OAuth(_) => "oauth_error",
            Fault::Delay(_) => "delay",
            Fault::DropConnection => "drop_connection",
            Fault::TokenWithoutOid => "token_without_oid",
            Fault::MalformedBody => "malformed_body",
            Fault::LyingExpiresIn(_) => "lying_expires_in",
        }
    }
}

/// A fault, the requests it applies to, and how many times it may still apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// The fault.
    pub fault: Fault,
    /// Applies only to requests for this id (a client id, or a managed identity's client,
    /// object or resource id); to every request when `None`.
    pub target: Option<String>,
    /// How many more requests it applies to; without limit when `None`.
    pub remaining: Option<u32>,
}

impl FaultRule {
    /// A rule applying `fault` to every request until cleared.
    pub fn new(fault: Fault) -> FaultRule {
        FaultRule {
            fault,
            target: None,
            remaining: None,
        }
    }

    /// Limits the rule to requests for `id`.
    pub fn for_id(mut self, id: impl Into<String>) -> FaultRule {
        self.target = Some(id.into());
        self
    }

    /// Limits the rule to the next `n` requests it matches.
    pub fn times(mut self, n: u32) -> FaultRule {
        self.remaining = Some(n);
        self
    }

    fn matches(&self, ids: &[&str]) -> bool {
        self.target.as_deref().is_none_or(|t| ids.contains(&t))
    }
}

/// What the faults met by one request do to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FaultPlan {
    /// Total wait before answering.
    pub delay: Duration,
    /// The answer that replaces the normal one.
    pub answer: Option<Fault>,
    /// Leave `oid` out of the token.
    pub without_oid: bool,
    /// Report this lifetime instead of the real one.
    pub lying_expires_in: Option<i64>,
}

impl FaultPlan {
    /// Names of the faults applied, for the request log.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if !self.delay.is_zero() {
            names.push("delay");
        }
        names.extend(self.answer.as_ref().map(Fault::name));
        if self.without_oid {
            names.push("token_without_oid");
        }
        if self.lying_expires_in.is_some() {
            names.push("lying_expires_in");
        }
        names
    }
}

/// The injected rules, in the order they were added.
#[derive(Debug, Default)]
pub(crate) struct FaultBook {
    rules: Vec<FaultRule>,
}

impl FaultBook {
    pub fn add(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// Plans the faults for a request about `ids`: delays add up, the first matching
    /// answer-replacing fault wins, and only the rules that took effect count the request.
    pub fn take(&mut self, ids: &[&str]) -> FaultPlan {
        let mut plan = FaultPlan::default();
        for rule in self.rules.iter_mut().filter(|r| r.matches(ids)) {
            let applied = match &rule.fault {
                Fault::Delay(d) => {
                    plan.delay += *d;
                    true
                }
                Fault::TokenWithoutOid if !plan.without_oid => {
                    plan.without_oid = true;
                    true
                }
                Fault::LyingExpiresIn(s) if plan.lying_expires_in.is_none() => {
                    plan.lying_expires_in = Some(*s);
                    true
                }
                Fault::TokenWithoutOid | Fault::LyingExpiresIn(_) => false,
                answer if plan.answer.is_none() => {
                    plan.answer = Some(answer.clone());
                    true
                }
                _ => false,
            };
            if let (true, Some(n)) = (applied, rule.remaining.as_mut()) {
                *n = n.saturating_sub(1);
            }
        }
        self.rules.retain(|r| r.remaining != Some(0));
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_rule_applies_that_many_times_then_disappears() {
        let mut book = FaultBook::default();
        book.add(FaultRule::new(Fault::ServiceUnavailable).times(2));
        assert_eq!(book.take(&["a"]).answer, Some(Fault::ServiceUnavailable));
        assert_eq!(book.take(&["a"]).answer, Some(Fault::ServiceUnavailable));
        assert_eq!(book.take(&["a"]), FaultPlan::default());
    }

    #[test]
    fn a_targeted_rule_ignores_other_ids() {
        let mut book = FaultBook::default();
        book.add(FaultRule::new(Fault::DropConnection).for_id("b").times(1));
        assert_eq!(book.take(&["a"]).answer, None);
        assert_eq!(book.take(&["x", "b"]).answer, Some(Fault::DropConnection));
    }

    #[test]
    fn delays_add_up_and_the_first_answer_wins() {
        let mut book = FaultBook::default();
        book.add(FaultRule::new(Fault::Delay(Duration::from_millis(5))));
        book.add(FaultRule::new(Fault::InternalServerError));
        book.add(FaultRule::new(Fault::Delay(Duration::from_millis(7))));
        book.add(FaultRule::new(Fault::MalformedBody));
        let plan = book.take(&[]);
        assert_eq!(plan.delay, Duration::from_millis(12));
        assert_eq!(plan.answer, Some(Fault::InternalServerError));
        assert_eq!(plan.names(), ["delay", "internal_server_error"]);
    }
}
