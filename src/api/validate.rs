//! Checks a spec beyond what the schema can say, and resolves its defaults.

use super::{AmrCredentialSpec, AuthorityType, DEFAULT_SCOPE, FlowType, SecretKeys};
use crate::api::{RetryConfig, TokenManagerConfig};

/// A spec that the controller cannot act on, with a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Where tokens are requested from, after defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// The operator's own authority host and default tenant.
    OperatorDefault,
    /// The operator's authority host with this tenant.
    Tenant(String),
    /// A full authority URL: host and tenant.
    Custom {
        /// Scheme, host and port, such as `https://login.example.net`.
        host: url::Url,
        /// The tenant taken from the URL's first path segment.
        tenant: String,
    },
}

/// The parts of a spec the controller acts on, with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSpec {
    /// The flow.
    pub flow: FlowType,
    /// Scopes to request, never empty.
    pub scopes: Vec<String>,
    /// Where tokens come from.
    pub authority: Authority,
    /// Refresh and retry settings.
    pub token_manager: TokenManagerConfig,
    /// Name of the Secret to write.
    pub secret_name: String,
    /// Keys inside that Secret.
    pub keys: SecretKeys,
}

/// Checks `spec` of the resource named `name` and applies its defaults.
///
/// # Errors
/// The first problem found, phrased for the person who wrote the spec.
pub fn validate(name: &str, spec: &AmrCredentialSpec) -> Result<ResolvedSpec, SpecError> {
    check_flow_fields(spec)?;
    let scopes = resolve_scopes(spec)?;
    let authority = resolve_authority(spec)?;
    check_token_manager(&spec.token_manager_config)?;
    let secret_name = spec
        .target
        .secret_name
        .clone()
        .unwrap_or_else(|| name.to_string());
    check_secret_name(&secret_name)?;
    check_keys(&spec.target.keys)?;
    Ok(ResolvedSpec {
        flow: spec.flow.flow_type,
        scopes,
        authority,
        token_manager: spec.token_manager_config.clone(),
        secret_name,
        keys: spec.target.keys.clone(),
    })
}

fn err<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(message.into()))
}

fn check_flow_fields(spec: &AmrCredentialSpec) -> Result<(), SpecError> {
    let f = &spec.flow;
    let t = f.flow_type.as_str();
    match f.flow_type {
        FlowType::ClientCredentials => {
            if f.client_id.is_none() || f.client_secret_ref.is_none() {
                return err(format!("{t} needs flow.clientId and flow.clientSecretRef"));
            }
        }
        FlowType::ClientCredentialsWithCertificate => {
            let Some(cert) = &f.client_certificate_ref else {
                return err(format!(
                    "{t} needs flow.clientId and flow.clientCertificateRef"
                ));
            };
            if f.client_id.is_none() {
                return err(format!(
                    "{t} needs flow.clientId and flow.clientCertificateRef"
                ));
            }
            if let Some(tp) = &cert.thumbprint_sha256 {
                let hex_ok = tp.len() == 64 && tp.chars().all(|c| c.is_ascii_hexdigit());
                if !hex_ok {
                    return err("flow.clientCertificateRef.thumbprintSha256 must be 64 hex digits");
                }
            }
        }
        FlowType::UserAssignedManagedIdentity => {
            let given = [
                &f.user_assigned_client_id,
                &f.user_assigned_object_id,
                &f.user_assigned_resource_id,
            ]
            .iter()
            .filter(|v| v.is_some())
            .count();
            if given != 1 {
                return err(format!(
                    "{t} needs exactly one of flow.userAssignedClientId, \
                     flow.userAssignedObjectId, flow.userAssignedResourceId"
                ));
            }
        }
        FlowType::WorkloadIdentity => {
            if f.service_account_name.as_deref().unwrap_or("").is_empty() {
                return err(format!("{t} needs flow.serviceAccountName"));
            }
        }
        FlowType::AuthorizationCodeWithPKCE => {
            if f.client_id.is_none() || f.redirect_uri.is_none() {
                return err(format!(
                    "{t} needs flow.clientId, flow.redirectUri and flow.refreshTokenSecretRef"
                ));
            }
            if f.refresh_token_secret_ref.is_none() {
                return err(format!(
                    "{t} needs flow.clientId, flow.redirectUri and flow.refreshTokenSecretRef"
                ));
            }
        }
        FlowType::SystemAssignedManagedIdentity | FlowType::DefaultAzureCredential => {}
    }
    for (field, value) in [("clientId", &f.client_id), ("tenantId", &f.tenant_id)] {
        if value.as_deref().is_some_and(str::is_empty) {
            return err(format!("flow.{field} must not be empty"));
        }
    }
    Ok(())
}

fn resolve_scopes(spec: &AmrCredentialSpec) -> Result<Vec<String>, SpecError> {
    let scopes = match &spec.scopes {
        None => return Ok(vec![DEFAULT_SCOPE.to_string()]),
        Some(s) => s.to_vec(),
    };
    if scopes.is_empty() {
        return err("scopes must not be empty; omit the field to use the Redis scope");
    }
    if scopes
        .iter()
        .any(|s| s.trim().is_empty() || s.chars().any(char::is_whitespace))
    {
        return err("each scope must be a non-empty string without spaces");
    }
    Ok(scopes)
}

fn resolve_authority(spec: &AmrCredentialSpec) -> Result<Authority, SpecError> {
    let flow_tenant = spec.flow.tenant_id.clone();
    let Some(cfg) = &spec.authority_config else {
        return Ok(flow_tenant.map_or(Authority::OperatorDefault, Authority::Tenant));
    };
    match cfg.authority_type {
        AuthorityType::Default => {
            Ok(flow_tenant.map_or(Authority::OperatorDefault, Authority::Tenant))
        }
        AuthorityType::MultiTenant => match flow_tenant.or_else(|| cfg.tenant_id.clone()) {
            Some(t) if !t.is_empty() => Ok(Authority::Tenant(t)),
            _ => err("authorityConfig type multi-tenant needs authorityConfig.tenantId"),
        },
        AuthorityType::Custom => {
            let Some(raw) = &cfg.authority_url else {
                return err("authorityConfig type custom needs authorityConfig.authorityUrl");
            };
            parse_authority_url(raw)
        }
    }
}

/// Splits an authority URL such as `https://login.example.net/<tenant>` into host and tenant.
fn parse_authority_url(raw: &str) -> Result<Authority, SpecError> {
    let bad = |why: &str| {
        err(format!(
            "authorityConfig.authorityUrl {raw:?} is not usable: {why} \
             (expected https://<host>/<tenant>)"
        ))
    };
    let url = match url::Url::parse(raw) {
        Ok(u) => u,
        Err(e) => return bad(&e.to_string()),
    };
    if url.scheme() != "https" {
        return bad("the scheme must be https");
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return bad("it needs a host and no query or fragment");
    }
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    let [tenant] = segments.as_slice() else {
        return bad("the path must be exactly one tenant segment");
    };
    let mut host = url.clone();
    host.set_path("/");
    Ok(Authority::Custom {
        host,
        tenant: (*tenant).to_string(),
    })
}

fn check_token_manager(cfg: &TokenManagerConfig) -> Result<(), SpecError> {
    let ratio = cfg.expiration_refresh_ratio;
    if !(ratio > 0.0 && ratio <= 1.0) {
        return err(format!(
            "tokenManagerConfig.expirationRefreshRatio must be in (0, 1], got {ratio}"
        ));
    }
    check_retry(&cfg.retry)
}

fn check_retry(r: &RetryConfig) -> Result<(), SpecError> {
    if r.max_attempts < 1 {
        return err("tokenManagerConfig.retry.maxAttempts must be at least 1");
    }
    if r.initial_delay_ms > r.max_delay_ms {
        return err(format!(
            "tokenManagerConfig.retry.initialDelayMs ({}) must not exceed maxDelayMs ({})",
            r.initial_delay_ms, r.max_delay_ms
        ));
    }
    if !(r.backoff_multiplier >= 1.0 && r.backoff_multiplier.is_finite()) {
        return err(format!(
            "tokenManagerConfig.retry.backoffMultiplier must be at least 1, got {}",
            r.backoff_multiplier
        ));
    }
    if !(0.0..=1.0).contains(&r.jitter_percentage) {
        return err(format!(
            "tokenManagerConfig.retry.jitterPercentage must be in [0, 1], got {}",
            r.jitter_percentage
        ));
    }
    Ok(())
}

/// Secret names are DNS subdomains: lower-case alphanumerics, `-` and `.`, at most 253.
fn check_secret_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        err(format!(
            "target.secretName {name:?} is not a valid Secret name"
        ))
    }
}

fn check_keys(keys: &SecretKeys) -> Result<(), SpecError> {
    let all = [&keys.username, &keys.password, &keys.expires_at];
    for k in all {
        let ok = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return err(format!("target.keys value {k:?} is not a valid Secret key"));
        }
    }
    if keys.username == keys.password
        || keys.username == keys.expires_at
        || keys.password == keys.expires_at
    {
        return err("target.keys username, password and expiresAt must differ");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AuthorityConfig, FlowSpec, Scopes, SecretKeyRef};

    fn client_credentials() -> AmrCredentialSpec {
        serde_yaml_ng::from_str(
            "flow: {type: ClientCredentials, clientId: app, clientSecretRef: {name: s, key: k}}",
        )
        .expect("fixture parses")
    }

    #[test]
    fn defaults_fill_scope_secret_name_and_keys() {
        let r = validate("orders", &client_credentials()).unwrap();
        assert_eq!(r.scopes, vec![DEFAULT_SCOPE.to_string()]);
        assert_eq!(r.secret_name, "orders");
        assert_eq!(r.keys.password, "password");
        assert_eq!(r.authority, Authority::OperatorDefault);
    }

    #[test]
    fn a_single_string_scope_is_accepted() {
        let mut s = client_credentials();
        s.scopes = Some(Scopes::One("api://x/.default".into()));
        assert_eq!(
            validate("n", &s).unwrap().scopes,
            vec!["api://x/.default".to_string()]
        );
    }

    #[test]
    fn an_empty_scope_list_is_rejected() {
        let mut s = client_credentials();
        s.scopes = Some(Scopes::Many(vec![]));
        assert!(
            validate("n", &s)
                .unwrap_err()
                .0
                .contains("scopes must not be empty")
        );
    }

    #[test]
    fn client_credentials_without_secret_ref_is_rejected() {
        let mut s = client_credentials();
        s.flow.client_secret_ref = None;
        assert!(validate("n", &s).unwrap_err().0.contains("clientSecretRef"));
    }

    #[test]
    fn user_assigned_identity_needs_exactly_one_id() {
        let mut s = client_credentials();
        s.flow = FlowSpec {
            flow_type: FlowType::UserAssignedManagedIdentity,
            ..Default::default()
        };
        assert!(validate("n", &s).is_err());
        s.flow.user_assigned_object_id = Some("oid".into());
        assert!(validate("n", &s).is_ok());
        s.flow.user_assigned_client_id = Some("cid".into());
        assert!(validate("n", &s).unwrap_err().0.contains("exactly one"));
    }

    #[test]
    fn custom_authority_splits_host_and_tenant() {
        let mut s = client_credentials();
        s.authority_config = Some(AuthorityConfig {
            authority_type: AuthorityType::Custom,
            tenant_id: None,
            authority_url: Some("https://127.0.0.1:8443/contoso".into()),
        });
        let Authority::Custom { host, tenant } = validate("n", &s).unwrap().authority else {
            panic!("expected a custom authority");
        };
        assert_eq!(host.as_str(), "https://127.0.0.1:8443/");
        assert_eq!(tenant, "contoso");
    }

    #[test]
    fn malformed_authority_url_is_rejected_with_the_expected_form() {
        let mut s = client_credentials();
        for bad in ["not a url", "http://h/t", "https://h/", "https://h/a/b"] {
            s.authority_config = Some(AuthorityConfig {
                authority_type: AuthorityType::Custom,
                tenant_id: None,
                authority_url: Some(bad.into()),
            });
            let e = validate("n", &s).unwrap_err().0;
            assert!(e.contains("https://<host>/<tenant>"), "{bad}: {e}");
        }
    }

    #[test]
    fn out_of_range_ratio_is_rejected() {
        let mut s = client_credentials();
        for r in [0.0, -0.5, 1.01, f64::NAN] {
            s.token_manager_config.expiration_refresh_ratio = r;
            assert!(
                validate("n", &s)
                    .unwrap_err()
                    .0
                    .contains("expirationRefreshRatio")
            );
        }
        s.token_manager_config.expiration_refresh_ratio = 1.0;
        assert!(validate("n", &s).is_ok());
    }

    #[test]
    fn retry_numbers_out_of_range_are_rejected() {
        let cases: [fn(&mut RetryConfig); 4] = [
            |r| r.max_attempts = 0,
            |r| r.initial_delay_ms = r.max_delay_ms + 1,
            |r| r.backoff_multiplier = 0.5,
            |r| r.jitter_percentage = 1.5,
        ];
        for (i, break_it) in cases.iter().enumerate() {
            let mut s = client_credentials();
            break_it(&mut s.token_manager_config.retry);
            assert!(validate("n", &s).is_err(), "case {i} accepted");
        }
    }

    #[test]
    fn colliding_secret_keys_are_rejected() {
        let mut s = client_credentials();
        s.target.keys.password = "username".into();
        assert!(validate("n", &s).unwrap_err().0.contains("must differ"));
    }

    #[test]
    fn invalid_secret_name_is_rejected() {
        let mut s = client_credentials();
        s.target.secret_name = Some("Not_Valid".into());
        assert!(validate("n", &s).unwrap_err().0.contains("secretName"));
    }

    #[test]
    fn secret_refs_carry_no_namespace_field() {
        let r: Result<SecretKeyRef, _> =
            serde_json::from_str(r#"{"name":"a","key":"b","namespace":"other"}"#);
        // Unknown fields are ignored, so a namespace can never be named.
        assert_eq!(
            r.unwrap(),
            SecretKeyRef {
                name: "a".into(),
                key: "b".into()
            }
        );
    }
}
