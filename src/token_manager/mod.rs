//! Refresh times, retry delays and error classification: pure code, no I/O.

use crate::api::{RetryConfig, TokenManagerConfig};
use jiff::Timestamp;
use std::time::Duration;

/// What the token manager knows about one failed token request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptError {
    /// HTTP status of the response, when there was one.
    pub status: Option<u16>,
    /// The OAuth `error` code of the response body, such as `invalid_client`.
    pub oauth_error: Option<String>,
    /// The server's Retry-After, when it sent one.
    pub retry_after: Option<Duration>,
    /// The token was issued but is unusable (no `oid`, malformed): never retried.
    pub unusable_token: bool,
    /// A message without secret material.
    pub message: String,
}

/// Whether another attempt may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after the computed delay.
    Retry,
    /// Stop the round now.
    Stop,
}

/// When a token with these times should be refreshed under `cfg`.
pub fn refresh_at(
    issued_at: Timestamp,
    expires_at: Timestamp,
    cfg: &TokenManagerConfig,
) -> Timestamp {
    let _ = (issued_at, cfg);
    unimplemented!("{expires_at}")
}

/// Whether `err` may be retried under `cfg`.
pub fn classify(err: &AttemptError, cfg: &RetryConfig) -> Verdict {
    let _ = (err, cfg);
    unimplemented!()
}

/// The delay after failed attempt `n` (1-based), before jitter.
pub fn base_delay(n: u32, cfg: &RetryConfig) -> Duration {
    let _ = (n, cfg);
    unimplemented!()
}

/// The delay after failed attempt `n` with jitter applied; `unit` is a random number in
/// [-1, 1] chosen by the caller; a Retry-After longer than the delay wins.
pub fn retry_delay(
    n: u32,
    cfg: &RetryConfig,
    unit: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let _ = (n, cfg, unit, retry_after);
    unimplemented!()
}

/// When the next round starts after `failures` consecutive failed rounds: doubling from 30 s,
/// capped at 5 minutes, and sooner when the current token (if any) would expire first.
pub fn next_round_at(now: Timestamp, failures: u32, expires_at: Option<Timestamp>) -> Timestamp {
    let _ = (failures, expires_at);
    unimplemented!("{now}")
}
