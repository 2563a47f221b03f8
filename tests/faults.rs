//! The retry policy against the Entra ID emulator's injected faults, the file mode through
//! an outage, and a search of every log line, failure and `Debug` output for secrets.

mod common;

use amr_credential_operator::emulator::entra::Fault;
use amr_credential_operator::identity::FailureKind::{NonRetryable, RetriesExhausted};
use amr_credential_operator::identity::source::AzureTokenSource;
use amr_credential_operator::local::{LocalCredential, LocalEvent};
use amr_credential_operator::telemetry::logging;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{
    FileMode, NS, OTHER_APP, SECRET_APP, SECRETS, World, always, ambient_secret_env,
    assert_failure, credential, credential_with_attempts, failure, fetch, flow, once, token,
};
use jiff::SignedDuration;
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::Arc;
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

/// Every flow, every way: the file mode refreshing each credential twice, rounds failing
/// with retryable and final errors, and the `Debug` output of what holds secrets.
#[tokio::test]
async fn no_secret_appears_in_logs_failures_or_debug_output() {
    let (_guard, logs) = logging::capture();
    let world = World::start(3).await;
    let mut issued = world.entra.subscribe();
    let mut seen = Vec::new();
    let source = world.source_with(|c| {
        c.ambient = ambient_secret_env();
        seen.push(format!("{c:?}"));
    });
    let creds = every_flow();

    seen.extend(refresh_each_twice(&world, &source, &creds).await);
    seen.extend(fail_each(&world, &source, &creds).await);
    seen.push(format!("{source:?} {:?}", world.material.files(NS)));
    seen.extend(creds.iter().map(|c| format!("{c:?}")));
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("TRACE") && logs.contains("Token refreshed"),
        "logs not captured"
    );
    seen.push(logs);

    let haystack = seen.join("\n");
    let issued: Vec<_> = std::iter::from_fn(|| issued.try_recv().ok()).collect();
    assert!(
        issued.len() >= 14,
        "too few tokens issued: {}",
        issued.len()
    );
    let tokens = issued.iter().map(|t| t.token.expose_secret().to_string());
    let tokens = tokens.chain(world.material.minted());
    for (what, secret) in secret_values()
        .into_iter()
        .chain(tokens.flat_map(token_parts))
    {
        for form in [
            secret.clone(),
            STANDARD.encode(&secret),
            URL_SAFE_NO_PAD.encode(&secret),
        ] {
            assert!(!haystack.contains(&form), "{what} leaked");
        }
    }
}

fn every_flow() -> Vec<LocalCredential> {
    [
        ("secret", flow::CLIENT_SECRET),
        ("pem", flow::CERTIFICATE_PEM),
        ("pkcs12", flow::CERTIFICATE_PKCS12),
        ("system-mi", flow::SYSTEM_MI),
        ("user-mi", flow::USER_MI),
        ("workload", flow::WORKLOAD),
        ("default", flow::DEFAULT),
    ]
    .map(|(name, flow)| credential(name, flow))
    .into()
}

/// Runs the file mode until every credential was written twice; returns what it reported.
async fn refresh_each_twice(
    world: &World,
    source: &Arc<AzureTokenSource>,
    creds: &[LocalCredential],
) -> Vec<String> {
    let mut files = FileMode::start(world, source.clone(), creds.to_vec());
    let (mut seen, mut writes) = (Vec::new(), HashMap::<String, u32>::new());
    while writes.len() < creds.len() || writes.values().any(|n| *n < 2) {
        let event = files.next(5).await;
        if let LocalEvent::Refreshed { name, .. } = &event {
            *writes.entry(name.clone()).or_default() += 1;
        }
        seen.push(format!("{event:?}"));
    }
    files.stop().await;
    seen.push(format!("{:?}", fetch(source, &creds[0]).await));
    seen
}

/// Fails a round of every credential through an outage and a refusal, and one with a
/// wrong client secret; returns the failures.
async fn fail_each(
    world: &World,
    source: &AzureTokenSource,
    creds: &[LocalCredential],
) -> Vec<String> {
    let mut seen = Vec::new();
    let refused = Fault::oauth("invalid_client", 7000215, "Invalid client secret provided.");
    for fault in [Fault::ServiceUnavailable, refused] {
        world.entra.inject(always(fault));
        for cred in creds {
            let round = source.fetch_with(NS, &cred.spec, &cred.resolved, true);
            let failure = round.await.unwrap_err();
            seen.push(format!("{failure:?} {failure}"));
        }
        world.entra.clear_faults();
    }
    world.write_secret(NS, SECRET_APP, "client-secret", b"wrong");
    let wrong = failure(source, &credential("wrong", flow::CLIENT_SECRET)).await;
    seen.push(format!("{wrong:?}"));
    seen
}

/// The client secrets, the private key (whole, its PEM body and a line of it), and the
/// PKCS#12 bundle and its password.
fn secret_values() -> Vec<(&'static str, String)> {
    let s = &*SECRETS;
    let key_lines: Vec<_> = s
        .cert
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    vec![
        ("a client secret", s.client_secret.clone()),
        ("a client secret", s.other_secret.clone()),
        ("the operator's client secret", s.ambient_secret.clone()),
        ("the private key", s.cert.key_pem.clone()),
        ("the private key's PEM body", key_lines.concat()),
        ("a line of the private key", key_lines[1].to_string()),
        ("the PKCS#12 bundle", STANDARD.encode(&s.bundle)),
        ("the PKCS#12 password", s.bundle_password.clone()),
    ]
}

/// A token (access or ServiceAccount), and its signature: a leak on its own too.
fn token_parts(token: String) -> [(&'static str, String); 2] {
    let signature = token.rsplit('.').next().unwrap_or_default().to_string();
    [("a token", token), ("a token's signature", signature)]
}
