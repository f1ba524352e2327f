//! Golden files pin every object the builders emit (`UPDATE_GOLDEN=1` rewrites them after an
//! intended change; review the diff), and every object round-trips through its k8s-openapi type.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{Child, SecretHashes, desired, test_plan};

fn hashes() -> SecretHashes {
    SecretHashes {
        jwt: "jwthash".into(),
        mongodb: "mongohash".into(),
        rabbitmq: "rabbithash".into(),
    }
}

/// Everything a user can set, set.
fn full_spec() -> Value {
    json!({
        "deletionPolicy": "Delete",
        "mongodb": {
            "replicas": 3,
            "image": {"repository": "registry.example/mongo", "tag": "8.0.4", "pullPolicy": "Always"},
            "storage": {"size": "20Gi", "storageClassName": "fast"},
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
        },
        "rabbitmq": {"replicas": 3, "storage": {"size": "10Gi"}},
        "auth": {
            "replicas": 2,
            "image": {"tag": "1.2.3"},
            "env": [{"name": "HASH_CONCURRENCY", "value": "4"}, {"name": "RUST_LOG", "value": "debug"}],
            "service": {"type": "NodePort", "nodePort": 30001, "annotations": {"a": "b"}},
        },
        "chat": {"replicas": 2, "service": {"type": "LoadBalancer"}},
        "websocket": {
            "replicas": 3,
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "websocket"}}}
            ]}},
        },
        "ingress": {"className": "nginx", "host": "chat.example.com", "tlsSecretName": "tls",
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"},
                    "trustedProxies": ["10.244.0.0/16"]},
        "jwt": {"secretRef": {"name": "signing", "key": "hs256"}, "tokenTtl": "24h"},
        "networkPolicy": {"enabled": true},
        "monitoring": {"scrapeAnnotations": false, "serviceMonitor": true},
    })
}

fn render(children: &[Child]) -> String {
    children
        .iter()
        .map(|c| crate::to_yaml(&c.object))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn check_golden(name: &str, children: &[Child]) {
    let path =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join(format!("tests/golden/{name}.yaml"));
    let rendered = render(children);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).expect("golden file written");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == rendered,
        "{} differs from what the builders emit; if the change is intended, run \
         `UPDATE_GOLDEN=1 cargo test -p chat-operator golden` and review the diff",
        path.display()
    );
}

#[test]
fn golden_default_spec() {
    check_golden("default", &desired(&test_plan(json!({})), &hashes()));
}

#[test]
fn golden_full_spec() {
    check_golden("full", &desired(&test_plan(full_spec()), &hashes()));
}

fn round_trip<K: Serialize + DeserializeOwned>(child: &Child) {
    let typed: K = serde_json::from_value(child.object.clone())
        .unwrap_or_else(|e| panic!("{} does not parse as its type: {e}", child.describe()));
    assert_eq!(
        serde_json::to_value(&typed).unwrap(),
        child.object,
        "{} changes in a round trip through its type",
        child.describe()
    );
}

#[test]
fn every_object_round_trips_through_its_type() {
    for spec in [json!({}), full_spec()] {
        let children = desired(&test_plan(spec), &hashes());
        assert!(children.len() >= 15);
        for child in &children {
            match child.resource.kind.as_str() {
                "Deployment" => round_trip::<Deployment>(child),
                "StatefulSet" => round_trip::<StatefulSet>(child),
                "Service" => round_trip::<Service>(child),
                "ConfigMap" => round_trip::<ConfigMap>(child),
                "Job" => round_trip::<Job>(child),
                "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(child),
                "NetworkPolicy" => round_trip::<NetworkPolicy>(child),
                "Ingress" => round_trip::<Ingress>(child),
                // No k8s-openapi type: check the shape the Prometheus operator reads.
                "ServiceMonitor" => {
                    assert_eq!(child.object["apiVersion"], "monitoring.coreos.com/v1");
                    assert_eq!(child.object["spec"]["endpoints"][0]["port"], "metrics");
                }
                other => panic!("unexpected kind {other}"),
            }
            assert_eq!(child.object["metadata"]["name"], child.name.as_str());
            assert_eq!(
                child.object["metadata"]["ownerReferences"][0]["controller"],
                true
            );
        }
    }
}

#[test]
fn user_env_replaces_ours_in_place_and_extras_follow() {
    let children = desired(&test_plan(full_spec()), &hashes());
    let auth = children
        .iter()
        .find(|c| c.describe() == "Deployment/demo-auth")
        .unwrap();
    let env = auth.object["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let names: Vec<_> = env.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "HASH_CONCURRENCY").count(),
        1
    );
    assert_eq!(names.last(), Some(&"RUST_LOG"));
    let hash = env
        .iter()
        .find(|v| v["name"] == "HASH_CONCURRENCY")
        .unwrap();
    assert_eq!(hash["value"], "4");
}

#[test]
fn replica_sets_list_every_member_and_clusters_share_a_cookie() {
    let plan = test_plan(full_spec());
    let children = desired(&plan, &hashes());
    let chat = children
        .iter()
        .find(|c| c.describe() == "Deployment/demo-chat")
        .unwrap();
    let env = chat.object["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let url = env.iter().find(|v| v["name"] == "DATABASE_URL").unwrap()["value"]
        .as_str()
        .unwrap();
    assert!(url.contains("demo-mongodb-2.demo-mongodb.chat.svc.cluster.local:27017/?authSource=admin&replicaSet=rs0"), "{url}");
    let rabbit = children
        .iter()
        .find(|c| c.describe() == "StatefulSet/demo-rabbitmq")
        .unwrap();
    let init = &rabbit.object["spec"]["template"]["spec"]["initContainers"][0];
    assert!(init["args"][0].as_str().unwrap().contains(".erlang.cookie"));
    let config = children
        .iter()
        .find(|c| c.describe() == "ConfigMap/demo-rabbitmq-config")
        .unwrap();
    let conf = config.object["data"]["rabbitmq.conf"].as_str().unwrap();
    assert!(conf.contains("cluster_formation.peer_discovery_backend = k8s"));
    // Sized from the pod's memory limit (the default 1Gi), not the node's memory.
    assert!(
        conf.contains("total_memory_available_override_value = 1073741824"),
        "{conf}"
    );
    assert!(
        config.object["data"]["enabled_plugins"]
            .as_str()
            .unwrap()
            .contains("rabbitmq_peer_discovery_k8s")
    );
    // Every component with more than one replica gets a disruption budget.
    for c in ["mongodb", "rabbitmq", "auth", "chat", "websocket"] {
        assert!(
            children
                .iter()
                .any(|x| x.describe() == format!("PodDisruptionBudget/demo-{c}")),
            "{c}"
        );
    }
    // The user's affinity replaces the default spread.
    let ws = children
        .iter()
        .find(|c| c.describe() == "Deployment/demo-websocket")
        .unwrap();
    assert!(ws.object["spec"]["template"]["spec"]["topologySpreadConstraints"].is_null());
}

#[test]
fn the_committed_crd_is_crdgens_output() {
    let path =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("../k8s/crd.yaml");
    let committed = std::fs::read_to_string(&path).expect("k8s/crd.yaml exists");
    assert!(
        committed == crate::crd_yaml(),
        "k8s/crd.yaml differs from the CRD the code defines: run \
         `cargo run -p chat-operator --bin crdgen > k8s/crd.yaml` and commit it"
    );
}
