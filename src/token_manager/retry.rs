//! Whether a failed token request is retried, and after how long.

use super::{AttemptError, Verdict};
use crate::api::RetryConfig;
use rand::Rng;
use std::time::Duration;

/// Whether `err` may be retried under `cfg`.
///
/// Stop for an unusable token, for an OAuth error code listed in `nonRetryableErrors`
/// (compared case-insensitively, whatever the status), and for an HTTP 4xx other than 408
/// and 429. Retry for everything else: 5xx, 408, 429, and transport failures with no status.
pub fn classify(err: &AttemptError, cfg: &RetryConfig) -> Verdict {
    if err.unusable_token {
        return Verdict::Stop;
    }
    if let Some(code) = err.oauth_error.as_deref()
        && is_listed(code, &cfg.non_retryable_errors)
    {
        return Verdict::Stop;
    }
    match err.status {
        Some(408 | 429) => Verdict::Retry,
        Some(400..=499) => Verdict::Stop,
        _ => Verdict::Retry,
    }
}

/// The delay after failed attempt `n` (1-based), before jitter.
///
/// `min(initialDelayMs × backoffMultiplier^(n−1), maxDelayMs)`. Attempt 0 counts as 1, a
/// multiplier below 1 or NaN counts as 1, and any overflow yields `maxDelayMs`.
pub fn base_delay(n: u32, cfg: &RetryConfig) -> Duration {
    let initial = Duration::from_millis(cfg.initial_delay_ms);
    let cap = Duration::from_millis(cfg.max_delay_ms);
    let multiplier = if cfg.backoff_multiplier >= 1.0 {
        cfg.backoff_multiplier
    } else {
        1.0
    };
    let exponent = n.saturating_sub(1);

    // No growth, or nothing to grow: exact, and safe from 0 × ∞.
    if exponent == 0 || multiplier == 1.0 || initial.is_zero() {
        return initial.min(cap);
    }
    let secs = initial.as_secs_f64() * multiplier.powf(f64::from(exponent));
    Duration::try_from_secs_f64(secs)
        .unwrap_or(Duration::MAX)
        .min(cap)
}

/// The delay after failed attempt `n` with jitter applied; `unit` is a random number in
/// [-1, 1] chosen by the caller; a Retry-After longer than the delay wins.
///
/// The jittered delay is `base × (1 + jitterPercentage × unit)`, with `unit` clamped to
/// [-1, 1] and `jitterPercentage` to [0, 1] (NaN counts as 0 for both): never negative,
/// and within ±jitterPercentage of [`base_delay`]. A longer `retry_after` replaces it as is.
pub fn retry_delay(
    n: u32,
    cfg: &RetryConfig,
    unit: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let jittered = jitter(base_delay(n, cfg), cfg.jitter_percentage, unit);
    match retry_after {
        Some(after) if after > jittered => after,
        _ => jittered,
    }
}

/// A uniformly random number in [-1, 1], the `unit` of [`retry_delay`].
pub fn random_unit<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    rng.random_range(-1.0..=1.0)
}

fn is_listed(code: &str, listed: &[String]) -> bool {
    listed
        .iter()
        .any(|l| l.trim().eq_ignore_ascii_case(code.trim()))
}

fn jitter(base: Duration, fraction: f64, unit: f64) -> Duration {
    let fraction = if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(-1.0, 1.0)
    };

    let offset = Duration::try_from_secs_f64(base.as_secs_f64() * fraction * unit.abs())
        .unwrap_or(Duration::ZERO);
    if unit < 0.0 {
        base.saturating_sub(offset)
    } else {
        base.saturating_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn retry() -> RetryConfig {
        RetryConfig::default()
    }

    fn status(code: u16) -> AttemptError {
        AttemptError {
            status: Some(code),
            ..AttemptError::default()
        }
    }

    fn oauth(code: &str, status_code: u16) -> AttemptError {
        AttemptError {
            oauth_error: Some(code.to_string()),
            ..status(status_code)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn backoff(initial: u64, max: u64, multiplier: f64) -> RetryConfig {
        RetryConfig {
            initial_delay_ms: initial,
            max_delay_ms: max,
            backoff_multiplier: multiplier,
            ..retry()
        }
    }

    #[test]
    fn request_timeout_408_is_retried() {
        assert_eq!(classify(&status(408), &retry()), Verdict::Retry);
    }

    #[test]
    fn too_many_requests_429_is_retried() {
        assert_eq!(classify(&status(429), &retry()), Verdict::Retry);
    }

    #[test]
    fn bad_request_400_stops() {
        assert_eq!(classify(&status(400), &retry()), Verdict::Stop);
    }

    #[test]
    fn unauthorized_401_stops() {
        assert_eq!(classify(&status(401), &retry()), Verdict::Stop);
    }

    #[test]
    fn server_errors_are_retried() {
        assert_eq!(classify(&status(500), &retry()), Verdict::Retry);
        assert_eq!(classify(&status(503), &retry()), Verdict::Retry);
    }

    #[test]
    fn transport_error_without_status_is_retried() {
        assert_eq!(classify(&AttemptError::default(), &retry()), Verdict::Retry);
    }

    #[test]
    fn listed_oauth_error_stops_even_on_a_server_error() {
        assert_eq!(
            classify(&oauth("invalid_client", 500), &retry()),
            Verdict::Stop
        );
    }

    #[test]
    fn oauth_error_codes_compare_case_insensitively() {
        assert_eq!(
            classify(&oauth("INVALID_Client", 503), &retry()),
            Verdict::Stop
        );
    }

    #[test]
    fn unlisted_oauth_error_follows_the_status() {
        assert_eq!(
            classify(&oauth("temporarily_unavailable", 503), &retry()),
            Verdict::Retry
        );
        assert_eq!(
            classify(&oauth("interaction_required", 400), &retry()),
            Verdict::Stop
        );
    }

    #[test]
    fn unusable_token_stops_without_a_status() {
        let err = AttemptError {
            unusable_token: true,
            ..AttemptError::default()
        };
        assert_eq!(classify(&err, &retry()), Verdict::Stop);
    }

    #[test]
    fn attempt_one_uses_the_initial_delay() {
        assert_eq!(base_delay(1, &retry()), ms(100));
    }

    #[test]
    fn attempt_zero_counts_as_attempt_one() {
        assert_eq!(base_delay(0, &retry()), ms(100));
    }

    #[test]
    fn delay_grows_by_the_multiplier_until_the_cap() {
        let delays: Vec<_> = (1..=6).map(|n| base_delay(n, &retry())).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn fractional_multiplier_grows_delays_too() {
        assert_eq!(base_delay(3, &backoff(100, 10_000, 1.5)), ms(225));
    }

    #[test]
    fn huge_attempt_number_stays_at_the_cap() {
        assert_eq!(base_delay(u32::MAX, &retry()), ms(1000));
    }

    #[test]
    fn huge_multipliers_stay_at_the_cap() {
        assert_eq!(base_delay(2, &backoff(100, 1000, f64::MAX)), ms(1000));
        assert_eq!(base_delay(2, &backoff(100, 1000, f64::INFINITY)), ms(1000));
        assert_eq!(
            base_delay(u32::MAX, &backoff(u64::MAX, u64::MAX, 2.0)),
            ms(u64::MAX)
        );
    }

    #[test]
    fn multiplier_below_one_or_nan_counts_as_one() {
        assert_eq!(base_delay(5, &backoff(100, 1000, 0.5)), ms(100));
        assert_eq!(base_delay(5, &backoff(100, 1000, f64::NAN)), ms(100));
    }

    #[test]
    fn zero_initial_delay_stays_zero_with_an_infinite_multiplier() {
        assert_eq!(
            base_delay(9, &backoff(0, 1000, f64::INFINITY)),
            Duration::ZERO
        );
    }

    #[test]
    fn initial_delay_above_the_cap_is_capped() {
        assert_eq!(base_delay(1, &backoff(5000, 1000, 2.0)), ms(1000));
    }

    #[test]
    fn jitter_moves_the_delay_by_at_most_its_percentage() {
        assert_eq!(retry_delay(1, &retry(), 1.0, None), ms(110));
        assert_eq!(retry_delay(1, &retry(), -1.0, None), ms(90));
        assert_eq!(retry_delay(1, &retry(), 0.0, None), ms(100));
    }

    #[test]
    fn unit_outside_its_range_is_clamped() {
        assert_eq!(retry_delay(1, &retry(), 5.0, None), ms(110));
        assert_eq!(retry_delay(1, &retry(), f64::NEG_INFINITY, None), ms(90));
        assert_eq!(retry_delay(1, &retry(), f64::NAN, None), ms(100));
    }

    #[test]
    fn full_jitter_downwards_reaches_zero_but_not_below() {
        let cfg = RetryConfig {
            jitter_percentage: 1.0,
            ..retry()
        };
        assert_eq!(retry_delay(1, &cfg, -1.0, None), Duration::ZERO);
    }

    #[test]
    fn longer_retry_after_wins() {
        assert_eq!(retry_delay(1, &retry(), 1.0, Some(ms(2000))), ms(2000));
    }

    #[test]
    fn shorter_retry_after_is_ignored() {
        assert_eq!(retry_delay(1, &retry(), 0.0, Some(ms(10))), ms(100));
    }

    #[test]
    fn retry_after_is_not_jittered() {
        assert_eq!(retry_delay(1, &retry(), -1.0, Some(ms(95))), ms(95));
    }

    #[test]
    fn random_unit_stays_within_minus_one_and_one() {
        let mut rng = StdRng::seed_from_u64(7);
        let units: Vec<f64> = (0..10_000).map(|_| random_unit(&mut rng)).collect();
        assert!(units.iter().all(|u| (-1.0..=1.0).contains(u)));
        assert!(units.iter().any(|u| *u < -0.9) && units.iter().any(|u| *u > 0.9));
    }

    fn any_retry() -> impl Strategy<Value = RetryConfig> {
        let multiplier = prop_oneof![1.0..16.0, prop::num::f64::ANY];
        let jitter = prop_oneof![0.0..=1.0, prop::num::f64::ANY];
        (any::<u64>(), any::<u64>(), multiplier, jitter).prop_map(|(a, b, m, j)| RetryConfig {
            initial_delay_ms: a.min(b) % 100_000_000,
            max_delay_ms: a.max(b) % 1_000_000_000,
            backoff_multiplier: m,
            jitter_percentage: j,
            ..retry()
        })
    }

    fn effective_jitter(cfg: &RetryConfig) -> f64 {
        if cfg.jitter_percentage.is_nan() {
            0.0
        } else {
            cfg.jitter_percentage.clamp(0.0, 1.0)
        }
    }

    proptest! {
        #[test]
        fn base_delay_never_decreases_and_never_exceeds_the_cap(cfg in any_retry()) {
            let cap = ms(cfg.max_delay_ms);
            let delays: Vec<_> = (1..=80).map(|n| base_delay(n, &cfg)).collect();
            prop_assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
            prop_assert!(delays.iter().all(|d| *d <= cap));
            prop_assert!(base_delay(u32::MAX, &cfg) <= cap);
        }

        #[test]
        fn jitter_stays_within_its_percentage_of_the_base(
            cfg in any_retry(),
            n in any::<u32>(),
            unit in prop::num::f64::ANY,
        ) {
            let base = base_delay(n, &cfg).as_secs_f64();
            let delay = retry_delay(n, &cfg, unit, None).as_secs_f64();
            let allowed = effective_jitter(&cfg) * base * (1.0 + 1e-9) + 1e-9;
            prop_assert!((delay - base).abs() <= allowed, "{base} {delay}");
        }

        #[test]
        fn delays_are_never_negative_and_never_exceed_twice_the_cap(
            cfg in any_retry(),
            n in any::<u32>(),
            unit in prop::num::f64::ANY,
        ) {
            let delay = retry_delay(n, &cfg, unit, None);
            prop_assert!(delay >= Duration::ZERO && delay <= ms(cfg.max_delay_ms) * 2);
        }

        #[test]
        fn retry_after_dominates_only_when_longer(
            cfg in any_retry(),
            n in 1u32..20,
            unit in -1.0f64..=1.0,
            after_ms in 0u64..2_000_000_000,
        ) {
            let jittered = retry_delay(n, &cfg, unit, None);
            let with_after = retry_delay(n, &cfg, unit, Some(ms(after_ms)));
            prop_assert_eq!(with_after, jittered.max(ms(after_ms)));
        }
    }
}
