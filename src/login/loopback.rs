//! The loopback end of a sign-in: listens on the redirect URI, receives the browser that
//! Entra ID sends back, checks the state, and hands over the authorization code.

use super::LoginError;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use url::Url;

/// What the browser brought back to the redirect URI.
#[derive(Debug)]
pub(crate) enum Callback {
    /// An authorization code, with the state this sign-in sent.
    Code(SecretString),
    /// Entra ID refused the sign-in.
    Refused {
        /// The OAuth `error`.
        error: String,
        /// The first line of `error_description`.
        description: String,
    },
    /// The state is not the one this sign-in sent: the answer belongs to another sign-in,
    /// or to an attacker.
    StateMismatch,
}

/// Checks that `raw` is a loopback `http` redirect URI and returns it parsed.
///
/// # Errors
/// [`LoginError::RedirectNotLoopback`] otherwise.
pub(crate) fn loopback_redirect(raw: &str) -> Result<Url, LoginError> {
    let refuse = || LoginError::RedirectNotLoopback(raw.to_string());
    let url = Url::parse(raw).map_err(|_| refuse())?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if url.scheme() != "http" || !loopback || url.fragment().is_some() {
        return Err(refuse());
    }
    Ok(url)
}

/// Listens on the address of `redirect`. With `any_port`, a port already in use is replaced
/// by a free one (Entra ID accepts any port of a loopback redirect URI); the redirect URI
/// actually used is returned with the listener.
pub(crate) async fn listen(
    redirect: &Url,
    any_port: bool,
) -> Result<(TcpListener, Url), LoginError> {
    let ip = match redirect.host_str() {
        Some("[::1]") => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let port = redirect.port_or_known_default().unwrap_or(80);
    let wanted = SocketAddr::new(ip, port);
    let listener = match TcpListener::bind(wanted).await {
        Ok(l) => l,
        Err(e) if any_port && e.kind() == std::io::ErrorKind::AddrInUse => {
            TcpListener::bind(SocketAddr::new(ip, 0))
                .await
                .map_err(|source| LoginError::ListenFailed {
                    address: wanted.to_string(),
                    source,
                })?
        }
        Err(source) => {
            return Err(LoginError::ListenFailed {
                address: wanted.to_string(),
                source,
            });
        }
    };
    let bound = listener
        .local_addr()
        .map_err(|source| LoginError::ListenFailed {
            address: wanted.to_string(),
            source,
        })?;
    let mut used = redirect.clone();
    if bound.port() != port {
        // Setting the port of an http URL with a host cannot fail.
        let _ = used.set_port(Some(bound.port()));
    }
    Ok((listener, used))
}

/// Serves the browser until a request reaches the redirect path with an answer; returns
/// that answer. Other requests (a favicon, a stray path) get 404 and the wait goes on.
pub(crate) async fn receive(listener: TcpListener, redirect: &Url, state: &str) -> Callback {
    let (tx, mut rx) = mpsc::channel::<Callback>(1);
    let path = redirect.path().to_string();
    let state = state.to_string();
    let server = tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _peer)) => tcp,
                Err(error) => {
                    tracing::debug!(%error, "Accepting a sign-in connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (tx, path, state) = (tx.clone(), path.clone(), state.clone());
            // Each connection runs on its own, so it finishes writing its page even after
            // the answer has been taken and the listener stops.
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let answer = judge(&req, &path, &state);
                    let tx = tx.clone();
                    async move { Ok::<_, Infallible>(respond(answer, &tx).await) }
                });
                let served = http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%error, "Sign-in connection closed");
                }
            });
        }
    });
    let answer = rx.recv().await;
    server.abort();
    answer.unwrap_or(Callback::StateMismatch)
}

/// What a request to the listener means: `None` for a request that carries no answer.
fn judge<B>(req: &Request<B>, path: &str, state: &str) -> Option<Callback> {
    if req.uri().path() != path {
        return None;
    }
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let (code, error) = (param("code"), param("error"));
    if code.is_none() && error.is_none() {
        return None;
    }
    if param("state").as_deref() != Some(state) {
        return Some(Callback::StateMismatch);
    }
    Some(match (code, error) {
        (_, Some(error)) => Callback::Refused {
            error,
            description: param("error_description")
                .and_then(|d| d.lines().next().map(str::to_string))
                .unwrap_or_default(),
        },
        (Some(code), None) => Callback::Code(SecretString::from(code)),
        (None, None) => Callback::StateMismatch,
    })
}

async fn respond(answer: Option<Callback>, tx: &mpsc::Sender<Callback>) -> Response<String> {
    let (status, text) = match &answer {
        None => (StatusCode::NOT_FOUND, "Nothing here."),
        Some(Callback::Code(_)) => (
            StatusCode::OK,
            "Signed in. You can close this window and return to the terminal.",
        ),
        Some(Callback::Refused { .. }) => (
            StatusCode::OK,
            "Entra ID refused the sign-in; the terminal says why.",
        ),
        Some(Callback::StateMismatch) => (
            StatusCode::BAD_REQUEST,
            "This answer does not belong to the sign-in that is waiting; it was refused.",
        ),
    };
    if let Some(answer) = answer {
        // Only the first answer counts; later ones find the channel full or closed.
        let _ = tx.try_send(answer);
    }
    let page = format!(
        "<!doctype html><html><head><title>amr-credential-operator login</title></head>\
         <body><p>{text}</p></body></html>"
    );
    let mut response = Response::new(page);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn request(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    #[test]
    fn only_loopback_http_redirect_uris_are_accepted() {
        for ok in [
            "http://127.0.0.1:8400/callback",
            "http://localhost:1234/",
            "http://[::1]:9/cb",
        ] {
            assert!(loopback_redirect(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:8400/callback",
            "http://example.net:8400/callback",
            "http://10.0.0.1/cb",
            "not a url",
        ] {
            assert!(
                matches!(
                    loopback_redirect(bad),
                    Err(LoginError::RedirectNotLoopback(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_code_is_taken_only_with_the_state_that_was_sent() {
        let ok = judge(&request("/cb?code=c0de&state=s1"), "/cb", "s1");
        assert!(matches!(ok, Some(Callback::Code(c)) if c.expose_secret() == "c0de"));
        let wrong = judge(&request("/cb?code=c0de&state=other"), "/cb", "s1");
        assert!(matches!(wrong, Some(Callback::StateMismatch)));
        let missing = judge(&request("/cb?code=c0de"), "/cb", "s1");
        assert!(matches!(missing, Some(Callback::StateMismatch)));
    }

    #[test]
    fn an_error_answer_is_a_refusal_and_other_requests_are_ignored() {
        let refused = judge(
            &request("/cb?error=access_denied&error_description=no%0Amore&state=s1"),
            "/cb",
            "s1",
        );
        assert!(matches!(
            refused,
            Some(Callback::Refused { error, description })
                if error == "access_denied" && description == "no"
        ));
        assert!(judge(&request("/favicon.ico"), "/cb", "s1").is_none());
        assert!(judge(&request("/cb"), "/cb", "s1").is_none());
    }
}
