//! The Helm chart renders valid, least-privilege manifests in every mode, and what is built
//! from it (the plain manifests, the examples, the install guide) stays in step with it.
//!
//! Needs Helm 4 at `.tools/bin/helm` or `$HELM`: `scripts/install-tools.sh` installs it. The
//! tests at the end also talk to a cluster, when `KUBECONFIG` names a reachable one.

use amr_credential_operator::api::{AmrCredential, FlowType, TokenManagerConfig, validate};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CHART: &str = "charts/amr-credential-operator";
const RELEASE: &str = "amr-credential-operator";
const NAMESPACE: &str = "amr-credential-operator";
const CRD: &str = "crds/amrcredentials.amr.entraid.dev.yaml";
const CHART_CRD: &str =
    "charts/amr-credential-operator/crds-src/amrcredentials.amr.entraid.dev.yaml";
const OPERATOR_MANIFEST: &str = "deploy/operator.yaml";
const REGENERATE: &str = "UPDATE_MANIFESTS=1 cargo test --test chart";

/// Value sets that switch on each mode of the chart.
const MODES: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("namespaced", &["watchNamespaces={a,b}"]),
    (
        "workload identity",
        &[
            "azureWorkloadIdentity.enabled=true",
            "azureWorkloadIdentity.clientId=66666666-6666-6666-6666-666666666666",
            "azureWorkloadIdentity.tenantId=77777777-7777-7777-7777-777777777777",
        ],
    ),
    ("metrics off", &["metrics.enabled=false"]),
    ("service monitor", &["metrics.serviceMonitor.enabled=true"]),
    ("crds disabled", &["crds.enabled=false"]),
    ("every option", EVERY_OPTION),
];

/// Every value that adds something to the Deployment, set at once.
const EVERY_OPTION: &[&str] = &[
    "ambientIdentityNamespaces={ops,reports}",
    "entra.authorityHost=https://login.example.net",
    "entra.tenantId=88888888-8888-8888-8888-888888888888",
    "entra.managedIdentityEndpoint=http://127.0.0.1:40342",
    "entra.caBundle.configMap=corp-ca",
    "maxConcurrentTokenRequests=3",
    "logLevel=debug",
    "logFormat=text",
    "leaderElection.enabled=false",
    "podDisruptionBudget.enabled=false",
    "priorityClassName=system-cluster-critical",
    "podAnnotations.team=cache",
    "podLabels.tier=platform",
    "nodeSelector.kubernetes\\.io/os=linux",
    "tolerations[0].key=dedicated",
    "tolerations[0].operator=Exists",
    "image.pullSecrets[0].name=registry",
    "image.tag=9.9.9",
    "replicaCount=2",
];

/// The permissions the operator needs on every namespace it watches, in chart order:
/// API groups, resources, verbs.
const WATCH_RULES: &[(&str, &[&str], &[&str])] = &[
    (
        "amr.entraid.dev",
        &["amrcredentials"],
        &["get", "list", "watch", "patch"],
    ),
    (
        "amr.entraid.dev",
        &["amrcredentials/status"],
        &["get", "patch"],
    ),
    (
        "",
        &["secrets"],
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("", &["serviceaccounts"], &["get"]),
    ("", &["serviceaccounts/token"], &["create"]),
    ("events.k8s.io", &["events"], &["create", "patch"]),
    (
        "apps",
        &["deployments", "statefulsets", "daemonsets"],
        &["get", "patch"],
    ),
];

/// The leader-election permission, granted in the release namespace only.
const LEASE_RULES: &[(&str, &[&str], &[&str])] = &[(
    "coordination.k8s.io",
    &["leases"],
    &["get", "create", "update"],
)];

// ---------------------------------------------------------------------------------------------
// Helpers

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn helm() -> PathBuf {
    let path = std::env::var_os("HELM").map_or_else(|| repo(".tools/bin/helm"), PathBuf::from);
    assert!(
        path.is_file(),
        "Helm not found at {}: run scripts/install-tools.sh (or point $HELM at Helm 4)",
        path.display()
    );
    path
}

/// Runs Helm in the repository root: its standard output, or its standard error on failure.
fn run_helm(args: &[String]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(args)
        .current_dir(repo(""))
        .output()
        .expect("Helm starts");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("Helm prints UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn with_values(mut args: Vec<String>, sets: &[&str]) -> Vec<String> {
    for set in sets {
        args.extend(["--set".to_string(), (*set).to_string()]);
    }
    args
}

fn template_args(chart: &str, sets: &[&str]) -> Vec<String> {
    let args = ["template", RELEASE, chart, "--namespace", NAMESPACE];
    with_values(args.map(String::from).to_vec(), sets)
}

fn render(sets: &[&str]) -> String {
    run_helm(&template_args(CHART, sets))
        .unwrap_or_else(|e| panic!("helm template with {sets:?} failed:\n{e}"))
}

fn render_error(sets: &[&str]) -> String {
    match run_helm(&template_args(CHART, sets)) {
        Ok(_) => panic!("helm template with {sets:?} succeeded; it should have failed"),
        Err(e) => e,
    }
}

/// The objects of a multi-document YAML stream, as JSON values.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn describe(object: &Value) -> String {
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or("-");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    format!(
        "{} {namespace}/{name}",
        object["kind"].as_str().unwrap_or("?")
    )
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn the_one<T: DeserializeOwned + Serialize>(objects: &[Value], kind: &str) -> T {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    typed(found[0])
}

/// JSON numbers as floats, so that `2` and `2.0` compare equal.
fn numbers_as_floats(value: Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map_or(Value::Number(n), Value::from),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, numbers_as_floats(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Parses `object` as `T` and checks that nothing was dropped: a misspelt field in a template
/// would parse (Kubernetes types ignore unknown fields) but not survive the round trip.
fn typed<T: DeserializeOwned + Serialize>(object: &Value) -> T {
    let parsed: T = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", describe(object)));
    let back = serde_json::to_value(&parsed).expect("Kubernetes types serialise");
    assert_eq!(
        numbers_as_floats(back),
        numbers_as_floats(object.clone()),
        "{} has fields its type does not know",
        describe(object)
    );
    parsed
}

/// Checks that every field of `given` is in `parsed` with the same value; `parsed` may add
/// defaults.
fn assert_fields_kept(given: &Value, parsed: &Value, at: &str) {
    match (given, parsed) {
        (Value::Object(g), Value::Object(p)) => {
            for (key, value) in g {
                let path = format!("{at}.{key}");
                let Some(kept) = p.get(key) else {
                    panic!("{path} is not a field of the type");
                };
                assert_fields_kept(value, kept, &path);
            }
        }
        (Value::Array(g), Value::Array(p)) if g.len() == p.len() => {
            for (i, (value, kept)) in g.iter().zip(p).enumerate() {
                assert_fields_kept(value, kept, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(
            numbers_as_floats(given.clone()),
            numbers_as_floats(parsed.clone()),
            "{at} changed when parsed"
        ),
    }
}

fn rules(spec: &[(&str, &[&str], &[&str])]) -> Vec<PolicyRule> {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    spec.iter()
        .map(|(group, resources, verbs)| PolicyRule {
            api_groups: Some(vec![(*group).to_string()]),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            ..PolicyRule::default()
        })
        .collect()
}

/// Every Role and ClusterRole of a render, keyed by kind, namespace and name.
fn rendered_rules(objects: &[Value]) -> BTreeMap<String, Vec<PolicyRule>> {
    let mut found = BTreeMap::new();
    for object in of_kind(objects, "ClusterRole") {
        let role: ClusterRole = typed(object);
        found.insert(describe(object), role.rules.unwrap_or_default());
    }
    for object in of_kind(objects, "Role") {
        let role: Role = typed(object);
        found.insert(describe(object), role.rules.unwrap_or_default());
    }
    found
}

fn pod_spec(objects: &[Value]) -> PodSpec {
    let deployment: Deployment = the_one(objects, "Deployment");
    deployment
        .spec
        .template
        .spec
        .expect("the Deployment has a pod spec")
}

fn operator_container(objects: &[Value]) -> Container {
    let mut containers = pod_spec(objects).containers;
    assert_eq!(containers.len(), 1, "the operator pod has one container");
    containers.remove(0)
}

/// The container's plain environment variables (those with a literal value).
fn env_values(container: &Container) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

/// The text of one rendered template, without Helm's `# Source:` line.
fn rendered_template(render: &str, template: &str) -> Option<String> {
    let header = format!("# Source: {RELEASE}/templates/{template}\n");
    let start = render.find(&header)? + header.len();
    let rest = &render[start..];
    let end = rest.find("\n---\n").map_or(rest.len(), |i| i + 1);
    Some(rest[..end].to_string())
}

/// The committed CRD with the annotation that keeps it on uninstall.
fn crd_with_keep_annotation() -> String {
    let metadata = "\nmetadata:\n  name: amrcredentials.amr.entraid.dev\n";
    let annotated = "\nmetadata:\n  annotations:\n    helm.sh/resource-policy: keep\n  \
                     name: amrcredentials.amr.entraid.dev\n";
    let committed = read(CRD);
    assert!(
        committed.contains(metadata),
        "{CRD} starts its metadata as expected"
    );
    committed.replacen(metadata, annotated, 1)
}

/// The dotted paths of values.yaml, down to values that are given whole.
fn value_paths() -> BTreeSet<String> {
    // Values passed to Kubernetes as one object, although the default fills in some fields.
    const WHOLE: &[&str] = &["resources"];
    fn walk(value: &serde_yaml_ng::Value, prefix: &str, out: &mut BTreeSet<String>) {
        let serde_yaml_ng::Value::Mapping(map) = value else {
            return;
        };
        for (key, child) in map {
            let key = key.as_str().expect("values keys are strings");
            let path = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            let nested = child.as_mapping().is_some_and(|m| !m.is_empty());
            if nested && !WHOLE.contains(&path.as_str()) {
                walk(child, &path, out);
            } else {
                out.insert(path);
            }
        }
    }
    let values: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&format!("{CHART}/values.yaml"))).expect("values parse");
    let mut paths = BTreeSet::new();
    walk(&values, "", &mut paths);
    paths
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .expect("UTF-8 file name")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The chart itself

#[test]
fn helm_lint_strict_passes_in_every_mode() {
    for (mode, sets) in MODES {
        let args = with_values(vec!["lint".into(), "--strict".into(), CHART.into()], sets);
        if let Err(e) = run_helm(&args) {
            panic!("helm lint --strict fails in mode {mode}:\n{e}");
        }
    }
}

#[test]
fn every_rendered_object_parses_as_its_kubernetes_type() {
    for (mode, sets) in MODES {
        for object in objects(&render(sets)) {
            match object["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" => drop(typed::<ServiceAccount>(&object)),
                "ClusterRole" => drop(typed::<ClusterRole>(&object)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&object)),
                "Role" => drop(typed::<Role>(&object)),
                "RoleBinding" => drop(typed::<RoleBinding>(&object)),
                "Deployment" => drop(typed::<Deployment>(&object)),
                "Service" => drop(typed::<Service>(&object)),
                "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(&object)),
                "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(&object)),
                "ServiceMonitor" => assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1"),
                _ => panic!("mode {mode} renders an unexpected {}", describe(&object)),
            }
        }
    }
}

#[test]
fn default_render_holds_the_expected_objects() {
    let kinds: BTreeSet<String> = objects(&render(&[])).iter().map(describe).collect();
    let expected = [
        "ClusterRole -/amr-credential-operator",
        "ClusterRoleBinding -/amr-credential-operator",
        "CustomResourceDefinition -/amrcredentials.amr.entraid.dev",
        "Deployment amr-credential-operator/amr-credential-operator",
        "PodDisruptionBudget amr-credential-operator/amr-credential-operator",
        "Role amr-credential-operator/amr-credential-operator-leader-election",
        "RoleBinding amr-credential-operator/amr-credential-operator-leader-election",
        "Service amr-credential-operator/amr-credential-operator-metrics",
        "ServiceAccount amr-credential-operator/amr-credential-operator",
    ];
    assert_eq!(kinds, expected.map(String::from).into());
}

#[test]
fn cluster_wide_rbac_is_exactly_the_least_privilege_list() {
    let found = rendered_rules(&objects(&render(&[])));
    let expected = BTreeMap::from([
        (
            "ClusterRole -/amr-credential-operator".to_string(),
            rules(WATCH_RULES),
        ),
        (
            "Role amr-credential-operator/amr-credential-operator-leader-election".to_string(),
            rules(LEASE_RULES),
        ),
    ]);
    assert_eq!(found, expected);
}

#[test]
fn namespaced_mode_grants_the_same_rules_in_each_watched_namespace_only() {
    let rendered = objects(&render(&["watchNamespaces={a,b}"]));
    let expected = BTreeMap::from([
        (
            "Role a/amr-credential-operator".to_string(),
            rules(WATCH_RULES),
        ),
        (
            "Role b/amr-credential-operator".to_string(),
            rules(WATCH_RULES),
        ),
        (
            "Role amr-credential-operator/amr-credential-operator-leader-election".to_string(),
            rules(LEASE_RULES),
        ),
    ]);
    assert_eq!(rendered_rules(&rendered), expected);
    assert!(of_kind(&rendered, "ClusterRoleBinding").is_empty());
    let env = env_values(&operator_container(&rendered));
    assert_eq!(env["AMR_WATCH_NAMESPACES"], "a,b");
}

#[test]
fn leader_election_off_drops_the_lease_role_and_says_so() {
    let rendered = objects(&render(&["leaderElection.enabled=false"]));
    let found = rendered_rules(&rendered);
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        ["ClusterRole -/amr-credential-operator"]
    );
    let env = env_values(&operator_container(&rendered));
    assert_eq!(env["AMR_LEADER_ELECTION"], "false");
}

#[test]
fn every_binding_grants_a_rendered_role_to_the_operator_service_account() {
    for (mode, sets) in MODES {
        let rendered = objects(&render(sets));
        let roles = rendered_rules(&rendered);
        let account: ServiceAccount = the_one(&rendered, "ServiceAccount");
        let namespaced = of_kind(&rendered, "RoleBinding").into_iter().map(|object| {
            let binding: RoleBinding = typed(object);
            let namespace = binding.metadata.namespace.unwrap_or_default();
            (object, namespace, binding.role_ref, binding.subjects)
        });
        let cluster_wide = of_kind(&rendered, "ClusterRoleBinding")
            .into_iter()
            .map(|object| {
                let binding: ClusterRoleBinding = typed(object);
                (object, "-".to_string(), binding.role_ref, binding.subjects)
            });
        for (object, namespace, role_ref, subjects) in namespaced.chain(cluster_wide) {
            let role = format!("{} {namespace}/{}", role_ref.kind, role_ref.name);
            assert!(
                roles.contains_key(&role),
                "{mode}: {} binds missing {role}",
                describe(object)
            );
            let subjects = subjects.unwrap_or_default();
            assert_eq!(subjects.len(), 1, "{mode}: {}", describe(object));
            assert_eq!(subjects[0].kind, "ServiceAccount");
            assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
            assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
        }
    }
}

#[test]
fn operator_pod_runs_as_non_root_with_a_read_only_root_and_no_capabilities() {
    let rendered = objects(&render(&[]));
    let pod = pod_spec(&rendered)
        .security_context
        .expect("pod security context");
    assert_eq!(pod.run_as_non_root, Some(true));
    assert_eq!(pod.run_as_user, Some(65532));
    let seccomp = pod.seccomp_profile.expect("pod seccomp profile");
    assert_eq!(seccomp.type_, "RuntimeDefault");

    let container = operator_container(&rendered)
        .security_context
        .expect("container context");
    assert_eq!(container.run_as_non_root, Some(true));
    assert_eq!(container.run_as_user, Some(65532));
    assert_eq!(container.read_only_root_filesystem, Some(true));
    assert_eq!(container.allow_privilege_escalation, Some(false));
    assert_eq!(container.privileged, None);
    let capabilities = container.capabilities.expect("capabilities");
    assert_eq!(capabilities.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(capabilities.add, None);
    assert_eq!(
        container.seccomp_profile.expect("seccomp").type_,
        "RuntimeDefault"
    );
}

#[test]
fn probes_use_the_health_endpoints_on_the_port_named_http() {
    for sets in [&[][..], &["metrics.enabled=false"]] {
        let container = operator_container(&objects(&render(sets)));
        let ports = container.ports.expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].container_port),
            (Some("http"), 8080)
        );
        for (probe, path) in [
            (container.liveness_probe, "/healthz"),
            (container.readiness_probe, "/readyz"),
        ] {
            let get = probe.and_then(|p| p.http_get).expect("an HTTP probe");
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into())
            );
        }
    }
}

#[test]
fn container_runs_the_operator_with_defaults_from_the_chart() {
    let container = operator_container(&objects(&render(&[])));
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/amr-entraid/amr-credential-operator:0.1.0")
    );
    assert_eq!(container.args, Some(vec!["run".to_string()]));
    let env = env_values(&container);
    let expected = BTreeMap::from([
        ("AMR_METRICS_ADDR", "0.0.0.0:8080"),
        ("AMR_LOG_LEVEL", "info"),
        ("AMR_LOG_FORMAT", "json"),
        ("AMR_LEADER_ELECTION", "true"),
        ("AMR_LEASE_NAME", "amr-credential-operator"),
        ("AMR_MAX_CONCURRENT_TOKEN_REQUESTS", "16"),
    ]);
    let expected: BTreeMap<String, String> = expected
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(env, expected, "no Azure host or tenant is set by default");

    let from_pod: BTreeMap<_, _> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let field = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.as_str(), field.field_path.clone()))
        })
        .collect();
    assert_eq!(
        from_pod,
        BTreeMap::from([
            ("POD_NAMESPACE", "metadata.namespace".to_string()),
            ("POD_NAME", "metadata.name".to_string()),
        ])
    );
}

#[test]
fn every_option_reaches_the_pod() {
    let rendered = objects(&render(EVERY_OPTION));
    let pod = pod_spec(&rendered);
    let container = operator_container(&rendered);
    let env = env_values(&container);
    for (name, value) in [
        ("AMR_AMBIENT_IDENTITY_NAMESPACES", "ops,reports"),
        ("AZURE_AUTHORITY_HOST", "https://login.example.net"),
        ("AZURE_TENANT_ID", "88888888-8888-8888-8888-888888888888"),
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "http://127.0.0.1:40342",
        ),
        ("AMR_CA_FILE", "/etc/amr-credential-operator/ca/ca.crt"),
        (
            "AMR_REDIS_CA_FILE",
            "/etc/amr-credential-operator/ca/ca.crt",
        ),
        ("AMR_MAX_CONCURRENT_TOKEN_REQUESTS", "3"),
        ("AMR_LOG_LEVEL", "debug"),
        ("AMR_LOG_FORMAT", "text"),
        ("AMR_LEADER_ELECTION", "false"),
    ] {
        assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
    }
    assert!(
        !env.contains_key("AMR_WATCH_NAMESPACES"),
        "empty means cluster-wide"
    );

    let mount = &container.volume_mounts.expect("the CA bundle is mounted")[0];
    assert_eq!(mount.mount_path, "/etc/amr-credential-operator/ca");
    let volume = &pod.volumes.expect("the CA bundle volume")[0];
    assert_eq!(
        volume.config_map.as_ref().map(|c| c.name.as_str()),
        Some("corp-ca")
    );
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/amr-entraid/amr-credential-operator:9.9.9")
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    assert_eq!(
        pod.image_pull_secrets.expect("pull secrets")[0].name,
        "registry"
    );
    assert_eq!(
        pod.tolerations.expect("tolerations")[0].key.as_deref(),
        Some("dedicated")
    );
    assert_eq!(
        pod.node_selector.expect("node selector")["kubernetes.io/os"],
        "linux"
    );
    assert!(of_kind(&rendered, "PodDisruptionBudget").is_empty());

    let deployment: Deployment = the_one(&rendered, "Deployment");
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let metadata = spec.template.metadata.expect("pod metadata");
    assert_eq!(metadata.annotations.expect("annotations")["team"], "cache");
    assert_eq!(metadata.labels.expect("labels")["tier"], "platform");
}

#[test]
fn ca_bundle_is_trusted_for_entra_id_and_for_redis() {
    let rendered = objects(&render(&[
        "entra.caBundle.configMap=corp-ca",
        "entra.caBundle.key=bundle.pem",
    ]));
    let pod = pod_spec(&rendered);
    let container = operator_container(&rendered);
    let mounts = container
        .volume_mounts
        .clone()
        .expect("the CA bundle is mounted");
    assert_eq!(mounts.len(), 1);
    let volumes = pod.volumes.expect("the CA bundle volume");
    assert_eq!(volumes.len(), 1);
    assert_eq!(mounts[0].name, volumes[0].name);
    assert_eq!(mounts[0].read_only, Some(true));
    let config_map = volumes[0].config_map.as_ref().expect("a ConfigMap volume");
    assert_eq!(config_map.name, "corp-ca");
    let items = config_map
        .items
        .as_ref()
        .expect("the bundle key is projected");
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("bundle.pem", "bundle.pem")
    );

    let mounted = format!("{}/bundle.pem", mounts[0].mount_path);
    let env = env_values(&container);
    assert_eq!(
        env.get("AMR_CA_FILE"),
        Some(&mounted),
        "trusted for Entra ID"
    );
    assert_eq!(
        env.get("AMR_REDIS_CA_FILE"),
        Some(&mounted),
        "trusted when spec.verify connects to Redis"
    );
}

#[test]
fn workload_identity_annotates_the_service_account_and_labels_the_pods() {
    let (_, sets) = MODES[2];
    let rendered = objects(&render(sets));
    let account: ServiceAccount = the_one(&rendered, "ServiceAccount");
    let annotations = account.metadata.annotations.expect("annotations");
    assert_eq!(
        annotations["azure.workload.identity/client-id"],
        "66666666-6666-6666-6666-666666666666"
    );
    assert_eq!(
        annotations["azure.workload.identity/tenant-id"],
        "77777777-7777-7777-7777-777777777777"
    );
    let deployment: Deployment = the_one(&rendered, "Deployment");
    let labels = deployment.spec.template.metadata.and_then(|m| m.labels);
    assert_eq!(
        labels.expect("pod labels")["azure.workload.identity/use"],
        "true"
    );

    let plain: Deployment = the_one(&objects(&render(&[])), "Deployment");
    let labels = plain.spec.template.metadata.and_then(|m| m.labels);
    assert!(
        !labels
            .expect("pod labels")
            .contains_key("azure.workload.identity/use")
    );
}

#[test]
fn workload_identity_without_a_client_id_is_refused() {
    let error = render_error(&["azureWorkloadIdentity.enabled=true"]);
    assert!(
        error.contains("azureWorkloadIdentity.clientId is required"),
        "{error}"
    );
}

#[test]
fn metrics_off_drops_the_service() {
    let rendered = objects(&render(&["metrics.enabled=false"]));
    assert!(of_kind(&rendered, "Service").is_empty());
    assert!(of_kind(&rendered, "ServiceMonitor").is_empty());
}

#[test]
fn service_monitor_scrapes_the_metrics_service() {
    let sets = [
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.interval=15s",
        "metrics.serviceMonitor.labels.release=prometheus",
    ];
    let rendered = objects(&render(&sets));
    let monitor = of_kind(&rendered, "ServiceMonitor")[0];
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        (&endpoint["port"], &endpoint["path"]),
        (&"http".into(), &"/metrics".into())
    );
    assert_eq!(endpoint["interval"], "15s");

    let service: Service = the_one(&rendered, "Service");
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let service_labels = serde_json::to_value(service.metadata.labels).expect("labels");
    for (key, value) in selector.as_object().expect("matchLabels") {
        assert_eq!(
            &service_labels[key], value,
            "the ServiceMonitor selects the Service"
        );
    }
}

#[test]
fn service_monitor_without_metrics_is_refused() {
    let error = render_error(&[
        "metrics.enabled=false",
        "metrics.serviceMonitor.enabled=true",
    ]);
    assert!(
        error.contains("metrics.serviceMonitor.enabled needs metrics.enabled"),
        "{error}"
    );
}

#[test]
fn values_schema_rejects_misspelt_keys_and_wrong_types() {
    for (set, complaint) in [
        (
            "imagee.tag=1.0.0",
            "additional properties 'imagee' not allowed",
        ),
        (
            "image.tagg=1.0.0",
            "additional properties 'tagg' not allowed",
        ),
        (
            "metrics.serviceMonitor.intervall=1m",
            "additional properties 'intervall'",
        ),
        ("replicaCount=two", "got string, want integer"),
        ("crds.keep=yes", "got string, want boolean"),
        ("watchNamespaces=shop", "got string, want array"),
        ("logFormat=xml", "value must be one of"),
    ] {
        let error = render_error(&[set]);
        assert!(error.contains(complaint), "--set {set}: {error}");
    }
}

// ---------------------------------------------------------------------------------------------
// The CRD in the chart

#[test]
fn chart_copy_of_the_crd_equals_crds_folder() {
    assert!(
        read(CHART_CRD) == read(CRD),
        "{CHART_CRD} differs from {CRD}: run `cp {CRD} {CHART_CRD}`"
    );
}

#[test]
fn rendered_crd_is_the_committed_one_plus_the_keep_annotation() {
    let kept = rendered_template(&render(&[]), "crd.yaml").expect("the CRD is rendered");
    assert!(
        kept == crd_with_keep_annotation(),
        "rendered CRD differs from {CRD}"
    );

    let plain = rendered_template(&render(&["crds.keep=false"]), "crd.yaml").expect("CRD");
    assert!(
        plain == read(CRD),
        "rendered CRD without keep differs from {CRD}"
    );

    assert_eq!(
        rendered_template(&render(&["crds.enabled=false"]), "crd.yaml"),
        None
    );
}

#[test]
fn packaged_chart_renders_the_same_crd() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let destination = dir.path().to_str().expect("UTF-8 path").to_string();
    let out = run_helm(&[
        "package".into(),
        CHART.into(),
        "--destination".into(),
        destination,
    ])
    .unwrap_or_else(|e| panic!("helm package failed:\n{e}"));
    let package = dir.path().join("amr-credential-operator-0.1.0.tgz");
    assert!(
        package.is_file(),
        "helm package wrote no {}: {out}",
        package.display()
    );

    let args = template_args(package.to_str().expect("UTF-8 path"), &[]);
    let render = run_helm(&args).unwrap_or_else(|e| panic!("rendering the package:\n{e}"));
    let crd = rendered_template(&render, "crd.yaml").expect("the packaged chart has the CRD");
    assert!(
        crd == crd_with_keep_annotation(),
        "the packaged chart's CRD differs"
    );
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&format!("{CHART}/Chart.yaml"))).expect("Chart.yaml");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
}

// ---------------------------------------------------------------------------------------------
// Files built from the chart

/// The plain manifests: a header, the Namespace, and the chart rendered with its defaults.
fn expected_operator_manifest() -> String {
    let header = format!(
        "# The AMR credential operator as plain manifests: its Namespace, then the Helm chart
# rendered with its default values but without the CRD. Install both, CRD first:
#
#   kubectl apply -f crds/ -f deploy/operator.yaml
#
# Generated; do not edit. Everything after the Namespace is the output of
#
#   helm template {RELEASE} {CHART} \\
#     --namespace {NAMESPACE} --set crds.enabled=false
#
# Regenerate with `{REGENERATE}`.
---
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/name: {RELEASE}
    pod-security.kubernetes.io/enforce: restricted
"
    );
    header + &render(&["crds.enabled=false"])
}

#[test]
fn deploy_operator_yaml_is_the_default_render() {
    let expected = expected_operator_manifest();
    if std::env::var_os("UPDATE_MANIFESTS").is_some() {
        std::fs::write(repo(OPERATOR_MANIFEST), &expected).expect("writing the manifests");
    }
    assert!(
        read(OPERATOR_MANIFEST) == expected,
        "{OPERATOR_MANIFEST} is stale: regenerate it with `{REGENERATE}`"
    );
    let rendered = objects(&expected);
    let namespace: Namespace = typed(&rendered[0]);
    assert_eq!(namespace.metadata.name.as_deref(), Some(NAMESPACE));
    assert!(of_kind(&rendered, "CustomResourceDefinition").is_empty());
    for object in &rendered[1..] {
        let namespace = object["metadata"]["namespace"].as_str();
        let cluster_scoped =
            ["ClusterRole", "ClusterRoleBinding"].contains(&object["kind"].as_str().unwrap_or(""));
        assert!(
            cluster_scoped || namespace == Some(NAMESPACE),
            "{} names its namespace",
            describe(object)
        );
    }
}

#[test]
fn examples_are_valid_amr_credentials_one_per_flow() {
    let expected = BTreeMap::from([
        ("billing-cache", FlowType::ClientCredentialsWithCertificate),
        ("catalog-cache", FlowType::SystemAssignedManagedIdentity),
        ("inventory-cache", FlowType::WorkloadIdentity),
        ("ops-cache", FlowType::AuthorizationCodeWithPKCE),
        ("orders-cache", FlowType::ClientCredentials),
        ("reports-cache", FlowType::DefaultAzureCredential),
        ("search-cache", FlowType::UserAssignedManagedIdentity),
    ]);
    let mut found = BTreeMap::new();
    for path in yaml_files("deploy/examples") {
        let name = file_stem(&path);
        let text = std::fs::read_to_string(&path).expect("example readable");
        assert!(
            text.starts_with("# "),
            "{name}: starts with a comment header"
        );
        let given: Value = serde_yaml_ng::from_str(&text).expect("example is YAML");
        assert_eq!(given["apiVersion"], "amr.entraid.dev/v1alpha1", "{name}");
        assert_eq!(given["kind"], "AmrCredential", "{name}");

        let credential: AmrCredential = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} is not an AmrCredential: {e}"));
        let parsed = serde_json::to_value(&credential).expect("serialises");
        assert_fields_kept(&given, &parsed, &name);
        assert_eq!(credential.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(credential.metadata.namespace, None, "{name}: no namespace");
        if let Err(e) = validate(&name, &credential.spec) {
            panic!("{name} does not validate: {e}");
        }
        found.insert(name, credential);
    }
    let flows: BTreeMap<&str, FlowType> = found
        .iter()
        .map(|(n, c)| (n.as_str(), c.spec.flow.flow_type))
        .collect();
    assert_eq!(flows, expected);
}

#[test]
fn examples_keep_the_ids_the_demo_uses() {
    let example = |name: &str| -> AmrCredential {
        serde_yaml_ng::from_str(&read(&format!("deploy/examples/{name}.yaml"))).expect(name)
    };
    let orders = example("orders-cache").spec;
    assert_eq!(
        orders.flow.client_id.as_deref(),
        Some("11111111-1111-1111-1111-111111111111")
    );
    let secret = orders.flow.client_secret_ref.expect("client secret");
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("orders-sp", "client-secret")
    );
    let redis = orders.redis.expect("redis");
    assert_eq!(
        (redis.host.as_str(), redis.port),
        ("orders.westeurope.redis.azure.net", 10000)
    );
    assert!(orders.verify.expect("verify").enabled);
    assert_ne!(orders.token_manager_config, TokenManagerConfig::default());

    let billing = example("billing-cache").spec.flow;
    assert_eq!(
        billing.client_id.as_deref(),
        Some("22222222-2222-2222-2222-222222222222")
    );
    let cert = billing.client_certificate_ref.expect("certificate");
    assert_eq!(cert.name, "billing-cert");
    assert_eq!((cert.certificate_key, cert.private_key_key), (None, None));

    let search = example("search-cache").spec.flow;
    assert_eq!(
        search.user_assigned_client_id.as_deref(),
        Some("33333333-3333-3333-3333-333333333333")
    );

    let inventory = example("inventory-cache").spec.flow;
    assert_eq!(inventory.service_account_name.as_deref(), Some("inventory"));
    assert_eq!(
        inventory.client_id.as_deref(),
        Some("44444444-4444-4444-4444-444444444444")
    );

    let ops = example("ops-cache").spec.flow;
    assert_eq!(
        ops.client_id.as_deref(),
        Some("55555555-5555-5555-5555-555555555555")
    );
    assert_eq!(
        ops.redirect_uri.as_deref(),
        Some("http://127.0.0.1:8400/callback")
    );
    let refresh = ops.refresh_token_secret_ref.expect("refresh token");
    assert_eq!(
        (refresh.name.as_str(), refresh.key.as_str()),
        ("ops-login", "refresh-token")
    );
}

#[test]
fn consumer_deployments_read_the_orders_cache_secret() {
    let files: Vec<String> = yaml_files("deploy/examples/consumers")
        .iter()
        .map(|p| file_stem(p))
        .collect();
    assert_eq!(files, ["env-vars", "projected-volume"]);

    let text = read("deploy/examples/consumers/projected-volume.yaml");
    let deployments = objects(&text);
    let pod = typed::<Deployment>(&deployments[0])
        .spec
        .template
        .spec
        .expect("pod");
    let volume = &pod.volumes.expect("volumes")[0];
    let sources = volume
        .projected
        .as_ref()
        .and_then(|p| p.sources.clone())
        .expect("projected");
    let secret = sources[0].secret.as_ref().expect("a Secret source");
    assert_eq!(secret.name, "orders-cache");
    for mount in pod
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
    {
        assert_eq!(mount.sub_path, None, "subPath mounts never see a new token");
    }

    let text = read("deploy/examples/consumers/env-vars.yaml");
    let deployments = objects(&text);
    let pod = typed::<Deployment>(&deployments[0])
        .spec
        .template
        .spec
        .expect("pod");
    let refs: Vec<(String, String)> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .map(|r| (r.name, r.key))
        .collect();
    let expected = [("orders-cache", "username"), ("orders-cache", "password")];
    assert_eq!(refs, expected.map(|(n, k)| (n.to_string(), k.to_string())));
    assert!(text.contains(
        "rolloutRestartTargets:\n#       - kind: Deployment\n#         name: orders-worker"
    ));
}

#[test]
fn every_values_key_has_a_comment_above_it() {
    let values = read(&format!("{CHART}/values.yaml"));
    let mut previous = "";
    let mut uncommented = Vec::new();
    for line in values.lines() {
        let trimmed = line.trim_start();
        let is_key = trimmed.split_once(':').is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if is_key && !trimmed.starts_with('#') {
            let indent = line.len() - trimmed.len();
            let commented = previous.trim_start().starts_with('#')
                && previous.len() - previous.trim_start().len() == indent;
            if !commented {
                uncommented.push(line.to_string());
            }
        }
        previous = line;
    }
    assert!(
        uncommented.is_empty(),
        "values without a comment line above: {uncommented:#?}"
    );
}

#[test]
fn install_guide_lists_every_chart_value() {
    let guide = read("docs/install.md");
    let documented: BTreeSet<String> = guide
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split_once('`'))
        .map(|(key, _)| key.to_string())
        .collect();
    let values = value_paths();
    let missing: Vec<_> = values.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&values).collect();
    assert!(
        missing.is_empty(),
        "docs/install.md does not list {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/install.md lists values the chart lacks: {unknown:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Against a real API server, when KUBECONFIG names one

fn kubectl() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return path.into();
    }
    let local = repo(".tools/bin/kubectl");
    if local.is_file() {
        local
    } else {
        "kubectl".into()
    }
}

/// Runs kubectl with `input` on its standard input: its output, or its error on failure.
fn run_kubectl(args: &[&str], input: &str) -> Result<String, String> {
    let mut child = Command::new(kubectl())
        .args(args)
        .current_dir(repo(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("kubectl does not start: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Whether `KUBECONFIG` names a cluster that answers; says why not otherwise.
fn cluster_reachable() -> bool {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("not run: KUBECONFIG is not set");
        return false;
    }
    match run_kubectl(&["get", "--raw", "/readyz", "--request-timeout=10s"], "") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("not run: the cluster in KUBECONFIG does not answer: {e}");
            false
        }
    }
}

const SERVER_DRY_RUN: &[&str] = &[
    "apply",
    "--server-side",
    "--dry-run=server",
    "--force-conflicts",
];

#[test]
fn crds_and_examples_pass_a_server_side_dry_run() {
    if !cluster_reachable() {
        return;
    }
    let crd = run_kubectl(&[SERVER_DRY_RUN, &["-f", CRD]].concat(), "");
    crd.unwrap_or_else(|e| panic!("the API server refuses {CRD}:\n{e}"));

    let installed = run_kubectl(&["get", "crd", "amrcredentials.amr.entraid.dev"], "");
    if installed.is_err() {
        eprintln!("examples not dry-run: the cluster has no AmrCredential CRD (apply crds/)");
        return;
    }
    let args = [
        SERVER_DRY_RUN,
        &["--namespace", "default", "-f", "deploy/examples/"],
    ]
    .concat();
    run_kubectl(&args, "").unwrap_or_else(|e| panic!("the API server refuses an example:\n{e}"));
}

#[test]
fn chart_passes_a_server_side_dry_run() {
    if !cluster_reachable() {
        return;
    }
    let args = [
        "template",
        RELEASE,
        CHART,
        "--namespace",
        "default",
        "--set",
        "crds.enabled=false",
    ];
    let render = run_helm(&args.map(String::from)).expect("the chart renders");
    let apply = [SERVER_DRY_RUN, &["-f", "-"]].concat();
    run_kubectl(&apply, &render)
        .unwrap_or_else(|e| panic!("the API server refuses the chart:\n{e}"));
}
