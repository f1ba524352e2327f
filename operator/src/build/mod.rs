//! Pure builders: a resolved [`Plan`] (and the hashes of the Secrets it reads) in, the desired
//! child objects out. Nothing here talks to the API server, so golden files pin every object.

mod apps;
mod extras;
mod mongodb;
mod rabbitmq;
mod stores;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector,
    PodSecurityContext, PodSpec, SeccompProfile, SecretKeySelector, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::api::ApiResource;
use serde::Serialize;

use crate::crd::SchedulingSpec;
use crate::plan::{Component, Plan};

pub use mongodb::INIT as MONGODB_INIT;

/// The operator's field manager for server-side apply, and the `managed-by` label value.
pub const MANAGER: &str = "chat-operator";
/// Pod-template annotation carrying a hash of the Secrets a pod reads: a changed Secret changes
/// it, which rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "chat.example.io/config-hash";

/// A desired child: its type, its name and the object to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub resource: ApiResource,
    pub name: String,
    pub object: serde_json::Value,
}

impl Child {
    /// Erases a typed object (k8s-openapi types serialize their own `apiVersion` and `kind`).
    pub fn typed<K>(object: &K) -> Child
    where
        K: kube::Resource<DynamicType = ()> + Serialize,
    {
        Child {
            resource: ApiResource::erase::<K>(&()),
            name: object.meta().name.clone().unwrap_or_default(),
            // Serializing a k8s-openapi object into a Value cannot fail: every map key is a string.
            object: serde_json::to_value(object).expect("k8s-openapi objects serialize"),
        }
    }

    /// `Kind/name`, for logs, events and errors.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.resource.kind, self.name)
    }
}

/// Hashes of the Secret contents each kind of pod reads, so a changed Secret rolls exactly the
/// pods that read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecretHashes {
    pub jwt: String,
    pub mongodb: String,
    pub rabbitmq: String,
}

/// Every child the plan asks for, in apply order (Secrets and config before their readers).
pub fn desired(plan: &Plan, hashes: &SecretHashes) -> Vec<Child> {
    let mut children = Vec::new();
    children.extend(mongodb::children(plan, hashes));
    children.extend(rabbitmq::children(plan, hashes));
    for app in plan.apps() {
        children.extend(apps::children(plan, app, hashes));
    }
    children.extend(extras::children(plan));
    children
}

/// Every child a ChatCluster of this name may have that the current plan might not want, so a
/// spec change (3 replicas to 1, ingress removed, a store made external) removes them.
pub fn prunable(plan: &Plan) -> Vec<(ApiResource, String)> {
    let mut all = Vec::new();
    all.extend(mongodb::prunable(plan));
    all.extend(rabbitmq::prunable(plan));
    all.extend(extras::prunable(plan));
    all
}

/// The labels every child carries.
pub fn labels(plan: &Plan, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(plan, component);
    labels.insert("app.kubernetes.io/part-of".into(), "chat".into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels
}

/// The labels that select one component's pods of one ChatCluster.
pub fn selector_labels(plan: &Plan, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "chatcluster".into()),
        ("app.kubernetes.io/instance".into(), plan.name.clone()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

/// Metadata of a child: name, namespace, labels and the controller owner reference.
pub fn meta(plan: &Plan, name: impl Into<String>, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels(plan, component)),
        owner_references: Some(vec![plan.owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The operator's variables with the user's extras applied: an extra with the name of one of
/// ours replaces it in place (server-side apply refuses duplicate names in `env`), others follow.
fn merge_env(mut ours: Vec<EnvVar>, extra: &[EnvVar]) -> Vec<EnvVar> {
    for var in extra {
        match ours.iter_mut().find(|v| v.name == var.name) {
            Some(slot) => *slot = var.clone(),
            None => ours.push(var.clone()),
        }
    }
    ours
}

/// Pod security for a non-root user with a read-only root filesystem.
fn pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// `spec` with the user's placement for `component`. Unless the user placed the pods
/// (`affinity` or `topologySpreadConstraints`), replicas of one component prefer different
/// nodes (and zones, where nodes carry the zone label).
fn placed(
    plan: &Plan,
    component: Component,
    scheduling: &SchedulingSpec,
    spec: PodSpec,
) -> PodSpec {
    let spread = match (
        &scheduling.topology_spread_constraints,
        &scheduling.affinity,
    ) {
        (Some(given), _) => Some(given.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            let selector = LabelSelector {
                match_labels: Some(selector_labels(plan, component.as_str())),
                match_expressions: None::<Vec<LabelSelectorRequirement>>,
            };
            let spread = |key: &str| TopologySpreadConstraint {
                max_skew: 1,
                topology_key: key.into(),
                when_unsatisfiable: "ScheduleAnyway".into(),
                label_selector: Some(selector.clone()),
                ..TopologySpreadConstraint::default()
            };
            Some(vec![
                spread("kubernetes.io/hostname"),
                spread("topology.kubernetes.io/zone"),
            ])
        }
    };
    PodSpec {
        node_selector: scheduling.node_selector.clone(),
        tolerations: scheduling.tolerations.clone(),
        affinity: scheduling.affinity.clone(),
        topology_spread_constraints: spread,
        ..spec
    }
}

/// A container with the settings every container of ours shares.
fn container(name: &str, image: &crate::plan::Image) -> Container {
    Container {
        name: name.into(),
        image: Some(image.reference.clone()),
        image_pull_policy: Some(image.pull_policy.into()),
        security_context: Some(container_security()),
        ..Container::default()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
pub(crate) fn test_plan(spec: serde_json::Value) -> Plan {
    let mut cluster = crate::crd::ChatCluster::new(
        "demo",
        serde_json::from_value(spec).expect("test spec parses"),
    );
    cluster.metadata.namespace = Some("chat".into());
    cluster.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    Plan::resolve(&cluster, &crate::plan::OperatorSettings::default()).expect("named")
}

#[cfg(test)]
mod tests;
