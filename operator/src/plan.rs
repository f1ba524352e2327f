//! A ChatCluster with every default resolved: what the builders read. Resolving once keeps the
//! defaults in one place and each builder a straight translation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::crd::{
    ChatCluster, DeletionPolicy, ImageSpec, IngressSpec, SchedulingSpec, SecretKeyRef,
    ServiceComponentSpec, ServiceExposureSpec, StoreSpec,
};

/// Where the services' images come from unless a ChatCluster says otherwise; the tag is the
/// operator's own version, so an operator release deploys the services it was released with.
pub const SERVICE_IMAGE_REGISTRY: &str = "ghcr.io/chat-backend";
pub const MONGODB_IMAGE: (&str, &str) = ("mongo", "8.0");
pub const RABBITMQ_IMAGE: (&str, &str) = ("rabbitmq", "4.2-management");
pub const DEFAULT_TOKEN_TTL: &str = "1h";
pub const DEFAULT_STORAGE: &str = "1Gi";
/// Name of the replica set a 3-member MongoDB forms.
pub const REPLICA_SET: &str = "rs0";

/// The five parts of a chat system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    MongoDb,
    RabbitMq,
    Auth,
    Chat,
    WebSocket,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Self::MongoDb,
        Self::RabbitMq,
        Self::Auth,
        Self::Chat,
        Self::WebSocket,
    ];

    /// The `app.kubernetes.io/component` label and the suffix of the children's names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MongoDb => "mongodb",
            Self::RabbitMq => "rabbitmq",
            Self::Auth => "auth",
            Self::Chat => "chat",
            Self::WebSocket => "websocket",
        }
    }

    /// The port a service listens on (the seed's ports).
    pub fn port(self) -> i32 {
        match self {
            Self::MongoDb => 27017,
            Self::RabbitMq => 5672,
            Self::Auth => 5001,
            Self::Chat => 5002,
            Self::WebSocket => 5003,
        }
    }

    /// The binary (and image) name of a service.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Auth => "auth-service",
            Self::Chat => "chat-service",
            Self::WebSocket => "websocket-service",
            Self::MongoDb => "mongod",
            Self::RabbitMq => "rabbitmq-server",
        }
    }
}

/// A resolved container image.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub reference: String,
    pub pull_policy: &'static str,
}

impl Image {
    fn resolve(spec: Option<&ImageSpec>, repository: &str, tag: &str) -> Self {
        let spec = spec.cloned().unwrap_or_default();
        Image {
            reference: format!(
                "{}:{}",
                spec.repository.as_deref().unwrap_or(repository),
                spec.tag.as_deref().unwrap_or(tag)
            ),
            pull_policy: spec.pull_policy.unwrap_or_default().as_str(),
        }
    }
}

/// A store: provisioned here, or external.
#[derive(Clone, Debug, PartialEq)]
pub enum Store {
    Provisioned(Box<ProvisionedStore>),
    External(SecretKeyRef),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProvisionedStore {
    pub replicas: i32,
    pub image: Image,
    pub storage_size: Quantity,
    pub storage_class: Option<String>,
    pub resources: ResourceRequirements,
    pub scheduling: SchedulingSpec,
}

/// One of the three services.
#[derive(Clone, Debug, PartialEq)]
pub struct App {
    pub component: Component,
    pub replicas: i32,
    pub image: Image,
    pub resources: ResourceRequirements,
    pub env: Vec<EnvVar>,
    pub service: ServiceExposureSpec,
    pub scheduling: SchedulingSpec,
}

/// The JWT signing secret: the user's, or one the operator generates.
#[derive(Clone, Debug, PartialEq)]
pub struct Jwt {
    pub secret_name: String,
    pub key: String,
    pub generated: bool,
    pub token_ttl: String,
}

/// Settings of the operator process that shape what it builds.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorSettings {
    /// The cluster's DNS domain (`CLUSTER_DOMAIN`, default `cluster.local`).
    pub cluster_domain: String,
    /// Default tag of the services' images.
    pub service_image_tag: String,
}

impl Default for OperatorSettings {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            service_image_tag: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// A ChatCluster with its defaults resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub cluster_domain: String,
    pub mongodb: Store,
    pub rabbitmq: Store,
    pub auth: App,
    pub chat: App,
    pub websocket: App,
    pub jwt: Jwt,
    pub ingress: Option<IngressSpec>,
    pub network_policy: bool,
    pub scrape_annotations: bool,
    pub service_monitor: bool,
    pub deletion_policy: DeletionPolicy,
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

fn requirements(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(cpu)),
            ("memory".to_owned(), quantity(memory)),
        ])),
        // No CPU limit: throttling a latency-sensitive service hurts more than it protects.
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            quantity(memory_limit),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Default requests and memory limits per component.
fn default_resources(component: Component) -> ResourceRequirements {
    match component {
        Component::MongoDb => requirements("250m", "512Mi", "1Gi"),
        Component::RabbitMq => requirements("250m", "256Mi", "1Gi"),
        // Two argon2id hashes of 19 MiB at once (HASH_CONCURRENCY=2) plus the service.
        Component::Auth => requirements("250m", "96Mi", "256Mi"),
        Component::Chat | Component::WebSocket => requirements("100m", "64Mi", "256Mi"),
    }
}

impl Plan {
    /// Resolves every default of `cluster`. Fails only when the object lacks a name or namespace
    /// (never for an object read from the API server).
    pub fn resolve(cluster: &ChatCluster, settings: &OperatorSettings) -> Option<Plan> {
        let name = cluster.metadata.name.clone()?;
        let namespace = cluster.namespace()?;
        let owner = cluster.controller_owner_ref(&())?;
        let spec = &cluster.spec;

        let store = |spec: Option<&StoreSpec>, component: Component, image: (&str, &str)| {
            let spec = spec.cloned().unwrap_or_default();
            if let Some(external) = spec.external {
                return Store::External(external.uri_secret_ref);
            }
            let storage = spec.storage.unwrap_or_default();
            Store::Provisioned(Box::new(ProvisionedStore {
                replicas: spec.replicas.unwrap_or(1),
                image: Image::resolve(spec.image.as_ref(), image.0, image.1),
                storage_size: storage.size.unwrap_or_else(|| quantity(DEFAULT_STORAGE)),
                storage_class: storage.storage_class_name,
                resources: spec
                    .resources
                    .unwrap_or_else(|| default_resources(component)),
                scheduling: spec.scheduling,
            }))
        };
        let app = |component: Component, spec: Option<&ServiceComponentSpec>| {
            let spec = spec.cloned().unwrap_or_default();
            App {
                component,
                replicas: spec.replicas.unwrap_or(1),
                image: Image::resolve(
                    spec.image.as_ref(),
                    &format!("{SERVICE_IMAGE_REGISTRY}/{}", component.binary()),
                    &settings.service_image_tag,
                ),
                resources: spec
                    .resources
                    .unwrap_or_else(|| default_resources(component)),
                env: spec.env.unwrap_or_default(),
                service: spec.service.unwrap_or_default(),
                scheduling: spec.scheduling,
            }
        };
        let jwt = spec.jwt.clone().unwrap_or_default();
        let monitoring = spec.monitoring.clone().unwrap_or_default();
        Some(Plan {
            mongodb: store(spec.mongodb.as_ref(), Component::MongoDb, MONGODB_IMAGE),
            rabbitmq: store(spec.rabbitmq.as_ref(), Component::RabbitMq, RABBITMQ_IMAGE),
            auth: app(Component::Auth, spec.auth.as_ref()),
            chat: app(Component::Chat, spec.chat.as_ref()),
            websocket: app(Component::WebSocket, spec.websocket.as_ref()),
            jwt: match jwt.secret_ref {
                Some(r) => Jwt {
                    secret_name: r.name,
                    key: r.key.unwrap_or_else(|| "secret".into()),
                    generated: false,
                    token_ttl: jwt.token_ttl.unwrap_or_else(|| DEFAULT_TOKEN_TTL.into()),
                },
                None => Jwt {
                    secret_name: format!("{name}-jwt"),
                    key: "secret".into(),
                    generated: true,
                    token_ttl: jwt.token_ttl.unwrap_or_else(|| DEFAULT_TOKEN_TTL.into()),
                },
            },
            ingress: spec.ingress.clone(),
            network_policy: spec
                .network_policy
                .as_ref()
                .and_then(|n| n.enabled)
                .unwrap_or(true),
            scrape_annotations: monitoring.scrape_annotations.unwrap_or(true),
            service_monitor: monitoring.service_monitor.unwrap_or(false),
            deletion_policy: spec.deletion_policy.unwrap_or_default(),
            cluster_domain: settings.cluster_domain.clone(),
            name,
            namespace,
            owner,
        })
    }

    pub fn apps(&self) -> [&App; 3] {
        [&self.auth, &self.chat, &self.websocket]
    }

    /// The name of a component's workload and Service: `<cluster>-<component>`.
    pub fn child_name(&self, component: Component) -> String {
        format!("{}-{}", self.name, component.as_str())
    }

    /// A Service's DNS name inside the cluster.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc.{}", self.namespace, self.cluster_domain)
    }

    /// `host:port` of every provisioned MongoDB member (empty for an external MongoDB).
    pub fn mongodb_members(&self) -> Vec<String> {
        let Store::Provisioned(store) = &self.mongodb else {
            return Vec::new();
        };
        let sts = self.child_name(Component::MongoDb);
        (0..store.replicas)
            .map(|i| format!("{sts}-{i}.{}:27017", self.service_host(&sts)))
            .collect()
    }

    /// Desired pods of a component (0 for an external store).
    pub fn desired(&self, component: Component) -> i32 {
        match component {
            Component::MongoDb | Component::RabbitMq => match self.store(component) {
                Store::Provisioned(s) => s.replicas,
                Store::External(_) => 0,
            },
            Component::Auth => self.auth.replicas,
            Component::Chat => self.chat.replicas,
            Component::WebSocket => self.websocket.replicas,
        }
    }

    pub fn store(&self, component: Component) -> &Store {
        match component {
            Component::RabbitMq => &self.rabbitmq,
            _ => &self.mongodb,
        }
    }

    /// The Kubernetes objects of the generated Secrets' names.
    pub fn secret_names(&self) -> SecretNames {
        SecretNames {
            jwt: format!("{}-jwt", self.name),
            mongodb_root: format!("{}-mongodb-root", self.name),
            mongodb_app: format!("{}-mongodb-app", self.name),
            mongodb_keyfile: format!("{}-mongodb-keyfile", self.name),
            rabbitmq_user: format!("{}-rabbitmq-user", self.name),
            rabbitmq_cookie: format!("{}-rabbitmq-erlang-cookie", self.name),
        }
    }
}

/// Names of the Secrets the operator generates (once, never overwritten).
#[derive(Clone, Debug)]
pub struct SecretNames {
    pub jwt: String,
    pub mongodb_root: String,
    pub mongodb_app: String,
    pub mongodb_keyfile: String,
    pub rabbitmq_user: String,
    pub rabbitmq_cookie: String,
}
