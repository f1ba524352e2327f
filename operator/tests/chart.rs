//! The Helm chart (`charts/chat`) with the real `helm` CLI (v4.3.2, built by `tests/k8s/build.sh`)
//! and the real kube-apiserver: lint, render, parse, validate on the server, and run the operator
//! with exactly the rights the chart grants it.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chat_operator::crd::ChatCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::{TestEnv, eventually, make_ready};

const RELEASE: &str = "chat";
const RELEASE_NAMESPACE: &str = "chat-system";

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/chat")
}

/// Runs `helm` with `args`; returns (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("helm")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the helm CLI is not on PATH ({e}): run these tests through `bash tests/run.sh`, \
                 which builds it (tests/k8s/build.sh) and puts it there"
            )
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart with `extra` arguments, as JSON documents.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        RELEASE_NAMESPACE,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm template {extra:?} failed: {stderr}");
    serde_yaml::Deserializer::from_str(&stdout)
        .filter_map(|doc| {
            let value =
                <Value as serde::Deserialize>::deserialize(doc).expect("rendered YAML parses");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

fn full_values() -> String {
    chart_dir()
        .join("ci/full-values.yaml")
        .display()
        .to_string()
}

fn parse<K: serde::de::DeserializeOwned>(doc: &Value) -> K {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {} does not parse as its type: {e}",
            doc["kind"], doc["metadata"]["name"]
        )
    })
}

#[test]
fn the_chart_lints_and_every_rendered_document_parses_into_its_type() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let (ok, out, err) = helm(&["lint", "--strict", chart]);
    assert!(ok, "helm lint: {out}{err}");
    let values = full_values();
    let (ok, out, err) = helm(&["lint", "--strict", chart, "-f", &values]);
    assert!(ok, "helm lint with full values: {out}{err}");

    for (name, docs) in [("default", render(&[])), ("full", render(&["-f", &values]))] {
        let mut kinds = Vec::new();
        for doc in &docs {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "CustomResourceDefinition" => {
                    let crd: CustomResourceDefinition = parse(doc);
                    assert_eq!(crd, chat_operator::crd(), "the chart's CRD is crdgen's");
                }
                "ServiceAccount" => drop(parse::<ServiceAccount>(doc)),
                "ClusterRole" => drop(parse::<ClusterRole>(doc)),
                "ClusterRoleBinding" => drop(parse::<ClusterRoleBinding>(doc)),
                "RoleBinding" => drop(parse::<RoleBinding>(doc)),
                "Deployment" => {
                    let d: Deployment = parse(doc);
                    let pod = d.spec.unwrap().template.spec.unwrap();
                    assert_eq!(pod.service_account_name.as_deref(), Some("chat-operator"));
                }
                "Service" => drop(parse::<Service>(doc)),
                "Pod" => drop(parse::<Pod>(doc)),
                "ChatCluster" => drop(parse::<ChatCluster>(doc)),
                // No k8s-openapi type: the shape the Prometheus operator reads.
                "ServiceMonitor" => assert_eq!(doc["spec"]["endpoints"][0]["port"], "metrics"),
                other => panic!("{name}: unexpected kind {other}"),
            }
            let labels = &doc["metadata"]["labels"];
            if kind != "CustomResourceDefinition" {
                assert_eq!(
                    labels["app.kubernetes.io/part-of"], "chat",
                    "{kind} is labelled"
                );
                assert_eq!(labels["app.kubernetes.io/instance"], RELEASE);
            }
            kinds.push(kind);
        }
        kinds.sort();
        let expected: &[&str] = if name == "default" {
            &[
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "Service",
                "ServiceAccount",
            ]
        } else {
            &[
                "ChatCluster",
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "Pod",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
            ]
        };
        assert_eq!(kinds, expected, "{name} values");
    }
}

#[test]
fn the_charts_crd_file_is_crdgens_output() {
    let file = std::fs::read_to_string(chart_dir().join("crds/chatcluster.yaml")).unwrap();
    assert!(
        file == chat_operator::crd_yaml(),
        "charts/chat/crds/chatcluster.yaml differs from crdgen's output: run \
         `cargo run -p chat-operator --bin crdgen | tee k8s/crd.yaml > charts/chat/crds/chatcluster.yaml`"
    );
}

#[test]
fn the_values_schema_refuses_typos_and_bad_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for bad in [
        "operator.logFromat=json",
        "operator.logFormat=yaml",
        "chatCluster.name=Not_A_Name",
        "metrics.port=70000",
        "image.pullPolicy=Sometimes",
        "metrics.service.enabld=true",
        "test.image.tg=1",
        "serviceAccount.create=false",
    ] {
        let (ok, _, err) = helm(&["template", RELEASE, chart, "--set", bad]);
        assert!(!ok, "{bad} was accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{bad}: {err}"
        );
    }
}

/// Applies `doc` by server-side apply (dry-run unless `for_real`) as `client`.
async fn apply(client: &Client, doc: &Value, for_real: bool) -> Result<DynamicObject, kube::Error> {
    let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (
            String::new(),
            doc["apiVersion"].as_str().unwrap().to_owned(),
        ),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, doc["kind"].as_str().unwrap());
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let name = doc["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> = match (caps.scope, doc["metadata"]["namespace"].as_str()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        (kube::discovery::Scope::Namespaced, None) => {
            Api::namespaced_with(client.clone(), RELEASE_NAMESPACE, &resource)
        }
        (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply("chart-test").force();
    if !for_real {
        params = params.dry_run();
    }
    api.patch(name, &params, &Patch::Apply(doc)).await
}

async fn ensure_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
    // What the controller-manager (absent here) would create; Pod admission wants it.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let default: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    match accounts.create(&PostParams::default(), &default).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("default ServiceAccount in {name}: {e}"),
    }
}

#[tokio::test]
async fn every_rendered_object_is_accepted_by_the_api_server() {
    let client = support::client().await;
    support::install_crd(&client).await;
    ensure_namespace(&client, RELEASE_NAMESPACE).await;
    let values = full_values();
    for docs in [render(&[]), render(&["-f", &values])] {
        for doc in &docs {
            if doc["kind"] == "ServiceMonitor" {
                continue; // its CRD is not served here: parsed only (above)
            }
            apply(&client, doc, false).await.unwrap_or_else(|e| {
                panic!(
                    "{} {} is refused: {e}",
                    doc["kind"], doc["metadata"]["name"]
                )
            });
        }
    }
}

/// Installs the chart's ServiceAccount, ClusterRole and a RoleBinding in the test namespace (as
/// `operator.watchNamespace` does) and returns a client with that ServiceAccount's identity.
async fn client_with_the_charts_rights(env: &TestEnv) -> Client {
    let path = std::env::var("TEST_OPERATOR_KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "TEST_OPERATOR_KUBECONFIG is not set: run through `bash tests/run.sh`, whose API \
             server knows the chart's ServiceAccount"
        )
    });
    ensure_namespace(&env.client, RELEASE_NAMESPACE).await;
    // Rights bound in the test namespace only, as `operator.watchNamespace` does.
    let watch = format!("operator.watchNamespace={}", env.ns);
    for doc in render(&["--set", &watch]) {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if matches!(kind, "ServiceAccount" | "ClusterRole" | "RoleBinding") {
            apply(&env.client, &doc, true)
                .await
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
    }
    let restricted = support::client_from(&path).await;
    // Nothing beyond the chart's rights: the identity cannot read Pods, for instance.
    let pods: Api<Pod> = Api::namespaced(restricted.clone(), &env.ns);
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("the operator's identity may list pods: {other:?}"),
    }
    restricted
}

/// The operator, running as the chart's ServiceAccount with only the chart's RBAC, reconciles a
/// ChatCluster to Ready and repairs it: a missing verb fails here, not in a user's cluster.
#[tokio::test]
async fn the_operator_reaches_ready_with_only_the_rights_the_chart_grants() {
    let env = TestEnv::bare("rbac").await;
    let restricted = client_with_the_charts_rights(&env).await;
    // A JWT Secret made beforehand: under deletionPolicy Delete the operator labels it and makes
    // it owned, which (with OwnerReferencesPermissionEnforcement on) needs the chart's rights on
    // Secrets and on chatclusters/finalizers.
    let secrets = env.api::<k8s_openapi::api::core::v1::Secret>();
    support::create_secret(
        &env,
        "demo-jwt",
        &[("secret", "0123456789abcdef0123456789abcdef")],
    )
    .await;
    env.run_controller(restricted);
    env.create_cluster(
        "demo",
        json!({"deletionPolicy": "Delete", "websocket": {"replicas": 2},
               "ingress": {"host": "chat.example.com"}}),
    )
    .await;
    make_ready(&env, "demo").await;
    let cluster = env.wait_condition("demo", "Ready", "True").await;
    let owners = secrets
        .get("demo-jwt")
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap();
    assert_eq!(
        owners[0].uid,
        cluster.uid().unwrap(),
        "the existing Secret was adopted"
    );
    // Events were published (events.k8s.io create).
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.ns);
    eventually("a Created event", Duration::from_secs(10), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Created")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("demo")
            })
            .then_some(())
    })
    .await;

    // Repair (watch, get, patch and create on Services) and pruning (delete) work too.
    let services = env.api::<Service>();
    let before = services.get("demo-auth").await.unwrap();
    services
        .delete("demo-auth", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the Service to be recreated",
        Duration::from_secs(30),
        || async {
            let s = services.get_opt("demo-auth").await.ok()??;
            (s.uid() != before.uid()).then_some(())
        },
    )
    .await;
    env.api::<ChatCluster>()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingress": null, "websocket": {"replicas": 1}}})),
        )
        .await
        .unwrap();
    support::eventually_gone::<k8s_openapi::api::networking::v1::Ingress>(&env, "demo").await;
    support::eventually_gone::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(
        &env,
        "demo-websocket",
    )
    .await;
    let failures: f64 = prometheus::core::Collector::collect(&env.metrics.failures)
        .iter()
        .flat_map(|family| {
            family
                .get_metric()
                .iter()
                .map(|m| m.get_counter().get_value())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(failures == 0.0, "{failures} reconciles failed");
    assert_eq!(env.metrics.watch_errors.get(), 0, "no watch was refused");
}

/// `k8s/`: the plain manifests for users without Helm. `operator.yaml` is the chart rendered by
/// `k8s/render-operator.sh` (a stale copy fails here); everything in `k8s/` passes a server-side
/// dry-run, and every example is a valid ChatCluster for the operator's own type.
#[tokio::test]
async fn the_plain_manifests_match_the_chart_and_the_api_server_accepts_them() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let fresh = std::env::temp_dir().join(format!("operator-{}.yaml", std::process::id()));
    let out = Command::new("bash")
        .arg(root.join("k8s/render-operator.sh"))
        .env("OUT", &fresh)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(root.join("k8s/operator.yaml")).unwrap();
    let rendered = std::fs::read_to_string(&fresh).unwrap();
    let _ = std::fs::remove_file(&fresh);
    assert!(
        committed == rendered,
        "k8s/operator.yaml is stale: run `bash k8s/render-operator.sh` and commit it"
    );

    let client = support::client().await;
    support::install_crd(&client).await;
    ensure_namespace(&client, RELEASE_NAMESPACE).await;
    let docs = |file: &str| -> Vec<Value> {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| {
                let v = <Value as serde::Deserialize>::deserialize(d).unwrap();
                (!v.is_null()).then_some(v)
            })
            .collect()
    };
    let operator = docs("k8s/operator.yaml");
    let kinds: Vec<_> = operator
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment"
        ]
    );
    for doc in operator.iter().chain(docs("k8s/crd.yaml").iter()) {
        apply(&client, doc, false).await.unwrap_or_else(|e| {
            panic!(
                "{} {} is refused: {e}",
                doc["kind"], doc["metadata"]["name"]
            )
        });
    }
    let examples = root.join("k8s/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let file = format!(
            "k8s/examples/{}",
            entry.unwrap().file_name().to_string_lossy()
        );
        for doc in docs(&file) {
            let cluster: ChatCluster = parse(&doc);
            assert_eq!(cluster.metadata.name.as_deref(), Some("chat"), "{file}");
            let mut doc = doc.clone();
            doc["metadata"]["namespace"] = json!(RELEASE_NAMESPACE);
            apply(&client, &doc, false)
                .await
                .unwrap_or_else(|e| panic!("{file} is refused: {e}"));
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "minimal, production and external-mongodb");
}
