//! The `probe` subcommand's arguments and entry point: gathers credentials from the
//! cluster, a mounted Secret or the environment, verifies each, prints the result and
//! exits 0 (all passed), 1 (a credential failed) or 2 (usage or configuration error).

use super::cluster::{self, ClusterError, Scope};
use super::output::{self, Format, NamedReport};
use super::sources::{self, Credential, Overrides, SourceError};
use super::{ProbeError, ProbeOptions, ProbeReport, ProbeTarget, verify};
use futures::StreamExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Credentials probed at the same time.
const CONCURRENCY: usize = 4;

/// Arguments of `probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Probe the AmrCredentials of this namespace.
    #[arg(long, short = 'n', env = "AMR_PROBE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Probe only the AmrCredential of this name (with --namespace).
    #[arg(long, env = "AMR_PROBE_NAME")]
    pub name: Option<String>,
    /// Probe the AmrCredentials of every namespace.
    #[arg(long, short = 'A', env = "AMR_PROBE_ALL_NAMESPACES")]
    pub all_namespaces: bool,
    /// Read the credential from a mounted Secret: files named by the username and password
    /// keys in this directory.
    #[arg(long, env = "AMR_PROBE_SECRET_DIR")]
    pub secret_dir: Option<PathBuf>,
    /// File (in --secret-dir) holding the username.
    #[arg(long, env = "AMR_PROBE_USERNAME_KEY", default_value = "username")]
    pub username_key: String,
    /// File (in --secret-dir) holding the password.
    #[arg(long, env = "AMR_PROBE_PASSWORD_KEY", default_value = "password")]
    pub password_key: String,
    /// Read the username from this environment variable.
    #[arg(long, env = "AMR_PROBE_USERNAME_ENV")]
    pub username_env: Option<String>,
    /// Read the password from this environment variable.
    #[arg(long, env = "AMR_PROBE_PASSWORD_ENV")]
    pub password_env: Option<String>,
    /// Redis host; overrides the AmrCredential's spec.redis.host.
    #[arg(long, env = "AMR_PROBE_HOST")]
    pub host: Option<String>,
    /// Redis port; overrides spec.redis.port. Default 10000.
    #[arg(long, env = "AMR_PROBE_PORT")]
    pub port: Option<u16>,
    /// Use TLS, whatever spec.redis.tls says (the default).
    #[arg(long, env = "AMR_PROBE_TLS", conflicts_with = "no_tls")]
    pub tls: bool,
    /// Connect without TLS, whatever spec.redis.tls says.
    #[arg(long, env = "AMR_PROBE_NO_TLS")]
    pub no_tls: bool,
    /// Also trust the CA certificates in this PEM file (repeatable; comma separated in the
    /// environment).
    #[arg(long = "ca-file", env = "AMR_PROBE_CA_FILE", value_delimiter = ',')]
    pub ca_files: Vec<PathBuf>,
    /// Limit on each network step, such as `5s`, `500ms` or `1m`; a bare number is seconds.
    #[arg(long, env = "AMR_PROBE_TIMEOUT", default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Output format.
    #[arg(long, env = "AMR_PROBE_OUTPUT", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Why the probe could not run at all (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The arguments do not say what to probe, or say it twice.
    #[error("{0}")]
    UsageInvalid(String),
    /// The mounted Secret or the variables could not be read.
    #[error(transparent)]
    SourceFailed(#[from] SourceError),
    /// A CA file is unusable.
    #[error(transparent)]
    OptionsFailed(#[from] ProbeError),
    /// The cluster could not be read.
    #[error(transparent)]
    ClusterFailed(#[from] ClusterError),
    /// The cluster holds no AmrCredential where asked.
    #[error("no AmrCredentials found {0}")]
    NothingFound(String),
}

/// Runs `probe`.
pub async fn main(args: ProbeArgs) -> ExitCode {
    match run(&args).await {
        Ok(reports) => {
            let now = jiff::Timestamp::now();
            print!("{}", output::render(&reports, args.output, now));
            ExitCode::from(exit_status(&reports))
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// 0 when every credential passed, 1 otherwise.
pub fn exit_status(reports: &[NamedReport]) -> u8 {
    u8::from(!reports.iter().all(|r| r.report.passed()))
}

/// Where the credentials come from, as the arguments say.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    Cluster(Scope),
    Dir(PathBuf),
    Env { username: String, password: String },
}

/// Decides the source from the arguments; conflicting or missing choices are usage errors.
fn source(args: &ProbeArgs) -> Result<Source, CliError> {
    let usage = |m: &str| Err(CliError::UsageInvalid(m.to_string()));
    let cluster = args.namespace.is_some() || args.all_namespaces;
    let env = args.username_env.is_some() || args.password_env.is_some();
    let chosen = [cluster, args.secret_dir.is_some(), env];
    match chosen.iter().filter(|c| **c).count() {
        0 => {
            return usage(
                "say what to probe: --namespace/--all-namespaces, --secret-dir, or \
             --username-env with --password-env",
            );
        }
        1 => {}
        _ => {
            return usage("choose one source: the cluster, --secret-dir, or environment variables");
        }
    }
    if args.name.is_some() && args.namespace.is_none() {
        return usage("--name needs --namespace");
    }
    if !cluster && args.host.is_none() {
        return usage("no host: pass --host (or set AMR_PROBE_HOST)");
    }
    match (&args.namespace, &args.name, &args.secret_dir) {
        (Some(_), _, _) if args.all_namespaces => {
            usage("--namespace and --all-namespaces exclude each other")
        }
        (_, _, _) if args.all_namespaces => Ok(Source::Cluster(Scope::All)),
        (Some(namespace), Some(name), _) => Ok(Source::Cluster(Scope::One {
            namespace: namespace.clone(),
            name: name.clone(),
        })),
        (Some(namespace), None, _) => Ok(Source::Cluster(Scope::Namespace(namespace.clone()))),
        (None, _, Some(dir)) => Ok(Source::Dir(dir.clone())),
        (None, _, None) => match (&args.username_env, &args.password_env) {
            (Some(username), Some(password)) => Ok(Source::Env {
                username: username.clone(),
                password: password.clone(),
            }),
            _ => usage("--username-env and --password-env go together"),
        },
    }
}

fn overrides(args: &ProbeArgs) -> Overrides {
    Overrides {
        host: args.host.clone(),
        port: args.port,
        tls: match (args.tls, args.no_tls) {
            (_, true) => Some(false),
            (true, false) => Some(true),
            (false, false) => None,
        },
    }
}

fn options(args: &ProbeArgs) -> Result<ProbeOptions, CliError> {
    let mut options = ProbeOptions::new(args.timeout)?;
    for path in &args.ca_files {
        options = options.trust_file(path)?;
    }
    Ok(options)
}

/// One credential to verify, or the reason it cannot be.
enum Job {
    Verify {
        name: String,
        target: ProbeTarget,
        credential: Credential,
    },
    Unreadable {
        name: String,
        target: Option<ProbeTarget>,
        message: String,
    },
}

/// Gathers, verifies and returns one report per credential.
pub async fn run(args: &ProbeArgs) -> Result<Vec<NamedReport>, CliError> {
    let source = source(args)?;
    let options = options(args)?;
    let overrides = overrides(args);
    let jobs = jobs(&source, &overrides, args).await?;

    let reports = futures::stream::iter(jobs)
        .map(|job| execute(job, &options))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    Ok(reports)
}

async fn jobs(
    source: &Source,
    overrides: &Overrides,
    args: &ProbeArgs,
) -> Result<Vec<Job>, CliError> {
    // Without a cluster there is no spec.redis, so the host is from the command line.
    let target = || sources::target(None, overrides);
    let single = |name: String, credential: Credential| match target() {
        Some(target) => Ok(vec![Job::Verify {
            name,
            target,
            credential,
        }]),
        None => Err(CliError::UsageInvalid("no host: pass --host".to_string())),
    };
    match source {
        Source::Dir(dir) => {
            let credential = sources::from_dir(dir, &args.username_key, &args.password_key)?;
            single(dir.display().to_string(), credential)
        }
        Source::Env { username, password } => {
            let credential = sources::from_env(username, password)?;
            single(format!("env:{username}"), credential)
        }
        Source::Cluster(scope) => {
            let found = cluster::gather(scope, args.timeout).await?;
            if found.is_empty() {
                return Err(CliError::NothingFound(where_(scope)));
            }
            Ok(found
                .into_iter()
                .map(|f| cluster_job(f, overrides))
                .collect())
        }
    }
}

fn cluster_job(found: cluster::Found, overrides: &Overrides) -> Job {
    let name = format!("{}/{}", found.namespace, found.name);
    let target = sources::target(found.endpoint.as_ref(), overrides);
    match (found.credential, target) {
        (Ok(credential), Some(target)) => Job::Verify {
            name,
            target,
            credential,
        },
        (Err(message), target) => Job::Unreadable {
            name,
            target,
            message,
        },
        (Ok(_), None) => Job::Unreadable {
            name,
            target: None,
            message: "no Redis endpoint: the AmrCredential has no spec.redis; set it or pass \
                      --host"
                .to_string(),
        },
    }
}

async fn execute(job: Job, options: &ProbeOptions) -> NamedReport {
    match job {
        Job::Verify {
            name,
            target,
            credential,
        } => {
            let report = verify(&target, &credential.username, &credential.password, options);
            NamedReport {
                name,
                report: report.await,
            }
        }
        Job::Unreadable {
            name,
            target,
            message,
        } => NamedReport {
            name,
            report: ProbeReport::unreadable(target, "", message),
        },
    }
}

fn where_(scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) => format!("in namespace {ns}"),
        Scope::One { namespace, name } => format!("named {namespace}/{name}"),
        Scope::All => "in any namespace".to_string(),
    }
}

/// Parses `5s`, `500ms`, `1m 30s` or a bare number of seconds.
pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds = text.trim().parse::<f64>().ok();
    let duration = match seconds {
        Some(s) if s.is_finite() && s > 0.0 => Duration::try_from_secs_f64(s).ok(),
        Some(_) => None,
        None => text
            .parse::<jiff::SignedDuration>()
            .ok()
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero()),
    };
    duration.ok_or_else(|| format!("{text:?} is not a positive duration such as 5s or 500ms"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: ProbeArgs,
    }

    fn parse(args: &[&str]) -> ProbeArgs {
        let argv = std::iter::once("probe").chain(args.iter().copied());
        Command::try_parse_from(argv).unwrap().args
    }

    fn usage(args: &[&str]) -> String {
        match source(&parse(args)) {
            Err(CliError::UsageInvalid(message)) => message,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn each_source_is_chosen_by_its_flags() {
        let dir = source(&parse(&["--secret-dir", "/s", "--host", "h"])).unwrap();
        assert_eq!(dir, Source::Dir(PathBuf::from("/s")));
        let one = source(&parse(&["-n", "shop", "--name", "orders"])).unwrap();
        let scope = Scope::One {
            namespace: "shop".to_string(),
            name: "orders".to_string(),
        };
        assert_eq!(one, Source::Cluster(scope));
        assert_eq!(
            source(&parse(&["-A"])).unwrap(),
            Source::Cluster(Scope::All)
        );
        let env = ["--username-env", "U", "--password-env", "P", "--host", "h"];
        assert!(matches!(source(&parse(&env)).unwrap(), Source::Env { .. }));
    }

    #[test]
    fn conflicting_or_missing_choices_are_usage_errors() {
        assert!(usage(&[]).starts_with("say what to probe"));
        assert!(usage(&["-n", "a", "--secret-dir", "/s"]).starts_with("choose one source"));
        assert_eq!(usage(&["-A", "--name", "x"]), "--name needs --namespace");
        assert!(usage(&["-n", "a", "-A"]).contains("exclude each other"));
        assert!(usage(&["--secret-dir", "/s"]).starts_with("no host"));
        let half = ["--username-env", "U", "--host", "h"];
        assert_eq!(
            usage(&half),
            "--username-env and --password-env go together"
        );
    }

    #[test]
    fn tls_flags_override_the_resource_and_exclude_each_other() {
        assert_eq!(overrides(&parse(&["--no-tls"])).tls, Some(false));
        assert_eq!(overrides(&parse(&["--tls"])).tls, Some(true));
        assert_eq!(overrides(&parse(&[])).tls, None);
        let argv = ["probe", "--tls", "--no-tls"];
        assert!(Command::try_parse_from(argv).is_err());
    }

    #[test]
    fn timeouts_take_units_or_bare_seconds() {
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2_500)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1s").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn the_defaults_are_table_output_and_a_five_second_timeout() {
        let args = parse(&[]);
        assert_eq!(args.output, Format::Table);
        assert_eq!(args.timeout, super::super::DEFAULT_TIMEOUT);
        assert_eq!(
            (args.username_key.as_str(), args.password_key.as_str()),
            ("username", "password")
        );
    }

    #[test]
    fn any_failed_credential_makes_the_exit_status_1() {
        let failed = NamedReport {
            name: "a".to_string(),
            report: ProbeReport::unreadable(None, "", "no Secret"),
        };
        assert_eq!(exit_status(&[]), 0);
        assert_eq!(exit_status(&[failed]), 1);
    }
}
