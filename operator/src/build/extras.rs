//! Children that depend on options: PodDisruptionBudgets, NetworkPolicies, the Ingress and the
//! ServiceMonitor.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec as KubeIngressSpec, IngressTLS, NetworkPolicy,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ApiResource;
use serde_json::json;

use super::apps::METRICS_LABEL;
use super::{Child, meta, selector_labels};
use crate::plan::{Component, Plan, Store};

/// The Prometheus operator's ServiceMonitor (no k8s-openapi type: its CRD may be absent).
fn service_monitor_resource() -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "ServiceMonitor".into(),
        plural: "servicemonitors".into(),
    }
}

pub(super) fn children(plan: &Plan) -> Vec<Child> {
    let mut children = Vec::new();
    if plan.network_policy {
        for component in [Component::MongoDb, Component::RabbitMq] {
            if matches!(plan.store(component), Store::Provisioned(_)) {
                children.push(Child::typed(&store_network_policy(plan, component)));
            }
        }
    }
    if plan.ingress.is_some() {
        children.push(Child::typed(&ingress(plan)));
    }
    if plan.service_monitor {
        children.push(service_monitor(plan));
    }
    children
}

pub(super) fn prunable(plan: &Plan) -> Vec<(ApiResource, String)> {
    let mut all: Vec<(ApiResource, String)> = Component::ALL
        .iter()
        .map(|c| {
            (
                ApiResource::erase::<PodDisruptionBudget>(&()),
                plan.child_name(*c),
            )
        })
        .collect();
    for component in [Component::MongoDb, Component::RabbitMq] {
        all.push((
            ApiResource::erase::<NetworkPolicy>(&()),
            plan.child_name(component),
        ));
    }
    all.push((ApiResource::erase::<Ingress>(&()), plan.name.clone()));
    all.push((service_monitor_resource(), plan.name.clone()));
    all
}

/// With more than one replica, voluntary disruptions (node drains) take one pod at a time: a
/// 3-member replica set or RabbitMQ cluster keeps its majority, a service keeps serving.
pub(super) fn pdb(plan: &Plan, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(plan, plan.child_name(component), component.as_str()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(plan, component.as_str())),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// Pods of this ChatCluster whose component is one of `components`.
fn peers(plan: &Plan, components: &[&str]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(
                [
                    ("app.kubernetes.io/name", "chatcluster"),
                    ("app.kubernetes.io/instance", plan.name.as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app.kubernetes.io/component".into(),
                operator: "In".into(),
                values: Some(components.iter().map(|c| (*c).to_owned()).collect()),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}

/// Only the services that use a store (and the store's own members, and MongoDB's init Job)
/// reach it. RabbitMQ's Prometheus port stays open to scrapers.
fn store_network_policy(plan: &Plan, component: Component) -> NetworkPolicy {
    let own = component.as_str();
    let ingress = match component {
        Component::MongoDb => vec![
            NetworkPolicyIngressRule {
                from: Some(vec![peers(plan, &["auth", "chat", super::mongodb::INIT])]),
                ports: Some(vec![tcp(27017)]),
            },
            NetworkPolicyIngressRule {
                from: Some(vec![peers(plan, &[own])]),
                ports: None,
            },
        ],
        _ => vec![
            NetworkPolicyIngressRule {
                from: Some(vec![peers(plan, &["chat", "websocket"])]),
                ports: Some(vec![tcp(5672)]),
            },
            // Clustering: epmd, inter-node and CLI distribution ports.
            NetworkPolicyIngressRule {
                from: Some(vec![peers(plan, &[own])]),
                ports: None,
            },
            NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![tcp(15692)]),
            },
        ],
    };
    NetworkPolicy {
        metadata: meta(plan, plan.child_name(component), own),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(plan, own)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

fn ingress(plan: &Plan) -> Ingress {
    let spec = plan.ingress.clone().unwrap_or_default();
    let path = |path: &str, component: Component| HTTPIngressPath {
        path: Some(path.into()),
        path_type: "Prefix".into(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: plan.child_name(component),
                port: Some(ServiceBackendPort {
                    name: Some("http".into()),
                    number: None,
                }),
            }),
            resource: None,
        },
    };
    let mut metadata = meta(plan, plan.name.clone(), "ingress");
    metadata.annotations.clone_from(&spec.annotations);
    Ingress {
        metadata,
        spec: Some(KubeIngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: spec.host.clone().map(|h| vec![h]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: spec.host.clone(),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![
                        path("/auth", Component::Auth),
                        path("/chat", Component::Chat),
                        // The WebSocket endpoint is the root path (`ws://host/?token=`).
                        path("/", Component::WebSocket),
                    ],
                }),
            }]),
            default_backend: None,
        }),
        status: None,
    }
}

fn service_monitor(plan: &Plan) -> Child {
    let resource = service_monitor_resource();
    let mut metadata = meta(plan, plan.name.clone(), "monitoring");
    metadata.owner_references = Some(vec![plan.owner.clone()]);
    Child {
        name: plan.name.clone(),
        object: json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": metadata,
            "spec": {
                "selector": {"matchLabels": {
                    "app.kubernetes.io/instance": plan.name,
                    METRICS_LABEL: "true",
                }},
                "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
            },
        }),
        resource,
    }
}
