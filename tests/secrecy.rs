//! No token, client secret, private key or ServiceAccount token appears in logs (at any
//! level), failure messages or `Debug` output. Alone in its binary: log capture is per thread,
//! and tests running beside it would race its subscriber for the callsites it records.

mod common;

use amr_credential_operator::emulator::entra::Fault;
use amr_credential_operator::identity::source::AzureTokenSource;
use amr_credential_operator::local::{LocalCredential, LocalEvent};
use amr_credential_operator::telemetry::logging;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{
    FileMode, NS, SECRET_APP, SECRETS, World, always, ambient_secret_env, credential, failure,
    fetch, flow,
};
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::Arc;

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
