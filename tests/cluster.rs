//! The controller against a real API server: it runs in this process, talks to the cluster
//! that `KUBECONFIG` names, and gets its tokens from a local Entra ID emulator.
//!
//! Without a reachable cluster every test prints why on stderr and passes having done nothing.
//! Each test works in a temporary namespace of its own, deleted when the test ends, also when
//! it fails. The CRD is applied server-side and left installed: concurrent tests share it.

use amr_credential_operator::api::AmrCredential;
use amr_credential_operator::controller::conditions::{
    self, NOT_ALLOWED, READY, SECRET_CONFLICT, TOKEN_REFRESHED,
};
use amr_credential_operator::controller::secret::{MANAGED_BY, MANAGED_BY_LABEL};
use amr_credential_operator::controller::{self, ControllerConfig};
use amr_credential_operator::emulator::entra::{
    AppRegistration, EntraConfig, EntraEmulator, FederatedCredential, ManagedIdentity,
};
use amr_credential_operator::emulator::pki::{self, Ca, CertifiedKey};
use amr_credential_operator::identity::claims;
use amr_credential_operator::identity::material::{
    KubeMaterial, SA_CLIENT_ID_ANNOTATION, TOKEN_EXCHANGE_AUDIENCE,
};
use amr_credential_operator::identity::source::{AmbientEnv, AzureTokenSource, SourceConfig};
use amr_credential_operator::identity::transport::TransportConfig;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use kube::runtime::wait::{await_condition, conditions::is_crd_established};
use kube::{Client, Config, Resource, ResourceExt};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout};

const CRD_YAML: &str = include_str!("../crds/amrcredentials.amr.entraid.dev.yaml");
const README: &str = include_str!("../README.md");
const EXAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples");
/// Field manager of everything the tests apply.
const MANAGER: &str = "amr-credential-operator-tests";
/// Label on the temporary namespaces, to find leftovers by hand.
const TEST_LABEL: &str = "amr.entraid.dev/test";

/// How long the gate waits for the API server.
const GATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the controller may take to act.
const SETTLE: Duration = Duration::from_secs(20);
/// How long garbage collection may take.
const GC_LIMIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
const TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// An identity the emulator knows: its client id and the `oid` of its tokens.
struct Identity {
    client_id: &'static str,
    object_id: &'static str,
}

const SECRET_APP: Identity = Identity {
    client_id: "11111111-1111-1111-1111-111111111111",
    object_id: "0b1d0000-0000-4000-8000-000000000001",
};
const CERT_APP: Identity = Identity {
    client_id: "22222222-2222-2222-2222-222222222222",
    object_id: "0b1d0000-0000-4000-8000-000000000002",
};
const SYSTEM_MI: Identity = Identity {
    client_id: "77777777-7777-7777-7777-777777777777",
    object_id: "0b1d0000-0000-4000-8000-000000000003",
};
const USER_MI: Identity = Identity {
    client_id: "33333333-3333-3333-3333-333333333333",
    object_id: "0b1d0000-0000-4000-8000-000000000004",
};
const WORKLOAD_APP: Identity = Identity {
    client_id: "44444444-4444-4444-4444-444444444444",
    object_id: "0b1d0000-0000-4000-8000-000000000005",
};
const AMBIENT_APP: Identity = Identity {
    client_id: "66666666-6666-6666-6666-666666666666",
    object_id: "0b1d0000-0000-4000-8000-000000000006",
};
const CLIENT_SECRET_NAME: &str = "orders-sp";
const CERTIFICATE_SECRET_NAME: &str = "billing-cert";
const WORKLOAD_SA: &str = "inventory";

// ---- Tests: one per flow -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_client_secret_credential_fills_its_secret_and_reports_ready() {
    let Some(h) = Harness::start(Setup::PLAIN).await else {
        return;
    };
    h.create_client_secret().await;
    h.ns.apply(credential("orders", client_secret_flow())).await;
    h.ns.assert_refreshed("orders", SECRET_APP.object_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_credential_fills_its_secret_and_reports_ready() {
    let Some(h) = Harness::start(Setup::PLAIN).await else {
        return;
    };
    h.create_certificate_secret().await;
    let flow = json!({
        "type": "ClientCredentialsWithCertificate",
        "clientId": CERT_APP.client_id,
        "clientCertificateRef": {"name": CERTIFICATE_SECRET_NAME},
    });
    h.ns.apply(credential("billing", flow)).await;
    h.ns.assert_refreshed("billing", CERT_APP.object_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_system_assigned_identity_fills_its_secret_in_an_allowed_namespace() {
    let Some(h) = Harness::start(Setup::AMBIENT).await else {
        return;
    };
    let flow = json!({"type": "SystemAssignedManagedIdentity"});
    h.ns.apply(credential("catalog", flow)).await;
    h.ns.assert_refreshed("catalog", SYSTEM_MI.object_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_assigned_identity_fills_its_secret_in_an_allowed_namespace() {
    let Some(h) = Harness::start(Setup::AMBIENT).await else {
        return;
    };
    let flow = json!({
        "type": "UserAssignedManagedIdentity",
        "userAssignedClientId": USER_MI.client_id,
    });
    h.ns.apply(credential("search", flow)).await;
    h.ns.assert_refreshed("search", USER_MI.object_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn default_azure_credential_uses_the_operator_environment_in_an_allowed_namespace() {
    let Some(h) = Harness::start(Setup::AMBIENT).await else {
        return;
    };
    let flow = json!({"type": "DefaultAzureCredential"});
    h.ns.apply(credential("reports", flow)).await;
    h.ns.assert_refreshed("reports", AMBIENT_APP.object_id)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_identity_exchanges_a_token_the_cluster_minted() {
    let Some(h) = Harness::start(Setup::WORKLOAD_IDENTITY).await else {
        return;
    };
    // No clientId: it comes from the ServiceAccount's annotation.
    let flow = json!({"type": "WorkloadIdentity", "serviceAccountName": WORKLOAD_SA});
    h.ns.apply(credential("inventory", flow)).await;
    h.ns.assert_refreshed("inventory", WORKLOAD_APP.object_id)
        .await;
}

// ---- Tests: lifecycle and refusals ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_credential_garbage_collects_its_secret() {
    let Some(h) = Harness::start(Setup::PLAIN).await else {
        return;
    };
    h.create_client_secret().await;
    h.ns.apply(credential("orders", client_secret_flow())).await;
    h.ns.wait_for_ready("orders", "True", None).await;
    let api = h.ns.api::<AmrCredential>();
    must(
        "deleting the AmrCredential",
        api.delete("orders", &DeleteParams::default()),
    )
    .await;
    h.ns.wait_until_gone::<Secret>("orders", GC_LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_ratio_of_zero_is_rejected_at_apply_time() {
    let Some(ns) = TestNamespace::create().await else {
        return;
    };
    let mut doc = credential("orders", client_secret_flow());
    doc["spec"]["tokenManagerConfig"] = json!({"expirationRefreshRatio": 0});
    let status = rejection(ns.try_apply(doc, &apply_params()).await);
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("expirationRefreshRatio"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_without_a_secret_ref_are_rejected_by_cel() {
    let Some(ns) = TestNamespace::create().await else {
        return;
    };
    let flow = json!({"type": "ClientCredentials", "clientId": SECRET_APP.client_id});
    let status = rejection(
        ns.try_apply(credential("orders", flow), &apply_params())
            .await,
    );
    assert_eq!(status.code, 422, "{status:?}");
    let expected = "ClientCredentials needs clientId and clientSecretRef";
    assert!(status.message.contains(expected), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_the_operator_does_not_own_is_never_overwritten() {
    let Some(h) = Harness::start(Setup::PLAIN).await else {
        return;
    };
    h.create_client_secret().await;
    let foreign = BTreeMap::from([("username".to_string(), "someone-else".to_string())]);
    h.ns.create_object(&string_secret("orders", None, foreign.clone()))
        .await;
    h.ns.apply(credential("orders", client_secret_flow())).await;

    h.ns.wait_for_ready("orders", "False", Some(SECRET_CONFLICT))
        .await;
    let secret =
        h.ns.get::<Secret>("orders")
            .await
            .expect("the foreign Secret remains");
    assert_eq!(text_data(&secret), foreign);
    assert_eq!(secret.labels().get(MANAGED_BY_LABEL), None);
    assert!(secret.owner_references().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ambient_flow_outside_the_allow_list_is_not_allowed() {
    let Some(h) = Harness::start(Setup::PLAIN).await else {
        return;
    };
    let flow = json!({"type": "SystemAssignedManagedIdentity"});
    h.ns.apply(credential("catalog", flow)).await;
    h.ns.wait_for_ready("catalog", "False", Some(NOT_ALLOWED))
        .await;
    assert!(h.ns.get::<Secret>("catalog").await.is_none());
}

// ---- Tests: the published manifests --------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_example_passes_a_server_side_dry_run() {
    let Some(ns) = TestNamespace::create().await else {
        return;
    };
    let docs = example_documents();
    assert!(!docs.is_empty(), "no example in {EXAMPLES_DIR}");
    for (origin, doc) in docs {
        ns.dry_run(&origin, doc).await;
    }
    assert!(
        ns.credential_names().await.is_empty(),
        "a dry run stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_examples_pass_a_server_side_dry_run() {
    let Some(ns) = TestNamespace::create().await else {
        return;
    };
    let docs = readme_credentials();
    assert!(!docs.is_empty(), "the README shows no AmrCredential");
    for doc in docs {
        ns.dry_run("README.md", doc).await;
    }
    assert!(
        ns.credential_names().await.is_empty(),
        "a dry run stored nothing"
    );
}

// ---- The gate ------------------------------------------------------------------------------

/// A client of the cluster `KUBECONFIG` names, or `None` (with the reason on stderr) when
/// there is no such cluster or it does not answer.
async fn cluster() -> Option<Client> {
    match reachable_cluster().await {
        Ok(client) => Some(client),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

async fn reachable_cluster() -> Result<Client, String> {
    let paths = std::env::var_os("KUBECONFIG")
        .filter(|v| !v.is_empty())
        .ok_or("KUBECONFIG is not set")?;
    if !std::env::split_paths(&paths).any(|p| p.is_file()) {
        return Err(format!("KUBECONFIG ({}) names no file", paths.display()));
    }
    let client = connect().await?;
    match timeout(GATE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("the API server did not answer: {e}")),
        Err(_) => Err(format!(
            "the API server did not answer within {GATE_TIMEOUT:?}"
        )),
    }
}

async fn connect() -> Result<Client, String> {
    let mut config = timeout(GATE_TIMEOUT, Config::infer())
        .await
        .map_err(|_| "reading the kubeconfig took too long".to_string())?
        .map_err(|e| format!("the kubeconfig is unusable: {e}"))?;
    config.connect_timeout = Some(GATE_TIMEOUT);
    Client::try_from(config).map_err(|e| format!("building a client failed: {e}"))
}

// ---- The temporary namespace ---------------------------------------------------------------

/// A namespace of one test, with the CRD installed; deleted on drop.
struct TestNamespace {
    client: Client,
    name: String,
}

impl TestNamespace {
    async fn create() -> Option<TestNamespace> {
        let client = cluster().await?;
        let name = format!("amr-test-{:08x}", rand::random::<u32>());
        // The guard exists before the namespace: a create that timed out is cleaned up too.
        let ns = TestNamespace { client, name };
        let object = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.name.clone()),
                labels: Some(BTreeMap::from([(TEST_LABEL.into(), "cluster".into())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let api: Api<Namespace> = Api::all(ns.client.clone());
        must(
            "creating the namespace",
            api.create(&PostParams::default(), &object),
        )
        .await;
        install_crd(&ns.client).await;
        Some(ns)
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    async fn get<K>(&self, name: &str) -> Option<K>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
        K::DynamicType: Default,
    {
        must(&format!("reading {name}"), self.api::<K>().get_opt(name)).await
    }

    async fn create_object<K>(&self, object: &K)
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + Debug,
        K: serde::Serialize + DeserializeOwned,
        K::DynamicType: Default,
    {
        let what = format!("creating {}", object.name_any());
        must(
            &what,
            self.api::<K>().create(&PostParams::default(), object),
        )
        .await;
    }

    async fn try_apply(&self, doc: Value, params: &PatchParams) -> kube::Result<AmrCredential> {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api = self.api::<AmrCredential>();
        within(
            &format!("applying {name}"),
            api.patch(&name, params, &Patch::Apply(&doc)),
        )
        .await
    }

    async fn apply(&self, doc: Value) -> AmrCredential {
        let name = doc["metadata"]["name"].clone();
        let applied = self.try_apply(doc, &apply_params()).await;
        applied.unwrap_or_else(|e| panic!("applying {name} failed: {e}"))
    }

    async fn dry_run(&self, origin: &str, mut doc: Value) {
        assert_eq!(doc["kind"], "AmrCredential", "{origin}: unexpected kind");
        doc["metadata"]["namespace"] = json!(self.name);
        let params = apply_params().dry_run();
        if let Err(e) = self.try_apply(doc, &params).await {
            panic!("{origin}: the dry run was refused: {e}");
        }
    }

    async fn credential_names(&self) -> Vec<String> {
        let api = self.api::<AmrCredential>();
        let list = must("listing AmrCredentials", api.list(&ListParams::default())).await;
        list.items.iter().map(ResourceExt::name_any).collect()
    }

    /// Waits until the Ready condition has `status` (and `reason`, when given).
    async fn wait_for_ready(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
    ) -> AmrCredential {
        let api = &self.api::<AmrCredential>();
        let reason_text = reason.map(|r| format!(" ({r})")).unwrap_or_default();
        let what = format!("{name} to be Ready={status}{reason_text}");
        eventually(&what, SETTLE, move || async move {
            let credential = api.get(name).await.map_err(|e| e.to_string())?;
            let found = credential
                .status
                .as_ref()
                .and_then(|s| conditions::find(s, READY));
            let mismatch = match found {
                Some(c) if c.status == status && reason.is_none_or(|r| r == c.reason) => None,
                Some(c) => Some(format!("Ready={} {}: {}", c.status, c.reason, c.message)),
                None => Some("no Ready condition".to_string()),
            };
            mismatch.map_or(Ok(credential), Err)
        })
        .await
    }

    async fn wait_for_event(&self, regarding: &AmrCredential, reason: &str) -> Event {
        let api = &self.api::<Event>();
        let uid = regarding.uid();
        let uid = uid.as_deref();
        eventually(&format!("a {reason} Event"), SETTLE, move || async move {
            let events = api.list(&ListParams::default()).await;
            let events = events.map_err(|e| e.to_string())?.items;
            let count = events.len();
            let about = |e: &Event| {
                let r = e.regarding.as_ref();
                r.is_some_and(|r| {
                    r.kind.as_deref() == Some("AmrCredential") && r.uid.as_deref() == uid
                })
            };
            events
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason) && about(e))
                .ok_or_else(|| format!("none among {count} Events"))
        })
        .await
    }

    async fn wait_until_gone<K>(&self, name: &str, limit: Duration)
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
        K::DynamicType: Default,
    {
        let api = &self.api::<K>();
        eventually(
            &format!("{name} to be deleted"),
            limit,
            move || async move {
                match api.get_opt(name).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err("it still exists".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
    }

    /// The Secret holds the token of `oid`; the status and an Event say so.
    async fn assert_refreshed(&self, name: &str, oid: &str) {
        let credential = self.wait_for_ready(name, "True", None).await;
        let status = credential.status.clone().unwrap_or_default();
        assert_eq!(status.object_id.as_deref(), Some(oid), "{status:?}");
        assert!(status.refresh_at.is_some(), "{status:?}");
        let generation = credential.metadata.generation;
        assert!(generation.is_some(), "the API server sets a generation");
        assert_eq!(status.observed_generation, generation);

        let secret = self
            .get::<Secret>(name)
            .await
            .expect("the Secret exists once Ready");
        let data = text_data(&secret);
        assert_eq!(data.get("username").map(String::as_str), Some(oid));
        let password = data.get("password").expect("the Secret has a password");
        let claims = claims::decode(password).expect("the password is a JWT");
        assert_eq!(claims.oid, oid);
        let expires_at = data.get("expires-at").expect("the Secret has expires-at");
        assert_eq!(status.expires_at.as_ref(), Some(expires_at));
        assert_owned_by(&secret, &credential);

        self.wait_for_event(&credential, TOKEN_REFRESHED).await;
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // The test's runtime may be unwinding: delete from a thread with its own runtime.
        let name = self.name.clone();
        match std::thread::spawn(move || delete_namespace(&name)).join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("deleting namespace {} failed: {e}", self.name),
            Err(_) => eprintln!("deleting namespace {} panicked", self.name),
        }
    }
}

fn delete_namespace(name: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let api: Api<Namespace> = Api::all(connect().await?);
        let deleted = timeout(CALL_TIMEOUT, api.delete(name, &DeleteParams::background())).await;
        match deleted {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        }
    })
}

async fn install_crd(client: &Client) {
    // Applied as read, so that no field is lost in a round trip through typed structs.
    let crd: Value = serde_yaml_ng::from_str(CRD_YAML).expect("the CRD file is YAML");
    let name = crd["metadata"]["name"]
        .as_str()
        .expect("the CRD has a name");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(MANAGER).force();
    must(
        "applying the CRD",
        api.patch(name, &params, &Patch::Apply(&crd)),
    )
    .await;
    match timeout(SETTLE, await_condition(api, name, is_crd_established())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("watching the CRD failed: {e}"),
        Err(_) => panic!("the CRD was not Established within {SETTLE:?}"),
    }
}

// ---- The operator under test ---------------------------------------------------------------

/// What a test needs besides a namespace.
#[derive(Clone, Copy)]
struct Setup {
    /// The namespace may use the operator's own identity.
    ambient: bool,
    /// Create the annotated ServiceAccount and federate it with the workload app.
    workload_identity: bool,
}

impl Setup {
    const PLAIN: Setup = Setup {
        ambient: false,
        workload_identity: false,
    };
    const AMBIENT: Setup = Setup {
        ambient: true,
        ..Setup::PLAIN
    };
    const WORKLOAD_IDENTITY: Setup = Setup {
        workload_identity: true,
        ..Setup::PLAIN
    };
}

/// The per-test secret material the emulator accepts.
struct Inputs {
    client_secret: String,
    certificate: CertifiedKey,
    ambient_secret: String,
}

/// A namespace, the Entra ID emulator and the controller running in this process. Fields
/// drop in order: the controller is told to stop before the namespace goes.
struct Harness {
    _stop: oneshot::Sender<()>,
    _entra: EntraEmulator,
    _scratch: tempfile::TempDir,
    inputs: Inputs,
    ns: TestNamespace,
}

impl Harness {
    async fn start(setup: Setup) -> Option<Harness> {
        let ns = TestNamespace::create().await?;
        let issuer = if setup.workload_identity {
            Some(ns.federated_service_account().await)
        } else {
            None
        };
        let inputs = Inputs {
            client_secret: random_secret(),
            certificate: pki::rsa_client_certificate("cluster-test").expect("a certificate"),
            ambient_secret: random_secret(),
        };
        let scratch = tempfile::tempdir().expect("a temporary directory");
        let ca = Ca::new("amr-credential-operator cluster test CA").expect("a CA");
        let ca_file = scratch.path().join("ca.crt");
        ca.write_cert(&ca_file).expect("writing the CA certificate");

        let config = entra_config(&inputs, &ns.name, issuer);
        let entra = EntraEmulator::start(config, &ca)
            .await
            .expect("the emulator starts");
        let tokens = token_source(&entra, &inputs, &ca_file, ns.client.clone());
        let stop = spawn_controller(ns.client.clone(), tokens, &ns.name, setup.ambient);
        Some(Harness {
            _stop: stop,
            _entra: entra,
            _scratch: scratch,
            inputs,
            ns,
        })
    }

    async fn create_client_secret(&self) {
        let data = [("client-secret", self.inputs.client_secret.as_str())];
        let data = data.map(|(k, v)| (k.to_string(), v.to_string()));
        let secret = string_secret(CLIENT_SECRET_NAME, None, data.into());
        self.ns.create_object(&secret).await;
    }

    async fn create_certificate_secret(&self) {
        let pem = &self.inputs.certificate;
        let data = [("tls.crt", &pem.cert_pem), ("tls.key", &pem.key_pem)];
        let data = data.map(|(k, v)| (k.to_string(), v.clone()));
        let tls = Some("kubernetes.io/tls");
        self.ns
            .create_object(&string_secret(CERTIFICATE_SECRET_NAME, tls, data.into()))
            .await;
    }
}

impl TestNamespace {
    /// Creates the workload identity ServiceAccount and returns the issuer of its tokens.
    async fn federated_service_account(&self) -> String {
        let annotations = BTreeMap::from([(
            SA_CLIENT_ID_ANNOTATION.to_string(),
            WORKLOAD_APP.client_id.to_string(),
        )]);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(WORKLOAD_SA.to_string()),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        self.create_object(&account).await;
        match discovered_issuer(&self.client).await {
            Ok(issuer) => issuer,
            Err(discovery) => self.minted_issuer().await.unwrap_or_else(|minted| {
                panic!("no ServiceAccount issuer: discovery: {discovery}; TokenRequest: {minted}")
            }),
        }
    }

    /// The `iss` of a token the TokenRequest API mints, for clusters that hide discovery.
    async fn minted_issuer(&self) -> Result<String, String> {
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![TOKEN_EXCHANGE_AUDIENCE.to_string()]),
                expiration_seconds: Some(600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let api = self.api::<ServiceAccount>();
        let params = PostParams::default();
        let minted = api.create_subresource("token", WORKLOAD_SA, &params, &request);
        let minted: TokenRequest = within("requesting a token", minted)
            .await
            .map_err(|e| e.to_string())?;
        let token = minted.status.and_then(|s| s.token).ok_or("no token")?;
        let payload = token.split('.').nth(1).ok_or("the token is not a JWT")?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|e| e.to_string())?;
        let claims: Value = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
        let issuer = claims["iss"].as_str().ok_or("the token has no iss")?;
        Ok(issuer.to_string())
    }
}

async fn discovered_issuer(client: &Client) -> Result<String, String> {
    let request = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let document: Value = within("reading the issuer discovery", client.request(request))
        .await
        .map_err(|e| e.to_string())?;
    let issuer = document["issuer"]
        .as_str()
        .ok_or("the document names no issuer")?;
    Ok(issuer.to_string())
}

/// Every identity of the tests; the federated credential accepts tokens of the cluster's
/// issuer without checking their signature, since the test cannot read the cluster's key.
fn entra_config(inputs: &Inputs, ns: &str, issuer: Option<String>) -> EntraConfig {
    let app = |id: &Identity| AppRegistration::new(id.client_id, id.object_id);
    let config = EntraConfig::default()
        .with_token_lifetime(TOKEN_LIFETIME)
        .with_app(app(&SECRET_APP).with_secret(inputs.client_secret.clone()))
        .with_app(app(&CERT_APP).with_certificate(inputs.certificate.cert_pem.clone()))
        .with_app(app(&AMBIENT_APP).with_secret(inputs.ambient_secret.clone()))
        .with_managed_identity(ManagedIdentity::system_assigned(
            SYSTEM_MI.client_id,
            SYSTEM_MI.object_id,
        ))
        .with_managed_identity(ManagedIdentity::user_assigned(
            USER_MI.client_id,
            USER_MI.object_id,
        ));
    let Some(issuer) = issuer else {
        return config;
    };
    let subject = format!("system:serviceaccount:{ns}:{WORKLOAD_SA}");
    let (client_id, object_id) = (WORKLOAD_APP.client_id, WORKLOAD_APP.object_id);
    config.with_federated_credential(FederatedCredential::new(
        client_id, object_id, issuer, subject,
    ))
}

fn token_source(
    entra: &EntraEmulator,
    inputs: &Inputs,
    ca_file: &Path,
    client: Client,
) -> Arc<AzureTokenSource> {
    let tenant = entra.tenant().to_string();
    let config = SourceConfig {
        authority_host: Some(entra.authority_host()),
        default_tenant: Some(tenant.clone()),
        transport: TransportConfig {
            ca_files: vec![ca_file.to_owned()],
            managed_identity_endpoint: Some(entra.imds_endpoint()),
            request_timeout: Some(CALL_TIMEOUT),
        },
        // DefaultAzureCredential takes the environment leg: the operator's own app.
        ambient: AmbientEnv {
            tenant_id: Some(tenant),
            client_id: Some(AMBIENT_APP.client_id.to_string()),
            client_secret: Some(SecretString::from(inputs.ambient_secret.clone())),
            ..AmbientEnv::default()
        },
        max_concurrent_requests: 4,
        attempt_timeout: CALL_TIMEOUT,
    };
    let material = Arc::new(KubeMaterial::new(client));
    let source = AzureTokenSource::new(config, material).expect("the token source builds");
    Arc::new(source)
}

/// Runs the controller on `ns` until the returned sender is dropped.
fn spawn_controller(
    client: Client,
    tokens: Arc<AzureTokenSource>,
    ns: &str,
    ambient: bool,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ControllerConfig {
        watch_namespaces: vec![ns.to_string()],
        ambient_identity_namespaces: if ambient {
            vec![ns.to_string()]
        } else {
            Vec::new()
        },
        ..ControllerConfig::default()
    };
    let shutdown = async move {
        // Dropping the sender is the signal.
        let _ = stopped.await;
    };
    tokio::spawn(async move {
        if let Err(e) = controller::run(client, tokens, config, shutdown).await {
            eprintln!("the controller stopped: {e}");
        }
    });
    stop
}

// ---- Fixtures ------------------------------------------------------------------------------

fn credential(name: &str, flow: Value) -> Value {
    json!({
        "apiVersion": "amr.entraid.dev/v1alpha1",
        "kind": "AmrCredential",
        "metadata": {"name": name},
        "spec": {"flow": flow},
    })
}

fn client_secret_flow() -> Value {
    json!({
        "type": "ClientCredentials",
        "clientId": SECRET_APP.client_id,
        "clientSecretRef": {"name": CLIENT_SECRET_NAME, "key": "client-secret"},
    })
}

fn string_secret(name: &str, type_: Option<&str>, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        type_: type_.map(str::to_string),
        string_data: Some(data),
        ..Secret::default()
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER)
}

fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

fn text_data(secret: &Secret) -> BTreeMap<String, String> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
    data.into_iter().map(|(k, v)| (k, text(v.0))).collect()
}

fn assert_owned_by(secret: &Secret, credential: &AmrCredential) {
    let owner = secret
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true));
    let owner = owner.expect("the Secret has a controller owner reference");
    assert_eq!(owner.kind, "AmrCredential");
    assert_eq!(owner.name, credential.name_any());
    assert_eq!(Some(&owner.uid), credential.uid().as_ref());
    assert_eq!(
        secret.labels().get(MANAGED_BY_LABEL).map(String::as_str),
        Some(MANAGED_BY)
    );
}

fn rejection(result: kube::Result<AmrCredential>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        Err(e) => panic!("expected the API server to refuse, got {e}"),
        Ok(c) => panic!(
            "expected the API server to refuse, but it stored {}",
            c.name_any()
        ),
    }
}

/// Every document of `deploy/examples/*.yaml`, with its file name.
fn example_documents() -> Vec<(String, Value)> {
    let entries = std::fs::read_dir(EXAMPLES_DIR).expect("the examples directory is readable");
    let mut files: Vec<_> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let read = |p: &Path| std::fs::read_to_string(p).expect("an example is readable");
    files
        .iter()
        .flat_map(|p| {
            yaml_documents(&read(p))
                .into_iter()
                .map(|d| (p.display().to_string(), d))
        })
        .collect()
}

/// The AmrCredentials of the README's YAML blocks.
fn readme_credentials() -> Vec<Value> {
    README
        .split("```yaml")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .filter(|block| block.contains("kind: AmrCredential"))
        .flat_map(yaml_documents)
        .collect()
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("the YAML parses"))
        .filter(|doc| !doc.is_null())
        .collect()
}

// ---- Waiting -------------------------------------------------------------------------------

/// Polls `check` until it succeeds; past `limit` the test fails with the last reason.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match timeout(CALL_TIMEOUT, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(why)) => why,
            Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            panic!("waited {limit:?} for {what}; last seen: {last}");
        }
        sleep(POLL).await;
    }
}

/// Awaits `call`, failing the test when it takes longer than [`CALL_TIMEOUT`].
async fn within<T>(what: &str, call: impl Future<Output = T>) -> T {
    timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_TIMEOUT:?}"))
}

/// Awaits `call`, failing the test on an error or a timeout.
async fn must<T, E: std::fmt::Display>(what: &str, call: impl Future<Output = Result<T, E>>) -> T {
    within(what, call)
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}
