//! The three services: a Deployment, a Service and (with more than one replica) a
//! PodDisruptionBudget each, wired with the variables the services read.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar, HTTPGetAction, Lifecycle, LifecycleHandler, PodSpec, PodTemplateSpec,
    Probe, Service, ServicePort, ServiceSpec, SleepAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CONFIG_HASH_ANNOTATION, Child, SecretHashes, container, empty_dir, env, env_from_secret,
    merge_env, meta, mount, placed, pod_security, selector_labels,
};
use crate::plan::{App, Component, Plan, Store};

/// The non-root user the services' images run as (distroless `nonroot`).
pub const SERVICE_UID: i64 = 65532;
/// The port every service serves `/metrics` on (`METRICS_PORT`), apart from its API port so
/// the ingress, which routes to the API port only, never exposes it.
pub const METRICS_PORT: i32 = 9090;

/// Label on the services' Services that a ServiceMonitor selects.
pub const METRICS_LABEL: &str = "chat.example.io/metrics";

pub(super) fn children(plan: &Plan, app: &App, hashes: &SecretHashes) -> Vec<Child> {
    let mut children = vec![
        Child::typed(&deployment(plan, app, hashes)),
        Child::typed(&service(plan, app)),
    ];
    if app.replicas > 1 {
        children.push(Child::typed(&super::extras::pdb(plan, app.component)));
    }
    children
}

/// Variables for a MongoDB database: the URI (the operator's own replica set, or the user's
/// Secret) and `DATABASE_NAME`, which overrides the URI's path so one URI serves both databases.
fn database_env(plan: &Plan, database: &str) -> Vec<EnvVar> {
    let mut vars = match &plan.mongodb {
        Store::External(uri) => vec![env_from_secret("DATABASE_URL", &uri.name, &uri.key)],
        Store::Provisioned(_) => {
            let app = plan.secret_names().mongodb_app;
            let mut query = "authSource=admin".to_owned();
            if plan.mongodb_members().len() > 1 {
                query.push_str("&replicaSet=");
                query.push_str(crate::plan::REPLICA_SET);
            }
            // `$(VAR)` is expanded by the kubelet from the variables defined before it, so the
            // password stays in its Secret and out of this object. Generated credentials are
            // alphanumeric, hence URL-safe.
            vec![
                env_from_secret("MONGODB_USERNAME", &app, "username"),
                env_from_secret("MONGODB_PASSWORD", &app, "password"),
                env(
                    "DATABASE_URL",
                    format!(
                        "mongodb://$(MONGODB_USERNAME):$(MONGODB_PASSWORD)@{}/?{query}",
                        plan.mongodb_members().join(",")
                    ),
                ),
            ]
        }
    };
    vars.push(env("DATABASE_NAME", database));
    vars
}

fn rabbitmq_env(plan: &Plan) -> Vec<EnvVar> {
    match &plan.rabbitmq {
        Store::External(uri) => vec![env_from_secret("RABBITMQ_URL", &uri.name, &uri.key)],
        Store::Provisioned(_) => {
            let user = plan.secret_names().rabbitmq_user;
            vec![
                env_from_secret("RABBITMQ_USERNAME", &user, "username"),
                env_from_secret("RABBITMQ_PASSWORD", &user, "password"),
                env(
                    "RABBITMQ_URL",
                    format!(
                        "amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@{}:5672/%2f",
                        plan.service_host(&plan.child_name(Component::RabbitMq))
                    ),
                ),
            ]
        }
    }
}

/// The variables the services already read (the seed's names first).
fn service_env(plan: &Plan, app: &App) -> Vec<EnvVar> {
    let mut vars = vec![env("PORT", app.component.port().to_string())];
    let jwt = env_from_secret("JWT_SECRET", &plan.jwt.secret_name, &plan.jwt.key);
    let url = |component: Component| {
        format!(
            "http://{}:{}",
            plan.service_host(&plan.child_name(component)),
            component.port()
        )
    };
    match app.component {
        Component::Auth => {
            vars.extend(database_env(plan, "auth"));
            vars.push(jwt);
            vars.push(env("JWT_EXPIRES_IN", plan.jwt.token_ttl.clone()));
            // Each hash holds 19 MiB: bound them by the pod, not by the node's CPU count.
            vars.push(env("HASH_CONCURRENCY", "2"));
        }
        Component::Chat => {
            vars.extend(database_env(plan, "chat"));
            vars.extend(rabbitmq_env(plan));
            vars.push(jwt);
            vars.push(env("AUTH_SERVICE_URL", url(Component::Auth)));
        }
        Component::WebSocket => {
            vars.extend(rabbitmq_env(plan));
            vars.push(jwt);
            // Where sockets read what they missed (a resume, an interrupted queue).
            vars.push(env("CHAT_SERVICE_URL", url(Component::Chat)));
        }
        Component::MongoDb | Component::RabbitMq => {}
    }
    vars.push(env("METRICS_PORT", METRICS_PORT.to_string()));
    if let Some(proxies) = plan
        .ingress
        .as_ref()
        .and_then(|i| i.trusted_proxies.as_ref())
    {
        vars.push(env("TRUSTED_PROXIES", proxies.join(",")));
    }
    vars.push(env("LOG_FORMAT", "json"));
    merge_env(vars, &app.env)
}

/// The hash of the Secrets this component's pods read.
fn config_hash(app: &App, hashes: &SecretHashes) -> String {
    match app.component {
        Component::Auth => format!("{}.{}", hashes.jwt, hashes.mongodb),
        Component::Chat => format!("{}.{}.{}", hashes.jwt, hashes.mongodb, hashes.rabbitmq),
        _ => format!("{}.{}", hashes.jwt, hashes.rabbitmq),
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

pub(super) fn deployment(plan: &Plan, app: &App, hashes: &SecretHashes) -> Deployment {
    let name = plan.child_name(app.component);
    let component = app.component.as_str();
    let mut annotations =
        BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_owned(), config_hash(app, hashes))]);
    if plan.scrape_annotations {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), METRICS_PORT.to_string());
        annotations.insert("prometheus.io/path".into(), "/metrics".into());
    }
    let mut container = container(app.component.binary(), &app.image);
    container.ports = Some(vec![
        ContainerPort {
            name: Some("http".into()),
            container_port: app.component.port(),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        },
    ]);
    container.env = Some(service_env(plan, app));
    container.resources = Some(app.resources.clone());
    container.readiness_probe = Some(http_probe("/readyz", 5, 2));
    container.liveness_probe = Some(http_probe("/healthz", 10, 3));
    // Endpoints stop routing to a terminating pod a moment after it is marked terminating; the
    // pause keeps it serving (a sleep action needs no shell in the image) until then, and
    // SIGTERM then drains it.
    container.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction { seconds: 5 }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    });
    container.volume_mounts = Some(vec![mount("tmp", "/tmp", false)]);

    Deployment {
        metadata: meta(plan, name, component),
        spec: Some(DeploymentSpec {
            replicas: Some(app.replicas),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(selector_labels(plan, component)),
                match_expressions: None,
            },
            // A new pod is ready before an old one goes: rollouts never lower capacity (for
            // websocket-service, open sockets; each moved client reconnects once).
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(super::labels(plan, component)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(placed(
                    plan,
                    app.component,
                    &app.scheduling,
                    PodSpec {
                        containers: vec![container],
                        security_context: Some(pod_security(SERVICE_UID)),
                        automount_service_account_token: Some(false),
                        enable_service_links: Some(false),
                        termination_grace_period_seconds: Some(30),
                        volumes: Some(vec![empty_dir("tmp")]),
                        ..PodSpec::default()
                    },
                )),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

pub(super) fn service(plan: &Plan, app: &App) -> Service {
    let name = plan.child_name(app.component);
    let component = app.component.as_str();
    let mut metadata = meta(plan, name, component);
    metadata
        .labels
        .get_or_insert_default()
        .insert(METRICS_LABEL.into(), "true".into());
    metadata.annotations.clone_from(&app.service.annotations);
    let type_ = app.service.type_.as_str();
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector_labels(plan, component)),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: app.component.port(),
                    target_port: Some(IntOrString::String("http".into())),
                    // Explicit: server-side apply keys Service ports by port and protocol.
                    protocol: Some("TCP".into()),
                    node_port: app.service.node_port,
                    ..ServicePort::default()
                },
                // For the ServiceMonitor; a NodePort Service exposes it on a node port too,
                // which is why it is a port of its own the ingress never routes to.
                ServicePort {
                    name: Some("metrics".into()),
                    port: METRICS_PORT,
                    target_port: Some(IntOrString::String("metrics".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
