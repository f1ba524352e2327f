//! What the two provisioned stores share: the StatefulSet around a store's pod, its volume
//! claim and retention, and the init container that installs a Secret file privately.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec,
    SecretVolumeSource, Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{
    CONFIG_HASH_ANNOTATION, container, labels, meta, mount, placed, pod_security, selector_labels,
};
use crate::crd::DeletionPolicy;
use crate::plan::{Component, Plan, ProvisionedStore};

/// The official images of both stores run as uid 999.
pub const STORE_UID: i64 = 999;

/// A store's pod: everything that differs between MongoDB and RabbitMQ.
pub(super) struct StorePod {
    pub component: Component,
    /// The headless Service naming the members.
    pub service_name: String,
    pub init_containers: Vec<Container>,
    pub container: Container,
    pub volumes: Vec<Volume>,
    pub config_hash: String,
    pub termination_grace_period_seconds: Option<i64>,
}

/// The StatefulSet of a provisioned store. Members start in parallel: a new replica set or
/// cluster needs all of them up to form, and restarted ones rejoin by their stable names.
pub(super) fn statefulset(plan: &Plan, store: &ProvisionedStore, pod: StorePod) -> StatefulSet {
    let component = pod.component.as_str();
    StatefulSet {
        metadata: meta(plan, plan.child_name(pod.component), component),
        spec: Some(StatefulSetSpec {
            replicas: Some(store.replicas),
            service_name: Some(pod.service_name),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(plan, component)),
                match_expressions: None,
            },
            persistent_volume_claim_retention_policy: Some(retention(plan)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(plan, component)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.into(),
                        pod.config_hash,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(placed(
                    plan,
                    pod.component,
                    &store.scheduling,
                    PodSpec {
                        init_containers: (!pod.init_containers.is_empty())
                            .then_some(pod.init_containers),
                        containers: vec![pod.container],
                        security_context: Some(pod_security(STORE_UID)),
                        automount_service_account_token: Some(false),
                        enable_service_links: Some(false),
                        termination_grace_period_seconds: pod.termination_grace_period_seconds,
                        volumes: Some(pod.volumes),
                        ..PodSpec::default()
                    },
                )),
            },
            volume_claim_templates: Some(vec![volume_claim(store)]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// Installs `secret`'s `key` as `target` (a file on a volume mounted at `target_volume`),
/// readable by its owner only. mongod refuses a keyfile, and Erlang a cookie, that anyone else
/// may read, and a Secret volume's files belong to root: so copy it as the store's user.
/// Returns the Secret's volume and the init container.
pub(super) fn install_secret_file(
    store: &ProvisionedStore,
    secret: &str,
    key: &str,
    target_volume: (&str, &str),
    target: &str,
) -> (Volume, Container) {
    let volume = Volume {
        name: "secret-file".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut copy = container("install-secret-file", &store.image);
    copy.command = Some(vec!["sh".into(), "-c".into()]);
    copy.args = Some(vec![format!(
        // rm first: a restarted pod finds its earlier copy, read-only even to its owner.
        "rm -f {target} && cp /secret-file/{key} {target} && chmod 400 {target}"
    )]);
    copy.volume_mounts = Some(vec![
        mount("secret-file", "/secret-file", true),
        mount(target_volume.0, target_volume.1, false),
    ]);
    (volume, copy)
}

/// `deletionPolicy` maps onto the StatefulSet's own PVC retention: `Retain` keeps the claims
/// when the ChatCluster (and so the StatefulSet) is deleted. Scaling down always keeps them.
fn retention(plan: &Plan) -> StatefulSetPersistentVolumeClaimRetentionPolicy {
    StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some(
            match plan.deletion_policy {
                DeletionPolicy::Retain => "Retain",
                DeletionPolicy::Delete => "Delete",
            }
            .into(),
        ),
        when_scaled: Some("Retain".into()),
    }
}

/// The claim template, serialized with its `apiVersion` and `kind` (k8s-openapi writes them),
/// as the API server returns it: otherwise every apply would show a diff.
fn volume_claim(store: &ProvisionedStore) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: store.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    store.storage_size.clone(),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}
