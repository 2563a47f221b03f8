//! Where the command line reads a credential from when not from the cluster: files
//! mounted from the Secret, or environment variables.

use super::{DEFAULT_PORT, ProbeTarget};
use crate::api::RedisEndpoint;
use secrecy::SecretString;
use std::path::{Path, PathBuf};

/// Why a credential could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file of the mounted Secret could not be read.
    #[error("reading {path} failed: {source}")]
    FileReadFailed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory does not exist or is not a directory.
    #[error("the secret directory {0} does not exist or is not a directory")]
    NoDirectory(PathBuf),
    /// An environment variable is unset.
    #[error("the environment variable {0} is not set")]
    EnvMissing(String),
    /// A value is not UTF-8.
    #[error("{0} is not UTF-8 text")]
    NotText(String),
    /// A value is empty.
    #[error("{0} is empty")]
    Empty(String),
}

/// A username and password as read.
#[derive(Debug)]
pub(crate) struct Credential {
    pub(crate) username: String,
    pub(crate) password: SecretString,
}

/// Endpoint settings from the command line, each overriding the resource's `spec.redis`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) tls: Option<bool>,
}

/// The endpoint to probe: the overrides over `spec`; `None` when no host is known.
pub(crate) fn target(spec: Option<&RedisEndpoint>, overrides: &Overrides) -> Option<ProbeTarget> {
    let host = overrides
        .host
        .clone()
        .or_else(|| spec.map(|s| s.host.clone()))?;
    Some(ProbeTarget {
        host,
        port: overrides
            .port
            .or(spec.map(|s| s.port))
            .unwrap_or(DEFAULT_PORT),
        tls: overrides.tls.or(spec.map(|s| s.tls)).unwrap_or(true),
    })
}

/// Reads `dir/<username_key>` and `dir/<password_key>`.
pub(crate) fn from_dir(
    dir: &Path,
    username_key: &str,
    password_key: &str,
) -> Result<Credential, SourceError> {
    if !dir.is_dir() {
        return Err(SourceError::NoDirectory(dir.to_path_buf()));
    }
    let read = |key: &str| {
        let path = dir.join(key);
        let bytes = std::fs::read(&path).map_err(|source| SourceError::FileReadFailed {
            path: path.clone(),
            source,
        })?;
        value(bytes, &path.display().to_string())
    };
    Ok(Credential {
        username: read(username_key)?,
        password: SecretString::from(read(password_key)?),
    })
}

/// Reads the variables named `username_var` and `password_var`.
pub(crate) fn from_env(username_var: &str, password_var: &str) -> Result<Credential, SourceError> {
    let read = |var: &str| {
        let raw = std::env::var_os(var).ok_or_else(|| SourceError::EnvMissing(var.to_string()))?;
        value(raw.into_encoded_bytes(), &format!("the variable {var}"))
    };
    Ok(Credential {
        username: read(username_var)?,
        password: SecretString::from(read(password_var)?),
    })
}

/// Text of a value, trimmed: a Secret made with `echo` carries a trailing newline that
/// Redis would take as part of the password.
pub(crate) fn value(bytes: Vec<u8>, what: &str) -> Result<String, SourceError> {
    let text = String::from_utf8(bytes).map_err(|_| SourceError::NotText(what.to_string()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SourceError::Empty(what.to_string()));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn command_line_settings_override_the_resource_endpoint() {
        let spec = RedisEndpoint {
            host: "orders.redis.azure.net".to_string(),
            port: 10000,
            tls: true,
        };
        let none = Overrides::default();
        assert_eq!(
            target(Some(&spec), &none),
            Some(ProbeTarget::tls(&spec.host, 10000))
        );
        let port = Overrides {
            port: Some(6380),
            tls: Some(false),
            ..Overrides::default()
        };
        let t = target(Some(&spec), &port).unwrap();
        assert_eq!((t.port, t.tls), (6380, false));
        assert_eq!(target(None, &port), None);
    }

    #[test]
    fn without_a_resource_the_endpoint_defaults_to_tls_on_10000() {
        let host = Overrides {
            host: Some("h".to_string()),
            ..Overrides::default()
        };
        assert_eq!(target(None, &host), Some(ProbeTarget::tls("h", 10000)));
    }

    #[test]
    fn values_are_trimmed_and_must_not_be_empty() {
        assert_eq!(value(b"oid-1\n".to_vec(), "u").unwrap(), "oid-1");
        assert!(matches!(
            value(b" \n".to_vec(), "u"),
            Err(SourceError::Empty(_))
        ));
        assert!(matches!(
            value(vec![0xff], "u"),
            Err(SourceError::NotText(_))
        ));
    }

    #[test]
    fn a_mounted_secret_is_read_by_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user"), "oid-1").unwrap();
        std::fs::write(dir.path().join("pass"), "a.b.c\n").unwrap();
        let c = from_dir(dir.path(), "user", "pass").unwrap();
        assert_eq!(c.username, "oid-1");
        assert_eq!(c.password.expose_secret(), "a.b.c");
    }

    #[test]
    fn a_missing_file_or_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = from_dir(dir.path(), "username", "password").unwrap_err();
        assert!(err.to_string().contains("username"));
        let err = from_dir(&dir.path().join("nope"), "u", "p").unwrap_err();
        assert!(matches!(err, SourceError::NoDirectory(_)));
    }
}
