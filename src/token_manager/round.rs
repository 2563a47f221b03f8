//! One round of token request attempts, with backoff and jitter between them.

use super::{AttemptError, Verdict, classify, random_unit, retry_delay};
use crate::api::RetryConfig;
use std::future::Future;

/// Runs `attempt` until it succeeds, fails with an error that [`classify`] stops on, or has
/// been made `maxAttempts` times (at least once), sleeping [`retry_delay`] with random jitter
/// between attempts. `attempt` receives the 1-based attempt number.
///
/// Returns the value with the number of attempts made.
///
/// # Errors
/// The last attempt's error, with the number of attempts made, when no attempt succeeded.
pub async fn run_round<T, F, Fut>(
    cfg: &RetryConfig,
    mut attempt: F,
) -> Result<(T, u32), (AttemptError, u32)>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    let max_attempts = cfg.max_attempts.max(1);
    let mut n = 1;
    loop {
        let err = match attempt(n).await {
            Ok(value) => return Ok((value, n)),
            Err(err) => err,
        };
        if n >= max_attempts || classify(&err, cfg) == Verdict::Stop {
            return Err((err, n));
        }

        // The generator is dropped before the await, so the round stays `Send`.
        let unit = random_unit(&mut rand::rng());
        let delay = retry_delay(n, cfg, unit, err.retry_after);
        tracing::warn!(
            attempt = n,
            status = err.status,
            error = %err.message,
            delay_ms = delay.as_millis(),
            "Token request failed; retrying"
        );
        tokio::time::sleep(delay).await;
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn retry(max_attempts: u32) -> RetryConfig {
        RetryConfig {
            max_attempts,
            ..RetryConfig::default()
        }
    }

    fn failure(status: u16) -> AttemptError {
        AttemptError {
            status: Some(status),
            message: "failed".into(),
            ..Default::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs a round whose attempt `n` fails with `fail(n)` when that returns an error.
    async fn round(
        cfg: &RetryConfig,
        fail: impl Fn(u32) -> Option<AttemptError>,
    ) -> (
        Result<(&'static str, u32), (AttemptError, u32)>,
        Vec<u32>,
        Duration,
    ) {
        let start = Instant::now();
        let mut seen = Vec::new();
        let result = run_round(cfg, |n| {
            seen.push(n);
            let outcome = fail(n).map_or(Ok("token"), Err);
            async move { outcome }
        })
        .await;
        (result, seen, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn success_on_the_first_attempt_takes_no_time() {
        let (result, seen, elapsed) = round(&retry(3), |_| None).await;
        assert_eq!(
            (result.ok(), seen, elapsed),
            (Some(("token", 1)), vec![1], Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let (result, seen, elapsed) = round(&retry(3), |n| (n < 3).then(|| failure(503))).await;
        assert_eq!((result.ok(), seen), (Some(("token", 3)), vec![1, 2, 3]));
        assert!(elapsed >= ms(270) && elapsed <= ms(332), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn round_ends_after_max_attempts() {
        let (result, seen, elapsed) = round(&retry(3), |_| Some(failure(500))).await;
        assert_eq!(
            result.err().map(|(e, n)| (e.status, n)),
            Some((Some(500), 3))
        );
        assert_eq!(seen, [1, 2, 3]);
        assert!(elapsed >= ms(270) && elapsed <= ms(332), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_error_ends_the_round_at_once() {
        let invalid_client = AttemptError {
            oauth_error: Some("invalid_client".into()),
            ..failure(401)
        };
        let (result, seen, elapsed) = round(&retry(5), |_| Some(invalid_client.clone())).await;
        assert_eq!(
            (result.err().map(|(_, n)| n), seen, elapsed),
            (Some(1), vec![1], Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_for_between_attempts() {
        let throttled = AttemptError {
            retry_after: Some(ms(5000)),
            ..failure(429)
        };
        let (result, seen, elapsed) = round(&retry(2), |_| Some(throttled.clone())).await;
        assert_eq!((result.err().map(|(_, n)| n), seen), (Some(2), vec![1, 2]));
        assert!(elapsed >= ms(5000) && elapsed <= ms(5001), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn delays_follow_the_backoff_exactly_without_jitter() {
        let cfg = RetryConfig {
            jitter_percentage: 0.0,
            ..retry(5)
        };
        let (result, _, elapsed) = round(&cfg, |_| Some(failure(502))).await;
        assert_eq!(result.err().map(|(_, n)| n), Some(5));
        assert!(elapsed >= ms(1500) && elapsed <= ms(1504), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_attempts_still_tries_once() {
        let (result, seen, _) = round(&retry(0), |_| Some(failure(500))).await;
        assert_eq!((result.err().map(|(_, n)| n), seen), (Some(1), vec![1]));
    }

    #[test]
    fn a_round_can_run_on_any_worker_thread() {
        fn assert_send<T: Send>(_: &T) {}
        let cfg = retry(1);
        assert_send(&run_round(&cfg, |_| async { Ok::<_, AttemptError>(()) }));
    }
}
