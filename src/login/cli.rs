//! The `login` subcommand: reads the AmrCredential (from the cluster with the person's own
//! kubeconfig, or from a file), prints the sign-in URL, waits for the browser, and stores
//! the refresh token. Prints who signed in, never a token.

use super::{LoginCredential, LoginError, LoginSettings, RefreshTokenStore, SignedIn, login};
use crate::api::{AmrCredential, validate};
use crate::cli::IdentityArgs;
use crate::local::{self, LOCAL_NAMESPACE};
use kube::Api;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use url::Url;

/// Arguments of `login`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// Namespace of the AmrCredential; default: the kubeconfig context's namespace.
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// Name of the AmrCredential. With --file it may be left out when the file holds a
    /// single AuthorizationCodeWithPKCE credential.
    #[arg(long, value_name = "CRED")]
    pub name: Option<String>,
    /// Read the AmrCredential from this YAML file instead of the cluster (file mode).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Write the refresh token to DIR/<secret>/<key> instead of a Kubernetes Secret.
    /// Default with --file: the file's directory, as `run --local` reads it.
    #[arg(long, value_name = "DIR")]
    pub local_secrets_dir: Option<PathBuf>,
    /// Print the sign-in URL only; do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Seconds to wait for the sign-in to complete.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// Runs `login`. Exit status: 0 signed in, 1 the sign-in failed or timed out, 2 usage or
/// configuration errors.
pub async fn main(args: LoginArgs) -> ExitCode {
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}

async fn run(args: &LoginArgs) -> Result<(), LoginError> {
    let (credential, kube_client) = match &args.file {
        Some(file) => (from_file(file, args.name.as_deref())?, None),
        None => {
            let (credential, client) = from_cluster(args).await?;
            (credential, Some(client))
        }
    };
    let store = match (&args.local_secrets_dir, &args.file, kube_client) {
        (Some(dir), _, _) => RefreshTokenStore::Files(dir.clone()),
        (None, Some(file), _) => RefreshTokenStore::Files(directory_of(file)),
        (None, None, Some(client)) => RefreshTokenStore::Kubernetes(client),
        (None, None, None) => {
            return Err(LoginError::CredentialUnavailable(
                "no Kubernetes client to store the refresh token with".into(),
            ));
        }
    };
    let source = args.identity.source_config();
    let settings = LoginSettings {
        authority_host: source.authority_host,
        default_tenant: source.default_tenant,
        transport: source.transport,
        any_port: false,
    };

    println!(
        "Signing in for AmrCredential {}/{}.",
        credential.namespace, credential.name
    );
    let timeout = Duration::from_secs(args.timeout.max(1));
    let open = !args.no_browser;
    let signed_in = login(credential, &settings, &store, timeout, |url, redirect| {
        show(url, redirect, timeout, open);
    })
    .await?;
    print_signed_in(&signed_in);
    Ok(())
}

fn show(url: &Url, redirect: &Url, timeout: Duration, open: bool) {
    println!("Open this URL in a browser and sign in:\n\n    {url}\n");
    if open && open_browser(url) {
        println!("(A browser was asked to open it.)");
    }
    println!(
        "Waiting up to {} s for the browser to come back to {redirect} ...",
        timeout.as_secs()
    );
    let _ = std::io::stdout().flush();
}

fn print_signed_in(s: &SignedIn) {
    match &s.name {
        Some(name) => println!("Signed in as {name} (oid {}).", s.object_id),
        None => println!("Signed in as oid {}.", s.object_id),
    }
    println!("The refresh token was stored in {}.", s.stored_in);
}

/// Asks the desktop to open `url`; false when no opener is available.
fn open_browser(url: &Url) -> bool {
    ["xdg-open", "open"].iter().any(|opener| {
        std::process::Command::new(opener)
            .arg(url.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .is_ok()
    })
}

async fn from_cluster(args: &LoginArgs) -> Result<(LoginCredential, kube::Client), LoginError> {
    let unavailable = |e: &dyn std::fmt::Display| LoginError::CredentialUnavailable(e.to_string());
    let Some(name) = args.name.clone() else {
        return Err(LoginError::CredentialUnavailable(
            "--name is required (or --file to read the credential from a file)".into(),
        ));
    };
    let client = kube::Client::try_default().await.map_err(|e| {
        unavailable(&format!(
            "connecting to Kubernetes with your kubeconfig failed: {e}"
        ))
    })?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<AmrCredential> = Api::namespaced(client.clone(), &namespace);
    let found = api.get_opt(&name).await.map_err(|e| {
        unavailable(&format!(
            "reading AmrCredential {namespace}/{name} failed: {e}"
        ))
    })?;
    let Some(object) = found else {
        return Err(unavailable(&format!(
            "AmrCredential {namespace}/{name} not found"
        )));
    };
    let resolved = validate(&name, &object.spec).map_err(|e| LoginError::InvalidSpec {
        name: name.clone(),
        message: e.0,
    })?;
    let credential = LoginCredential {
        namespace,
        name,
        spec: object.spec,
        resolved,
    };
    Ok((credential, client))
}

/// The credential of `file` named `name`, or its only PKCE credential.
fn from_file(file: &Path, name: Option<&str>) -> Result<LoginCredential, LoginError> {
    let (credentials, rejected) =
        local::load(file).map_err(|e| LoginError::CredentialUnavailable(e.to_string()))?;
    if let Some(r) = rejected.iter().find(|r| name.is_none_or(|n| n == r.name)) {
        return Err(LoginError::InvalidSpec {
            name: r.name.clone(),
            message: r.message.clone(),
        });
    }
    let pkce = |c: &&local::LocalCredential| {
        c.resolved.flow == crate::api::FlowType::AuthorizationCodeWithPKCE
    };
    let chosen = match name {
        Some(n) => credentials.into_iter().find(|c| c.name == n),
        None => {
            let mut candidates: Vec<_> = credentials.into_iter().filter(|c| pkce(&c)).collect();
            if candidates.len() > 1 {
                return Err(LoginError::CredentialUnavailable(format!(
                    "{} holds several AuthorizationCodeWithPKCE credentials; choose one with \
                     --name",
                    file.display()
                )));
            }
            candidates.pop()
        }
    };
    let Some(c) = chosen else {
        let what = name.map_or_else(
            || "no AuthorizationCodeWithPKCE credential".to_string(),
            |n| format!("no AmrCredential named {n:?}"),
        );
        return Err(LoginError::CredentialUnavailable(format!(
            "{} holds {what}",
            file.display()
        )));
    };
    Ok(LoginCredential {
        namespace: LOCAL_NAMESPACE.to_string(),
        name: c.name,
        spec: c.spec,
        resolved: c.resolved,
    })
}

fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKCE: &str = "apiVersion: amr.entraid.dev/v1alpha1\nkind: AmrCredential\n\
        metadata: {name: NAME}\nspec:\n  flow:\n    type: AuthorizationCodeWithPKCE\n    \
        clientId: c\n    redirectUri: http://127.0.0.1:8400/callback\n    \
        refreshTokenSecretRef: {name: ops-login, key: refresh-token}\n";

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn the_only_pkce_credential_of_a_file_needs_no_name() {
        let f = file(&PKCE.replace("NAME", "ops"));
        let c = from_file(f.path(), None).unwrap();
        assert_eq!(
            (c.name.as_str(), c.namespace.as_str()),
            ("ops", LOCAL_NAMESPACE)
        );
    }

    #[test]
    fn several_pkce_credentials_need_a_name() {
        let two = format!(
            "{}---\n{}",
            PKCE.replace("NAME", "a"),
            PKCE.replace("NAME", "b")
        );
        let f = file(&two);
        let e = from_file(f.path(), None).unwrap_err();
        assert!(e.to_string().contains("--name"), "{e}");
        assert_eq!(from_file(f.path(), Some("b")).unwrap().name, "b");
    }

    #[test]
    fn the_secrets_dir_defaults_to_the_files_directory() {
        assert_eq!(directory_of(Path::new("creds.yaml")), PathBuf::from("."));
        assert_eq!(
            directory_of(Path::new("/x/creds.yaml")),
            PathBuf::from("/x")
        );
    }
}
