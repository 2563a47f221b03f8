//! Scale of the reconcile core: N AmrCredentials over I identities, refreshed through the
//! shared token cache against the Entra ID emulator, writing to a Kubernetes API stand-in.
//!
//! ```text
//! parent: Entra ID emulator on 127.0.0.1 <──HTTPS── child (one per N): scheduler
//!         counts token requests                     │  └─> reconcile, token cache,
//!         Kubernetes API stand-in      <──HTTP───────┘      credential store
//!         keeps Secrets and AmrCredentials
//! ```
//!
//! `cargo bench --bench scale` measures N = 1,000 and 10,000 (`SCALE_N=1000` picks one size)
//! with 40-second tokens (`SCALE_LIFETIME_S` sets another lifetime) and ends with one
//! `scale ...` line per N. Any other invocation, as under
//! `cargo test --all-targets`, makes a smoke run of a few seconds with N = 50. Each size runs
//! in a fresh child process of this binary, with the operator's allocator, so its memory and
//! CPU figures are the operator side's own: the emulator and the API stand-in, with every
//! Secret it stores, run in the parent, as Entra ID and the API server run outside a real
//! operator.

mod support;

#[global_allocator]
static ALLOCATOR: support::stats::Counting = support::stats::Counting;

use amr_credential_operator::emulator::entra::{
    AppRegistration, DEFAULT_TENANT, EntraConfig, EntraEmulator, RequestRecord,
};
use amr_credential_operator::emulator::pki::Ca;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::kube_api::ApiState;
use support::{NAMESPACE, Outcome, SECRET_KEY, Settings};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Argument that makes this binary the measured child.
const CHILD_ARG: &str = "--scale-child";
/// Environment variable carrying the child's [`Settings`] as JSON.
const SETTINGS_ENV: &str = "SCALE_BENCH_SETTINGS";
/// Prefix of the line on which the child reports its [`Outcome`] as JSON.
const OUTCOME_PREFIX: &str = "SCALE_OUTCOME ";
/// Path suffix of the emulator's token endpoint.
const TOKEN_PATH: &str = "/oauth2/v2.0/token";

/// What the parent runs: the sizes, and what every size shares.
struct Plan {
    sizes: Vec<usize>,
    identities: usize,
    lifetime_s: u64,
    cycles: u32,
    concurrency: usize,
}

impl Plan {
    /// The measurement under `cargo bench`, a smoke run otherwise.
    fn from_args(args: &[String]) -> Result<Plan, String> {
        if !args.iter().any(|a| a == "--bench") {
            return Ok(Plan {
                sizes: vec![50],
                identities: 10,
                lifetime_s: 3,
                cycles: 1,
                concurrency: 64,
            });
        }
        let sizes = match std::env::var("SCALE_N") {
            Ok(v) => v
                .split(',')
                .map(|s| match s.trim().parse() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!(
                        "SCALE_N={v:?}: expected sizes above 0, such as 1000,10000"
                    )),
                })
                .collect::<Result<Vec<usize>, String>>()?,
            Err(_) => vec![1_000, 10_000],
        };
        let lifetime_s = match std::env::var("SCALE_LIFETIME_S") {
            Ok(v) => match v.trim().parse() {
                Ok(s) if s >= 5 => s,
                _ => {
                    return Err(format!(
                        "SCALE_LIFETIME_S={v:?}: expected seconds, at least 5"
                    ));
                }
            },
            Err(_) => 40,
        };
        Ok(Plan {
            sizes,
            identities: 100,
            lifetime_s,
            cycles: 3,
            concurrency: 64,
        })
    }

    /// Generous: the first acquisition, every cycle, and two more token lifetimes.
    fn time_limit_s(&self) -> u64 {
        self.lifetime_s * (u64::from(self.cycles) + 2) + 30
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("building the runtime: {e}")),
    };
    if args.iter().any(|a| a == CHILD_ARG) {
        return runtime.block_on(child());
    }
    match Plan::from_args(&args) {
        Ok(plan) => runtime.block_on(parent(plan)),
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("scale benchmark: {message}");
    ExitCode::FAILURE
}

/// The child: one measured run, reported on stdout.
async fn child() -> ExitCode {
    let settings: Settings = match std::env::var(SETTINGS_ENV)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => return fail(&format!("reading {SETTINGS_ENV}: {e}")),
    };
    match support::run::run(&settings).await {
        Ok(outcome) => {
            let json = serde_json::to_string(&outcome).expect("an outcome serialises");
            println!("{OUTCOME_PREFIX}{json}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// The parent: one emulator and one child per size; the summary lines come last.
async fn parent(plan: Plan) -> ExitCode {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(&format!("creating a temporary directory: {e}")),
    };
    let ca_file = dir.path().join("ca.crt");
    let ca = match Ca::new("scale benchmark CA") {
        Ok(ca) => ca,
        Err(e) => return fail(&e.to_string()),
    };
    if let Err(e) = ca.write_cert(&ca_file) {
        return fail(&e.to_string());
    }

    let mut lines = Vec::new();
    let mut complete = true;
    for &n in &plan.sizes {
        match measure(&plan, n, &ca, &ca_file).await {
            Ok(summary) => {
                summary.print_report();
                complete &= summary.complete();
                lines.push(summary.line());
            }
            Err(e) => return fail(&format!("N={n}: {e}")),
        }
    }
    for line in lines {
        println!("{line}");
    }
    if complete {
        ExitCode::SUCCESS
    } else {
        fail("a run did not complete every cycle")
    }
}

async fn measure(plan: &Plan, n: usize, ca: &Ca, ca_file: &Path) -> Result<Summary, String> {
    let seed = hex::encode(rand::random::<[u8; 16]>());
    // Fewer credentials than identities use one identity each.
    let identities = plan.identities.min(n);
    let entra = start_emulator(plan, identities, ca, &seed).await?;
    let api = Arc::new(ApiState::default());
    populate(&api, identities, n, &seed);
    let (addr, _server) = api.serve().await.map_err(|e| e.to_string())?;
    let settings = Settings {
        credentials: n,
        identities,
        cycles: plan.cycles,
        lifetime_s: plan.lifetime_s,
        concurrency: plan.concurrency,
        api_url: format!("http://{addr}"),
        authority: entra.authority_host().to_string(),
        tenant: entra.tenant().to_string(),
        ca_file: ca_file.to_owned(),
        seed,
        time_limit_s: plan.time_limit_s(),
    };
    let outcome = run_child(&settings).await?;
    Ok(Summary {
        requests: entra.requests(),
        api_calls: api.calls.counts(),
        api_secret_mib: api.secret_bytes() as f64 / (1024.0 * 1024.0),
        settings,
        outcome,
    })
}

/// Every identity's client secret and the `n` AmrCredentials, as if someone had applied them.
fn populate(api: &ApiState, identities: usize, n: usize, seed: &str) {
    for i in 0..identities {
        let value = support::client_secret(seed, i);
        let name = support::secret_name(i);
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {SECRET_KEY: STANDARD.encode(value)},
            "type": "Opaque",
        });
        api.insert_secret(NAMESPACE, &name, &secret);
    }
    for c in 0..n {
        api.insert_credential(&support::credential(c, c % identities));
    }
}

async fn start_emulator(
    plan: &Plan,
    identities: usize,
    ca: &Ca,
    seed: &str,
) -> Result<EntraEmulator, String> {
    let mut config = EntraConfig::default()
        .with_tenant(DEFAULT_TENANT)
        .with_token_lifetime(Duration::from_secs(plan.lifetime_s));
    for i in 0..identities {
        let app = AppRegistration::new(support::client_id(i), support::object_id(i))
            .with_secret(support::client_secret(seed, i));
        config = config.with_app(app);
    }
    EntraEmulator::start(config, ca)
        .await
        .map_err(|e| e.to_string())
}

/// Runs this binary as the child and reads its outcome; other output is passed through.
async fn run_child(settings: &Settings) -> Result<Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let json = serde_json::to_string(settings).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .arg(CHILD_ARG)
        .env(SETTINGS_ENV, json)
        // The allocator setting of the operator's image (see the Dockerfile).
        .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the child: {e}"))?;
    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut outcome = None;
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        match line.strip_prefix(OUTCOME_PREFIX) {
            Some(json) => outcome = Some(serde_json::from_str(json).map_err(|e| e.to_string())?),
            None => println!("  {line}"),
        }
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    outcome.ok_or_else(|| format!("the child reported nothing ({status})"))
}

/// One size's figures: the child's outcome, the requests the emulator saw, and the calls
/// the API stand-in answered.
struct Summary {
    settings: Settings,
    outcome: Outcome,
    requests: Vec<RequestRecord>,
    /// Secret GET, Secret apply, AmrCredential GET, status patch, Event, other.
    api_calls: [u64; 6],
    /// Secret JSON the API stand-in held at the end.
    api_secret_mib: f64,
}

impl Summary {
    fn complete(&self) -> bool {
        self.cycles_done() == self.settings.cycles as usize && self.outcome.reconciles[1] == 0
    }

    fn cycles_done(&self) -> usize {
        self.outcome.cycle_done_s.len()
    }

    /// Token requests: before every Secret held a token, during the cycles, and failed.
    fn token_requests(&self) -> [usize; 3] {
        let o = &self.outcome;
        let tokens = self
            .requests
            .iter()
            .filter(|r| r.path.ends_with(TOKEN_PATH));
        let (mut initial, mut cycles, mut failed) = (0, 0, 0);
        for r in tokens {
            match o.ready_at {
                Some(ready) if r.at > ready && r.at <= o.ended_at => cycles += 1,
                Some(ready) if r.at <= ready => initial += 1,
                None => initial += 1,
                Some(_) => {}
            }
            failed += usize::from(r.status != Some(200));
        }
        [initial, cycles, failed]
    }

    fn requests_per_cycle(&self) -> f64 {
        self.token_requests()[1] as f64 / self.cycles_done() as f64
    }

    fn cpu_per_1000(&self) -> f64 {
        let o = &self.outcome;
        o.steady_cpu_ms / o.steady_refreshes as f64 * 1000.0
    }

    fn lateness(&self, i: usize) -> f64 {
        self.outcome.lateness_ms.map_or(f64::NAN, |l| l[i])
    }

    fn print_report(&self) {
        let (s, o) = (&self.settings, &self.outcome);
        let [initial, in_cycles, failed] = self.token_requests();
        let cycles: Vec<String> = o.cycle_done_s.iter().map(|t| format!("{t:.1}")).collect();
        let [reconciles, errors, parked] = o.reconciles;
        let [gets, applies, cred_gets, patches, events, other] = self.api_calls;
        println!(
            "N={} I={}: {} s tokens refreshed at {}, {} reconciles in flight",
            s.credentials,
            s.identities,
            s.lifetime_s,
            support::REFRESH_RATIO,
            s.concurrency
        );
        println!(
            "  first ready {} s; refresh cycles ({} of {}) complete at [{}] s; \
             Secrets written 1, 2, ... times: {:?}",
            o.first_ready_s
                .map_or("never".into(), |f| format!("{f:.2}")),
            self.cycles_done(),
            s.cycles,
            cycles.join(", "),
            o.secrets_written,
        );
        println!(
            "  reconciles {reconciles} ({errors} failed, {parked} without requeue); \
             refreshes {} ({} within the cycles)",
            o.refreshes, o.steady_refreshes
        );
        if let Some(e) = &o.first_error {
            println!("  first reconcile error: {e}");
        }
        println!(
            "  Entra ID token requests: {initial} initial, {in_cycles} in the cycles, \
             {failed} failed; {} requests in all",
            self.requests.len()
        );
        println!(
            "  refresh lateness ms: p50 {:.1}, p99 {:.1}, max {:.1}",
            self.lateness(0),
            self.lateness(1),
            self.lateness(2)
        );
        println!(
            "  operator side memory MiB: peak {:.1}, at start {:.1}; Secret JSON held by the \
             API stand-in (not counted) {:.1}",
            o.peak_rss_mib, o.baseline_rss_mib, self.api_secret_mib
        );
        let stages: Vec<String> = o
            .memory_mib
            .iter()
            .map(|[rss, heap]| format!("{rss:.0}/{heap:.0}"))
            .collect();
        println!(
            "  RSS/heap in use MiB after setup, at first ready, after each cycle: {}",
            stages.join(", ")
        );
        if let Some([context, credentials, rest]) = o.heap_held_mib {
            println!(
                "  heap MiB held at the end by: controller context (Event recorder, metrics, \
                 token cache, clients) {context:.1}, AmrCredentials {credentials:.1}, \
                 the rest {rest:.1}"
            );
        }
        println!(
            "  operator side CPU in the cycles: {:.0} ms",
            o.steady_cpu_ms
        );
        println!(
            "  API calls: Secret GET {gets}, Secret apply {applies}, AmrCredential GET \
             {cred_gets}, status patch {patches}, Event {events}, other {other}"
        );
    }

    /// The line scripts parse.
    fn line(&self) -> String {
        let (s, o) = (&self.settings, &self.outcome);
        format!(
            "scale credentials={} identities={} first_ready_s={:.2} \
             entra_requests_per_cycle={:.1} refresh_lateness_p99_ms={:.0} peak_rss_mib={:.1} \
             cpu_ms_per_1000_refreshes={:.1}",
            s.credentials,
            s.identities,
            o.first_ready_s.unwrap_or(f64::NAN),
            self.requests_per_cycle(),
            self.lateness(1),
            o.peak_rss_mib,
            self.cpu_per_1000(),
        )
    }
}
