//! The retry policy against the Entra ID emulator's injected faults, and the file mode
//! through an outage.

mod common;

use amr_credential_operator::emulator::entra::Fault;
use amr_credential_operator::identity::FailureKind::{NonRetryable, RetriesExhausted};
use amr_credential_operator::local::{LocalCredential, LocalEvent};
use common::{
    FileMode, OTHER_APP, SECRET_APP, World, always, assert_failure, credential,
    credential_with_attempts, failure, flow, once, token,
};
use jiff::SignedDuration;
use std::time::{Duration, Instant};

fn statuses(world: &World) -> Vec<Option<u16>> {
    world.token_requests().iter().map(|r| r.status).collect()
}

fn orders() -> LocalCredential {
    credential("orders", flow::CLIENT_SECRET)
}

#[tokio::test]
async fn server_errors_are_retried_until_a_token_comes_within_max_attempts() {
    let world = World::start(60).await;
    world.entra.inject(once(Fault::InternalServerError));
    world.entra.inject(once(Fault::ServiceUnavailable));
    token(&world.source(), &orders()).await;
    assert_eq!(statuses(&world), [Some(500), Some(503), Some(200)]);
}

#[tokio::test]
async fn an_outage_longer_than_the_round_exhausts_the_retries() {
    let world = World::start(60).await;
    world.entra.inject(always(Fault::ServiceUnavailable));
    let cred = credential_with_attempts("orders", flow::CLIENT_SECRET, 4);
    let failure = failure(&world.source(), &cred).await;
    assert_failure(
        &failure,
        RetriesExhausted,
        4,
        &["HTTP 503", "after 4 attempts"],
    );
    assert_eq!(statuses(&world), [Some(503); 4]);
}

#[tokio::test]
async fn invalid_client_ends_the_round_after_one_request() {
    let world = World::start(60).await;
    let expired = Fault::oauth("invalid_client", 7000222, "The client secret has expired.");
    world.entra.inject(always(expired));
    let cred = credential_with_attempts("orders", flow::CLIENT_SECRET, 5);
    let failure = failure(&world.source(), &cred).await;
    assert_failure(&failure, NonRetryable, 1, &["client secret has expired"]);
    assert_eq!(statuses(&world), [Some(401)]);
}

#[tokio::test]
async fn retry_after_holds_back_every_credential_of_the_authority() {
    let world = World::start(60).await;
    let throttled = Fault::TooManyRequests {
        retry_after_secs: 2,
    };
    world.entra.inject(once(throttled).for_id(SECRET_APP));
    let source = world.source();
    let first = tokio::spawn({
        let source = source.clone();
        async move { token(&source, &orders()).await }
    });
    let throttled_at = loop {
        if let Some(r) = world
            .token_requests()
            .iter()
            .find(|r| r.status == Some(429))
        {
            break r.at;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Let the client read the answer before the other credential asks.
    tokio::time::sleep(Duration::from_millis(200)).await;

    token(&source, &credential("billing", flow::OTHER_CLIENT_SECRET)).await;
    first.await.unwrap();
    let later = world.token_requests().split_off(1);
    assert!(
        later
            .iter()
            .any(|r| r.client_id.as_deref() == Some(OTHER_APP))
    );
    for request in later {
        let held = request.at.duration_since(throttled_at);
        assert!(
            held >= SignedDuration::from_secs(2),
            "{request:?} after {held}"
        );
    }
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let world = World::start(60).await;
    world.entra.inject(once(Fault::DropConnection));
    token(&world.source(), &orders()).await;
    assert_eq!(statuses(&world), [None, Some(200)]);
}

#[tokio::test]
async fn an_answer_slower_than_the_attempt_timeout_is_retried() {
    let world = World::start(60).await;
    world
        .entra
        .inject(once(Fault::Delay(Duration::from_secs(3))));
    let source = world.source_with(|c| c.attempt_timeout = Duration::from_millis(300));
    let started = Instant::now();
    token(&source, &orders()).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "waited for the slow answer: {elapsed:?}"
    );
}

#[tokio::test]
async fn a_token_without_oid_is_refused_as_non_retryable() {
    let world = World::start(60).await;
    world.entra.inject(always(Fault::TokenWithoutOid));
    let failure = failure(&world.source(), &orders()).await;
    assert_failure(&failure, NonRetryable, 1, &["`oid`"]);
}

#[tokio::test]
async fn a_malformed_token_response_is_never_taken_for_a_token() {
    let world = World::start(60).await;
    world.entra.inject(always(Fault::MalformedBody));
    let failure = failure(&world.source(), &orders()).await;
    assert_failure(&failure, RetriesExhausted, 3, &[]);
    assert_eq!(statuses(&world), [Some(200); 3]);
}

#[tokio::test]
async fn an_expires_in_beyond_the_tokens_own_expiry_is_refused() {
    let world = World::start(60).await;
    world.entra.inject(always(Fault::LyingExpiresIn(86_400)));
    let failure = failure(&world.source(), &orders()).await;
    assert_failure(&failure, NonRetryable, 1, &["longer lifetime"]);
}

#[tokio::test]
async fn file_mode_keeps_the_files_through_an_outage_and_writes_after_recovery() {
    let world = World::start(4).await;
    let mut files = FileMode::start(&world, world.source(), vec![orders()]);
    assert!(matches!(files.next(5).await, LocalEvent::Refreshed { .. }));
    let read_all =
        |files: &FileMode| ["username", "password", "expires-at"].map(|k| files.read("orders", k));
    let (before, version) = (read_all(&files), files.version("orders"));

    world.entra.inject(always(Fault::ServiceUnavailable));
    assert!(matches!(files.next(5).await, LocalEvent::Failed { .. }));
    assert_eq!(read_all(&files), before);
    assert_eq!(files.version("orders"), version);

    world.entra.clear_faults();
    assert!(matches!(files.next(5).await, LocalEvent::Refreshed { .. }));
    let after = read_all(&files);
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1], before[1]);
    files.stop().await;
}
