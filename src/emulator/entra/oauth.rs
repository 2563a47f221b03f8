//! OAuth errors in the shape Entra ID answers them, with the codes it uses.

use jiff::Timestamp;
use serde_json::{Value, json};

/// An OAuth error answer: `error`, an `AADSTS` code and a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status of the answer.
    pub status: u16,
    /// The OAuth `error` value, such as `invalid_client`.
    pub error: String,
    /// The `AADSTS` number, reported in `error_codes`.
    pub code: u32,
    /// What went wrong, without the `AADSTS` prefix.
    pub description: String,
}

impl OAuthError {
    /// An error with the status Entra ID uses for `error` (401 for `invalid_client`,
    /// 400 otherwise).
    pub fn new(error: &str, code: u32, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" { 401 } else { 400 };
        OAuthError {
            status,
            error: error.to_string(),
            code,
            description: description.into(),
        }
    }

    /// The same error answered with another HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The JSON body Entra ID sends, with fresh trace and correlation ids.
    pub fn body(&self, now: Timestamp) -> Value {
        let trace_id = new_guid();
        let correlation_id = new_guid();
        let timestamp = now.strftime("%Y-%m-%d %H:%M:%SZ").to_string();
        let description = format!(
            "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\n\
             Timestamp: {timestamp}",
            self.code, self.description
        );
        json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
        })
    }
}

/// Refusals the token endpoint gives, named after their cause.
pub(crate) mod refusals {
    use super::OAuthError;

    pub fn missing_parameter(name: &str) -> OAuthError {
        let text = format!("The request body must contain the following parameter: '{name}'.");
        OAuthError::new("invalid_request", 900144, text)
    }

    pub fn unsupported_grant(grant_type: &str) -> OAuthError {
        let text = format!("The app requested an unsupported grant type '{grant_type}'.");
        OAuthError::new("unsupported_grant_type", 70003, text)
    }

    pub fn invalid_scope(scope: &str) -> OAuthError {
        let text = format!(
            "The provided value for scope {scope} is not valid. Client credential flows must \
             have a scope value with /.default suffixed to the resource identifier."
        );
        OAuthError::new("invalid_scope", 1002012, text)
    }

    pub fn unknown_client(client_id: &str, tenant: &str) -> OAuthError {
        let text = format!(
            "Application with identifier '{client_id}' was not found in the directory \
             '{tenant}'."
        );
        OAuthError::new("unauthorized_client", 700016, text)
    }

    pub fn no_client_credential() -> OAuthError {
        let text = "The request body must contain the following parameter: \
                    'client_assertion' or 'client_secret'.";
        OAuthError::new("invalid_client", 7000216, text)
    }

    pub fn wrong_secret(client_id: &str) -> OAuthError {
        let text = format!("Invalid client secret provided for app '{client_id}'.");
        OAuthError::new("invalid_client", 7000215, text)
    }

    pub fn malformed_assertion(why: &str) -> OAuthError {
        OAuthError::new(
            "invalid_request",
            50027,
            format!("JWT token is invalid or malformed: {why}."),
        )
    }

    pub fn assertion_not_trusted(why: &str) -> OAuthError {
        let text = format!("Client assertion failed signature validation: {why}.");
        OAuthError::new("invalid_client", 700027, text)
    }

    pub fn assertion_for_other_client() -> OAuthError {
        let text = "Client assertion application identifier doesn't match 'client_id' parameter.";
        OAuthError::new("invalid_client", 700021, text)
    }

    pub fn assertion_expired() -> OAuthError {
        let text = "Client assertion is not within its valid time range.";
        OAuthError::new("invalid_client", 700024, text)
    }

    pub fn assertion_audience_wrong() -> OAuthError {
        let text = "The audience claim of the client assertion is not the token endpoint.";
        OAuthError::new("invalid_client", 700022, text)
    }

    pub fn no_federated_match(field: &str, value: &str, code: u32) -> OAuthError {
        let text = format!(
            "No matching federated identity record found for presented assertion {field}: \
             '{value}'."
        );
        OAuthError::new("invalid_client", code, text)
    }

    pub fn unknown_refresh_token() -> OAuthError {
        OAuthError::new(
            "invalid_grant",
            9002313,
            "Invalid request. Request is malformed or invalid.",
        )
    }

    pub fn refresh_token_revoked() -> OAuthError {
        let text = "The provided grant has expired due to it being revoked, a fresh auth token \
                    is needed.";
        OAuthError::new("invalid_grant", 50173, text)
    }

    pub fn refresh_token_of_other_client() -> OAuthError {
        let text = "Provided grant is invalid or malformed: it was issued to another client.";
        OAuthError::new("invalid_grant", 70000, text)
    }

    pub fn unsupported_response_type(response_type: &str) -> OAuthError {
        let text = format!("The response_type '{response_type}' is not supported; use 'code'.");
        OAuthError::new("unsupported_response_type", 70005, text)
    }

    pub fn redirect_uri_not_loopback(redirect_uri: &str) -> OAuthError {
        let text = format!(
            "The redirect URI '{redirect_uri}' specified in the request does not match the \
             redirect URIs configured for the application: only http loopback addresses are."
        );
        OAuthError::new("invalid_request", 50011, text)
    }

    pub fn challenge_method_unsupported(method: &str) -> OAuthError {
        let text = format!("The code_challenge_method '{method}' is not supported; use 'S256'.");
        OAuthError::new("invalid_request", 501491, text)
    }

    pub fn interaction_required() -> OAuthError {
        let text = "Due to a configuration change made by your administrator, you must use \
                    multi-factor authentication to access this resource.";
        OAuthError::new("interaction_required", 50076, text)
    }

    pub fn code_unknown() -> OAuthError {
        let text = "OAuth2 Authorization code was already redeemed, please retry with a new \
                    valid code or use an existing refresh token.";
        OAuthError::new("invalid_grant", 54005, text)
    }

    pub fn code_expired() -> OAuthError {
        let text = "The provided authorization code or refresh token has expired.";
        OAuthError::new("invalid_grant", 70008, text)
    }

    pub fn code_of_other_client() -> OAuthError {
        let text = "Provided grant is invalid or malformed: the code was issued to another \
                    client.";
        OAuthError::new("invalid_grant", 70000, text)
    }

    pub fn code_redirect_mismatch() -> OAuthError {
        let text = "The reply address of the request does not match the reply address \
                    provided when requesting the authorization code.";
        OAuthError::new("invalid_grant", 500112, text)
    }

    pub fn verifier_mismatch() -> OAuthError {
        let text = "The code_verifier does not match the code_challenge supplied in the \
                    authorization request.";
        OAuthError::new("invalid_grant", 501481, text)
    }
}

/// A random GUID-shaped id (version 4 layout).
pub(crate) fn new_guid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_client_is_answered_with_401_and_other_errors_with_400() {
        assert_eq!(refusals::wrong_secret("a").status, 401);
        assert_eq!(refusals::unknown_refresh_token().status, 400);
    }

    #[test]
    fn body_has_the_entra_fields() {
        let body = refusals::wrong_secret("a").body(Timestamp::UNIX_EPOCH);
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(body["error_codes"][0], 7000215);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("AADSTS7000215: ")
        );
        assert_eq!(body["timestamp"], "1970-01-01 00:00:00Z");
        assert_eq!(body["trace_id"].as_str().unwrap().len(), 36);
    }
}
