//! Rollout restarts of the workloads that read the credential from environment variables.

use super::conditions::{
    ConditionUpdate, ROLLOUT_RESTART_DONE, ROLLOUT_RESTART_FAILED, ROLLOUT_RESTARTED,
    ROLLOUT_TARGET_NOT_FOUND,
};
use crate::api::{RolloutRestartTarget, WorkloadKind};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Debug;

/// The pod template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";

/// How restarting one workload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// The pod template was patched.
    Done,
    /// The workload does not exist.
    NotFound,
    /// The API server refused the patch.
    Failed(String),
}

/// One workload and how restarting it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartResult {
    /// The workload.
    pub target: RolloutRestartTarget,
    /// The result.
    pub restart: Restart,
}

/// The merge patch `kubectl rollout restart` sends, with the time in whole seconds.
pub fn restart_patch(at: Timestamp) -> Value {
    let at = Timestamp::from_second(at.as_second()).unwrap_or(at);
    json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT_ANNOTATION: at.to_string()
    }}}}})
}

/// Restarts every target in `namespace`, one after another; failures are returned, not raised.
pub async fn restart_all(
    client: &Client,
    namespace: &str,
    targets: &[RolloutRestartTarget],
    at: Timestamp,
) -> Vec<RestartResult> {
    let patch = restart_patch(at);
    let mut results = Vec::with_capacity(targets.len());
    for target in targets {
        let restart = match target.kind {
            WorkloadKind::Deployment => {
                restart::<Deployment>(client, namespace, target, &patch).await
            }
            WorkloadKind::StatefulSet => {
                restart::<StatefulSet>(client, namespace, target, &patch).await
            }
            WorkloadKind::DaemonSet => {
                restart::<DaemonSet>(client, namespace, target, &patch).await
            }
        };
        results.push(RestartResult {
            target: target.clone(),
            restart,
        });
    }
    results
}

async fn restart<K>(
    client: &Client,
    namespace: &str,
    target: &RolloutRestartTarget,
    patch: &Value,
) -> Restart
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api
        .patch(&target.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Restart::Done,
        Err(kube::Error::Api(status)) if status.is_not_found() => Restart::NotFound,
        Err(e) => Restart::Failed(e.to_string()),
    }
}

/// `Kind/name` of a target, as messages show it.
pub fn describe(target: &RolloutRestartTarget) -> String {
    format!("{:?}/{}", target.kind, target.name)
}

/// The RolloutRestarted condition for `results`; none when there were no targets.
pub fn summarize(results: &[RestartResult]) -> Option<ConditionUpdate> {
    if results.is_empty() {
        return None;
    }
    let listed = |want: fn(&Restart) -> bool| {
        let names: Vec<String> = results
            .iter()
            .filter(|r| want(&r.restart))
            .map(|r| describe(&r.target))
            .collect();
        names.join(", ")
    };
    let missing = listed(|r| *r == Restart::NotFound);
    let failed = listed(|r| matches!(r, Restart::Failed(_)));
    let (status, reason, message) = if !missing.is_empty() {
        (
            false,
            ROLLOUT_TARGET_NOT_FOUND,
            format!("Not found: {missing}"),
        )
    } else if !failed.is_empty() {
        (
            false,
            ROLLOUT_RESTART_FAILED,
            format!("Could not restart: {failed}"),
        )
    } else {
        (
            true,
            ROLLOUT_RESTART_DONE,
            format!("Restarted {}", listed(|_| true)),
        )
    };
    Some(ConditionUpdate {
        type_: ROLLOUT_RESTARTED,
        status,
        reason,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, restart: Restart) -> RestartResult {
        let target = RolloutRestartTarget {
            kind: WorkloadKind::Deployment,
            name: name.into(),
        };
        RestartResult { target, restart }
    }

    #[test]
    fn the_patch_sets_the_restarted_at_annotation_in_whole_seconds() {
        let at = Timestamp::from_millisecond(1_750_000_000_250).expect("in range");
        let patch = restart_patch(at);
        let value = &patch["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION];
        assert_eq!(value, "2025-06-15T15:06:40Z");
    }

    #[test]
    fn no_targets_set_no_condition() {
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn a_missing_target_makes_the_condition_false_and_names_it() {
        let c = summarize(&[
            result("api", Restart::Done),
            result("gone", Restart::NotFound),
        ]);
        let c = c.expect("a condition");
        assert_eq!((c.status, c.reason), (false, ROLLOUT_TARGET_NOT_FOUND));
        assert_eq!(c.message, "Not found: Deployment/gone");
    }

    #[test]
    fn all_targets_restarted_make_the_condition_true() {
        let c = summarize(&[result("api", Restart::Done)]).expect("a condition");
        assert_eq!(
            (c.status, c.message.as_str()),
            (true, "Restarted Deployment/api")
        );
    }
}
