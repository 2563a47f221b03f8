//! Building the emulator's answers: JSON bodies, OAuth errors and injected faults.

use super::EmulatorError;
use super::faults::Fault;
use super::oauth::OAuthError;
use super::serve::DropConnection;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use jiff::Timestamp;
use serde_json::Value;

/// The OAuth `error` a response carried, for the request log.
#[derive(Debug, Clone)]
pub(crate) struct ErrorName(pub String);

pub(crate) fn fault_response(fault: &Fault) -> Response {
    let transient = |status: u16, error: &str, code: u32, text: &str| {
        oauth_response(&OAuthError::new(error, code, text).with_status(status))
    };
    match fault {
        Fault::InternalServerError => transient(
            500,
            "server_error",
            50000,
            "There was an error issuing a token.",
        ),
        Fault::ServiceUnavailable => transient(
            503,
            "temporarily_unavailable",
            90033,
            "A transient error has occurred.",
        ),
        Fault::TooManyRequests { retry_after_secs } => {
            let mut response = transient(
                429,
                "temporarily_unavailable",
                90055,
                "The request was throttled.",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, (*retry_after_secs).into());
            response
        }
        Fault::OAuth(error) => oauth_response(error),
        Fault::DropConnection => {
            let mut response = Response::new(Body::empty());
            response.extensions_mut().insert(DropConnection);
            response
        }
        Fault::MalformedBody => {
            let html = [(header::CONTENT_TYPE, "text/html")];
            (StatusCode::OK, html, "<html><body>upstream hiccup").into_response()
        }
        // These shape or delay a normal answer; the plan never makes them the answer.
        Fault::Delay(_) | Fault::TokenWithoutOid | Fault::LyingExpiresIn(_) => {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub(crate) fn internal_error(error: &EmulatorError) -> Response {
    tracing::error!(%error, "Issuing a token failed");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

pub(crate) fn oauth_response(error: &OAuthError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    let response = json_response(status, &error.body(Timestamp::now()));
    with_error_name(response, &error.error)
}

pub(crate) fn with_error_name(mut response: Response, error: &str) -> Response {
    response
        .extensions_mut()
        .insert(ErrorName(error.to_string()));
    response
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let headers = [(header::CONTENT_TYPE, "application/json; charset=utf-8")];
    (status, headers, body.to_string()).into_response()
}
