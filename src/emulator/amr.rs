//! A stand-in for Azure Managed Redis: a real `redis-server` on a loopback TLS port whose ACL
//! users are object ids and whose passwords are the access tokens granted to them, each
//! removed again when its token expires.

use super::entra::IssuedToken;
use super::pki::{Ca, PkiError};
use jiff::Timestamp;
use redis::aio::MultiplexedConnection;
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// How long `redis-server` may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at finding a free port, since another process may take the one picked.
const PORT_ATTEMPTS: usize = 3;
/// The ACL user the emulator manages the others with.
const ADMIN_USER: &str = "emulator-admin";

/// Why the emulator could not start or change its users.
#[derive(Debug, thiserror::Error)]
pub enum AmrError {
    /// `redis-server` is not installed.
    #[error("redis-server was not found on PATH; install it (Debian package `redis-server`)")]
    ServerNotFound,
    /// The server's names include no loopback name the emulator can connect to.
    #[error("the server certificate must name `localhost` or `127.0.0.1`")]
    NoLoopbackName,
    /// The temporary working directory could not be prepared.
    #[error("preparing the emulator's working directory failed: {0}")]
    WorkDirFailed(#[source] std::io::Error),
    /// The server certificate could not be issued or written.
    #[error("issuing the server certificate failed: {0}")]
    CertificateFailed(#[source] PkiError),
    /// `redis-server` could not be started.
    #[error("starting redis-server failed: {0}")]
    SpawnFailed(#[source] std::io::Error),
    /// `redis-server` exited or did not listen in time.
    #[error("redis-server did not become ready: {log}")]
    NotReady {
        /// The end of the server's log.
        log: String,
    },
    /// The emulator's own admin connection failed.
    #[error("connecting to redis-server as the admin user failed: {0}")]
    AdminConnectFailed(#[source] redis::RedisError),
    /// An ACL command was refused. The reason has any password redacted.
    #[error("ACL {command} for user `{user}` failed: {reason}")]
    AclCommandFailed {
        /// The ACL subcommand.
        command: &'static str,
        /// The ACL user.
        user: String,
        /// The server's answer, with the password replaced by its fingerprint.
        reason: String,
    },
}

/// A running AMR emulator; the server is killed and its directory removed on drop.
pub struct AmrEmulator {
    shared: Arc<Shared>,
    child: Child,
    host: String,
    port: u16,
    ca_cert_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// What the background tasks share with the emulator.
struct Shared {
    admin: MultiplexedConnection,
    tasks: Mutex<JoinSet<()>>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for AmrEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmrEmulator")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl AmrEmulator {
    /// Starts `redis-server` with a certificate from `ca` for `localhost` and `127.0.0.1`.
    ///
    /// # Errors
    /// When `redis-server` is missing or does not come up; see [`AmrError`].
    pub async fn start(ca: &Ca) -> Result<AmrEmulator, AmrError> {
        AmrEmulator::start_with_names(ca, &["localhost", "127.0.0.1"]).await
    }

    /// Starts `redis-server` with a certificate from `ca` for exactly `names`, which must
    /// include `localhost` or `127.0.0.1` so the emulator itself can connect.
    ///
    /// # Errors
    /// When `redis-server` is missing or does not come up; see [`AmrError`].
    pub async fn start_with_names(ca: &Ca, names: &[&str]) -> Result<AmrEmulator, AmrError> {
        let host = admin_host(names).ok_or(AmrError::NoLoopbackName)?;
        let server = find_on_path("redis-server").ok_or(AmrError::ServerNotFound)?;
        let dir = tempfile::Builder::new()
            .prefix("amr-emulator-")
            .tempdir()
            .map_err(AmrError::WorkDirFailed)?;
        let ca_cert_path = dir.path().join("ca.crt");
        ca.write_cert(&ca_cert_path)
            .map_err(AmrError::CertificateFailed)?;
        let leaf = ca
            .issue_server(names)
            .map_err(AmrError::CertificateFailed)?;
        leaf.write(dir.path(), "server")
            .map_err(AmrError::CertificateFailed)?;
        let admin_password = random_password();

        let (child, port) = spawn_listening(&server, dir.path(), &admin_password).await?;
        // From here on the child is killed if anything below fails.
        let guard = ChildGuard(Some(child));
        let admin = connect_admin(host, port, ca, &admin_password).await?;
        let child = guard.into_inner();

        info!(host, port, "AMR emulator started");
        Ok(AmrEmulator {
            shared: Arc::new(Shared {
                admin,
                tasks: Mutex::new(JoinSet::new()),
                runtime: tokio::runtime::Handle::current(),
            }),
            child,
            host: host.to_string(),
            port,
            ca_cert_path,
            _dir: dir,
        })
    }

    /// The host name to connect to; the server certificate names it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TLS port.
    pub fn tls_port(&self) -> u16 {
        self.port
    }

    /// The CA certificate clients must trust, PEM.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert_path
    }

    /// Accepts `token` as a password of the ACL user `oid` until `expires_at`, creating the
    /// user with full access if needed and keeping its other passwords. A token that has
    /// already expired is not added.
    ///
    /// # Errors
    /// When the server refuses the ACL change.
    pub async fn grant(
        &self,
        oid: &str,
        token: &SecretString,
        expires_at: Timestamp,
    ) -> Result<(), AmrError> {
        grant(&self.shared, oid, token, expires_at).await
    }

    /// Deletes the ACL user `oid` and with it all its passwords.
    ///
    /// # Errors
    /// When the server refuses the ACL change.
    pub async fn revoke_user(&self, oid: &str) -> Result<(), AmrError> {
        let mut admin = self.shared.admin.clone();
        let deleted: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(oid)
            .query_async(&mut admin)
            .await
            .map_err(|e| acl_failed("DELUSER", oid, &e, None))?;
        info!(identity = oid, deleted, "AMR user revoked");
        Ok(())
    }

    /// Grants every token received on `rx` in the background until the sender is gone, as
    /// AMR accepts every token Entra ID issues for it. Tokens for another audience, or
    /// without an object id, are not granted: AMR would refuse them.
    pub fn follow(&self, rx: broadcast::Receiver<IssuedToken>) {
        let shared = Arc::clone(&self.shared);
        spawn(&self.shared, follow_tokens(shared, rx));
    }

    /// Stops the server now; dropping the emulator does the same.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for AmrEmulator {
    fn drop(&mut self) {
        lock(&self.shared.tasks).abort_all();
        stop(&mut self.child);
        debug!(port = self.port, "AMR emulator stopped");
    }
}

/// Adds the password, then schedules its removal at expiry.
async fn grant(
    shared: &Arc<Shared>,
    oid: &str,
    token: &SecretString,
    expires_at: Timestamp,
) -> Result<(), AmrError> {
    let fingerprint = crate::identity::claims::fingerprint(token.expose_secret());
    let Some(lifetime) = remaining(expires_at, Timestamp::now()) else {
        debug!(identity = oid, %fingerprint, "Expired token not granted");
        return Ok(());
    };

    let mut admin = shared.admin.clone();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(oid)
        .arg("on")
        .arg(format!(">{}", token.expose_secret()))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .map_err(|e| acl_failed("SETUSER", oid, &e, Some(token)))?;
    info!(identity = oid, %fingerprint, %expires_at, "AMR token granted");

    let (oid, token) = (oid.to_string(), token.clone());
    spawn(shared, async move {
        tokio::time::sleep(lifetime).await;
        expire(&mut admin, &oid, &token, &fingerprint).await;
    });
    Ok(())
}

/// Removes an expired token from its user; a user revoked meanwhile is left absent.
async fn expire(admin: &mut MultiplexedConnection, oid: &str, token: &SecretString, fp: &str) {
    let removed: Result<(), _> = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(oid)
        .arg(format!("<{}", token.expose_secret()))
        .query_async(admin)
        .await;
    match removed {
        Ok(()) => info!(
            identity = oid,
            fingerprint = fp,
            "AMR token expired and removed"
        ),
        // The error text repeats the password, so only its code is logged.
        Err(e) => debug!(
            identity = oid,
            fingerprint = fp,
            code = e.code(),
            "Expiry skipped"
        ),
    }
}

async fn follow_tokens(shared: Arc<Shared>, mut rx: broadcast::Receiver<IssuedToken>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let issued = match rx.recv().await {
            Ok(issued) => issued,
            Err(RecvError::Lagged(missed)) => {
                warn!(missed, "Issued tokens were missed");
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        if !accepted(&issued) {
            debug!(
                identity = issued.oid,
                audience = issued.audience,
                "Token not for AMR"
            );
            continue;
        }
        let granted = grant(&shared, &issued.oid, &issued.token, issued.expires_at).await;
        if let Err(error) = granted {
            warn!(identity = issued.oid, %error, "Granting an issued token failed");
        }
    }
}

/// Whether AMR would take the token: it names an identity and is meant for Redis.
fn accepted(issued: &IssuedToken) -> bool {
    let audience = issued.audience.trim_end_matches('/');
    !issued.oid.is_empty() && crate::identity::claims::REDIS_AUDIENCES.contains(&audience)
}

fn spawn(shared: &Shared, task: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut tasks = lock(&shared.tasks);
    // Finished expiry tasks are reaped here so the set stays as small as the live tokens.
    while tasks.try_join_next().is_some() {}
    tasks.spawn_on(task, &shared.runtime);
}

/// The task set; a panic elsewhere while it was held leaves it usable.
fn lock(tasks: &Mutex<JoinSet<()>>) -> std::sync::MutexGuard<'_, JoinSet<()>> {
    tasks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Time left before `expires_at`, or `None` when it has passed.
fn remaining(expires_at: Timestamp, now: Timestamp) -> Option<Duration> {
    Duration::try_from(expires_at.duration_since(now))
        .ok()
        .filter(|d| !d.is_zero())
}

fn acl_failed(
    command: &'static str,
    user: &str,
    error: &redis::RedisError,
    secret: Option<&SecretString>,
) -> AmrError {
    let mut reason = error.to_string();
    if let Some(secret) = secret {
        let secret = secret.expose_secret();
        reason = reason.replace(secret, &crate::identity::claims::fingerprint(secret));
    }
    AmrError::AclCommandFailed {
        command,
        user: user.to_string(),
        reason,
    }
}

/// The name the emulator connects by: an address is preferred to a name that needs lookup.
fn admin_host<'a>(names: &[&'a str]) -> Option<&'a str> {
    ["127.0.0.1", "localhost"]
        .into_iter()
        .find(|want| names.contains(want))
        .and_then(|want| names.iter().copied().find(|n| *n == want))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn random_password() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

/// The server's configuration: TLS only, loopback only, no persistence, and no access
/// without AUTH, as on AMR.
fn config(dir: &Path, port: u16, admin_password: &str) -> String {
    let file = |name: &str| quote(&dir.join(name));
    [
        "port 0".to_string(),
        format!("tls-port {port}"),
        "bind 127.0.0.1 -::1".to_string(),
        format!("tls-cert-file {}", file("server.crt")),
        format!("tls-key-file {}", file("server.key")),
        format!("tls-ca-cert-file {}", file("ca.crt")),
        "tls-auth-clients no".to_string(),
        format!("dir {}", quote(dir)),
        format!("logfile {}", file("redis.log")),
        "save \"\"".to_string(),
        "appendonly no".to_string(),
        "daemonize no".to_string(),
        "user default off resetpass -@all".to_string(),
        format!("user {ADMIN_USER} on >{admin_password} ~* &* +@all"),
    ]
    .join("\n")
}

fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Starts the server on a free port, retrying when another process takes the port first.
async fn spawn_listening(
    server: &Path,
    dir: &Path,
    admin_password: &str,
) -> Result<(Child, u16), AmrError> {
    let mut last = AmrError::NotReady { log: String::new() };
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port().map_err(AmrError::WorkDirFailed)?;
        let conf = dir.join("redis.conf");
        write_private(&conf, &config(dir, port, admin_password))
            .map_err(AmrError::WorkDirFailed)?;
        let child = Command::new(server)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(AmrError::SpawnFailed)?;
        let mut guard = ChildGuard(Some(child));
        match wait_ready(&mut guard, port, dir).await {
            Ok(()) => return Ok((guard.into_inner(), port)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Waits until the port accepts connections, or fails with the server's log.
async fn wait_ready(guard: &mut ChildGuard, port: u16, dir: &Path) -> Result<(), AmrError> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let exited = !matches!(guard.0.as_mut().map(Child::try_wait), Some(Ok(None)));
        if exited || tokio::time::Instant::now() >= deadline {
            return Err(AmrError::NotReady { log: log_tail(dir) });
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().rev().take(5).collect();
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    if tail.is_empty() {
        "the server exited without a log".to_string()
    } else {
        tail.join(" | ")
    }
}

async fn connect_admin(
    host: &str,
    port: u16,
    ca: &Ca,
    password: &str,
) -> Result<MultiplexedConnection, AmrError> {
    let url = format!("rediss://{ADMIN_USER}:{password}@{host}:{port}/");
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.cert_pem().as_bytes().to_vec()),
    };
    let client = redis::Client::build_with_tls(url, certs).map_err(AmrError::AdminConnectFailed)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(READY_TIMEOUT))
        .set_response_timeout(Some(READY_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(AmrError::AdminConnectFailed)
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Writes a file only the current user can read: it holds the admin password.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

fn stop(child: &mut Child) {
    if let Err(error) = child.kill() {
        debug!(%error, "redis-server was already gone");
    }
    let _ = child.wait();
}

/// Kills the child unless it is taken out.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn into_inner(mut self) -> Child {
        match self.0.take() {
            Some(child) => child,
            None => unreachable!("a ChildGuard always holds its child until taken"),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            stop(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emulator_connects_by_address_when_the_certificate_names_one() {
        assert_eq!(admin_host(&["localhost", "127.0.0.1"]), Some("127.0.0.1"));
        assert_eq!(admin_host(&["localhost"]), Some("localhost"));
        assert_eq!(admin_host(&["redis.example.test"]), None);
    }

    #[test]
    fn an_expired_token_has_no_time_left() {
        let now = Timestamp::from_second(1_000).unwrap();
        let later = Timestamp::from_second(1_060).unwrap();
        assert_eq!(remaining(later, now), Some(Duration::from_secs(60)));
        assert_eq!(remaining(now, now), None);
        assert_eq!(remaining(now, later), None);
    }

    #[test]
    fn only_tokens_for_redis_with_an_object_id_are_followed() {
        let now = Timestamp::now();
        let issued = |oid: &str, audience: &str| IssuedToken {
            oid: oid.to_string(),
            client_id: "app".to_string(),
            audience: audience.to_string(),
            token: SecretString::from("a.b.c"),
            issued_at: now,
            expires_at: now,
        };
        assert!(accepted(&issued("o", "https://redis.azure.com/")));
        assert!(!accepted(&issued("o", "https://vault.azure.net")));
        assert!(!accepted(&issued("", "https://redis.azure.com")));
    }

    #[test]
    fn the_configuration_requires_auth_and_listens_on_tls_only() {
        let conf = config(Path::new("/tmp/x"), 4242, "pw");
        assert!(conf.contains("port 0\n"));
        assert!(conf.contains("tls-port 4242"));
        assert!(conf.contains("user default off"));
        assert!(conf.contains("tls-auth-clients no"));
    }
}
