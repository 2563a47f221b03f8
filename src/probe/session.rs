//! The network half of a probe: TCP, TLS, then AUTH, PING and ACL WHOAMI on a connection
//! opened without credentials, so a refused AUTH is told apart from a failed connect.

use super::checks::{self, Reply, Whoami};
use super::report::{Check, Recorder};
use super::tls;
use super::{ProbeOptions, ProbeTarget};
use redis::aio::MultiplexedConnection;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

/// A byte stream Redis can run over: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Runs the network checks in order, recording each; stops at the first failure.
pub(crate) async fn exchange(
    recorder: &mut Recorder,
    target: &ProbeTarget,
    username: &str,
    password: &SecretString,
    options: &ProbeOptions,
) {
    let Some(tcp) = connect(recorder, target, options.timeout).await else {
        return;
    };
    let Some(stream) = secure(recorder, tcp, target, options).await else {
        return;
    };
    let Some(mut redis) = open(recorder, stream, options.timeout).await else {
        return;
    };

    let (secret, t) = (password.expose_secret(), options.timeout);
    let auth = command(
        &mut redis.connection,
        auth_command(username, secret),
        secret,
        t,
    )
    .await;
    debug!(
        host = target.host,
        port = target.port,
        ok = matches!(auth, Reply::Value(_)),
        "AUTH"
    );
    recorder.outcome(Check::Auth, checks::auth(&auth, username));
    if recorder.failed() {
        return;
    }

    let ping = command(&mut redis.connection, redis::cmd("PING"), secret, t).await;
    recorder.outcome(Check::Ping, checks::ping(&ping));
    if recorder.failed() {
        return;
    }

    let mut whoami = redis::cmd("ACL");
    whoami.arg("WHOAMI");
    let reply = command(&mut redis.connection, whoami, secret, t).await;
    match checks::whoami(&reply, username) {
        Whoami::Same(message) => recorder.pass(Check::Whoami, message),
        Whoami::Refused(message) => recorder.skip(Check::Whoami, message),
        Whoami::Failed(message) => recorder.fail(Check::Whoami, message),
    }
}

async fn connect(
    recorder: &mut Recorder,
    target: &ProbeTarget,
    timeout: Duration,
) -> Option<TcpStream> {
    let address = format!("{}:{}", target.host, target.port);
    let connected = tokio::time::timeout(
        timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await;
    match connected {
        Ok(Ok(tcp)) => {
            let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or(address);
            recorder.pass(Check::Tcp, format!("connected to {peer}"));
            Some(tcp)
        }
        Ok(Err(error)) => {
            recorder.fail(Check::Tcp, connect_failure(&error, &address));
            None
        }
        Err(_) => {
            recorder.fail(
                Check::Tcp,
                format!(
                    "no connection to {address} within {timeout:?}: a firewall or network \
                     policy may drop the traffic"
                ),
            );
            None
        }
    }
}

/// Words for a failed connect, by its kind.
fn connect_failure(error: &std::io::Error, address: &str) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => format!(
            "connection refused by {address}: nothing listens there; check the host and port \
             (AMR listens on 10000)"
        ),
        ErrorKind::TimedOut => format!("connecting to {address} timed out"),
        _ if error.to_string().contains("lookup") => {
            format!("cannot resolve the host of {address}: {error}")
        }
        _ => format!("connecting to {address} failed: {error}"),
    }
}

async fn secure(
    recorder: &mut Recorder,
    tcp: TcpStream,
    target: &ProbeTarget,
    options: &ProbeOptions,
) -> Option<Box<dyn Stream>> {
    if !target.tls {
        recorder.skip(Check::Tls, "TLS is turned off for this endpoint");
        return Some(Box::new(tcp));
    }
    let config = options.tls_config.clone();
    match tls::handshake(tcp, &target.host, config, options.timeout).await {
        Ok(stream) => {
            let version = stream
                .get_ref()
                .1
                .protocol_version()
                .map_or_else(|| "TLS".to_string(), |v| format!("{v:?}"));
            recorder.pass(
                Check::Tls,
                format!("{version}, certificate valid for {}", target.host),
            );
            Some(Box::new(stream))
        }
        Err(failure) => {
            recorder.fail(Check::Tls, failure.to_string());
            None
        }
    }
}

/// A Redis connection and the task that drives it, stopped on drop.
struct Session {
    connection: MultiplexedConnection,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens a Redis connection that sends nothing of its own: no credentials, no client name.
async fn open(
    recorder: &mut Recorder,
    stream: Box<dyn Stream>,
    timeout: Duration,
) -> Option<Session> {
    let info = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
    match MultiplexedConnection::new_with_config(&info, stream, config).await {
        Ok((connection, driver)) => Some(Session {
            connection,
            driver: tokio::spawn(driver),
        }),
        Err(error) => {
            recorder.fail(
                Check::Auth,
                format!("opening a Redis connection failed: {error}"),
            );
            None
        }
    }
}

fn auth_command(username: &str, password: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("AUTH");
    cmd.arg(username).arg(password);
    cmd
}

/// Sends one command and reduces the answer to a [`Reply`], with `secret` redacted.
async fn command(
    connection: &mut MultiplexedConnection,
    cmd: redis::Cmd,
    secret: &str,
    timeout: Duration,
) -> Reply {
    let answer = tokio::time::timeout(timeout, cmd.query_async::<redis::Value>(connection)).await;
    match answer {
        Ok(Ok(value)) => Reply::Value(text(&value)),
        Ok(Err(error)) if error.is_timeout() => Reply::TimedOut(timeout),
        Ok(Err(error)) => reply_for(&error, secret),
        Err(_) => Reply::TimedOut(timeout),
    }
}

fn reply_for(error: &redis::RedisError, secret: &str) -> Reply {
    if let Some(code) = error.code() {
        let text = error.detail().unwrap_or_default();
        return Reply::Refused {
            code: code.to_string(),
            text: checks::redact(text, secret),
        };
    }
    Reply::Broken(checks::redact(&error.to_string(), secret))
}

fn text(value: &redis::Value) -> String {
    match value {
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::Okay => "OK".to_string(),
        other => format!("{other:?}"),
    }
}
