//! Fixtures of the flow and fault tests: an Entra ID emulator that knows one identity of
//! each kind, the inputs the operator reads for them, a token source pointed at the
//! emulator, the file mode, and the AMR emulator for AUTH + PING. Everything is on 127.0.0.1.

#![allow(
    dead_code,
    reason = "each test crate uses its own part of the fixtures"
)]

use amr_credential_operator::api::{AmrCredentialSpec, validate};
use amr_credential_operator::emulator::amr::AmrEmulator;
use amr_credential_operator::emulator::entra::{
    AppRegistration, EntraConfig, EntraEmulator, Fault, FaultRule, FederatedCredential,
    ManagedIdentity, RequestRecord,
};
use amr_credential_operator::emulator::pki::{self, Ca, CertifiedKey};
use amr_credential_operator::identity::cache::Origin;
use amr_credential_operator::identity::material::{
    FileMaterial, Material, MaterialError, ServiceAccountInfo,
};
use amr_credential_operator::identity::source::{AmbientEnv, AzureTokenSource, SourceConfig};
use amr_credential_operator::identity::transport::TransportConfig;
use amr_credential_operator::identity::{AcquiredToken, FailureKind, RefreshFailure};
use amr_credential_operator::local::{self, LOCAL_NAMESPACE, LocalCredential, LocalEvent};
use amr_credential_operator::probe::{self, ProbeOptions, ProbeTarget};
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub const TENANT: &str = "5e1f0000-0000-4000-8000-000000000001";
/// The namespace of every input unless a test names another.
pub const NS: &str = LOCAL_NAMESPACE;
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.flows.test";

pub const SECRET_APP: &str = "app-secret";
pub const OTHER_APP: &str = "app-other";
pub const CERT_APP: &str = "app-cert";
pub const WORKLOAD_APP: &str = "app-workload";
pub const AMBIENT_APP: &str = "app-operator";
pub const SYSTEM_MI: &str = "mi-system";
pub const USER_MI: &str = "mi-user";
pub const USER_MI_OID: &str = "oid-mi-user";
pub const USER_MI_RESOURCE: &str = "/subscriptions/0/resourceGroups/rg/providers/\
    Microsoft.ManagedIdentity/userAssignedIdentities/mi-user";

/// The `flow` of a credential for each identity the emulator knows.
pub mod flow {
    pub const CLIENT_SECRET: &str = "{type: ClientCredentials, clientId: app-secret, \
        clientSecretRef: {name: app-secret, key: client-secret}}";
    pub const OTHER_CLIENT_SECRET: &str = "{type: ClientCredentials, clientId: app-other, \
        clientSecretRef: {name: app-other, key: client-secret}}";
    pub const CERTIFICATE_PEM: &str = "{type: ClientCredentialsWithCertificate, \
        clientId: app-cert, clientCertificateRef: {name: app-cert}}";
    pub const CERTIFICATE_PKCS12: &str = "{type: ClientCredentialsWithCertificate, \
        clientId: app-cert, clientCertificateRef: {name: app-cert, pkcs12Key: bundle.p12, \
        passwordKey: bundle-password}}";
    pub const SYSTEM_MI: &str = "{type: SystemAssignedManagedIdentity}";
    pub const USER_MI: &str = "{type: UserAssignedManagedIdentity, userAssignedClientId: mi-user}";
    pub const WORKLOAD: &str =
        "{type: WorkloadIdentity, serviceAccountName: orders, clientId: app-workload}";
    pub const DEFAULT: &str = "{type: DefaultAzureCredential}";
}

/// Secret values, made once per test binary.
pub struct Secrets {
    pub client_secret: String,
    pub other_secret: String,
    pub ambient_secret: String,
    pub bundle_password: String,
    pub cert: CertifiedKey,
    /// A certificate Entra ID does not know for any app.
    pub unregistered_cert: CertifiedKey,
    pub bundle: Vec<u8>,
    pub issuer_key_pem: String,
}

pub static SECRETS: LazyLock<Secrets> = LazyLock::new(|| {
    let cert = pki::rsa_client_certificate(CERT_APP).unwrap();
    let bundle_password = random_hex();
    let bundle = pkcs12(&cert, &bundle_password);
    Secrets {
        client_secret: random_hex(),
        other_secret: random_hex(),
        ambient_secret: random_hex(),
        bundle_password,
        unregistered_cert: pki::rsa_client_certificate(CERT_APP).unwrap(),
        cert,
        bundle,
        issuer_key_pem: pki::rsa_private_key_pem().unwrap(),
    }
});

/// The emulators' CA, the Entra ID emulator and the operator's inputs.
pub struct World {
    pub entra: EntraEmulator,
    pub material: Arc<TestMaterial>,
    pub dir: tempfile::TempDir,
    ca: Ca,
    ca_path: PathBuf,
}

impl World {
    /// Starts the Entra ID emulator issuing tokens valid for `lifetime_secs`.
    pub async fn start(lifetime_secs: u64) -> World {
        let ca = Ca::new("flow tests CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.crt");
        ca.write_cert(&ca_path).unwrap();
        let config = entra_config(Duration::from_secs(lifetime_secs));
        let entra = EntraEmulator::start(config, &ca).await.unwrap();
        let material = Arc::new(TestMaterial::new(dir.path().join("inputs")));
        let world = World {
            entra,
            material,
            dir,
            ca,
            ca_path,
        };
        world.write_inputs();
        world
    }

    /// A token source for this emulator, with the operator's own identity unset.
    pub fn source(&self) -> Arc<AzureTokenSource> {
        self.source_with(|_| {})
    }

    /// A token source whose settings `tweak` adjusts.
    pub fn source_with(&self, tweak: impl FnOnce(&mut SourceConfig)) -> Arc<AzureTokenSource> {
        let mut config = SourceConfig {
            authority_host: Some(self.entra.authority_host()),
            default_tenant: Some(TENANT.to_string()),
            transport: TransportConfig {
                ca_files: vec![self.ca_path.clone()],
                managed_identity_endpoint: Some(self.entra.imds_endpoint()),
                request_timeout: Some(Duration::from_secs(5)),
            },
            ambient: AmbientEnv::default(),
            max_concurrent_requests: 4,
            attempt_timeout: Duration::from_secs(5),
        };
        tweak(&mut config);
        Arc::new(AzureTokenSource::new(config, self.material.clone()).unwrap())
    }

    /// Starts `redis-server`, accepting every token the Entra ID emulator issues from now on.
    pub async fn redis(&self) -> Redis {
        let amr = AmrEmulator::start(&self.ca).await.unwrap();
        amr.follow(self.entra.subscribe());
        let options = ProbeOptions::new(Duration::from_secs(2))
            .and_then(|o| o.trust_file(&self.ca_path))
            .unwrap();
        Redis { amr, options }
    }

    /// Token requests answered so far (discovery and stray requests left out).
    pub fn token_requests(&self) -> Vec<RequestRecord> {
        let requests = self.entra.requests();
        requests.into_iter().filter(|r| r.flow.is_some()).collect()
    }

    /// Writes `value` as key `key` of Secret `name` in namespace `ns`.
    pub fn write_secret(&self, ns: &str, name: &str, key: &str, value: &[u8]) {
        let dir = self.material.root.join(ns).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(key), value).unwrap();
    }

    /// Where the file mode writes its credentials.
    pub fn output_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn write_inputs(&self) {
        let s = &*SECRETS;
        let other = &s.unregistered_cert;
        let inputs: [(&str, &str, &[u8]); 8] = [
            (SECRET_APP, "client-secret", s.client_secret.as_bytes()),
            (OTHER_APP, "client-secret", s.other_secret.as_bytes()),
            (CERT_APP, "tls.crt", s.cert.cert_pem.as_bytes()),
            (CERT_APP, "tls.key", s.cert.key_pem.as_bytes()),
            (CERT_APP, "bundle.p12", &s.bundle),
            (CERT_APP, "bundle-password", s.bundle_password.as_bytes()),
            ("other-cert", "tls.crt", other.cert_pem.as_bytes()),
            ("other-cert", "tls.key", other.key_pem.as_bytes()),
        ];
        for (secret, key, value) in inputs {
            self.write_secret(NS, secret, key, value);
        }
    }
}

/// The operator's own environment naming an app and its secret, as `AZURE_*` would.
pub fn ambient_secret_env() -> AmbientEnv {
    AmbientEnv {
        tenant_id: Some(TENANT.to_string()),
        client_id: Some(AMBIENT_APP.to_string()),
        client_secret: Some(SecretString::from(SECRETS.ambient_secret.clone())),
        ..Default::default()
    }
}

fn entra_config(lifetime: Duration) -> EntraConfig {
    let s = &*SECRETS;
    let issuer_key = openssl::pkey::PKey::private_key_from_pem(s.issuer_key_pem.as_bytes());
    let issuer_public = issuer_key.unwrap().public_key_to_pem().unwrap();
    let issuer_public = String::from_utf8(issuer_public).unwrap();
    let mut config = EntraConfig::default()
        .with_tenant(TENANT)
        .with_token_lifetime(lifetime)
        .with_app(AppRegistration::new(SECRET_APP, oid(SECRET_APP)).with_secret(&s.client_secret))
        .with_app(AppRegistration::new(OTHER_APP, oid(OTHER_APP)).with_secret(&s.other_secret))
        .with_app(AppRegistration::new(CERT_APP, oid(CERT_APP)).with_certificate(&s.cert.cert_pem))
        .with_app(
            AppRegistration::new(AMBIENT_APP, oid(AMBIENT_APP)).with_secret(&s.ambient_secret),
        )
        .with_managed_identity(ManagedIdentity::system_assigned(SYSTEM_MI, oid(SYSTEM_MI)))
        .with_managed_identity(
            ManagedIdentity::user_assigned(USER_MI, USER_MI_OID).with_resource_id(USER_MI_RESOURCE),
        );
    // ServiceAccount `orders` may act as the workload app in these namespaces only.
    for ns in [NS, "team-a", "team-b"] {
        let subject = format!("system:serviceaccount:{ns}:orders");
        let federated =
            FederatedCredential::new(WORKLOAD_APP, oid(WORKLOAD_APP), SA_ISSUER, subject)
                .with_issuer_key(issuer_public.clone());
        config = config.with_federated_credential(federated);
    }
    config
}

/// The object id the emulator gives `client_id`.
pub fn oid(client_id: &str) -> String {
    format!("oid-{client_id}")
}

/// Secrets read from files (`ROOT/<namespace>/<secret>/<key>`) through the operator's
/// `FileMaterial`; ServiceAccount tokens minted anew for every request, as the TokenRequest
/// API does, and remembered.
pub struct TestMaterial {
    root: PathBuf,
    minted: Mutex<Vec<String>>,
}

impl TestMaterial {
    fn new(root: PathBuf) -> TestMaterial {
        TestMaterial {
            root,
            minted: Mutex::default(),
        }
    }

    /// Every ServiceAccount token handed out so far.
    pub fn minted(&self) -> Vec<String> {
        self.minted.lock().unwrap().clone()
    }

    /// The operator's reader of this directory layout.
    pub fn files(&self, ns: &str) -> FileMaterial {
        FileMaterial::new(self.root.join(ns))
    }
}

#[async_trait::async_trait]
impl Material for TestMaterial {
    async fn secret_value(
        &self,
        ns: &str,
        name: &str,
        key: &str,
    ) -> Result<Vec<u8>, MaterialError> {
        self.files(ns).secret_value(ns, name, key).await
    }

    async fn service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<ServiceAccountInfo, MaterialError> {
        self.files(ns).service_account(ns, name).await
    }

    async fn service_account_token(
        &self,
        ns: &str,
        name: &str,
        audience: &str,
    ) -> Result<SecretString, MaterialError> {
        let token = service_account_token(ns, name, audience);
        self.minted.lock().unwrap().push(token.clone());
        Ok(SecretString::from(token))
    }
}

/// A ServiceAccount token signed by the test cluster's issuer key.
fn service_account_token(ns: &str, name: &str, audience: &str) -> String {
    let now = jiff::Timestamp::now().as_second();
    let claims = serde_json::json!({
        "iss": SA_ISSUER, "sub": format!("system:serviceaccount:{ns}:{name}"),
        "aud": [audience], "iat": now, "nbf": now, "exp": now + 600, "jti": random_hex(),
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(SECRETS.issuer_key_pem.as_bytes()).unwrap();
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// A credential named `name` with `flow` (YAML), refreshed at half its lifetime and retried
/// after 50 ms, up to three attempts.
pub fn credential(name: &str, flow: &str) -> LocalCredential {
    credential_with_attempts(name, flow, 3)
}

/// As [`credential`], with `max_attempts` attempts per round.
pub fn credential_with_attempts(name: &str, flow: &str, max_attempts: u32) -> LocalCredential {
    let yaml = format!(
        "flow: {flow}\ntokenManagerConfig: {{expirationRefreshRatio: 0.5, lowerRefreshBoundMs: 0, \
         retry: {{maxAttempts: {max_attempts}, initialDelayMs: 50, maxDelayMs: 200}}}}"
    );
    let spec: AmrCredentialSpec = serde_yaml_ng::from_str(&yaml).unwrap();
    let resolved = validate(name, &spec).unwrap();
    LocalCredential {
        name: name.to_string(),
        spec,
        resolved,
    }
}

/// One refresh round of `cred` in the default namespace, sharing tokens when fresh.
pub async fn fetch(
    source: &AzureTokenSource,
    cred: &LocalCredential,
) -> Result<(AcquiredToken, Origin), RefreshFailure> {
    fetch_in(source, NS, cred).await
}

/// One refresh round of `cred` in namespace `ns`.
pub async fn fetch_in(
    source: &AzureTokenSource,
    ns: &str,
    cred: &LocalCredential,
) -> Result<(AcquiredToken, Origin), RefreshFailure> {
    source
        .fetch_with(ns, &cred.spec, &cred.resolved, false)
        .await
}

/// The token of a round that must succeed.
pub async fn token(source: &AzureTokenSource, cred: &LocalCredential) -> AcquiredToken {
    match fetch(source, cred).await {
        Ok((token, _)) => token,
        Err(e) => panic!("{}: {:?} {}", cred.name, e.kind, e.message),
    }
}

/// The failure of a round that must fail.
pub async fn failure(source: &AzureTokenSource, cred: &LocalCredential) -> RefreshFailure {
    match fetch(source, cred).await {
        Ok(_) => panic!("{}: a token was issued", cred.name),
        Err(e) => e,
    }
}

/// Asserts how a round failed: its kind, its attempts, and words its message must contain.
pub fn assert_failure(failure: &RefreshFailure, kind: FailureKind, attempts: u32, words: &[&str]) {
    let message = &failure.message;
    assert_eq!(
        (failure.kind, failure.attempts),
        (kind, attempts),
        "{message}"
    );
    for word in words {
        assert!(message.contains(word), "{word:?} not in {message:?}");
    }
}

/// `fault` for the next request only.
pub fn once(fault: Fault) -> FaultRule {
    FaultRule::new(fault).times(1)
}

/// `fault` for every request until cleared.
pub fn always(fault: Fault) -> FaultRule {
    FaultRule::new(fault)
}

/// `redis-server` as AMR, and how to reach it.
pub struct Redis {
    amr: AmrEmulator,
    options: ProbeOptions,
}

impl Redis {
    /// AUTH as the token's `oid` with the token, then PING.
    pub async fn auth_ping(&self, token: &AcquiredToken) -> Result<(), String> {
        self.auth_ping_as(&token.claims.oid, &token.token).await
    }

    /// AUTH + PING, tried for up to a second: AMR learns of a token a moment after Entra
    /// ID issues it.
    pub async fn auth_ping_as(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<(), String> {
        let target = ProbeTarget::tls(self.amr.host(), self.amr.tls_port());
        let mut last = String::new();
        for _ in 0..10 {
            let report = probe::verify(&target, username, password, &self.options).await;
            match report.first_failure() {
                None => return Ok(()),
                Some((check, message)) => last = format!("{check}: {message}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }
}

/// The file mode running in the background.
pub struct FileMode {
    events: mpsc::UnboundedReceiver<LocalEvent>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pub output_dir: PathBuf,
}

impl FileMode {
    /// Runs `local::run` on `credentials`, writing below the world's output directory.
    pub fn start(
        world: &World,
        source: Arc<AzureTokenSource>,
        creds: Vec<LocalCredential>,
    ) -> Self {
        let output_dir = world.output_dir();
        let options = local::LocalOptions {
            output_dir: output_dir.clone(),
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(local::run(creds, source, options, events_tx, stop_rx));
        FileMode {
            events,
            stop,
            task,
            output_dir,
        }
    }

    /// The next event, within `secs` seconds.
    pub async fn next(&mut self, secs: u64) -> LocalEvent {
        let next = tokio::time::timeout(Duration::from_secs(secs), self.events.recv()).await;
        next.expect("no event in time")
            .expect("the file mode ended")
    }

    /// Stops the file mode and waits for it.
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }

    /// The bytes of file `key` of credential `name`.
    pub fn read(&self, name: &str, key: &str) -> Vec<u8> {
        std::fs::read(self.output_dir.join(name).join(key)).unwrap()
    }

    /// Where `..data` of credential `name` points: one directory per write.
    pub fn version(&self, name: &str) -> PathBuf {
        std::fs::read_link(self.output_dir.join(name).join("..data")).unwrap()
    }
}

fn pkcs12(cert: &CertifiedKey, password: &str) -> Vec<u8> {
    let key = openssl::pkey::PKey::private_key_from_pem(cert.key_pem.as_bytes()).unwrap();
    let x509 = openssl::x509::X509::from_pem(cert.cert_pem.as_bytes()).unwrap();
    let mut builder = openssl::pkcs12::Pkcs12::builder();
    let bundle = builder.pkey(&key).cert(&x509).build2(password).unwrap();
    bundle.to_der().unwrap()
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 20]>())
}

/// Whether `path` is a symbolic link.
pub fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}
