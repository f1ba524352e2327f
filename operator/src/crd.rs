//! The `ChatCluster` custom resource (`chat.example.io/v1alpha1`).
//!
//! The spec keeps what the user wrote: optional fields stay `None`, and the builders resolve
//! defaults (per component, since each has its own image), so `spec: {}` is a whole system. The
//! schema carries every check the API server can make by itself (enums, ranges, patterns, CEL
//! rules); what only reconcile can see (a referenced Secret that does not exist) becomes a
//! `Degraded` condition instead.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A whole chat system: MongoDB, RabbitMQ and the auth, chat and websocket services.
// kube's `printcolumn(...)` repeats its keys once per column by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "chat.example.io",
    version = "v1alpha1",
    kind = "ChatCluster",
    namespaced,
    shortname = "chat",
    status = "ChatClusterStatus",
    doc = "A chat system: MongoDB, RabbitMQ and the auth, chat and websocket services",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "WebSocket",
        type_ = "string",
        description = "websocket replicas ready/desired",
        json_path = ".status.components.websocket.summary"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // Children are named `<name>-rabbitmq-nodes` (a Service: a DNS label of at most 63) and
    // `<name>-rabbitmq-<revision hash>` (a label value): 40 characters leave room for both.
    validation = Rule::new(
        "self.metadata.name.size() <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    )
    .message("the name must be a DNS label of at most 40 characters: it prefixes every child's name")
)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// While true the operator changes nothing and reports phase `Paused`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// What deleting the ChatCluster does to the stores' PersistentVolumeClaims: `Retain`
    /// (default: data survives a mistaken delete) or `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// MongoDB (`mongo:8.0` by default); with 3 members a replica set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<StoreSpec>,
    /// RabbitMQ (`rabbitmq:4.2-management` by default); with 3 nodes one cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<StoreSpec>,
    /// auth-service (port 5001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ServiceComponentSpec>,
    /// chat-service (port 5002).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ServiceComponentSpec>,
    /// websocket-service (port 5003); its replicas scale delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<ServiceComponentSpec>,
    /// An Ingress routing `/auth`, `/chat` and the WebSocket path `/` (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// A container image.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Repository, e.g. `mongo` or `ghcr.io/chat-backend/auth-service` (component default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub repository: Option<String>,
    /// Tag (component default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"))]
    pub tag: Option<String>,
    /// `Always`, `IfNotPresent` (default) or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A key of a Secret in the ChatCluster's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A store run elsewhere: nothing is provisioned, the services use this URI.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalStoreSpec {
    /// Secret key holding the connection URI. For MongoDB the URI names no database: the
    /// services select theirs with `DATABASE_NAME`.
    pub uri_secret_ref: SecretKeyRef,
}

/// Persistent storage of a store's StatefulSet.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's volume (default `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// StorageClass (the cluster default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Where a component's pods may run. Without `affinity` and `topologySpreadConstraints`,
/// replicas of one component prefer different nodes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

/// A store (MongoDB or RabbitMQ): provisioned here (1 member, or 3 forming a replica set or a
/// cluster), or `external`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.external) || (!has(self.replicas) && !has(self.image) && !has(self.storage) && !has(self.resources))")
        .message("an external store takes only uriSecretRef: replicas, image, storage and resources describe a provisioned one"),
    validation = Rule::new("has(self.storage) == has(oldSelf.storage) && (!has(self.storage) || self.storage == oldSelf.storage)")
        .message("storage cannot change once the store exists: Kubernetes cannot change a StatefulSet's volume claims (resize the PersistentVolumeClaims themselves)"),
    validation = Rule::new("(has(self.replicas) ? self.replicas : 1) >= (has(oldSelf.replicas) ? oldSelf.replicas : 1)")
        .message("a store cannot shrink from 3 members to 1: the remaining member would wait for a majority that is gone"),
)]
pub struct StoreSpec {
    /// Members: 1 (default) or 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [1, 3]))]
    pub replicas: Option<i32>,
    /// Default `mongo:8.0` for MongoDB, `rabbitmq:4.2-management` for RabbitMQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, flatten)]
    pub scheduling: SchedulingSpec,
    /// Use an existing server instead of provisioning one: a `mongodb://` or `mongodb+srv://`
    /// URI naming no database, or an `amqp://` or `amqps://` URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStoreSpec>,
}

/// One of the three services.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceComponentSpec {
    /// Pods (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables; one with the name of a variable the operator sets
    /// replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceExposureSpec>,
    #[serde(default, flatten)]
    pub scheduling: SchedulingSpec,
}

/// How a component's Service is exposed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.nodePort) || self.type != 'ClusterIP'").message("nodePort needs type NodePort or LoadBalancer"))]
pub struct ServiceExposureSpec {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// A fixed node port (30000-32767); allocated by Kubernetes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// An Ingress for the three services.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Host name (every host when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub host: Option<String>,
    /// TLS Secret for `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// E.g. the controller's WebSocket timeouts (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The ingress controller's pod network(s) (CIDR, e.g. `10.244.0.0/16`): the services
    /// believe `X-Forwarded-For` from these addresses only, so throttles key on the real client
    /// (set as the services' `TRUSTED_PROXIES`). Without it every client behind the ingress
    /// shares the controller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<String>>,
}

/// Token signing.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// An existing Secret with the HS256 secret; else one is generated once (48 random bytes)
    /// and never overwritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<JwtSecretRef>,
    /// Token lifetime (`3600`, `60m`, `24h`; default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,8}(s|m|h|d)?$"))]
    pub token_ttl: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtSecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Default `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Only the services (and the stores' own members) reach MongoDB and RabbitMQ (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// `prometheus.io/*` scrape annotations on the services' pods (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_annotations: Option<bool>,
    /// Also create a `monitoring.coreos.com/v1` ServiceMonitor (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<bool>,
}

/// What the operator last saw.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub components: ComponentsStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<MongoDbStatus>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Progressing,
    Ready,
    Degraded,
    Paused,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Progressing => "Progressing",
            Self::Ready => "Ready",
            Self::Degraded => "Degraded",
            Self::Paused => "Paused",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentsStatus {
    #[serde(default)]
    pub mongodb: ComponentStatus,
    #[serde(default)]
    pub rabbitmq: ComponentStatus,
    #[serde(default)]
    pub auth: ComponentStatus,
    #[serde(default)]
    pub chat: ComponentStatus,
    #[serde(default)]
    pub websocket: ComponentStatus,
}

/// Ready and desired pods of one component (0/0 for an external store).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub ready: i32,
    pub desired: i32,
    /// `ready/desired`, or `external`.
    #[serde(default)]
    pub summary: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoDbStatus {
    /// `host:port` of every member (the provisioned replica set), as the services' URI lists them.
    #[serde(default)]
    pub members: Vec<String>,
    /// Whether the init Job (replica set and application user) has completed.
    #[serde(default)]
    pub initialized: bool,
}
