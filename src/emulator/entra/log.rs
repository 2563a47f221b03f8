//! The in-memory record of every request the emulator answered, free of secrets.

use jiff::Timestamp;

/// The way a request asked for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Client credentials with a client secret.
    ClientSecret,
    /// Client credentials with an assertion signed by the app's certificate.
    ClientCertificate,
    /// Client credentials with a federated (workload identity) assertion.
    Federated,
    /// The refresh token grant.
    RefreshToken,
    /// The authorization code grant (with PKCE).
    AuthorizationCode,
    /// The IMDS managed identity endpoint.
    Imds,
    /// The App Service managed identity endpoint.
    AppService,
}

/// One request as the emulator saw it. Holds no secret, assertion or token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the request arrived.
    pub at: Timestamp,
    /// HTTP method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// The flow, when the request is a token request of a recognisable kind.
    pub flow: Option<Flow>,
    /// The `grant_type` form field.
    pub grant_type: Option<String>,
    /// The client id, or the id a managed identity request names.
    pub client_id: Option<String>,
    /// HTTP status answered; `None` when the connection was dropped.
    pub status: Option<u16>,
    /// The OAuth `error` answered, if any.
    pub error: Option<String>,
    /// Names of the injected faults applied.
    pub faults: Vec<&'static str>,
}

impl RequestRecord {
    /// A record of a request that has no answer yet.
    pub(crate) fn new(method: &http::Method, path: &str) -> RequestRecord {
        RequestRecord {
            at: Timestamp::now(),
            method: method.to_string(),
            path: path.to_string(),
            flow: None,
            grant_type: None,
            client_id: None,
            status: None,
            error: None,
            faults: Vec::new(),
        }
    }
}
