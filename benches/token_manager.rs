//! Cost of the token manager's scheduling decisions.

use amr_credential_operator::api::{RetryConfig, TokenManagerConfig};
use amr_credential_operator::token_manager::{next_round_at, refresh_at, retry_delay, spread};
use criterion::{Criterion, criterion_group, criterion_main};
use jiff::Timestamp;
use std::hint::black_box;
use std::time::Duration;

fn refresh_time(c: &mut Criterion) {
    let cfg = TokenManagerConfig::default();
    let issued = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let expires = Timestamp::from_second(1_700_003_600).unwrap_or(Timestamp::UNIX_EPOCH);
    c.bench_function("refresh_at one-hour token", |b| {
        b.iter(|| refresh_at(black_box(issued), black_box(expires), black_box(&cfg)))
    });
}

fn retry_schedule(c: &mut Criterion) {
    let cfg = RetryConfig::default();
    c.bench_function("retry_delay attempt 3 with jitter", |b| {
        b.iter(|| retry_delay(black_box(3), black_box(&cfg), black_box(0.37), None))
    });
    c.bench_function("retry_delay with Retry-After", |b| {
        let after = Some(Duration::from_secs(2));
        b.iter(|| {
            retry_delay(
                black_box(2),
                black_box(&cfg),
                black_box(-0.5),
                black_box(after),
            )
        })
    });
}

fn round_schedule(c: &mut Criterion) {
    let now = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let expires = Timestamp::from_second(1_700_000_090).ok();
    c.bench_function("next_round_at near expiry", |b| {
        b.iter(|| next_round_at(black_box(now), black_box(4), black_box(expires)))
    });
    c.bench_function("spread over one minute", |b| {
        let window = Duration::from_secs(60);
        b.iter(|| {
            spread(
                black_box(now),
                black_box(now),
                black_box(0xfeed),
                black_box(window),
            )
        })
    });
}

criterion_group!(benches, refresh_time, retry_schedule, round_schedule);
criterion_main!(benches);
