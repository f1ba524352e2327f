//! The Helm chart (`charts/chat`) with the real `helm` CLI (v4.3.2, built by `tests/k8s/build.sh`)
//! and the real kube-apiserver: lint, render, parse, validate on the server, and run the operator
//! with exactly the rights the chart grants it.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chat_operator::crd::ChatCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
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
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("../charts/chat")
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
                "ConfigMap" => check_dashboard_config_map(&parse(doc)),
                "PrometheusRule" => check_prometheus_rule(doc),
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
                "ConfigMap",
                "CustomResourceDefinition",
                "Deployment",
                "Pod",
                "PrometheusRule",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
            ]
        };
        assert_eq!(kinds, expected, "{name} values");
    }
}

/// The Grafana dashboard's ConfigMap (full values): labelled for Grafana's sidecar, in the
/// namespace asked, holding `dashboards/chat-backend.json` byte for byte.
fn check_dashboard_config_map(config_map: &ConfigMap) {
    let file = std::fs::read_to_string(chart_dir().join("dashboards/chat-backend.json")).unwrap();
    let data = config_map.data.as_ref().expect("the ConfigMap has data");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["chat-backend.json"],
        "one dashboard"
    );
    assert!(
        data["chat-backend.json"] == file,
        "the ConfigMap's dashboard differs from charts/chat/dashboards/chat-backend.json"
    );
    let dashboard: Value = serde_json::from_str(&file).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "chat-backend");
    let meta = &config_map.metadata;
    assert_eq!(
        meta.namespace.as_deref(),
        Some("monitoring"),
        "grafanaDashboard.namespace"
    );
    // Outside the release namespace the name carries it (releases elsewhere do not collide).
    assert_eq!(meta.name.as_deref(), Some("chat-chat-system-dashboard"));
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["grafana_dashboard"], "1", "the sidecar's label");
    assert_eq!(
        labels["example.com/team"], "chat",
        "grafanaDashboard.labels"
    );
    assert_eq!(labels["app.kubernetes.io/component"], "monitoring");
    assert_eq!(
        meta.annotations.as_ref().unwrap()["grafana_folder"],
        "Chat",
        "grafanaDashboard.annotations"
    );
}

/// The alerts a person is paged with, by name (full values: every one enabled).
const ALERTS: [&str; 6] = [
    "ChatEventPublishFailures",
    "ChatDeliveryLatencyHigh",
    "ChatSlowClientsDropped",
    "ChatComponentNotReady",
    "ChatMetricsTargetDown",
    "ChatOperatorDown",
];

/// The PrometheusRule (full values; no k8s-openapi type, and its CRD is absent from the test
/// API server): the shape the Prometheus operator reads, and every alert with its severity,
/// `for`, the values' extra labels and text a person can act on. Its PromQL is parsed and its
/// metrics checked against the services' real exposition by tests/tests/dashboard.rs.
fn check_prometheus_rule(doc: &Value) {
    assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(doc["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(
        doc["metadata"]["labels"]["release"], "kube-prometheus-stack",
        "metrics.prometheusRule.labels"
    );
    assert_eq!(
        doc["metadata"]["annotations"]["example.com/owner"],
        "chat-team"
    );
    let groups = doc["spec"]["groups"].as_array().expect("spec.groups");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "chat-backend");
    let rules = groups[0]["rules"].as_array().expect("rules");
    let names: Vec<_> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(names, ALERTS);
    for rule in rules {
        let name = rule["alert"].as_str().unwrap();
        // Sorted: serde_json keeps insertion order when another crate of the workspace turns on
        // its `preserve_order` feature.
        let mut keys = rule
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>();
        keys.sort();
        assert_eq!(
            keys,
            ["alert", "annotations", "expr", "for", "labels"],
            "{name}: only the fields of a Prometheus alerting rule"
        );
        assert!(
            !rule["expr"].as_str().unwrap().trim().is_empty(),
            "{name} has an expression"
        );
        assert!(
            rule["for"].as_str().unwrap().ends_with('m'),
            "{name}: for {}",
            rule["for"]
        );
        let severity = rule["labels"]["severity"].as_str().unwrap();
        assert!(
            matches!(severity, "critical" | "warning"),
            "{name}: {severity}"
        );
        assert_eq!(rule["labels"]["team"], "chat", "{name}: alertLabels");
        let annotations = &rule["annotations"];
        for key in ["summary", "description", "runbook"] {
            let text = annotations[key].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{name}: {key} says something: {text:?}");
        }
        assert_eq!(
            annotations["runbook_url"],
            format!(
                "https://runbooks.example.com/chat#{}",
                name.to_ascii_lowercase()
            )
        );
    }
    // The thresholds and durations of full-values.yaml, where they belong.
    let rule = |name: &str| rules.iter().find(|r| r["alert"] == name).unwrap();
    let expr = |name: &str| rule(name)["expr"].as_str().unwrap().to_owned();
    assert!(expr("ChatEventPublishFailures").ends_with("> 0.05"));
    assert!(expr("ChatDeliveryLatencyHigh").ends_with("> 1.5"));
    assert!(expr("ChatSlowClientsDropped").ends_with("> 25"));
    assert_eq!(rule("ChatEventPublishFailures")["for"], "2m");
    assert_eq!(rule("ChatComponentNotReady")["for"], "15m");
    assert_eq!(rule("ChatOperatorDown")["labels"]["severity"], "warning");
    // The operator's own target is selected exactly; metrics.prometheusRule.matchers scope the
    // ChatClusters' series only.
    assert_eq!(
        expr("ChatOperatorDown"),
        r#"up{job="chat-operator-metrics", namespace="chat-system"} == 0 or absent(up{job="chat-operator-metrics", namespace="chat-system"})"#
    );
    assert!(expr("ChatMetricsTargetDown").contains(r#"namespace=~"chat|chat-staging""#));
}

/// The PrometheusRule comes with the ServiceMonitor option unless told otherwise, and the
/// operator's own alert only with the target the ServiceMonitor makes.
#[test]
fn the_prometheus_rule_follows_the_service_monitor_option() {
    let alerts = |args: &[&str]| -> Option<Vec<String>> {
        let docs = render(args);
        let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule")?;
        Some(
            rule["spec"]["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["alert"].as_str().unwrap().to_owned())
                .collect(),
        )
    };
    assert_eq!(alerts(&[]), None, "off by default");
    assert_eq!(
        alerts(&["--set", "metrics.serviceMonitor.enabled=true"]).as_deref(),
        Some(&ALERTS.map(str::to_owned)[..]),
        "with the ServiceMonitor"
    );
    assert_eq!(
        alerts(&[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=false"
        ]),
        None,
        "turned off"
    );
    assert_eq!(
        alerts(&[
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.prometheusRule.alerts.slowClientsDropped.enabled=false"
        ])
        .as_deref(),
        Some(
            &[
                "ChatEventPublishFailures",
                "ChatDeliveryLatencyHigh",
                "ChatComponentNotReady",
                "ChatMetricsTargetDown"
            ]
            .map(str::to_owned)[..]
        ),
        "forced on without the ServiceMonitor: no operator target to watch"
    );
    let docs = render(&["--set", "grafanaDashboard.enabled=true"]);
    let dashboard = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(dashboard["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(dashboard["metadata"]["name"], "chat-dashboard");
}

/// Chart.yaml's `version` and `appVersion` (every image's default tag) are the workspace's
/// version (Cargo.toml `[workspace.package]`).
#[test]
fn the_chart_version_follows_the_workspace_version() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("..");
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let workspace = cargo
        .split("\n[")
        .find(|section| section.starts_with("workspace.package]"))
        .expect("Cargo.toml has [workspace.package]");
    let version = workspace
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "version").then(|| value.trim().trim_matches('"').to_owned())
        })
        .expect("[workspace.package] sets version");
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["version"], version.as_str(), "Chart.yaml version");
    assert_eq!(
        chart["appVersion"],
        version.as_str(),
        "Chart.yaml appVersion"
    );
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "the operator's own version"
    );
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
        "grafanaDashboard.enabeld=true",
        "grafanaDashboard.namespace=Not_A_Namespace",
        "metrics.prometheusRule.alerts.deliveryLatency.p99Second=1",
        "metrics.prometheusRule.alerts.publishFailures.ratio=2",
        "metrics.prometheusRule.alerts.targetDown.for=soon",
        "metrics.prometheusRule.alerts.pagerDuty.enabled=true",
        "metrics.prometheusRule.matchers=namespace=\"chat\"}",
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
    // Where full-values.yaml puts the Grafana dashboard (Grafana's namespace).
    ensure_namespace(&client, "monitoring").await;
    let values = full_values();
    for docs in [render(&[]), render(&["-f", &values])] {
        for doc in &docs {
            if matches!(
                doc["kind"].as_str(),
                Some("ServiceMonitor" | "PrometheusRule")
            ) {
                continue; // their CRDs are not served here: parsed only (above)
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
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("..");
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
