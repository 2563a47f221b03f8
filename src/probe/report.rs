//! What a probe found: one result per check, in order, and the rule that a failed check
//! skips the ones after it.

use super::ProbeTarget;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

/// The checks of a probe, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// The credential could be read (Secret, keys, endpoint); only the command line uses it.
    Input,
    /// The password parses as a JWT access token.
    Token,
    /// The token has not expired.
    Expiry,
    /// The token's audience is Redis.
    Audience,
    /// The username is the token's `oid`.
    Username,
    /// A TCP connection to the endpoint opens.
    Tcp,
    /// The TLS handshake succeeds and the certificate is trusted and names the host.
    Tls,
    /// Redis accepts `AUTH username password`.
    Auth,
    /// `PING` answers `PONG`.
    Ping,
    /// `ACL WHOAMI` names the same user, where the server allows the command.
    Whoami,
}

impl Check {
    /// The checks [`verify`](super::verify) runs, in order.
    pub const VERIFIED: [Check; 9] = [
        Check::Token,
        Check::Expiry,
        Check::Audience,
        Check::Username,
        Check::Tcp,
        Check::Tls,
        Check::Auth,
        Check::Ping,
        Check::Whoami,
    ];

    /// The check's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Check::Input => "input",
            Check::Token => "token",
            Check::Expiry => "expiry",
            Check::Audience => "audience",
            Check::Username => "username",
            Check::Tcp => "tcp",
            Check::Tls => "tls",
            Check::Auth => "auth",
            Check::Ping => "ping",
            Check::Whoami => "whoami",
        }
    }
}

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The check passed.
    Passed,
    /// The check failed; the checks after it were skipped.
    Failed,
    /// The check did not run, or does not apply.
    Skipped,
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// Which check.
    pub check: Check,
    /// How it ended.
    pub status: Status,
    /// What was found, in words a person can act on; never a token or password.
    pub message: String,
}

/// Everything one probe of one credential found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    /// Where the probe connected, when an endpoint was known.
    pub target: Option<ProbeTarget>,
    /// The username probed (the identity's object id when the Secret is right).
    pub identity: String,
    /// A fingerprint of the token, safe to print.
    pub token_fingerprint: Option<String>,
    /// The token's expiry, when the token could be read.
    pub expires_at: Option<Timestamp>,
    /// The results, in the order the checks ran.
    pub checks: Vec<CheckResult>,
}

impl ProbeReport {
    /// Whether no check failed. A skipped `ACL WHOAMI` does not fail the probe.
    pub fn passed(&self) -> bool {
        !self.checks.iter().any(|c| c.status == Status::Failed)
    }

    /// The first failed check's name and message, if any.
    pub fn first_failure(&self) -> Option<(&'static str, String)> {
        self.failure().map(|c| (c.check.name(), c.message.clone()))
    }

    /// The first failed check, if any.
    pub fn failure(&self) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.status == Status::Failed)
    }

    /// Time left before the token expires (negative once expired).
    pub fn expires_in(&self, now: Timestamp) -> Option<SignedDuration> {
        self.expires_at.map(|at| at.duration_since(now))
    }

    /// A report for a credential that could not even be read: `input` failed with
    /// `message` and every other check is skipped.
    pub fn unreadable(
        target: Option<ProbeTarget>,
        identity: &str,
        message: impl Into<String>,
    ) -> ProbeReport {
        let mut recorder = Recorder::new(&[Check::Input]);
        recorder.fail(Check::Input, message);
        ProbeReport {
            target,
            identity: identity.to_string(),
            token_fingerprint: None,
            expires_at: None,
            checks: recorder.finish(),
        }
    }
}

/// Collects check results in order; after a failure it records nothing more, and
/// [`Recorder::finish`] marks every check not run as skipped.
#[derive(Debug)]
pub(crate) struct Recorder {
    plan: Vec<Check>,
    results: Vec<CheckResult>,
}

impl Recorder {
    /// A recorder for `extra` checks followed by the ones `verify` runs.
    pub(crate) fn new(extra: &[Check]) -> Recorder {
        let mut plan = extra.to_vec();
        plan.extend(Check::VERIFIED);
        Recorder {
            plan,
            results: Vec::new(),
        }
    }

    /// Whether a check has failed, so nothing further should run.
    pub(crate) fn failed(&self) -> bool {
        self.results.iter().any(|r| r.status == Status::Failed)
    }

    pub(crate) fn pass(&mut self, check: Check, message: impl Into<String>) {
        self.record(check, Status::Passed, message.into());
    }

    pub(crate) fn fail(&mut self, check: Check, message: impl Into<String>) {
        self.record(check, Status::Failed, message.into());
    }

    pub(crate) fn skip(&mut self, check: Check, message: impl Into<String>) {
        self.record(check, Status::Skipped, message.into());
    }

    /// Records a pure check's outcome: `Ok` passes, `Err` fails.
    pub(crate) fn outcome(&mut self, check: Check, outcome: Result<String, String>) {
        match outcome {
            Ok(message) => self.pass(check, message),
            Err(message) => self.fail(check, message),
        }
    }

    fn record(&mut self, check: Check, status: Status, message: String) {
        if self.failed() || self.results.iter().any(|r| r.check == check) {
            return;
        }
        // Messages end up in one table row, so they stay on one line.
        let message = message.replace(['\r', '\n'], " ");
        self.results.push(CheckResult {
            check,
            status,
            message,
        });
    }

    /// The results in plan order, with every check that did not run marked skipped.
    pub(crate) fn finish(self) -> Vec<CheckResult> {
        let failed = self
            .results
            .iter()
            .find(|r| r.status == Status::Failed)
            .map(|r| r.check.name());
        let mut results = self.results;
        self.plan
            .iter()
            .map(
                |check| match results.iter().position(|r| r.check == *check) {
                    Some(i) => results.swap_remove(i),
                    None => CheckResult {
                        check: *check,
                        status: Status::Skipped,
                        message: match failed {
                            Some(name) => format!("not run: {name} failed"),
                            None => "not run".to_string(),
                        },
                    },
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<CheckResult>) -> ProbeReport {
        ProbeReport {
            target: None,
            identity: "oid-1".to_string(),
            token_fingerprint: None,
            expires_at: None,
            checks,
        }
    }

    #[test]
    fn a_failed_check_skips_every_later_check() {
        let mut r = Recorder::new(&[]);
        r.pass(Check::Token, "ok");
        r.fail(Check::Expiry, "expired");
        r.pass(Check::Audience, "ignored");
        let checks = r.finish();
        assert_eq!(checks.len(), Check::VERIFIED.len());
        assert_eq!(checks[1].status, Status::Failed);
        assert!(checks[2..].iter().all(|c| c.status == Status::Skipped));
        assert_eq!(checks[2].message, "not run: expiry failed");
    }

    #[test]
    fn first_failure_names_the_check_and_why() {
        let mut r = Recorder::new(&[]);
        r.pass(Check::Token, "ok");
        r.fail(Check::Tls, "unknown CA");
        let report = report(r.finish());
        assert!(!report.passed());
        assert_eq!(
            report.first_failure(),
            Some(("tls", "unknown CA".to_string()))
        );
    }

    #[test]
    fn a_skipped_whoami_still_passes() {
        let mut r = Recorder::new(&[]);
        for check in &Check::VERIFIED[..8] {
            r.pass(*check, "ok");
        }
        r.skip(Check::Whoami, "refused");
        let report = report(r.finish());
        assert!(report.passed());
        assert_eq!(report.first_failure(), None);
    }

    #[test]
    fn messages_are_kept_on_one_line() {
        let mut r = Recorder::new(&[]);
        r.fail(Check::Token, "a\nb");
        assert_eq!(r.finish()[0].message, "a b");
    }

    #[test]
    fn an_unreadable_credential_fails_input_and_skips_the_rest() {
        let report = ProbeReport::unreadable(None, "", "Secret not found");
        assert_eq!(report.checks.len(), 10);
        assert_eq!(
            report.first_failure(),
            Some(("input", "Secret not found".to_string()))
        );
    }
}
