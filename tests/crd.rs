//! The committed CRD matches the types, parses as a CustomResourceDefinition, and is accepted
//! by a real API server when `KUBECONFIG` names one.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

const COMMITTED: &str = include_str!("../crds/amrcredentials.amr.entraid.dev.yaml");

#[test]
fn committed_crd_equals_the_generated_one() {
    let generated = amr_credential_operator::api::crd_yaml().unwrap();
    assert!(
        generated == COMMITTED,
        "crds/ is stale: run `cargo run -- crd > crds/amrcredentials.amr.entraid.dev.yaml`"
    );
}

#[test]
fn committed_crd_parses_with_status_subresource_and_short_name() {
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(COMMITTED).unwrap();
    assert_eq!(crd.spec.group, "amr.entraid.dev");
    assert_eq!(crd.spec.names.short_names, Some(vec!["amrc".to_string()]));
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Ready", "Identity", "Expires", "Next refresh", "Age"]
    );
}

#[test]
fn schema_carries_the_cel_rules_for_each_flow() {
    for needle in [
        "ClientCredentials needs clientId and clientSecretRef",
        "WorkloadIdentity needs serviceAccountName",
        "initialDelayMs must not exceed maxDelayMs",
        "exclusiveMinimum",
    ] {
        assert!(COMMITTED.contains(needle), "missing {needle}");
    }
}
