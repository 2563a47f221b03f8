//! The Entra ID emulator against the real `azure_identity` credentials and plain HTTP
//! clients, all on 127.0.0.1.

use amr_credential_operator::emulator::entra::{
    AppRegistration, EntraConfig, EntraEmulator, Fault, FaultRule, FederatedCredential, Flow,
    IMDS_PATH, ManagedIdentity, User,
};
use amr_credential_operator::emulator::pki::{self, Ca, CertifiedKey};
use amr_credential_operator::identity::claims::{self, ClaimsError};
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{SecretBytes, TokenCredential};
use azure_core::http::{
    AsyncRawResponse, ClientMethodOptions, ClientOptions, HttpClient, Request, RetryOptions,
    Transport,
};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientCertificateCredential, ClientCertificateCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::JwkSet};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use url::Url;

const TENANT: &str = "0d9c2a1e-0000-4000-8000-000000000001";
const REDIS_SCOPE: &str = "https://redis.azure.com/.default";
const REDIS_AUDIENCE: &str = "https://redis.azure.com";
const SECRET_APP: &str = "secret-app";
const SECRET_APP_OID: &str = "oid-secret-app";
const CLIENT_SECRET: &str = "s3cr3t-value-never-logged";
const CERT_APP: &str = "cert-app";
const CERT_APP_OID: &str = "oid-cert-app";
const WI_APP: &str = "workload-app";
const WI_OID: &str = "oid-workload";
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const SA_SUBJECT: &str = "system:serviceaccount:shop:cart";
const MI_CLIENT: &str = "mi-client";
const MI_OID: &str = "oid-mi";
const IDENTITY_HEADER: &str = "identity-header-secret";
const PUBLIC_CLIENT: &str = "public-client";
const USER_OID: &str = "oid-alice";
const REFRESH_TOKEN: &str = "refresh-token-of-alice";

static APP_CERT: LazyLock<CertifiedKey> =
    LazyLock::new(|| pki::rsa_client_certificate("cert-app").unwrap());
static SA_ISSUER_KEY: LazyLock<String> = LazyLock::new(|| pki::rsa_private_key_pem().unwrap());

fn config() -> EntraConfig {
    let issuer_key = openssl::pkey::PKey::private_key_from_pem(SA_ISSUER_KEY.as_bytes()).unwrap();
    let issuer_public = String::from_utf8(issuer_key.public_key_to_pem().unwrap()).unwrap();
    EntraConfig::default()
        .with_tenant(TENANT)
        .with_token_lifetime(Duration::from_secs(10))
        .with_identity_header(IDENTITY_HEADER)
        .with_app(AppRegistration::new(SECRET_APP, SECRET_APP_OID).with_secret(CLIENT_SECRET))
        .with_app(AppRegistration::new(CERT_APP, CERT_APP_OID).with_certificate(&APP_CERT.cert_pem))
        .with_federated_credential(
            FederatedCredential::new(WI_APP, WI_OID, SA_ISSUER, SA_SUBJECT)
                .with_issuer_key(issuer_public),
        )
        .with_managed_identity(ManagedIdentity::user_assigned(MI_CLIENT, MI_OID))
        .with_user(User::new("alice", USER_OID, PUBLIC_CLIENT, REFRESH_TOKEN))
}

async fn emulator() -> EntraEmulator {
    EntraEmulator::start(config(), &Ca::new("test CA").unwrap())
        .await
        .unwrap()
}

fn client_options(emu: &EntraEmulator, retry: RetryOptions) -> ClientOptions {
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = emu.authority_host().to_string();
    ClientOptions {
        transport: Some(Transport::new(Arc::new(emu.https_client().unwrap()))),
        retry,
        cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
        ..Default::default()
    }
}

fn secret_credential(emu: &EntraEmulator, secret: &str) -> Arc<ClientSecretCredential> {
    let client_options = client_options(emu, RetryOptions::none());
    let options = ClientSecretCredentialOptions { client_options };
    ClientSecretCredential::new(
        TENANT,
        SECRET_APP.into(),
        secret.to_string().into(),
        Some(options),
    )
    .unwrap()
}

fn certificate_credential(
    emu: &EntraEmulator,
    cert: &CertifiedKey,
) -> Arc<ClientCertificateCredential> {
    let key = openssl::pkey::PKey::private_key_from_pem(cert.key_pem.as_bytes()).unwrap();
    let x509 = openssl::x509::X509::from_pem(cert.cert_pem.as_bytes()).unwrap();
    let pkcs12 = openssl::pkcs12::Pkcs12::builder()
        .pkey(&key)
        .cert(&x509)
        .build2("")
        .unwrap();
    let options = ClientCertificateCredentialOptions {
        client_options: client_options(emu, RetryOptions::none()),
        ..Default::default()
    };
    let bundle = SecretBytes::new(pkcs12.to_der().unwrap());
    ClientCertificateCredential::new(TENANT.into(), CERT_APP.into(), bundle, Some(options)).unwrap()
}

/// A ServiceAccount token as the kubelet projects it, signed with the test issuer key.
#[derive(Debug)]
struct ServiceAccountToken(String);

#[async_trait::async_trait]
impl ClientAssertion for ServiceAccountToken {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        Ok(self.0.clone())
    }
}

fn service_account_token(subject: &str, expires_in: i64) -> ServiceAccountToken {
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({
        "iss": SA_ISSUER, "sub": subject, "aud": ["api://AzureADTokenExchange"],
        "iat": now - 600, "nbf": now - 600, "exp": now + expires_in,
    });
    let key = EncodingKey::from_rsa_pem(SA_ISSUER_KEY.as_bytes()).unwrap();
    ServiceAccountToken(
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap(),
    )
}

fn federated_credential(
    emu: &EntraEmulator,
    token: ServiceAccountToken,
) -> Arc<ClientAssertionCredential<ServiceAccountToken>> {
    let client_options = client_options(emu, RetryOptions::none());
    let options = ClientAssertionCredentialOptions { client_options };
    ClientAssertionCredential::new(TENANT.into(), WI_APP.into(), token, Some(options)).unwrap()
}

async fn redis_token(credential: &dyn TokenCredential) -> azure_core::Result<String> {
    let token = credential.get_token(&[REDIS_SCOPE], None).await?;
    Ok(token.token.secret().to_string())
}

/// The status and OAuth error of the emulator's last answer, once the credential's error
/// is seen to carry the `AADSTS` code.
fn refusal(emu: &EntraEmulator, error: &azure_core::Error, code: u32) -> (Option<u16>, String) {
    assert!(
        error.to_string().contains(&format!("AADSTS{code}")),
        "{error}"
    );
    let last = emu.requests().pop().unwrap();
    (last.status, last.error.unwrap_or_default())
}

/// The kinds of the `azure_core` errors in the chain of `error`.
fn kinds(error: &azure_core::Error) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        kinds.extend(
            e.downcast_ref::<azure_core::Error>()
                .map(|e| format!("{:?}", e.kind())),
        );
        cause = e.source();
    }
    kinds
}

async fn post_token(emu: &EntraEmulator, form: &[(&str, &str)]) -> reqwest::Response {
    let client = emu.https_client().unwrap();
    client
        .post(emu.token_endpoint(TENANT))
        .form(form)
        .send()
        .await
        .unwrap()
}

fn secret_form() -> Vec<(&'static str, &'static str)> {
    vec![
        ("client_id", SECRET_APP),
        ("client_secret", CLIENT_SECRET),
        ("grant_type", "client_credentials"),
        ("scope", REDIS_SCOPE),
    ]
}

/// A GET to a managed identity endpoint, shaped as `azure_identity` sends it.
async fn get(
    emu: &EntraEmulator,
    mut url: Url,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> reqwest::Response {
    url.query_pairs_mut().extend_pairs(query);
    let mut request = emu.https_client().unwrap().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn imds_url(emu: &EntraEmulator) -> Url {
    emu.imds_endpoint().join(IMDS_PATH).unwrap()
}

const MI_QUERY: [(&str, &str); 3] = [
    ("api-version", "2019-08-01"),
    ("resource", REDIS_AUDIENCE),
    ("client_id", MI_CLIENT),
];

/// Sends every request, whatever its host, to the emulator: what the operator's transport
/// does for the IMDS address.
#[derive(Debug)]
struct ToEmulator {
    client: reqwest::Client,
    base: Url,
}

#[async_trait::async_trait]
impl HttpClient for ToEmulator {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut rerouted = request.clone();
        let mut target = self.base.join(request.url().path())?;
        target.set_query(request.url().query());
        *rerouted.url_mut() = target;
        self.client.execute_request(&rerouted).await
    }
}

#[tokio::test]
async fn client_secret_credential_gets_a_redis_token_with_the_apps_oid() {
    let emu = emulator().await;
    let token = redis_token(secret_credential(&emu, CLIENT_SECRET).as_ref())
        .await
        .unwrap();
    let claims = claims::decode(&token).unwrap();
    assert_eq!(claims.oid, SECRET_APP_OID);
    assert!(claims.has_redis_audience());
    assert_eq!(claims.tid.as_deref(), Some(TENANT));
    assert_eq!((claims.expires_at - claims.issued_at).get_seconds(), 10);
}

#[tokio::test]
async fn client_certificate_credential_gets_a_token_with_a_pkcs12_bundle() {
    let emu = emulator().await;
    let token = redis_token(certificate_credential(&emu, &APP_CERT).as_ref())
        .await
        .unwrap();
    assert_eq!(claims::decode(&token).unwrap().oid, CERT_APP_OID);
    assert_eq!(emu.requests()[0].flow, Some(Flow::ClientCertificate));
}

#[tokio::test]
async fn client_assertion_credential_exchanges_a_service_account_token() {
    let emu = emulator().await;
    let credential = federated_credential(&emu, service_account_token(SA_SUBJECT, 600));
    let token = redis_token(credential.as_ref()).await.unwrap();
    let claims = claims::decode(&token).unwrap();
    assert_eq!(
        (claims.oid.as_str(), claims.app_id.as_deref()),
        (WI_OID, Some(WI_APP))
    );
    assert_eq!(emu.requests()[0].flow, Some(Flow::Federated));
}

#[tokio::test]
async fn issued_tokens_verify_against_the_published_jwks() {
    let emu = emulator().await;
    let token = redis_token(secret_credential(&emu, CLIENT_SECRET).as_ref())
        .await
        .unwrap();
    let client = emu.https_client().unwrap();
    let discovery = emu
        .authority_host()
        .join(&format!("{TENANT}/v2.0/.well-known/openid-configuration"));
    let discovery: Value = client
        .get(discovery.unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
    let jwks: JwkSet = client
        .get(jwks_uri)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let key = DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[REDIS_AUDIENCE]);
    validation.set_issuer(&[discovery["issuer"].as_str().unwrap()]);
    let verified = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    assert_eq!(verified.claims["oid"], SECRET_APP_OID);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_invalid_client() {
    let emu = emulator().await;
    let error = redis_token(secret_credential(&emu, "wrong").as_ref())
        .await
        .unwrap_err();
    let invalid_client = (Some(401), "invalid_client".to_string());
    assert_eq!(refusal(&emu, &error, 7000215), invalid_client);
}

#[tokio::test]
async fn a_certificate_the_app_did_not_register_is_refused() {
    let emu = emulator().await;
    let stranger = pki::rsa_client_certificate("stranger").unwrap();
    let error = redis_token(certificate_credential(&emu, &stranger).as_ref())
        .await
        .unwrap_err();
    let invalid_client = (Some(401), "invalid_client".to_string());
    assert_eq!(refusal(&emu, &error, 700027), invalid_client);
}

#[tokio::test]
async fn a_federated_assertion_for_another_subject_is_refused() {
    let emu = emulator().await;
    let token = service_account_token("system:serviceaccount:shop:intruder", 600);
    let error = redis_token(federated_credential(&emu, token).as_ref())
        .await
        .unwrap_err();
    let invalid_client = (Some(401), "invalid_client".to_string());
    assert_eq!(refusal(&emu, &error, 700213), invalid_client);
}

#[tokio::test]
async fn an_expired_federated_assertion_is_refused() {
    let emu = emulator().await;
    let token = service_account_token(SA_SUBJECT, -60);
    let error = redis_token(federated_credential(&emu, token).as_ref())
        .await
        .unwrap_err();
    assert_eq!(refusal(&emu, &error, 700024).1, "invalid_client");
}

#[tokio::test]
async fn an_expired_certificate_assertion_is_refused() {
    let emu = emulator().await;
    let now = jiff::Timestamp::now().as_second();
    let endpoint = emu.token_endpoint(TENANT).to_string();
    let claims = json!({ "aud": endpoint, "iss": CERT_APP, "sub": CERT_APP, "exp": now - 60 });
    let mut header = Header::new(Algorithm::RS256);
    header.x5t = Some(URL_SAFE_NO_PAD.encode(APP_CERT.sha1_thumbprint()));
    let key = EncodingKey::from_rsa_pem(APP_CERT.key_pem.as_bytes()).unwrap();
    let assertion = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let form = [
        ("client_id", CERT_APP),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", &assertion),
        ("grant_type", "client_credentials"),
        ("scope", REDIS_SCOPE),
    ];
    let body: Value = post_token(&emu, &form).await.json().await.unwrap();
    assert_eq!(
        (body["error"].as_str(), &body["error_codes"]),
        (Some("invalid_client"), &json!([700024]))
    );
}

#[tokio::test]
async fn a_refresh_token_is_rotated_and_cannot_be_redeemed_twice() {
    let emu = emulator().await;
    let form = |rt| {
        [
            ("client_id", PUBLIC_CLIENT),
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("scope", REDIS_SCOPE),
        ]
    };
    let first: Value = post_token(&emu, &form(REFRESH_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let claims = claims::decode(first["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(
        (claims.oid.as_str(), claims.name.as_deref()),
        (USER_OID, Some("alice"))
    );
    let again: Value = post_token(&emu, &form(REFRESH_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["error"], "invalid_grant");
    let rotated = first["refresh_token"].as_str().unwrap();
    assert_eq!(post_token(&emu, &form(rotated)).await.status(), 200);
}

#[tokio::test]
async fn a_revoked_refresh_token_is_refused_with_invalid_grant() {
    let emu = emulator().await;
    assert_eq!(emu.revoke_refresh_tokens("alice"), 1);
    let form = [
        ("client_id", PUBLIC_CLIENT),
        ("grant_type", "refresh_token"),
        ("refresh_token", REFRESH_TOKEN),
        ("scope", REDIS_SCOPE),
    ];
    let body: Value = post_token(&emu, &form).await.json().await.unwrap();
    assert_eq!(
        (body["error"].as_str(), &body["error_codes"]),
        (Some("invalid_grant"), &json!([50173]))
    );
}

#[tokio::test]
async fn imds_answers_with_string_times_when_the_metadata_header_is_sent() {
    let emu = emulator().await;
    let response = get(&emu, imds_url(&emu), &MI_QUERY, &[("metadata", "true")]).await;
    let body: Value = response.json().await.unwrap();
    let expires_on: i64 = body["expires_on"].as_str().unwrap().parse().unwrap();
    let claims = claims::decode(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(
        (claims.oid.as_str(), claims.expires_at.as_second()),
        (MI_OID, expires_on)
    );
    assert_eq!(body["resource"], REDIS_AUDIENCE);
}

#[tokio::test]
async fn imds_refuses_a_request_without_the_metadata_header() {
    let emu = emulator().await;
    let response = get(&emu, imds_url(&emu), &MI_QUERY, &[]).await;
    assert_eq!(response.status(), 400);
    assert_eq!(emu.requests()[0].error.as_deref(), Some("invalid_request"));
}

#[tokio::test]
async fn app_service_needs_the_identity_header() {
    let emu = emulator().await;
    let headers = [("metadata", "true"), ("x-identity-header", IDENTITY_HEADER)];
    let ok = get(&emu, emu.app_service_endpoint(), &MI_QUERY, &headers).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(emu.identity_header().expose_secret(), IDENTITY_HEADER);
    let refused = get(&emu, emu.app_service_endpoint(), &MI_QUERY, &headers[..1]).await;
    assert_eq!(refused.status(), 401);
}

#[tokio::test]
async fn managed_identity_credential_gets_a_token_through_a_rewritten_imds_address() {
    let emu = emulator().await;
    let transport = ToEmulator {
        client: emu.https_client().unwrap(),
        base: emu.imds_endpoint(),
    };
    let client_options = ClientOptions {
        transport: Some(Transport::new(Arc::new(transport))),
        ..Default::default()
    };
    let options = ManagedIdentityCredentialOptions {
        user_assigned_id: Some(UserAssignedId::ObjectId(MI_OID.into())),
        client_options,
    };
    let credential = ManagedIdentityCredential::new(Some(options)).unwrap();
    let token = redis_token(credential.as_ref()).await.unwrap();
    assert_eq!(claims::decode(&token).unwrap().oid, MI_OID);
}

#[tokio::test]
async fn a_503_fault_is_answered_once_then_tokens_flow_again() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::ServiceUnavailable).times(1));
    let credential = secret_credential(&emu, CLIENT_SECRET);
    let error = redis_token(credential.as_ref()).await.unwrap_err();
    assert_eq!(refusal(&emu, &error, 90033).0, Some(503));
    assert!(redis_token(credential.as_ref()).await.is_ok());
}

#[tokio::test]
async fn azure_identity_retries_a_503_by_default() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::ServiceUnavailable).times(1));
    let options = ClientSecretCredentialOptions {
        client_options: client_options(&emu, RetryOptions::default()),
    };
    let credential = ClientSecretCredential::new(
        TENANT,
        SECRET_APP.into(),
        CLIENT_SECRET.into(),
        Some(options),
    )
    .unwrap();
    assert!(redis_token(credential.as_ref()).await.is_ok());
    let statuses: Vec<_> = emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(503), Some(200)]);
}

#[tokio::test]
async fn a_429_fault_carries_retry_after() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::TooManyRequests {
        retry_after_secs: 7,
    }));
    let response = post_token(&emu, &secret_form()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
}

#[tokio::test]
async fn a_500_fault_for_one_client_leaves_the_others_alone() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::InternalServerError).for_id(CERT_APP));
    assert_eq!(post_token(&emu, &secret_form()).await.status(), 200);
    let error = redis_token(certificate_credential(&emu, &APP_CERT).as_ref())
        .await
        .unwrap_err();
    assert_eq!(refusal(&emu, &error, 50000).0, Some(500));
}

#[tokio::test]
async fn an_injected_oauth_error_has_the_entra_error_shape() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::oauth(
        "invalid_client",
        7000222,
        "The secret expired.",
    )));
    let response = post_token(&emu, &secret_form()).await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (&body["error"], &body["error_codes"]),
        (&json!("invalid_client"), &json!([7000222]))
    );
    for field in [
        "error_description",
        "timestamp",
        "trace_id",
        "correlation_id",
    ] {
        assert!(body[field].is_string(), "{field} missing");
    }
}

#[tokio::test]
async fn azure_identity_reports_entra_errors_as_data_conversion_failures() {
    // Its error type borrows `error_description`, which fails on the escaped line breaks
    // Entra ID puts before the trace id: the status and error codes are lost.
    let emu = emulator().await;
    let error = redis_token(secret_credential(&emu, "wrong").as_ref())
        .await
        .unwrap_err();
    assert_eq!(kinds(&error), ["Credential", "DataConversion"]);
    assert!(error.to_string().contains("AADSTS7000215"));
}

#[tokio::test]
async fn a_delay_fault_slows_the_answer() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::Delay(Duration::from_millis(600))).times(1));
    let started = Instant::now();
    assert_eq!(post_token(&emu, &secret_form()).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn a_dropped_connection_gives_no_answer() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::DropConnection).times(1));
    let client = emu.https_client().unwrap();
    let sent = client
        .post(emu.token_endpoint(TENANT))
        .form(&secret_form())
        .send()
        .await;
    assert!(sent.is_err());
    assert_eq!(emu.requests()[0].status, None);
    assert_eq!(emu.requests()[0].faults, ["drop_connection"]);
}

#[tokio::test]
async fn a_token_without_oid_fails_claims_decoding() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::TokenWithoutOid));
    let token = redis_token(secret_credential(&emu, CLIENT_SECRET).as_ref())
        .await
        .unwrap();
    assert_eq!(
        claims::decode(&token),
        Err(ClaimsError::MissingClaim("oid"))
    );
}

#[tokio::test]
async fn a_malformed_body_is_not_json() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::MalformedBody).for_id(MI_CLIENT));
    let response = get(&emu, imds_url(&emu), &MI_QUERY, &[("metadata", "true")]).await;
    assert_eq!(response.status(), 200);
    assert!(response.json::<Value>().await.is_err());
}

#[tokio::test]
async fn a_lying_expires_in_is_believed_by_azure_identity() {
    let emu = emulator().await;
    emu.inject(FaultRule::new(Fault::LyingExpiresIn(86_400)));
    let credential = secret_credential(&emu, CLIENT_SECRET);
    let token = credential.get_token(&[REDIS_SCOPE], None).await.unwrap();
    let claims = claims::decode(token.token.secret()).unwrap();
    assert_eq!((claims.expires_at - claims.issued_at).get_seconds(), 10);
    assert!(token.expires_on.unix_timestamp() > claims.expires_at.as_second() + 80_000);
}

#[tokio::test]
async fn the_request_log_records_requests_without_secrets() {
    let emu = emulator().await;
    let token = redis_token(secret_credential(&emu, CLIENT_SECRET).as_ref())
        .await
        .unwrap();
    let _ = redis_token(secret_credential(&emu, "other-wrong-secret").as_ref()).await;
    let log = emu.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].flow, log[0].client_id.as_deref()),
        (Some(Flow::ClientSecret), Some(SECRET_APP))
    );
    assert_eq!(
        (log[1].status, log[1].error.as_deref()),
        (Some(401), Some("invalid_client"))
    );
    let text = format!("{log:?}");
    for secret in [CLIENT_SECRET, "other-wrong-secret", &token] {
        assert!(!text.contains(secret));
    }
}

#[tokio::test]
async fn issued_token_events_carry_the_oid_and_expiry() {
    let emu = emulator().await;
    let mut events = emu.subscribe();
    let token = redis_token(secret_credential(&emu, CLIENT_SECRET).as_ref())
        .await
        .unwrap();
    let event = events.recv().await.unwrap();
    assert_eq!(
        (event.oid.as_str(), event.token.expose_secret()),
        (SECRET_APP_OID, token.as_str())
    );
    assert_eq!(event.expires_at, claims::decode(&token).unwrap().expires_at);
}

#[tokio::test]
async fn shutdown_stops_answering() {
    let emu = emulator().await;
    let client = emu.https_client().unwrap();
    emu.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        client
            .post(emu.token_endpoint(TENANT))
            .form(&secret_form())
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn expires_in_is_the_lifetime_written_in_the_token() {
    let emu = emulator().await;
    let body: Value = post_token(&emu, &secret_form()).await.json().await.unwrap();
    let claims = claims::decode(body["access_token"].as_str().unwrap()).unwrap();
    let lifetime = (claims.expires_at - claims.issued_at).get_seconds();
    assert_eq!(body["expires_in"], lifetime);
}
