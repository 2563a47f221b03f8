//! `AuthorizationCodeWithPKCE` end to end against the Entra ID emulator: `login` with a
//! reqwest client playing the browser, refresh-token redemption and rotation by the token
//! source, revocation, and no token in any log, failure or output. All on 127.0.0.1.

use amr_credential_operator::api::AmrCredentialSpec;
use amr_credential_operator::emulator::entra::{EntraConfig, EntraEmulator, User};
use amr_credential_operator::emulator::pki::Ca;
use amr_credential_operator::identity::material::FileMaterial;
use amr_credential_operator::identity::source::{AzureTokenSource, SourceConfig};
use amr_credential_operator::identity::transport::{TransportConfig, tls_config};
use amr_credential_operator::identity::{FailureKind, RefreshFailure, TokenSource};
use amr_credential_operator::local::{self, LOCAL_NAMESPACE};
use amr_credential_operator::login::{
    LoginCredential, LoginError, LoginSettings, RefreshTokenStore, SignedIn, login,
};
use amr_credential_operator::telemetry::logging;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::ExposeSecret;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use url::Url;

const TENANT: &str = "9c1d0000-0000-4000-8000-00000000c0de";
const CLIENT: &str = "55555555-5555-5555-5555-555555555555";
const OID: &str = "0b1d0000-0000-4000-8000-0000000000aa";
const NAME: &str = "Dana Ops";
const INITIAL_RT: &str = "initial-refresh-token-never-shown";

/// Tests take turns with the one that captures logs: `tracing` decides once per log
/// statement, for every thread, whether anyone listens, so a statement first reached by
/// another test while the capture starts may stay unheard.
static TURNS: RwLock<()> = RwLock::const_new(());

/// Held for a test's lifetime: shared by most tests, alone by the one capturing logs.
struct Turn {
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _alone: Option<RwLockWriteGuard<'static, ()>>,
}

/// The emulator, its CA on disk and a secrets directory.
struct World {
    entra: EntraEmulator,
    dir: tempfile::TempDir,
    ca: PathBuf,
    _turn: Turn,
}

async fn world_with(user: User) -> World {
    start(
        user,
        Turn {
            _shared: Some(TURNS.read().await),
            _alone: None,
        },
    )
    .await
}

async fn start(user: User, turn: Turn) -> World {
    let ca = Ca::new("pkce test CA").unwrap();
    let entra = EntraEmulator::start(
        EntraConfig::default().with_tenant(TENANT).with_user(user),
        &ca,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.crt");
    entra.write_ca(&ca_path).unwrap();
    World {
        entra,
        dir,
        ca: ca_path,
        _turn: turn,
    }
}

async fn world() -> World {
    world_with(User::new(NAME, OID, CLIENT, INITIAL_RT)).await
}

fn yaml(port: u16) -> String {
    format!(
        "apiVersion: amr.entraid.dev/v1alpha1\nkind: AmrCredential\nmetadata: {{name: ops-cache}}\n\
         spec:\n  flow:\n    type: AuthorizationCodeWithPKCE\n    clientId: {CLIENT}\n    \
         redirectUri: http://127.0.0.1:{port}/callback\n    \
         refreshTokenSecretRef: {{name: ops-login, key: refresh-token}}\n"
    )
}

fn credential() -> LoginCredential {
    let (mut ok, _) = local::parse(&yaml(8400), Path::new("ops-cache.yaml")).unwrap();
    let c = ok.remove(0);
    LoginCredential {
        namespace: LOCAL_NAMESPACE.into(),
        name: c.name,
        spec: c.spec,
        resolved: c.resolved,
    }
}

impl World {
    fn settings(&self) -> LoginSettings {
        LoginSettings {
            authority_host: Some(self.entra.authority_host()),
            default_tenant: Some(TENANT.into()),
            transport: TransportConfig {
                ca_files: vec![self.ca.clone()],
                ..Default::default()
            },
            any_port: true,
        }
    }

    fn store(&self) -> RefreshTokenStore {
        RefreshTokenStore::Files(self.dir.path().to_path_buf())
    }

    fn stored_refresh_token(&self) -> String {
        let path = self.dir.path().join("ops-login/refresh-token");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Signs in with a browser that may tamper with the redirect before following it.
    async fn sign_in(&self, tamper: fn(Url) -> Url) -> Result<SignedIn, LoginError> {
        let ca = self.ca.clone();
        let show = move |url: &Url, _: &Url| {
            tokio::spawn(browse(url.clone(), ca, tamper));
        };
        let timeout = Duration::from_secs(20);
        login(credential(), &self.settings(), &self.store(), timeout, show).await
    }

    fn source(&self) -> AzureTokenSource {
        let config = SourceConfig {
            authority_host: Some(self.entra.authority_host()),
            default_tenant: Some(TENANT.into()),
            transport: TransportConfig {
                ca_files: vec![self.ca.clone()],
                ..Default::default()
            },
            ..Default::default()
        };
        AzureTokenSource::new(config, Arc::new(FileMaterial::new(self.dir.path()))).unwrap()
    }

    /// One refresh of `ops-cache` in namespace `ns`, as the controller asks for it.
    async fn refresh(&self, ns: &str) -> Result<String, RefreshFailure> {
        let c = credential();
        let token = self
            .source()
            .fetch(ns, "ops-cache", &c.spec, &c.resolved)
            .await?;
        Ok(token.token.expose_secret().to_string())
    }

    async fn redeem_directly(&self, refresh_token: &str) -> (u16, serde_json::Value) {
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("refresh_token", refresh_token),
            ("scope", "https://redis.azure.com/.default"),
        ];
        self.post_token(&form).await
    }

    async fn post_token(&self, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let client = self.entra.https_client().unwrap();
        let response = client
            .post(self.entra.token_endpoint(TENANT))
            .form(form)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

/// The browser: opens the authorize URL without following redirects, then follows the
/// redirect (tampered with by `tamper`) to the loopback listener.
async fn browse(url: Url, ca: PathBuf, tamper: fn(Url) -> Url) -> u16 {
    let browser = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&[ca]).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let answer = browser.get(url).send().await.unwrap();
    assert_eq!(answer.status(), 302);
    let location = answer.headers()["location"].to_str().unwrap();
    let target = tamper(Url::parse(location).unwrap());
    browser.get(target).send().await.unwrap().status().as_u16()
}

fn as_is(url: Url) -> Url {
    url
}

fn wrong_state(mut url: Url) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| match k.as_ref() {
            "state" => (k.into_owned(), "forged".to_string()),
            _ => (k.into_owned(), v.into_owned()),
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url
}

fn spec_of(c: &LoginCredential) -> &AmrCredentialSpec {
    &c.spec
}

#[tokio::test]
async fn a_person_signs_in_and_the_refresh_token_lands_in_the_secrets_dir() {
    let w = world().await;
    let mut issued = w.entra.subscribe();
    let signed_in = w.sign_in(as_is).await.unwrap();
    assert_eq!(
        (signed_in.object_id.as_str(), signed_in.name.as_deref()),
        (OID, Some(NAME))
    );
    assert!(w.stored_refresh_token().starts_with("rt."));
    assert!(signed_in.stored_in.contains("ops-login/refresh-token"));

    let token = issued.try_recv().unwrap().token;
    let payload = token.expose_secret().split('.').nth(1).unwrap().to_string();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(
        (&claims["oid"], &claims["name"], &claims["tid"]),
        (&OID.into(), &NAME.into(), &TENANT.into())
    );
    assert_eq!(claims["aud"], "https://redis.azure.com");
    assert_eq!(claims["scp"], "user_impersonation");
}

#[tokio::test]
async fn a_redirect_with_a_state_this_login_did_not_send_is_refused() {
    let w = world().await;
    let e = w.sign_in(wrong_state).await.unwrap_err();
    assert!(matches!(e, LoginError::StateMismatch), "{e}");
    assert_eq!(w.stored_refresh_token(), "");
}

#[tokio::test]
async fn a_user_who_must_interact_is_refused_with_the_reason() {
    let w = world_with(User::new(NAME, OID, CLIENT, INITIAL_RT).requiring_interaction()).await;
    let e = w.sign_in(as_is).await.unwrap_err();
    assert!(
        matches!(&e, LoginError::Refused { error, .. } if error == "interaction_required"),
        "{e}"
    );
}

#[tokio::test]
async fn the_emulator_refuses_a_code_redeemed_with_a_wrong_verifier() {
    let w = world().await;
    let verifier = "the-verifier-that-made-the-challenge-0123456789";
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let redirect = "http://127.0.0.1:8400/callback";
    let mut url = w.entra.authorize_endpoint(TENANT);
    url.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", CLIENT),
        ("redirect_uri", redirect),
        ("scope", "https://redis.azure.com/.default offline_access"),
        ("state", "s"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(std::slice::from_ref(&w.ca)).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = client.get(url).send().await.unwrap();
    let location = Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    let code = location.query_pairs().find(|(k, _)| k == "code").unwrap().1;
    let wrong = "a-different-verifier-of-sufficient-length-000000";
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", CLIENT),
        ("code", &code),
        ("redirect_uri", redirect),
        ("code_verifier", wrong),
    ];
    let (status, body) = w.post_token(&form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn a_refresh_stores_the_rotated_token_and_the_old_one_stops_working() {
    let w = world().await;
    w.sign_in(as_is).await.unwrap();
    let first = w.stored_refresh_token();
    w.refresh("shop").await.unwrap();
    let second = w.stored_refresh_token();
    assert!(second.starts_with("rt.") && second != first);
    let (status, body) = w.redeem_directly(&first).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    w.refresh("shop").await.unwrap();
    assert_ne!(w.stored_refresh_token(), second);
}

#[tokio::test]
async fn revocation_ends_with_login_required_and_the_command_to_run() {
    let w = world().await;
    w.sign_in(as_is).await.unwrap();
    // The refresh token the emulator was configured with, and the signed-in one.
    assert_eq!(w.entra.revoke_refresh_tokens(NAME), 2);
    let before = w.stored_refresh_token();
    let failure = w.refresh("shop").await.unwrap_err();
    assert_eq!(failure.kind, FailureKind::LoginRequired);
    let command = "amr-credential-operator login --namespace shop --name ops-cache";
    assert!(failure.message.ends_with(command), "{}", failure.message);
    assert_eq!(w.stored_refresh_token(), before);
}

#[tokio::test]
async fn in_file_mode_login_required_suggests_the_file_form() {
    let w = world().await;
    let c = credential();
    let failure = w
        .source()
        .fetch_with(LOCAL_NAMESPACE, spec_of(&c), &c.resolved, true)
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::LoginRequired);
    assert!(
        failure.message.contains("login --file"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn no_token_appears_in_trace_logs_or_failure_messages() {
    let w = start(
        User::new(NAME, OID, CLIENT, INITIAL_RT),
        Turn {
            _shared: None,
            _alone: Some(TURNS.write().await),
        },
    )
    .await;
    let (_guard, logs) = logging::capture();
    let mut issued = w.entra.subscribe();
    w.sign_in(as_is).await.unwrap();
    let mut secrets = vec![INITIAL_RT.to_string(), w.stored_refresh_token()];
    w.refresh("shop").await.unwrap();
    secrets.push(w.stored_refresh_token());
    w.entra.revoke_refresh_tokens(OID);
    let failure = w.refresh("shop").await.unwrap_err();
    while let Ok(t) = issued.try_recv() {
        secrets.push(t.token.expose_secret().to_string());
    }

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("Rotated refresh token stored"), "{logs}");
    assert!(secrets.len() >= 5, "{}", secrets.len());
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a token leaked into the logs"
        );
        assert!(!failure.message.contains(secret.as_str()));
    }
}

/// A free port on 127.0.0.1 for the command's redirect URI.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn login_command(w: &World, file: &Path, timeout: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_amr-credential-operator"));
    cmd.args([
        "login",
        "--no-browser",
        "--timeout",
        timeout,
        "--tenant-id",
        TENANT,
    ])
    .arg("--file")
    .arg(file)
    .arg("--local-secrets-dir")
    .arg(w.dir.path())
    .arg("--authority-host")
    .arg(w.entra.authority_host().as_str())
    .arg("--ca-file")
    .arg(&w.ca)
    .env("RUST_LOG", "trace")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    cmd
}

#[tokio::test]
async fn the_login_command_signs_in_from_a_file_and_prints_who_but_no_token() {
    let w = world().await;
    let file = w.dir.path().join("ops-cache.yaml");
    std::fs::write(&file, yaml(free_port())).unwrap();
    let mut issued = w.entra.subscribe();
    let mut child = login_command(&w, &file, "30").spawn().unwrap();

    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        printed.push(line.clone());
        if let Some(url) = line.trim().strip_prefix("https://") {
            let url = Url::parse(&format!("https://{url}")).unwrap();
            assert_eq!(browse(url, w.ca.clone(), as_is).await, 200);
            break;
        }
    }
    while let Some(line) = lines.next_line().await.unwrap() {
        printed.push(line);
    }
    let output = child.wait_with_output().await.unwrap();
    let stdout = printed.join("\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("Signed in as {NAME} (oid {OID})")),
        "{stdout}"
    );

    let mut secrets = vec![w.stored_refresh_token()];
    while let Ok(t) = issued.try_recv() {
        secrets.push(t.token.expose_secret().to_string());
    }
    assert_eq!(secrets.len(), 2);
    for secret in &secrets {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()));
    }
}

#[tokio::test]
async fn the_login_command_gives_up_after_its_timeout_with_status_1() {
    let w = world().await;
    let file = w.dir.path().join("ops-cache.yaml");
    std::fs::write(&file, yaml(free_port())).unwrap();
    let output = login_command(&w, &file, "1").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("within 1 s"), "{stderr}");
}
