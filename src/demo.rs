//! `demo`: the whole loop on one machine. Starts the Entra ID and AMR emulators, runs the
//! file mode on the example credentials, and authenticates to Redis with every new token,
//! reading the files exactly as a pod reads its mounted Secret.

use crate::api::FlowType;
use crate::emulator::amr::AmrEmulator;
use crate::emulator::entra::{
    AppRegistration, EntraConfig, EntraEmulator, FederatedCredential, ManagedIdentity, User,
};
use crate::emulator::pki::{self, Ca};
use crate::identity::material::{FileMaterial, TOKEN_EXCHANGE_AUDIENCE};
use crate::identity::source::{AmbientEnv, AzureTokenSource, SourceConfig};
use crate::identity::transport::TransportConfig;
use crate::local::{self, LOCAL_NAMESPACE, LocalCredential, LocalEvent, LocalOptions};
use crate::login::{LoginCredential, LoginSettings, PendingLogin, RefreshTokenStore};
use crate::probe::{self, ProbeOptions, ProbeTarget};
use jiff::Timestamp;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The example credentials of `deploy/examples/`, built in so `demo` runs from anywhere.
const EXAMPLES: [(&str, &str); 7] = [
    (
        "orders-cache.yaml",
        include_str!("../deploy/examples/orders-cache.yaml"),
    ),
    (
        "billing-cache.yaml",
        include_str!("../deploy/examples/billing-cache.yaml"),
    ),
    (
        "catalog-cache.yaml",
        include_str!("../deploy/examples/catalog-cache.yaml"),
    ),
    (
        "search-cache.yaml",
        include_str!("../deploy/examples/search-cache.yaml"),
    ),
    (
        "inventory-cache.yaml",
        include_str!("../deploy/examples/inventory-cache.yaml"),
    ),
    (
        "reports-cache.yaml",
        include_str!("../deploy/examples/reports-cache.yaml"),
    ),
    (
        "ops-cache.yaml",
        include_str!("../deploy/examples/ops-cache.yaml"),
    ),
];

const SA_ISSUER: &str = "https://kubernetes.default.svc.demo.local";
/// The person who signs in for the `AuthorizationCodeWithPKCE` example.
const DEMO_USER: &str = "Dana Ops";
const DEMO_TENANT: &str = crate::emulator::entra::DEFAULT_TENANT;

/// Arguments of `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (Ctrl-C stops earlier).
    #[arg(
        long,
        env = "AMR_DEMO_DURATION",
        default_value_t = 90,
        value_name = "SECONDS"
    )]
    pub duration: u64,
    /// Keep the credential files here, one subdirectory per credential; default: a
    /// temporary directory removed at the end.
    #[arg(long, env = "AMR_DEMO_OUTPUT_DIR", value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Lifetime of the emulated tokens, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub token_lifetime: u64,
    /// Read the example AmrCredentials from this directory instead of the built-in copies
    /// of deploy/examples/.
    #[arg(long, value_name = "DIR")]
    pub examples: Option<PathBuf>,
}

/// What one credential went through during the demo.
#[derive(Debug, Default)]
struct Tally {
    writes: u32,
    auth_ok: u32,
    auth_failed: u32,
    failures: u32,
}

/// Runs the demo; the exit status is 0 only when every credential was refreshed and every
/// AUTH succeeded.
pub async fn main(args: DemoArgs) -> ExitCode {
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: DemoArgs) -> Result<bool, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("creating a temporary dir: {e}"))?;
    let secrets_dir = scratch.path().join("secrets");
    let (output_dir, _keep) = match &args.output_dir {
        Some(dir) => (dir.clone(), None),
        None => (scratch.path().join("credentials"), Some(())),
    };
    std::fs::create_dir_all(&output_dir)
        .map_err(|e| format!("creating {}: {e}", output_dir.display()))?;

    let credentials = load_examples(args.examples.as_deref())?;
    let ca = Ca::new("amr-credential-operator demo CA").map_err(|e| e.to_string())?;
    let ca_path = scratch.path().join("ca.crt");
    ca.write_cert(&ca_path).map_err(|e| e.to_string())?;
    let identities = write_inputs(&secrets_dir).map_err(|e| format!("writing demo inputs: {e}"))?;

    let config = entra_config(&identities, args.token_lifetime);
    let entra = EntraEmulator::start(config, &ca)
        .await
        .map_err(|e| e.to_string())?;
    let amr = AmrEmulator::start(&ca).await.map_err(|e| e.to_string())?;
    amr.follow(entra.subscribe());
    sign_in(&entra, &ca_path, &secrets_dir, &credentials).await?;

    let source = token_source(&entra, &ca_path, &secrets_dir, &identities)?;
    let probe_options = ProbeOptions::new(Duration::from_secs(5))
        .and_then(|o| o.trust_file(&ca_path))
        .map_err(|e| e.to_string())?;
    let target = ProbeTarget::tls(amr.host(), amr.tls_port());

    let paths = Paths {
        ca: &ca_path,
        secrets: &secrets_dir,
        output: &output_dir,
    };
    print_header(&entra, &amr, &paths, &credentials, args.duration);
    let names: Vec<String> = credentials.iter().map(|c| c.name.clone()).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let options = LocalOptions {
        output_dir: output_dir.clone(),
    };
    let runner = tokio::spawn(local::run(credentials, source, options, events_tx, stop_rx));

    let mut tallies: BTreeMap<String, Tally> = names
        .iter()
        .map(|n| (n.clone(), Tally::default()))
        .collect();
    let deadline = tokio::time::sleep(Duration::from_secs(args.duration));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            () = crate::cli::shutdown_signal() => { println!("\nInterrupted."); break; }
            event = events_rx.recv() => match event {
                Some(event) => on_event(event, &output_dir, &target, &probe_options, &mut tallies).await,
                None => break,
            },
        }
    }
    let _ = stop_tx.send(true);
    let _ = runner.await;
    Ok(print_summary(&tallies))
}

fn load_examples(dir: Option<&Path>) -> Result<Vec<LocalCredential>, String> {
    let mut texts = Vec::new();
    match dir {
        None => texts.extend(
            EXAMPLES
                .iter()
                .map(|(n, t)| (PathBuf::from(n), (*t).to_string())),
        ),
        Some(dir) => {
            let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "yaml") {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    texts.push((path, text));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (path, text) in texts {
        let (ok, rejected) = local::parse(&text, &path).map_err(|e| e.to_string())?;
        if let Some(r) = rejected.first() {
            return Err(format!("{}: {}: {}", path.display(), r.name, r.message));
        }
        out.extend(ok);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Runs `login` for every `AuthorizationCodeWithPKCE` example, the emulator approving the
/// demo's person at once, so each refresh token is in its secrets file before the token
/// manager starts. The loopback listener takes a free port when the spec's is in use.
async fn sign_in(
    entra: &EntraEmulator,
    ca_path: &Path,
    secrets_dir: &Path,
    credentials: &[LocalCredential],
) -> Result<(), String> {
    let settings = LoginSettings {
        authority_host: Some(entra.authority_host()),
        default_tenant: Some(DEMO_TENANT.to_string()),
        transport: TransportConfig {
            ca_files: vec![ca_path.to_owned()],
            ..Default::default()
        },
        any_port: true,
    };
    let store = RefreshTokenStore::Files(secrets_dir.to_owned());
    let pkce = credentials
        .iter()
        .filter(|c| c.resolved.flow == FlowType::AuthorizationCodeWithPKCE);
    for c in pkce {
        let failed = |e: &dyn std::fmt::Display| format!("signing in for {}: {e}", c.name);
        let credential = LoginCredential {
            namespace: LOCAL_NAMESPACE.to_string(),
            name: c.name.clone(),
            spec: c.spec.clone(),
            resolved: c.resolved.clone(),
        };
        let pending = PendingLogin::start(credential, &settings)
            .await
            .map_err(|e| failed(&e))?;
        let url = pending.authorize_url().clone();
        let browser = entra.sign_in(&url);
        let finished = pending.finish(&store, Duration::from_secs(10));
        let (signed_in, browsed) = tokio::join!(finished, browser);
        browsed.map_err(|e| failed(&e))?;
        let who = signed_in.map_err(|e| failed(&e))?;
        println!(
            "Signed in for {}: {} (oid {}), refresh token in {}",
            c.name,
            who.name.as_deref().unwrap_or("?"),
            who.object_id,
            who.stored_in
        );
    }
    Ok(())
}

/// The identities the emulator registers, matching the ids of the examples.
struct Identities {
    orders_secret: String,
    billing_cert: pki::CertifiedKey,
    sa_issuer_public_pem: String,
    reports_secret: String,
    /// The refresh token the emulator starts with for the demo's person; `login` obtains
    /// the one the demo uses.
    ops_initial_refresh_token: String,
}

fn write_inputs(dir: &Path) -> Result<Identities, String> {
    let orders_secret = random_secret();
    write(dir, "orders-sp", "client-secret", orders_secret.as_bytes())?;
    let billing_cert = pki::rsa_client_certificate("billing-cache").map_err(|e| e.to_string())?;
    write(
        dir,
        "billing-cert",
        "tls.crt",
        billing_cert.cert_pem.as_bytes(),
    )?;
    write(
        dir,
        "billing-cert",
        "tls.key",
        billing_cert.key_pem.as_bytes(),
    )?;

    // The ServiceAccount token a kubelet would project for `inventory`, signed by a demo
    // cluster issuer that the emulated Entra ID trusts.
    let issuer_key = pki::rsa_private_key_pem().map_err(|e| e.to_string())?;
    let sa_token = sign_service_account_token(&issuer_key)?;
    write(dir, "inventory", "token", sa_token.as_bytes())?;
    let public = openssl::pkey::PKey::private_key_from_pem(issuer_key.as_bytes())
        .and_then(|k| k.public_key_to_pem())
        .map_err(|e| e.to_string())?;
    Ok(Identities {
        orders_secret,
        billing_cert,
        sa_issuer_public_pem: String::from_utf8_lossy(&public).into_owned(),
        reports_secret: random_secret(),
        ops_initial_refresh_token: random_secret(),
    })
}

fn sign_service_account_token(issuer_key_pem: &str) -> Result<String, String> {
    let now = Timestamp::now().as_second();
    let claims = serde_json::json!({
        "iss": SA_ISSUER,
        "sub": format!("system:serviceaccount:{LOCAL_NAMESPACE}:inventory"),
        "aud": [TOKEN_EXCHANGE_AUDIENCE],
        "iat": now, "nbf": now, "exp": now + 24 * 3600,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(issuer_key_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .map_err(|e| e.to_string())
}

fn entra_config(ids: &Identities, lifetime: u64) -> EntraConfig {
    let oid = |n: u32| format!("0b1d0000-0000-4000-8000-{n:012}");
    EntraConfig::default()
        .with_tenant(DEMO_TENANT)
        .with_token_lifetime(Duration::from_secs(lifetime.max(5)))
        .with_app(
            AppRegistration::new("11111111-1111-1111-1111-111111111111", oid(1))
                .with_secret(ids.orders_secret.clone()),
        )
        .with_app(
            AppRegistration::new("22222222-2222-2222-2222-222222222222", oid(2))
                .with_certificate(ids.billing_cert.cert_pem.clone()),
        )
        .with_managed_identity(ManagedIdentity::system_assigned(
            "77777777-7777-7777-7777-777777777777",
            oid(3),
        ))
        .with_managed_identity(ManagedIdentity::user_assigned(
            "33333333-3333-3333-3333-333333333333",
            oid(4),
        ))
        .with_federated_credential(
            FederatedCredential::new(
                "44444444-4444-4444-4444-444444444444",
                oid(5),
                SA_ISSUER,
                format!("system:serviceaccount:{LOCAL_NAMESPACE}:inventory"),
            )
            .with_issuer_key(ids.sa_issuer_public_pem.clone()),
        )
        .with_app(
            AppRegistration::new("66666666-6666-6666-6666-666666666666", oid(6))
                .with_secret(ids.reports_secret.clone()),
        )
        .with_user(User::new(
            DEMO_USER,
            oid(7),
            "55555555-5555-5555-5555-555555555555",
            ids.ops_initial_refresh_token.clone(),
        ))
}

fn token_source(
    entra: &EntraEmulator,
    ca_path: &Path,
    secrets_dir: &Path,
    ids: &Identities,
) -> Result<Arc<AzureTokenSource>, String> {
    let config = SourceConfig {
        authority_host: Some(entra.authority_host()),
        default_tenant: Some(DEMO_TENANT.to_string()),
        transport: TransportConfig {
            ca_files: vec![ca_path.to_owned()],
            managed_identity_endpoint: Some(entra.imds_endpoint()),
            request_timeout: Some(Duration::from_secs(10)),
        },
        // DefaultAzureCredential picks the environment leg: the operator's own app.
        ambient: AmbientEnv {
            tenant_id: Some(DEMO_TENANT.to_string()),
            client_id: Some("66666666-6666-6666-6666-666666666666".to_string()),
            client_secret: Some(SecretString::from(ids.reports_secret.clone())),
            ..Default::default()
        },
        max_concurrent_requests: 8,
        attempt_timeout: Duration::from_secs(10),
    };
    let material = Arc::new(FileMaterial::new(secrets_dir));
    AzureTokenSource::new(config, material)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

async fn on_event(
    event: LocalEvent,
    output_dir: &Path,
    target: &ProbeTarget,
    options: &ProbeOptions,
    tallies: &mut BTreeMap<String, Tally>,
) {
    let time = Timestamp::now().strftime("%H:%M:%S");
    match event {
        LocalEvent::Refreshed {
            name,
            oid,
            expires_at,
            refresh_at,
            shared,
            fingerprint,
            ..
        } => {
            let tally = tallies.entry(name.clone()).or_default();
            tally.writes += 1;
            let auth = auth_from_files(&output_dir.join(&name), target, options).await;
            let result = match &auth {
                Ok(()) => {
                    tally.auth_ok += 1;
                    "AUTH ok, PING ok".to_string()
                }
                Err(e) => {
                    tally.auth_failed += 1;
                    format!("AUTH FAILED: {e}")
                }
            };
            let via = if shared { " (shared)" } else { "" };
            println!(
                "{time}  {name:<16} refreshed{via}  user {oid}  token {fingerprint}  \
                 expires {}  next refresh {}  {result}",
                expires_at.strftime("%H:%M:%S"),
                refresh_at.strftime("%H:%M:%S"),
            );
        }
        LocalEvent::Reused { name, refresh_at } => {
            println!(
                "{time}  {name:<16} fresh token on disk, next refresh {}",
                refresh_at.strftime("%H:%M:%S")
            );
        }
        LocalEvent::Failed {
            name,
            message,
            next_attempt_at,
        } => {
            tallies.entry(name.clone()).or_default().failures += 1;
            println!(
                "{time}  {name:<16} refresh FAILED: {message}; next attempt {}",
                next_attempt_at.strftime("%H:%M:%S")
            );
        }
    }
}

/// Authenticates with the files as a pod reads them. AMR learns about a new token a moment
/// after Entra ID issues it, so a refused AUTH is tried twice more shortly after.
async fn auth_from_files(
    dir: &Path,
    target: &ProbeTarget,
    options: &ProbeOptions,
) -> Result<(), String> {
    let read = |k: &str| std::fs::read_to_string(dir.join(k)).map(|s| s.trim().to_string());
    let username = read("username").map_err(|e| format!("reading username: {e}"))?;
    let password =
        SecretString::from(read("password").map_err(|e| format!("reading password: {e}"))?);
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let report = probe::verify(target, &username, &password, options).await;
        match report.first_failure() {
            None => return Ok(()),
            Some((check, message)) => last = format!("{check}: {message}"),
        }
    }
    Err(last)
}

/// Where the demo keeps its files, printed so that a person can use them meanwhile.
struct Paths<'a> {
    ca: &'a Path,
    secrets: &'a Path,
    output: &'a Path,
}

fn print_header(
    entra: &EntraEmulator,
    amr: &AmrEmulator,
    paths: &Paths<'_>,
    creds: &[LocalCredential],
    duration: u64,
) {
    println!(
        "Entra ID emulator: {} (tenant {})",
        entra.authority_host(),
        DEMO_TENANT
    );
    println!(
        "AMR emulator:      redis-server with TLS on {}:{}",
        amr.host(),
        amr.tls_port()
    );
    println!("CA certificate:    {}", paths.ca.display());
    println!("Secrets directory: {}", paths.secrets.display());
    println!("Credential files:  {}", paths.output.display());
    println!("Credentials:");
    for c in creds {
        println!("  {:<16} {}", c.name, c.resolved.flow.as_str());
    }
    println!("Running for {duration} s; Ctrl-C stops. Times are UTC.\n");
}

fn print_summary(tallies: &BTreeMap<String, Tally>) -> bool {
    println!(
        "\n{:<16} {:>7} {:>8} {:>11} {:>9}",
        "CREDENTIAL", "WRITES", "AUTH OK", "AUTH FAILED", "FAILURES"
    );
    let mut all_ok = true;
    for (name, t) in tallies {
        println!(
            "{name:<16} {:>7} {:>8} {:>11} {:>9}",
            t.writes, t.auth_ok, t.auth_failed, t.failures
        );
        all_ok &= t.writes >= 1 && t.auth_failed == 0 && t.auth_ok == t.writes;
    }
    if all_ok {
        println!("\nEvery credential was refreshed and every AUTH succeeded.");
    } else {
        println!("\nNot every credential was refreshed with a successful AUTH.");
    }
    all_ok
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

fn write(dir: &Path, secret: &str, key: &str, value: &[u8]) -> Result<(), String> {
    let d = dir.join(secret);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    std::fs::write(d.join(key), value).map_err(|e| format!("{}: {e}", d.join(key).display()))
}
