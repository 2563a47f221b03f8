//! The probe against a real `redis-server` over TLS, run by the AMR emulator: one test per
//! way a credential can be broken, each failing at its own check.

use amr_credential_operator::emulator::amr::AmrEmulator;
use amr_credential_operator::emulator::entra::IssuedToken;
use amr_credential_operator::emulator::pki::Ca;
use amr_credential_operator::probe::{ProbeOptions, ProbeReport, ProbeTarget, Status, verify};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const REDIS_AUDIENCE: &str = "https://redis.azure.com";

/// An unsigned test JWT; Redis here checks the password, not the signature.
fn jwt(oid: &str, aud: &str, lifetime: SignedDuration) -> SecretString {
    let now = Timestamp::now().as_second();
    let exp = now + lifetime.as_secs();
    let payload = serde_json::json!({"oid": oid, "aud": aud, "iat": now - 7_200, "exp": exp});
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    SecretString::from(format!("eyJhbGciOiJub25lIn0.{body}.c2lnbmF0dXJl"))
}

fn hour() -> SignedDuration {
    SignedDuration::from_hours(1)
}

async fn emulator() -> (Ca, AmrEmulator) {
    let ca = Ca::new("probe test CA").unwrap();
    let amr = AmrEmulator::start(&ca).await.unwrap();
    (ca, amr)
}

/// Mints a token for `oid` valid for an hour, and lets the emulator accept it.
async fn granted(amr: &AmrEmulator, oid: &str) -> SecretString {
    let token = jwt(oid, REDIS_AUDIENCE, hour());
    amr.grant(oid, &token, Timestamp::now() + hour())
        .await
        .unwrap();
    token
}

fn target(amr: &AmrEmulator) -> ProbeTarget {
    ProbeTarget::tls(amr.host(), amr.tls_port())
}

fn trusting(amr: &AmrEmulator) -> ProbeOptions {
    ProbeOptions::new(Duration::from_secs(2))
        .unwrap()
        .trust_file(amr.ca_cert_path())
        .unwrap()
}

fn failure(report: &ProbeReport) -> (&'static str, String) {
    report.first_failure().expect("the probe should fail")
}

fn secret_dir(username: &str, password: &SecretString) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("username"), username).unwrap();
    std::fs::write(dir.path().join("password"), password.expose_secret()).unwrap();
    dir
}

async fn probe_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_amr-credential-operator"));
    cmd.arg("probe").args(args).envs(env.iter().copied());
    cmd.output().await.unwrap()
}

fn endpoint_args(amr: &AmrEmulator) -> Vec<String> {
    vec![
        "--host".to_string(),
        amr.host().to_string(),
        "--port".to_string(),
        amr.tls_port().to_string(),
        "--timeout".to_string(),
        "2s".to_string(),
    ]
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn a_granted_token_passes_every_check() {
    let (_ca, amr) = emulator().await;
    let token = granted(&amr, "oid-valid").await;

    let report = verify(&target(&amr), "oid-valid", &token, &trusting(&amr)).await;

    assert!(report.passed(), "{:?}", report.first_failure());
    assert!(report.checks.iter().all(|c| c.status == Status::Passed));
    assert_eq!(report.checks.len(), 9);
}

#[tokio::test]
async fn the_cli_passes_a_mounted_secret_with_json_that_never_shows_the_token() {
    let (_ca, amr) = emulator().await;
    let token = granted(&amr, "oid-cli").await;
    let dir = secret_dir("oid-cli", &token);
    let mut args = vec!["--secret-dir", path(dir.path()), "--output", "json"];
    let endpoint = endpoint_args(&amr);
    args.extend(endpoint.iter().map(String::as_str));
    args.extend(["--ca-file", path(amr.ca_cert_path())]);

    let out = probe_cli(&args, &[]).await;

    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["credentials"][0]["identity"], "oid-cli");
    assert!(!stdout.contains(token.expose_secret()));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(token.expose_secret()));
}

#[tokio::test]
async fn an_expired_token_fails_at_expiry() {
    let (_ca, amr) = emulator().await;
    let token = jwt("oid-old", REDIS_AUDIENCE, SignedDuration::from_mins(-3));

    let report = verify(&target(&amr), "oid-old", &token, &trusting(&amr)).await;

    let (check, why) = failure(&report);
    assert_eq!(check, "expiry");
    assert!(why.starts_with("the token expired 3m ago"), "{why}");
}

#[tokio::test]
async fn the_cli_fails_a_username_that_is_not_the_oid_in_one_line() {
    let (_ca, amr) = emulator().await;
    let token = granted(&amr, "oid-real").await;
    let mut args = vec!["--username-env", "TEST_USER", "--password-env", "TEST_PASS"];
    let endpoint = endpoint_args(&amr);
    args.extend(endpoint.iter().map(String::as_str));
    args.extend(["--ca-file", path(amr.ca_cert_path())]);
    let env = [
        ("TEST_USER", "someone-else"),
        ("TEST_PASS", token.expose_secret()),
    ];

    let out = probe_cli(&args, &env).await;

    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let row = stdout.lines().nth(1).unwrap();
    assert!(row.contains("FAIL") && row.contains("username"), "{row}");
    assert!(
        row.contains("someone-else is not the token's oid oid-real"),
        "{row}"
    );
    assert!(!stdout.contains(token.expose_secret()));
}

#[tokio::test]
async fn a_token_for_another_audience_fails_at_audience() {
    let (_ca, amr) = emulator().await;
    let token = jwt("oid-aud", "api://some-other-app", hour());

    let report = verify(&target(&amr), "oid-aud", &token, &trusting(&amr)).await;

    let (check, why) = failure(&report);
    assert_eq!(check, "audience");
    assert!(why.contains("api://some-other-app"), "{why}");
}

#[tokio::test]
async fn a_token_redis_does_not_know_fails_at_auth() {
    let (_ca, amr) = emulator().await;
    let token = jwt("oid-unknown", REDIS_AUDIENCE, hour());

    let report = verify(&target(&amr), "oid-unknown", &token, &trusting(&amr)).await;

    let (check, why) = failure(&report);
    assert_eq!(check, "auth");
    assert!(why.contains("WRONGPASS"), "{why}");
    assert!(!why.contains(token.expose_secret()));
}

#[tokio::test]
async fn a_closed_port_fails_at_tcp() {
    let (_ca, amr) = emulator().await;
    let token = granted(&amr, "oid-port").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);

    let closed_target = ProbeTarget::tls("127.0.0.1", port);

    let report = verify(&closed_target, "oid-port", &token, &trusting(&amr)).await;

    let (check, why) = failure(&report);

    assert_eq!(check, "tcp");
    assert!(why.contains("connection refused"), "{why}");
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_at_tls_with_a_name_mismatch() {
    let ca = Ca::new("probe test CA").unwrap();
    let amr = AmrEmulator::start_with_names(&ca, &["localhost"])
        .await
        .unwrap();
    let token = granted(&amr, "oid-name").await;
    let by_address = ProbeTarget::tls("127.0.0.1", amr.tls_port());

    let report = verify(&by_address, "oid-name", &token, &trusting(&amr)).await;

    let (check, why) = failure(&report);
    assert_eq!(check, "tls");
    assert!(
        why.contains("not valid for 127.0.0.1 (it names localhost)"),
        "{why}"
    );
}

#[tokio::test]
async fn the_cli_fails_an_unknown_ca_at_tls_and_says_how_to_trust_it() {
    let (_ca, amr) = emulator().await;
    let token = granted(&amr, "oid-ca").await;
    let dir = secret_dir("oid-ca", &token);
    let mut args = vec!["--secret-dir", path(dir.path())];
    let endpoint = endpoint_args(&amr);
    args.extend(endpoint.iter().map(String::as_str));

    let out = probe_cli(&args, &[]).await;

    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let row = stdout.lines().nth(1).unwrap();
    assert!(row.contains(" tls "), "{row}");
    assert!(
        row.contains("unknown CA: trust that CA with --ca-file (probe)"),
        "{row}"
    );
}

#[tokio::test]
async fn the_cli_exits_2_when_the_secret_dir_is_missing() {
    let out = probe_cli(
        &[
            "--secret-dir",
            "/nonexistent/amr-secret",
            "--host",
            "127.0.0.1",
        ],
        &[],
    )
    .await;

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("/nonexistent/amr-secret"), "{stderr}");
}

#[tokio::test]
async fn the_cli_exits_2_without_a_host() {
    let dir = secret_dir("oid", &jwt("oid", REDIS_AUDIENCE, hour()));

    let out = probe_cli(&["--secret-dir", path(dir.path())], &[]).await;

    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no host"));
}

#[tokio::test]
async fn plain_text_against_the_tls_port_fails_at_auth_with_a_hint() {
    let (_ca, amr) = emulator().await;
    let token = granted(&amr, "oid-plain").await;
    let plain = ProbeTarget {
        tls: false,
        ..target(&amr)
    };

    let report = verify(&plain, "oid-plain", &token, &trusting(&amr)).await;

    let (check, why) = failure(&report);
    assert_eq!(check, "auth");
    assert!(why.contains("TLS"), "{why}");
}

#[tokio::test]
async fn the_emulator_removes_a_token_when_it_expires() {
    let (_ca, amr) = emulator().await;
    // The token claims an hour, but the emulator is told it ends in a second.
    let token = jwt("oid-short", REDIS_AUDIENCE, hour());
    let ends = Timestamp::now() + SignedDuration::from_secs(1);
    amr.grant("oid-short", &token, ends).await.unwrap();
    let options = trusting(&amr);
    assert!(
        verify(&target(&amr), "oid-short", &token, &options)
            .await
            .passed()
    );

    tokio::time::sleep(Duration::from_millis(1_300)).await;

    let report = verify(&target(&amr), "oid-short", &token, &options).await;
    assert_eq!(failure(&report).0, "auth");
}

#[tokio::test]
async fn a_new_token_does_not_revoke_the_previous_one() {
    let (_ca, amr) = emulator().await;
    let first = granted(&amr, "oid-two").await;
    let second = granted(&amr, "oid-two").await;
    let options = trusting(&amr);

    assert!(
        verify(&target(&amr), "oid-two", &first, &options)
            .await
            .passed()
    );
    assert!(
        verify(&target(&amr), "oid-two", &second, &options)
            .await
            .passed()
    );
}

#[tokio::test]
async fn a_revoked_user_is_refused() {
    let (_ca, amr) = emulator().await;
    let token = granted(&amr, "oid-revoked").await;

    amr.revoke_user("oid-revoked").await.unwrap();

    let report = verify(&target(&amr), "oid-revoked", &token, &trusting(&amr)).await;
    assert_eq!(failure(&report).0, "auth");
}

#[tokio::test]
async fn the_emulator_grants_the_tokens_entra_issues() {
    let (_ca, amr) = emulator().await;
    let (tx, rx) = tokio::sync::broadcast::channel(4);
    amr.follow(rx);
    let token = jwt("oid-issued", REDIS_AUDIENCE, hour());
    let now = Timestamp::now();
    tx.send(IssuedToken {
        oid: "oid-issued".to_string(),
        client_id: "app".to_string(),
        audience: REDIS_AUDIENCE.to_string(),
        token: token.clone(),
        issued_at: now,
        expires_at: now + hour(),
    })
    .unwrap();

    let options = trusting(&amr);
    let mut report = verify(&target(&amr), "oid-issued", &token, &options).await;
    for _ in 0..20 {
        if report.passed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        report = verify(&target(&amr), "oid-issued", &token, &options).await;
    }
    assert!(report.passed(), "{:?}", report.first_failure());
}
