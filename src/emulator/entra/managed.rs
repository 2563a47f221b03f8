//! Decides managed identity requests, IMDS style and App Service style, in the shape
//! `azure_identity` sends and parses them.

use super::config::ManagedIdentity;
use super::directory::{Directory, Principal};
use super::log::Flow;
use serde_json::{Value, json};
use std::collections::HashMap;

/// The only API version the App Service endpoint accepts.
pub const APP_SERVICE_API_VERSION: &str = "2019-08-01";

/// A refused managed identity request: status and the IMDS error body fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MiRefusal {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl MiRefusal {
    fn bad_request(description: impl Into<String>) -> MiRefusal {
        MiRefusal {
            status: 400,
            error: "invalid_request",
            description: description.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({ "error": self.error, "error_description": self.description })
    }
}

/// A managed identity request, reduced to what the decision needs.
#[derive(Debug)]
pub(crate) struct MiRequest<'a> {
    pub flow: Flow,
    pub query: &'a HashMap<String, String>,
    /// The `Metadata` header.
    pub metadata: Option<&'a str>,
    /// Whether `X-IDENTITY-HEADER` carries the configured secret.
    pub identity_header_ok: bool,
}

impl MiRequest<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The identity id the request names, if any (for faults and the log).
    pub fn named_id(&self) -> Option<&str> {
        [
            "client_id",
            "object_id",
            "principal_id",
            "msi_res_id",
            "mi_res_id",
        ]
        .into_iter()
        .find_map(|p| self.param(p))
    }
}

/// Finds the identity `req` asks for and the resource (audience) it wants.
pub(crate) fn decide(
    dir: &Directory,
    req: &MiRequest<'_>,
) -> Result<(Principal, String), MiRefusal> {
    check_headers(req)?;
    let api_version = req.param("api-version").ok_or_else(|| {
        MiRefusal::bad_request("Required query variable 'api-version' is missing")
    })?;
    if req.flow == Flow::AppService && api_version != APP_SERVICE_API_VERSION {
        let text = format!("api-version {api_version} is not supported");
        return Err(MiRefusal::bad_request(text));
    }
    let resource = req
        .param("resource")
        .ok_or_else(|| MiRefusal::bad_request("Required query variable 'resource' is missing"))?;
    let identity = select(&dir.managed_identities, req)?;

    let principal = Principal {
        object_id: identity.object_id.clone(),
        client_id: identity.client_id.clone(),
        tenant: dir.tenant.clone(),
        kind: "app",
        name: None,
        resource_id: identity.resource_id.clone(),
        scp: None,
    };
    Ok((principal, resource.to_string()))
}

/// The ids a fault may target for this request: the one it names, and those of the
/// identity it resolves to.
pub(crate) fn fault_ids<'a>(dir: &'a Directory, req: &'a MiRequest<'_>) -> Vec<&'a str> {
    let mut ids: Vec<&str> = req.named_id().into_iter().collect();
    if let Ok(mi) = select(&dir.managed_identities, req) {
        ids.extend([mi.client_id.as_str(), mi.object_id.as_str()]);
        ids.extend(mi.resource_id.as_deref());
    }
    ids
}

fn check_headers(req: &MiRequest<'_>) -> Result<(), MiRefusal> {
    match req.flow {
        Flow::AppService if !req.identity_header_ok => Err(MiRefusal {
            status: 401,
            error: "unauthorized_client",
            description: "The X-IDENTITY-HEADER header is missing or wrong".to_string(),
        }),
        Flow::Imds if !req.metadata.is_some_and(|m| m.eq_ignore_ascii_case("true")) => Err(
            MiRefusal::bad_request("Required metadata header not specified"),
        ),
        _ => Ok(()),
    }
}

fn select<'a>(
    identities: &'a [ManagedIdentity],
    req: &MiRequest<'_>,
) -> Result<&'a ManagedIdentity, MiRefusal> {
    let not_found = || MiRefusal::bad_request("Identity not found");
    let by = |pred: &dyn Fn(&ManagedIdentity) -> bool| {
        identities.iter().find(|mi| pred(mi)).ok_or_else(not_found)
    };
    let object_id = req.param("object_id").or(req.param("principal_id"));
    let resource_id = req.param("msi_res_id").or(req.param("mi_res_id"));
    if let Some(id) = req.param("client_id") {
        return by(&|mi| mi.client_id == id);
    }
    if let Some(id) = object_id {
        return by(&|mi| mi.object_id == id);
    }
    if let Some(id) = resource_id {
        return by(&|mi| mi.resource_id.as_deref() == Some(id));
    }
    if let Some(system) = identities.iter().find(|mi| mi.system_assigned) {
        return Ok(system);
    }
    match identities {
        [only] => Ok(only),
        [] => Err(not_found()),
        _ => Err(MiRefusal::bad_request(
            "Multiple user assigned identities exist, please specify the clientId / resourceId \
             of the identity in the token request",
        )),
    }
}

/// The success body: every value a string, as IMDS and App Service send them.
pub(crate) fn token_body(
    token: &str,
    client_id: &str,
    resource: &str,
    iat: i64,
    lifetime: i64,
) -> Value {
    json!({
        "access_token": token,
        "client_id": client_id,
        "expires_in": lifetime.to_string(),
        "expires_on": (iat + lifetime).to_string(),
        "ext_expires_in": lifetime.to_string(),
        "not_before": iat.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities() -> Vec<ManagedIdentity> {
        vec![
            ManagedIdentity::user_assigned("c-1", "o-1").with_resource_id("/r/1"),
            ManagedIdentity::user_assigned("c-2", "o-2"),
        ]
    }

    fn request(query: &HashMap<String, String>) -> MiRequest<'_> {
        MiRequest {
            flow: Flow::Imds,
            query,
            metadata: Some("true"),
            identity_header_ok: false,
        }
    }

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_identity_is_found_by_client_object_or_resource_id() {
        let ids = identities();
        for (param, value) in [
            ("client_id", "c-2"),
            ("object_id", "o-2"),
            ("msi_res_id", "/r/1"),
        ] {
            let q = query(&[(param, value)]);
            assert!(select(&ids, &request(&q)).is_ok(), "{param}");
        }
    }

    #[test]
    fn naming_no_identity_among_several_user_assigned_ones_is_refused() {
        let q = query(&[]);
        let refusal = select(&identities(), &request(&q)).unwrap_err();
        assert!(refusal.description.starts_with("Multiple user assigned"));
    }

    #[test]
    fn the_system_assigned_identity_is_the_default() {
        let mut ids = identities();
        ids.push(ManagedIdentity::system_assigned("c-s", "o-s"));
        let q = query(&[]);
        assert_eq!(select(&ids, &request(&q)).unwrap().object_id, "o-s");
    }

    #[test]
    fn imds_requests_without_the_metadata_header_are_refused() {
        let q = query(&[]);
        let req = MiRequest {
            metadata: None,
            ..request(&q)
        };
        assert_eq!(check_headers(&req).unwrap_err().status, 400);
    }
}
