//! When to refresh a token, when to start the next round, and how to spread overdue work.

use crate::api::TokenManagerConfig;
use jiff::Timestamp;
use std::time::Duration;

/// Pause after the first failed round.
pub const ROUND_BACKOFF_INITIAL: Duration = Duration::from_secs(30);
/// Longest pause between two failed rounds.
pub const ROUND_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long before a token's expiry an early round starts, at most.
pub const EXPIRY_LEAD: Duration = Duration::from_secs(30);

const NANOS_PER_MILLI: i128 = 1_000_000;
const PARTS_PER_BILLION: i128 = 1_000_000_000;

/// When a token with these times should be refreshed under `cfg`.
///
/// The earlier of `issued_at + ratio × lifetime` and `expires_at − lowerRefreshBoundMs`.
/// The lower bound applies only while it falls after `issued_at`: a token that lives no
/// longer than the bound is refreshed at `issued_at + ratio × lifetime`. The result lies in
/// `[issued_at, expires_at]`; a token whose `expires_at` is not after `issued_at` gets
/// `expires_at`, so it is replaced at once. The ratio is clamped to [0, 1] and NaN counts as
/// the default ratio. Arithmetic is exact, in nanoseconds, with the ratio rounded to nine
/// decimal places.
pub fn refresh_at(
    issued_at: Timestamp,
    expires_at: Timestamp,
    cfg: &TokenManagerConfig,
) -> Timestamp {
    let (iat, exp) = (issued_at.as_nanosecond(), expires_at.as_nanosecond());
    if exp <= iat {
        return expires_at;
    }

    let lifetime = exp - iat;
    let by_ratio = iat + lifetime * ratio_ppb(cfg.expiration_refresh_ratio) / PARTS_PER_BILLION;
    let by_bound = exp - i128::from(cfg.lower_refresh_bound_ms) * NANOS_PER_MILLI;
    // A bound reaching back to issuance would refresh every new token at once, forever.
    let at = if by_bound > iat {
        by_ratio.min(by_bound)
    } else {
        by_ratio
    };
    timestamp(at.clamp(iat, exp))
}

/// The pause after `failures` consecutive failed rounds: 30 s × 2^(failures − 1), capped at
/// 5 minutes; 0 failures count as 1.
pub fn round_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    ROUND_BACKOFF_INITIAL
        .saturating_mul(1 << doublings)
        .min(ROUND_BACKOFF_MAX)
}

/// When the next round starts after `failures` consecutive failed rounds: doubling from 30 s,
/// capped at 5 minutes, and sooner when the current token (if any) would expire first.
///
/// The rule: let `backoff_at = now + round_backoff(failures)`. When `expires_at` is after
/// `now` and not after `backoff_at`, the round starts at
/// `expires_at − min(30 s, (expires_at − now) / 2)`: before the token expires, and no sooner
/// than halfway from now to expiry, so rounds close to expiry still leave time between them.
/// Otherwise (no token, an expired one, or one outliving the pause) it starts at
/// `backoff_at`. The result is never before `now` and never after `now + 5 min`; it
/// saturates at [`Timestamp::MAX`].
pub fn next_round_at(now: Timestamp, failures: u32, expires_at: Option<Timestamp>) -> Timestamp {
    let now_ns = now.as_nanosecond();
    let backoff_at = now_ns + nanos(round_backoff(failures));

    let at = match expires_at.map(Timestamp::as_nanosecond) {
        Some(exp) if exp > now_ns && exp <= backoff_at => {
            exp - nanos(EXPIRY_LEAD).min((exp - now_ns) / 2)
        }
        _ => backoff_at,
    };
    timestamp(at)
}

/// Longest span over which the refreshes of credentials sharing one token are staggered.
pub const STAGGER_MAX: Duration = Duration::from_secs(30);

/// The span before a token's refresh time over which the credentials sharing it refresh:
/// a tenth of the time from issue to refresh, at most [`STAGGER_MAX`].
pub fn stagger_window(issued_at: Timestamp, refresh_at: Timestamp) -> Duration {
    let span = (refresh_at.as_nanosecond() - issued_at.as_nanosecond()).max(0) / 10;
    let span = u64::try_from(span).unwrap_or(u64::MAX);
    Duration::from_nanos(span).min(STAGGER_MAX)
}

/// One credential's refresh time among many that share a token: `refresh_at` moved earlier
/// by an offset in `[0, stagger_window)` derived from `key_hash` alone, so that thousands of
/// credentials sharing a token are not all due at the same instant. Never after
/// `refresh_at` (the refresh time stays "at the latest"), never before `issued_at`, and in
/// whole milliseconds unless that would precede `issued_at`.
pub fn staggered(refresh_at: Timestamp, issued_at: Timestamp, key_hash: u64) -> Timestamp {
    let window_ns = stagger_window(issued_at, refresh_at).as_nanos();
    let offset = (u128::from(mix(key_hash)) * window_ns) >> 64;
    let moved = refresh_at.as_nanosecond() - i128::try_from(offset).unwrap_or(0);
    // Milliseconds read better in annotations and status; flooring keeps "at the latest".
    let floored = moved - moved.rem_euclid(1_000_000);
    timestamp(floored.max(issued_at.as_nanosecond().min(refresh_at.as_nanosecond())))
}

/// Spreads work that is already due at start-up over `window`, deterministically per key.
///
/// Work due after `now` is returned unchanged. Work due at or before `now` is moved to
/// `now + offset`, where the offset is derived from `key_hash` alone and lies in
/// `[0, window)`, or is zero for an empty window. So the result is never before `now`,
/// always before `now + window` (saturating at [`Timestamp::MAX`]), and the same for the
/// same key and start time. Keep `window` well below the lower refresh bound so that
/// spread work still lands before its token expires.
pub fn spread(due: Timestamp, now: Timestamp, key_hash: u64, window: Duration) -> Timestamp {
    if due > now {
        return due;
    }

    // Multiply-shift maps the mixed hash evenly onto [0, window) without modulo bias.
    let window_ns = window.as_nanos().min(u128::from(u64::MAX));
    let offset = (u128::from(mix(key_hash)) * window_ns) >> 64;
    timestamp(now.as_nanosecond() + i128::try_from(offset).unwrap_or(0))
}

/// A hash of `key` that stays the same across processes and releases (64-bit FNV-1a), for
/// [`spread`].
pub fn stable_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The splitmix64 finaliser: spreads keys that differ in a few bits over all 64.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn ratio_ppb(ratio: f64) -> i128 {
    let ratio = if ratio.is_nan() {
        TokenManagerConfig::default().expiration_refresh_ratio
    } else {
        ratio.clamp(0.0, 1.0)
    };
    (ratio * 1e9).round() as i128
}

fn nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

/// The timestamp `nanos` after the epoch, saturating at jiff's range.
fn timestamp(nanos: i128) -> Timestamp {
    let nanos = nanos.clamp(
        Timestamp::MIN.as_nanosecond(),
        Timestamp::MAX.as_nanosecond(),
    );
    Timestamp::from_nanosecond(nanos).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use proptest::prelude::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("test timestamps are in range")
    }

    fn cfg(ratio: f64, bound_secs: u64) -> TokenManagerConfig {
        TokenManagerConfig {
            expiration_refresh_ratio: ratio,
            lower_refresh_bound_ms: bound_secs * 1000,
            ..TokenManagerConfig::default()
        }
    }

    fn plus_nanos(t: Timestamp, n: i64) -> Timestamp {
        t.checked_add(SignedDuration::from_nanos(n))
            .expect("in range")
    }

    #[test]
    fn refresh_uses_the_ratio_when_it_comes_first() {
        assert_eq!(refresh_at(at(0), at(3600), &cfg(0.8, 300)), at(2880));
    }

    #[test]
    fn refresh_uses_the_lower_bound_when_it_comes_first() {
        assert_eq!(refresh_at(at(0), at(3600), &cfg(0.95, 300)), at(3300));
    }

    #[test]
    fn refresh_is_scheduled_before_expiry_even_with_ratio_one() {
        assert_eq!(refresh_at(at(100), at(3700), &cfg(1.0, 300)), at(3400));
    }

    #[test]
    fn ratio_one_without_lower_bound_refreshes_at_expiry() {
        assert_eq!(refresh_at(at(0), at(3600), &cfg(1.0, 0)), at(3600));
    }

    #[test]
    fn lifetime_shorter_than_the_lower_bound_falls_back_to_the_ratio() {
        assert_eq!(refresh_at(at(0), at(60), &cfg(0.8, 300)), at(48));
    }

    #[test]
    fn lifetime_equal_to_the_lower_bound_falls_back_to_the_ratio() {
        assert_eq!(refresh_at(at(0), at(300), &cfg(0.5, 300)), at(150));
    }

    #[test]
    fn tiny_lifetime_is_refreshed_within_it() {
        let expires = plus_nanos(at(0), 3);
        assert_eq!(
            refresh_at(at(0), expires, &cfg(0.8, 300)),
            plus_nanos(at(0), 2)
        );
    }

    #[test]
    fn expiry_equal_to_issue_refreshes_at_once() {
        assert_eq!(refresh_at(at(10), at(10), &cfg(0.8, 300)), at(10));
    }

    #[test]
    fn expiry_before_issue_refreshes_at_expiry() {
        assert_eq!(refresh_at(at(10), at(5), &cfg(0.8, 300)), at(5));
    }

    #[test]
    fn nan_ratio_counts_as_the_default_ratio() {
        assert_eq!(refresh_at(at(0), at(3600), &cfg(f64::NAN, 0)), at(2880));
    }

    #[test]
    fn out_of_range_ratios_are_clamped() {
        assert_eq!(refresh_at(at(0), at(3600), &cfg(7.0, 0)), at(3600));
        assert_eq!(refresh_at(at(0), at(3600), &cfg(-1.0, 0)), at(0));
        assert_eq!(
            refresh_at(at(0), at(3600), &cfg(f64::INFINITY, 0)),
            at(3600)
        );
    }

    #[test]
    fn extreme_times_and_bounds_do_not_overflow() {
        let mut huge = cfg(1.0, 0);
        huge.lower_refresh_bound_ms = u64::MAX;
        let r = refresh_at(Timestamp::MIN, Timestamp::MAX, &huge);
        assert_eq!(r, Timestamp::MAX);
        assert_eq!(
            refresh_at(Timestamp::MIN, Timestamp::MAX, &cfg(0.0, 0)),
            Timestamp::MIN
        );
    }

    #[test]
    fn first_failed_round_waits_thirty_seconds() {
        assert_eq!(next_round_at(at(0), 1, None), at(30));
    }

    #[test]
    fn zero_failures_count_as_one() {
        assert_eq!(next_round_at(at(0), 0, None), at(30));
    }

    #[test]
    fn round_backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = [1, 2, 3, 4, 5, 6, 40, u32::MAX]
            .map(|f| round_backoff(f).as_secs())
            .to_vec();
        assert_eq!(secs, [30, 60, 120, 240, 300, 300, 300, 300]);
    }

    #[test]
    fn round_starts_thirty_seconds_before_an_expiry_that_comes_first() {
        assert_eq!(next_round_at(at(0), 5, Some(at(100))), at(70));
    }

    #[test]
    fn round_close_to_expiry_starts_halfway_to_it() {
        assert_eq!(next_round_at(at(0), 1, Some(at(20))), at(10));
    }

    #[test]
    fn expiry_at_the_end_of_the_backoff_still_moves_the_round_earlier() {
        assert_eq!(next_round_at(at(0), 1, Some(at(30))), at(15));
    }

    #[test]
    fn expired_token_does_not_shorten_the_backoff() {
        assert_eq!(next_round_at(at(0), 1, Some(at(-10))), at(30));
        assert_eq!(next_round_at(at(0), 1, Some(at(0))), at(30));
    }

    #[test]
    fn token_outliving_the_backoff_does_not_shorten_it() {
        assert_eq!(next_round_at(at(0), 2, Some(at(1000))), at(60));
    }

    #[test]
    fn next_round_saturates_at_the_end_of_time() {
        assert_eq!(next_round_at(Timestamp::MAX, 9, None), Timestamp::MAX);
    }

    #[test]
    fn future_work_is_not_spread() {
        assert_eq!(spread(at(500), at(0), 7, Duration::from_secs(60)), at(500));
    }

    #[test]
    fn overdue_work_lands_within_the_window_from_now() {
        let t = spread(at(-500), at(0), 7, Duration::from_secs(60));
        assert!(t >= at(0) && t < at(60), "{t}");
    }

    #[test]
    fn spread_is_the_same_for_the_same_key() {
        let window = Duration::from_secs(60);
        assert_eq!(
            spread(at(0), at(0), 42, window),
            spread(at(-9), at(0), 42, window)
        );
    }

    #[test]
    fn neighbouring_keys_are_spread_across_the_window() {
        let times: Vec<_> = (0..100)
            .map(|k| spread(at(0), at(0), k, Duration::from_secs(60)))
            .collect();
        let (first, last) = (times.iter().min(), times.iter().max());
        let span = last.zip(first).map(|(l, f)| l.duration_since(*f).as_secs());
        assert!(span.is_some_and(|s| s >= 45), "{span:?}");
        assert!(
            times
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= 99
        );
    }

    #[test]
    fn empty_window_means_now() {
        assert_eq!(spread(at(-5), at(0), 42, Duration::ZERO), at(0));
    }

    #[test]
    fn huge_window_saturates_at_the_end_of_time() {
        let t = spread(Timestamp::MAX, Timestamp::MAX, u64::MAX, Duration::MAX);
        assert_eq!(t, Timestamp::MAX);
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    fn any_time() -> impl Strategy<Value = Timestamp> {
        (Timestamp::MIN.as_nanosecond()..=Timestamp::MAX.as_nanosecond()).prop_map(timestamp)
    }

    fn any_config() -> impl Strategy<Value = TokenManagerConfig> {
        (prop::num::f64::ANY, any::<u64>(), prop::bool::ANY).prop_map(|(ratio, bound, small)| {
            let bound = if small { bound % 10_000_000 } else { bound };
            TokenManagerConfig {
                lower_refresh_bound_ms: bound,
                ..cfg(ratio, 0)
            }
        })
    }

    proptest! {
        #[test]
        fn refresh_time_is_never_past_expiry_nor_before_issue(
            issued in any_time(),
            lifetime_ns in 0i64..=i64::MAX,
            cfg in any_config(),
        ) {
            let expires = issued.saturating_add(SignedDuration::from_nanos(lifetime_ns))
                .expect("a duration always saturates");
            let r = refresh_at(issued, expires, &cfg);
            prop_assert!(issued <= r && r <= expires, "{issued} {r} {expires}");
        }

        #[test]
        fn refresh_time_is_never_past_expiry_for_any_pair(
            issued in any_time(),
            expires in any_time(),
            cfg in any_config(),
        ) {
            prop_assert!(refresh_at(issued, expires, &cfg) <= expires);
        }

        #[test]
        fn next_round_is_never_before_now_nor_beyond_five_minutes(
            now in any_time(),
            failures in any::<u32>(),
            expires in prop::option::of(any_time()),
        ) {
            let next = next_round_at(now, failures, expires);
            let latest = now.saturating_add(ROUND_BACKOFF_MAX).expect("saturates");
            prop_assert!(now <= next && next <= latest, "{now} {next}");
        }

        #[test]
        fn next_round_never_starts_after_a_future_expiry_it_could_beat(
            now_s in -1_000_000i64..1_000_000,
            failures in any::<u32>(),
            ahead_ns in 1i64..300_000_000_000,
        ) {
            let now = at(now_s);
            let expires = plus_nanos(now, ahead_ns);
            let next = next_round_at(now, failures, Some(expires));
            prop_assert!(next <= expires || next == next_round_at(now, failures, None));
        }

        #[test]
        fn overdue_work_is_spread_within_the_window(
            now in any_time(),
            late_ns in 0i64..=i64::MAX,
            key in any::<u64>(),
            window_ms in any::<u64>(),
        ) {
            let due = now.saturating_sub(SignedDuration::from_nanos(late_ns)).expect("saturates");
            let window = Duration::from_millis(window_ms);
            let t = spread(due, now, key, window);
            let end = now.saturating_add(window).expect("saturates");
            let at_end_only_if_empty_or_saturated =
                t < end || (t == end && (window.is_zero() || end == Timestamp::MAX));
            prop_assert!(now <= t && at_end_only_if_empty_or_saturated, "{now} {t} {end}");
        }
    }

    #[test]
    fn staggering_moves_a_refresh_earlier_within_its_window() {
        let (issued, due) = (at(0), at(2880));
        for key in 0..200u64 {
            let t = staggered(due, issued, stable_hash(&key.to_string()));
            assert!(t <= due && t >= at(2880 - 30), "{t}");
        }
    }

    #[test]
    fn staggering_a_short_token_stays_within_a_tenth_of_its_time_to_refresh() {
        let (issued, due) = (at(0), at(16));
        let window = stagger_window(issued, due);
        assert_eq!(window, Duration::from_millis(1600));
        let t = staggered(due, issued, 42);
        assert!(t <= due && t >= at(14), "{t}");
    }

    #[test]
    fn staggering_never_precedes_issue_even_for_a_refresh_before_issue() {
        assert_eq!(staggered(at(5), at(10), 7), at(5));
    }

    #[test]
    fn staggering_spreads_neighbouring_keys() {
        let due = at(2880);
        let times: std::collections::BTreeSet<_> = (0..100)
            .map(|k| staggered(due, at(0), stable_hash(&format!("ns/c{k}"))))
            .collect();
        assert!(times.len() > 90);
    }
}
