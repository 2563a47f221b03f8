//! Refresh times, retry delays and error classification: pure code, no I/O.

mod retry;
mod round;
mod schedule;

pub use retry::{base_delay, classify, random_unit, retry_delay};
pub use round::run_round;
pub use schedule::{
    EXPIRY_LEAD, ROUND_BACKOFF_INITIAL, ROUND_BACKOFF_MAX, STAGGER_MAX, next_round_at, refresh_at,
    round_backoff, spread, stable_hash, stagger_window, staggered,
};

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
