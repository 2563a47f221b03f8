//! Every supported flow through the real `azure_identity` credentials against the Entra ID
//! emulator, each token then used for AUTH + PING on a real `redis-server`; the file mode's
//! refresh, the shared cache, and the emulator's refusals as the operator reports them.

mod common;

use amr_credential_operator::emulator::entra::{Fault, Flow, IMDS_PATH};
use amr_credential_operator::identity::FailureKind::{LoginRequired, NonRetryable};
use amr_credential_operator::identity::cache::Origin;
use amr_credential_operator::identity::claims;
use amr_credential_operator::identity::source::AzureTokenSource;
use amr_credential_operator::local::LocalEvent;
use common::{
    AMBIENT_APP, CERT_APP, FileMode, NS, SECRET_APP, SYSTEM_MI, USER_MI, USER_MI_OID,
    USER_MI_RESOURCE, WORKLOAD_APP, World, ambient_secret_env, assert_failure, credential, failure,
    fetch, fetch_in, flow, is_symlink, once, token,
};
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Gets a token for `flow` and uses it for AUTH + PING; returns the token's `oid`.
async fn authenticates(world: &World, source: &AzureTokenSource, flow: &str) -> String {
    let redis = world.redis().await;
    let token = token(source, &credential("cache", flow)).await;
    redis.auth_ping(&token).await.unwrap();
    token.claims.oid
}

fn request_flows(world: &World) -> Vec<Option<Flow>> {
    world.token_requests().iter().map(|r| r.flow).collect()
}

#[tokio::test]
async fn client_credentials_token_authenticates_to_redis() {
    let world = World::start(60).await;
    let oid = authenticates(&world, &world.source(), flow::CLIENT_SECRET).await;
    assert_eq!(oid, common::oid(SECRET_APP));
    assert_eq!(request_flows(&world), [Some(Flow::ClientSecret)]);
}

#[tokio::test]
async fn certificate_flow_with_pem_files_authenticates_to_redis() {
    let world = World::start(60).await;
    let oid = authenticates(&world, &world.source(), flow::CERTIFICATE_PEM).await;
    assert_eq!(oid, common::oid(CERT_APP));
    assert_eq!(request_flows(&world), [Some(Flow::ClientCertificate)]);
}

#[tokio::test]
async fn certificate_flow_with_a_password_protected_pkcs12_authenticates_to_redis() {
    let world = World::start(60).await;
    let oid = authenticates(&world, &world.source(), flow::CERTIFICATE_PKCS12).await;
    assert_eq!(oid, common::oid(CERT_APP));
    assert_eq!(request_flows(&world), [Some(Flow::ClientCertificate)]);
}

#[tokio::test]
async fn system_assigned_managed_identity_is_reached_through_the_imds_rewrite() {
    let world = World::start(60).await;
    let oid = authenticates(&world, &world.source(), flow::SYSTEM_MI).await;
    assert_eq!(oid, common::oid(SYSTEM_MI));
    let requests = world.token_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].path.as_str(), requests[0].flow),
        (IMDS_PATH, Some(Flow::Imds))
    );
}

#[tokio::test]
async fn user_assigned_managed_identity_is_found_by_client_object_and_resource_id() {
    let world = World::start(60).await;
    let (source, redis) = (world.source(), world.redis().await);
    let ids = [
        ("userAssignedClientId", USER_MI),
        ("userAssignedObjectId", USER_MI_OID),
        ("userAssignedResourceId", USER_MI_RESOURCE),
    ];
    for (field, id) in ids {
        let flow = format!("{{type: UserAssignedManagedIdentity, {field}: '{id}'}}");
        let token = token(&source, &credential("cache", &flow)).await;
        assert_eq!(token.claims.oid, USER_MI_OID, "{field}");
        redis.auth_ping(&token).await.unwrap();
    }
    let requests = world.token_requests();
    assert!(requests.iter().all(|r| r.path == IMDS_PATH), "{requests:?}");
    let named: Vec<_> = requests
        .iter()
        .map(|r| r.client_id.clone().unwrap())
        .collect();
    assert_eq!(named, ids.map(|(_, id)| id.to_string()));
}

#[tokio::test]
async fn workload_identity_exchanges_a_fresh_service_account_token_every_time() {
    let world = World::start(60).await;
    let (source, redis) = (world.source(), world.redis().await);
    let cred = credential("cache", flow::WORKLOAD);
    // The first round needs two exchanges, the forced second round one.
    world.entra.inject(once(Fault::ServiceUnavailable));
    for _ in 0..2 {
        let (token, _) = source
            .fetch_with(NS, &cred.spec, &cred.resolved, true)
            .await
            .unwrap();
        assert_eq!(token.claims.oid, common::oid(WORKLOAD_APP));
        redis.auth_ping(&token).await.unwrap();
    }
    let minted = world.material.minted();
    let distinct: std::collections::HashSet<_> = minted.iter().collect();
    assert_eq!((minted.len(), distinct.len()), (3, 3));
    assert_eq!(request_flows(&world), [Some(Flow::Federated); 3]);
}

#[tokio::test]
async fn default_azure_credential_takes_the_operators_environment_secret_first() {
    let world = World::start(60).await;
    let source = world.source_with(|c| c.ambient = ambient_secret_env());
    let oid = authenticates(&world, &source, flow::DEFAULT).await;
    assert_eq!(oid, common::oid(AMBIENT_APP));
    let requests = world.token_requests();
    assert_eq!(requests[0].client_id.as_deref(), Some(AMBIENT_APP));
    assert_eq!(request_flows(&world), [Some(Flow::ClientSecret)]);
}

#[tokio::test]
async fn default_azure_credential_falls_back_to_the_managed_identity() {
    let world = World::start(60).await;
    let oid = authenticates(&world, &world.source(), flow::DEFAULT).await;
    assert_eq!(oid, common::oid(SYSTEM_MI));
    assert_eq!(world.token_requests()[0].path, IMDS_PATH);
}

#[tokio::test]
async fn authorization_code_with_pkce_asks_for_a_sign_in_before_any_request() {
    let world = World::start(60).await;
    let flow = "{type: AuthorizationCodeWithPKCE, clientId: cli, redirectUri: 'http://localhost', \
        refreshTokenSecretRef: {name: login, key: refresh-token}}";
    let failure = failure(&world.source(), &credential("cache", flow)).await;
    assert_failure(&failure, LoginRequired, 0, &["sign in"]);
    assert!(world.entra.requests().is_empty());
}

#[tokio::test]
async fn file_mode_rewrites_the_files_atomically_before_expiry() {
    let world = World::start(4).await;
    let redis = world.redis().await;
    let orders = credential("orders", flow::CLIENT_SECRET);
    let mut files = FileMode::start(&world, world.source(), vec![orders]);
    let LocalEvent::Refreshed {
        expires_at,
        refresh_at,
        ..
    } = files.next(5).await
    else {
        panic!("the first token was not written");
    };
    let (first_password, first_version) =
        (files.read("orders", "password"), files.version("orders"));
    let watcher = Watcher::start(files.output_dir.join("orders/password"));

    assert!(matches!(files.next(5).await, LocalEvent::Refreshed { .. }));
    let now = jiff::Timestamp::now();
    let on_time = refresh_at <= now && now < expires_at;
    assert!(
        on_time,
        "refreshed at {now}, not in [{refresh_at}, {expires_at})"
    );
    assert_eq!(
        watcher.torn_reads(),
        0,
        "an app read a partly written token"
    );
    assert_ne!(files.read("orders", "password"), first_password);
    assert_ne!(files.version("orders"), first_version);
    assert!(is_symlink(&files.output_dir.join("orders/password")));
    assert!(!files.output_dir.join("orders").join(first_version).exists());

    let username = String::from_utf8(files.read("orders", "username")).unwrap();
    let password = String::from_utf8(files.read("orders", "password")).unwrap();
    redis
        .auth_ping_as(&username, &SecretString::from(password))
        .await
        .unwrap();
    files.stop().await;
}

/// Reads a password file over and over, as an app would, noting reads of anything but a
/// whole token.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Watcher {
    fn start(path: PathBuf) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut torn = 0;
            while !stopped.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                torn += usize::from(claims::decode(&text).is_err());
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            torn
        });
        Watcher { stop, thread }
    }

    fn torn_reads(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[tokio::test]
async fn two_credentials_of_one_identity_cause_one_request() {
    let world = World::start(60).await;
    let source = world.source();
    let (orders, billing) = (
        credential("orders", flow::CLIENT_SECRET),
        credential("billing", flow::CLIENT_SECRET),
    );
    let (a, b) = tokio::join!(fetch(&source, &orders), fetch(&source, &billing));
    let ((a, a_origin), (b, b_origin)) = (a.unwrap(), b.unwrap());
    let mut origins = [a_origin, b_origin];
    origins.sort_by_key(|o| *o == Origin::Shared);
    assert_eq!(origins, [Origin::Fetched, Origin::Shared]);
    assert_eq!(a.token.expose_secret(), b.token.expose_secret());
    assert_eq!(world.token_requests().len(), 1);
}

#[tokio::test]
async fn workload_identities_in_different_namespaces_do_not_share_a_token() {
    let world = World::start(60).await;
    let source = world.source();
    let cred = credential("orders", flow::WORKLOAD);
    let (_, a) = fetch_in(&source, "team-a", &cred).await.unwrap();
    let (_, b) = fetch_in(&source, "team-b", &cred).await.unwrap();
    assert_eq!((a, b), (Origin::Fetched, Origin::Fetched));
    assert_eq!(world.token_requests().len(), 2);
    let subjects: Vec<_> = world.material.minted().iter().map(|t| subject(t)).collect();
    assert_eq!(
        subjects,
        [
            "system:serviceaccount:team-a:orders",
            "system:serviceaccount:team-b:orders"
        ]
    );
}

fn subject(jwt: &str) -> String {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    claims["sub"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_changed_client_secret_does_not_reuse_the_cached_token() {
    let world = World::start(60).await;
    let (source, cred) = (world.source(), credential("orders", flow::CLIENT_SECRET));
    token(&source, &cred).await;
    world.write_secret(NS, SECRET_APP, "client-secret", b"rotated");
    let failure = failure(&source, &cred).await;
    assert_failure(&failure, NonRetryable, 1, &["Invalid client secret"]);
    assert_eq!(world.token_requests().len(), 2);
}

#[tokio::test]
async fn a_wrong_client_secret_is_refused_as_non_retryable_with_the_reason() {
    let world = World::start(60).await;
    world.write_secret(NS, "wrong", "client-secret", b"not-the-secret");
    let flow = "{type: ClientCredentials, clientId: app-secret, \
        clientSecretRef: {name: wrong, key: client-secret}}";
    let failure = failure(&world.source(), &credential("orders", flow)).await;
    assert_failure(
        &failure,
        NonRetryable,
        1,
        &["invalid_client", "Invalid client secret"],
    );
}

#[tokio::test]
async fn a_certificate_the_app_has_not_registered_is_refused_as_non_retryable() {
    let world = World::start(60).await;
    let flow = "{type: ClientCredentialsWithCertificate, clientId: app-cert, \
        clientCertificateRef: {name: other-cert}}";
    let failure = failure(&world.source(), &credential("billing", flow)).await;
    let why = ["AADSTS700027", "certificate is not registered"];
    assert_failure(&failure, NonRetryable, 1, &why);
}

#[tokio::test]
async fn a_service_account_without_a_federated_credential_is_refused_as_non_retryable() {
    let world = World::start(60).await;
    let flow = "{type: WorkloadIdentity, serviceAccountName: intruder, clientId: app-workload}";
    let failure = failure(&world.source(), &credential("inventory", flow)).await;
    let subject = "subject: 'system:serviceaccount:local:intruder'";
    assert_failure(&failure, NonRetryable, 1, &["AADSTS700213", subject]);
}
