//! HTTP handlers of the emulator: the token endpoint, the managed identity endpoints and
//! discovery, each applying injected faults and recording the request.

use super::EmulatorError;
use super::authorize::{self, AuthorizeAnswer};
use super::directory::{Directory, Principal};
use super::faults::{FaultBook, FaultPlan};
use super::grants::{self, TokenForm};
use super::log::{Flow, RequestRecord};
use super::managed::{self, MiRequest};
use super::responses::{
    ErrorName, fault_response, internal_error, json_response, oauth_response, with_error_name,
};
use super::serve::DropConnection;
use super::tokens::{AccessClaims, IssuedToken, TokenSigner};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::broadcast;
use url::Url;

/// Path of the IMDS token endpoint.
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
/// Path of the App Service token endpoint.
pub const APP_SERVICE_PATH: &str = "/msi/token";

/// State shared by the handlers and the emulator's handle.
pub(crate) struct Shared {
    pub directory: Directory,
    pub signer: TokenSigner,
    pub authority: Url,
    pub lifetime: i64,
    pub identity_header: SecretString,
    pub faults: Mutex<FaultBook>,
    pub log: Mutex<Vec<RequestRecord>>,
    pub events: broadcast::Sender<IssuedToken>,
}

/// The routes of the emulator.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize_page))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(keys))
        .route(IMDS_PATH, get(imds))
        .route(APP_SERVICE_PATH, get(app_service))
        .fallback(not_found)
        .with_state(shared)
}

/// `authority` joined with `/{tenant}/{suffix}`.
pub(crate) fn tenant_url(authority: &Url, tenant: &str, suffix: &str) -> Url {
    let mut url = authority.clone();
    url.set_path(&format!("/{tenant}/{suffix}"));
    url
}

async fn token(
    State(s): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let form = TokenForm::parse(&body);
    let mut record = RequestRecord::new(&method, uri.path());
    record.flow = form.flow();
    record.grant_type = form.get("grant_type").map(str::to_string);
    record.client_id = form.get("client_id").map(str::to_string);

    let plan = s.plan(form.get("client_id").as_slice(), &mut record).await;
    let response = match &plan.answer {
        Some(fault) => fault_response(fault),
        None => s.grant(&tenant, &form, &plan),
    };
    s.finish(record, response)
}

/// The sign-in page: a configured user approves at once and the browser is sent back to the
/// redirect URI with a code.
async fn authorize_page(
    State(s): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut record = RequestRecord::new(&method, uri.path());
    record.client_id = query.get("client_id").cloned();
    let now = Timestamp::now().as_second();
    let response = match authorize::authorize(&s.directory, &tenant, &query, now) {
        AuthorizeAnswer::Redirect { location, error } => {
            let found = (
                StatusCode::FOUND,
                [(header::LOCATION, location.to_string())],
            );
            match error {
                Some(error) => with_error_name(found.into_response(), &error),
                None => found.into_response(),
            }
        }
        AuthorizeAnswer::Refuse(error) => oauth_response(&error),
    };
    s.finish(record, response)
}

async fn imds(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    s.managed_identity(Flow::Imds, &method, &uri, &query, &headers)
        .await
}

async fn app_service(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    s.managed_identity(Flow::AppService, &method, &uri, &query, &headers)
        .await
}

async fn openid_configuration(
    State(s): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    method: Method,
    uri: Uri,
) -> Response {
    let url = |suffix| tenant_url(&s.authority, &tenant, suffix).to_string();
    let body = json!({
        "issuer": url("v2.0"),
        "token_endpoint": url("oauth2/v2.0/token"),
        "authorization_endpoint": url("oauth2/v2.0/authorize"),
        "jwks_uri": url("discovery/v2.0/keys"),
        "grant_types_supported": ["client_credentials", "refresh_token", "authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["pairwise"],
        "tenant_region_scope": null,
    });
    s.finish(
        RequestRecord::new(&method, uri.path()),
        json_response(StatusCode::OK, &body),
    )
}

async fn keys(State(s): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let response = json_response(StatusCode::OK, &s.signer.jwks());
    s.finish(RequestRecord::new(&method, uri.path()), response)
}

async fn not_found(State(s): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    s.finish(
        RequestRecord::new(&method, uri.path()),
        StatusCode::NOT_FOUND.into_response(),
    )
}

impl Shared {
    /// Plans the faults for a request about `ids`, notes them and waits out any delay.
    async fn plan(&self, ids: &[&str], record: &mut RequestRecord) -> FaultPlan {
        let plan = self
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(ids);
        record.faults = plan.names();
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        plan
    }

    fn grant(&self, tenant: &str, form: &TokenForm, plan: &FaultPlan) -> Response {
        let endpoint = tenant_url(&self.authority, tenant, "oauth2/v2.0/token");
        let now = Timestamp::now().as_second();
        let grant = match grants::decide(&self.directory, tenant, form, endpoint.as_str(), now) {
            Ok(grant) => grant,
            Err(refusal) => return oauth_response(&refusal),
        };
        let token = match self.issue(&grant.principal, &grant.audience, now, plan) {
            Ok(token) => token,
            Err(error) => return internal_error(&error),
        };

        let expires_in = plan.lying_expires_in.unwrap_or(self.lifetime);
        let mut body = json!({
            "token_type": "Bearer",
            "scope": grant.scope,
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": token,
        });
        if let Some(refresh_token) = &grant.refresh_token {
            body["refresh_token"] = refresh_token.expose_secret().into();
        }
        json_response(StatusCode::OK, &body)
    }

    async fn managed_identity(
        &self,
        flow: Flow,
        method: &Method,
        uri: &Uri,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Response {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let expected = self.identity_header.expose_secret();
        let req = MiRequest {
            flow,
            query,
            metadata: header("metadata"),
            identity_header_ok: header("x-identity-header") == Some(expected),
        };
        let mut record = RequestRecord::new(method, uri.path());
        record.flow = Some(flow);
        record.client_id = req.named_id().map(str::to_string);

        let plan = self
            .plan(&managed::fault_ids(&self.directory, &req), &mut record)
            .await;
        let response = match &plan.answer {
            Some(fault) => fault_response(fault),
            None => self.managed_token(&req, &plan),
        };
        self.finish(record, response)
    }

    fn managed_token(&self, req: &MiRequest<'_>, plan: &FaultPlan) -> Response {
        let (principal, resource) = match managed::decide(&self.directory, req) {
            Ok(found) => found,
            Err(refusal) => {
                let status =
                    StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
                return with_error_name(json_response(status, &refusal.body()), refusal.error);
            }
        };
        let now = Timestamp::now().as_second();
        let audience = resource.strip_suffix("/.default").unwrap_or(&resource);
        match self.issue(&principal, audience, now, plan) {
            Ok(token) => {
                let lifetime = plan.lying_expires_in.unwrap_or(self.lifetime);
                let body =
                    managed::token_body(&token, &principal.client_id, &resource, now, lifetime);
                json_response(StatusCode::OK, &body)
            }
            Err(error) => internal_error(&error),
        }
    }

    /// Signs a token for `principal` and announces it to subscribers.
    fn issue(
        &self,
        principal: &Principal,
        audience: &str,
        now: i64,
        plan: &FaultPlan,
    ) -> Result<String, EmulatorError> {
        let issuer = tenant_url(&self.authority, &principal.tenant, "v2.0").to_string();
        let mut claims = AccessClaims::new(principal, audience, issuer, now, self.lifetime);
        if plan.without_oid {
            claims.oid = None;
        }
        let token = self.signer.sign(&claims)?;

        tracing::info!(
            oid = %principal.object_id,
            client_id = %principal.client_id,
            audience,
            "Token issued"
        );
        if let Some(oid) = &claims.oid {
            // Nobody listening is fine: the event is for whoever cares.
            let _ = self.events.send(IssuedToken {
                oid: oid.clone(),
                client_id: principal.client_id.clone(),
                audience: audience.to_string(),
                token: SecretString::from(token.clone()),
                issued_at: Timestamp::from_second(claims.iat).unwrap_or_default(),
                expires_at: Timestamp::from_second(claims.exp).unwrap_or_default(),
            });
        }
        Ok(token)
    }

    /// Completes `record` from `response`, stores it, and returns the response.
    fn finish(&self, mut record: RequestRecord, response: Response) -> Response {
        let dropped = response.extensions().get::<DropConnection>().is_some();
        record.status = (!dropped).then(|| response.status().as_u16());
        record.error = response
            .extensions()
            .get::<ErrorName>()
            .map(|e| e.0.clone());
        tracing::debug!(
            path = %record.path,
            flow = ?record.flow,
            status = ?record.status,
            error = ?record.error,
            "Request answered"
        );
        self.log().push(record);
        response
    }

    pub fn log(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
