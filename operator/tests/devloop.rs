//! The kind + Tilt dev loop (`Tiltfile`, `kind-config.yaml`, `dev/values.yaml`). Neither Tilt nor
//! kind can run here, so `tiltcheck` (tests/k8s/tiltcheck, built by tests/k8s/build.sh) executes
//! the Tiltfile with stand-ins for Tilt's builtins and the real `helm template`, and parses the kind
//! config strictly into kind's own types. These tests run it, check what it reports against the
//! operator's own builders (the Services the Tiltfile and kind reach are ones the operator really
//! creates for the dev ChatCluster) and have the real kube-apiserver validate every object.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use chat_operator::build::{Child, SecretHashes, desired};
use chat_operator::crd::ChatCluster;
use chat_operator::plan::{OperatorSettings, Plan};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde::Deserialize;
use serde_json::Value;

/// The images the Tiltfile builds: one Dockerfile target per binary, named as the binary.
const BINARIES: [&str; 4] = [
    "auth-service",
    "chat-service",
    "websocket-service",
    "chat-operator",
];

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("..")
}

/// Runs `tiltcheck -root root extra...`; returns (success, stdout, stderr).
fn tiltcheck(root: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new("tiltcheck")
        .arg("-root")
        .arg(root)
        .args(extra)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "tiltcheck is not on PATH ({e}): `bash tests/k8s/build.sh` builds it (and helm, \
                 which it runs) into the folder it prints; tests/run.sh puts that folder on PATH"
            )
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Report {
    context: String,
    kind: KindReport,
    allowed_contexts: Vec<String>,
    version_settings: Vec<String>,
    docker_builds: Vec<DockerBuild>,
    helm: Vec<HelmCall>,
    objects: Vec<Value>,
    k8s_resources: Vec<K8sResource>,
    local_resources: Vec<LocalResource>,
    images: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct KindReport {
    nodes: Vec<KindNode>,
    port_mappings: Vec<PortMapping>,
}

#[derive(Deserialize, Debug)]
struct KindNode {
    role: String,
    image: String,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct PortMapping {
    container_port: i32,
    host_port: i32,
    listen_address: String,
    protocol: String,
}

#[derive(Deserialize, Debug)]
struct DockerBuild {
    #[serde(rename = "ref")]
    reference: String,
    context: String,
    dockerfile: String,
    target: String,
    ignore: Option<Vec<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct HelmCall {
    chart: String,
    helm_version: String,
    name: String,
    namespace: String,
    values: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct K8sResource {
    workload: String,
    resource_deps: Option<Vec<String>>,
    labels: Option<Vec<String>>,
    links: Option<Vec<Link>>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct LocalResource {
    name: String,
    serve_cmd: String,
    labels: Option<Vec<String>>,
    links: Option<Vec<Link>>,
}

#[derive(Deserialize, Debug)]
struct Link {
    url: String,
}

/// The repository's Tiltfile and kind config, as `tiltcheck` reports them (it fails on any
/// problem it finds, printed in its message).
fn report() -> Report {
    let (ok, stdout, stderr) = tiltcheck(&root(), &["-json"]);
    assert!(
        ok,
        "tiltcheck refuses the Tiltfile or kind-config.yaml:\n{stderr}"
    );
    serde_json::from_str(&stdout).expect("tiltcheck's report parses")
}

/// The ChatCluster the Tiltfile deploys, and the children the operator builds for it.
fn dev_cluster(report: &Report) -> (ChatCluster, Vec<Child>) {
    let clusters: Vec<&Value> = report
        .objects
        .iter()
        .filter(|o| o["kind"] == "ChatCluster")
        .collect();
    assert_eq!(clusters.len(), 1, "the Tiltfile deploys one ChatCluster");
    let mut cluster: ChatCluster = serde_json::from_value(clusters[0].clone())
        .expect("the dev ChatCluster parses into the operator's type");
    // What the API server would assign; the operator's owner references need it.
    cluster.metadata.uid = Some("00000000-0000-0000-0000-0000000000de".into());
    let plan = Plan::resolve(&cluster, &OperatorSettings::default()).expect("the plan resolves");
    let children = desired(&plan, &SecretHashes::default());
    (cluster, children)
}

fn children_of_kind<'a>(children: &'a [Child], kind: &str) -> Vec<&'a Child> {
    children
        .iter()
        .filter(|c| c.resource.kind == kind)
        .collect()
}

#[test]
fn the_tiltfile_builds_each_binary_from_its_dockerfile_target_and_deploys_it() {
    let report = report();
    assert_eq!(
        report.context, "kind-chat",
        "kind-config.yaml names the cluster \"chat\""
    );
    assert_eq!(report.allowed_contexts, ["kind-chat"]);

    let mut built: Vec<&str> = Vec::new();
    for build in &report.docker_builds {
        let binary = build
            .reference
            .strip_prefix("ghcr.io/chat-backend/")
            .unwrap_or_else(|| panic!("{} is not a published image name", build.reference));
        assert_eq!(
            build.target, binary,
            "{}: the target is the binary",
            build.reference
        );
        assert_eq!(build.context, ".", "the whole workspace is the context");
        assert_eq!(build.dockerfile, "Dockerfile", "the root Dockerfile");
        let ignore = build.ignore.clone().unwrap_or_default();
        assert!(
            ignore.iter().any(|i| i == "target"),
            "target/ never enters the context"
        );
        built.push(binary);
    }
    built.sort_unstable();
    let mut expected = BINARIES.to_vec();
    expected.sort_unstable();
    assert_eq!(built, expected, "one image per binary the cluster runs");

    // Tilt puts each build where its name appears: the operator's Deployment, and the
    // ChatCluster's image objects (from which the operator makes the services' Deployments).
    for binary in BINARIES {
        let users = &report.images[&format!("ghcr.io/chat-backend/{binary}")];
        let expected = if binary == "chat-operator" {
            "Deployment/chat-operator"
        } else {
            "ChatCluster/chat"
        };
        assert_eq!(
            users,
            &[expected],
            "{binary} is used where Tilt can replace it"
        );
    }

    assert_eq!(report.helm.len(), 1);
    let helm = &report.helm[0];
    assert_eq!(
        (
            helm.chart.as_str(),
            helm.name.as_str(),
            helm.namespace.as_str()
        ),
        ("charts/chat", "chat", "chat")
    );
    assert_eq!(helm.values, ["dev/values.yaml"]);
    // Tilt reads Helm 4's version only from 0.36 on.
    assert!(
        helm.helm_version.starts_with("v4."),
        "{}",
        helm.helm_version
    );
    assert_eq!(report.version_settings, [">=0.36.0"]);

    // Grouped in Tilt's UI: every resource the Tiltfile configures carries a label.
    for r in &report.k8s_resources {
        assert!(
            r.labels.as_ref().is_some_and(|l| !l.is_empty()),
            "{} is labelled",
            r.workload
        );
    }
    for r in &report.local_resources {
        assert!(
            r.labels.as_ref().is_some_and(|l| !l.is_empty()),
            "{} is labelled",
            r.name
        );
    }
    let cluster = report
        .k8s_resources
        .iter()
        .find(|r| r.workload == "chat")
        .expect("the ChatCluster is a Tilt resource");
    assert_eq!(
        cluster.resource_deps.as_deref(),
        Some(&["chat-operator".to_owned()][..]),
        "the ChatCluster waits for the operator"
    );
}

#[test]
fn kinds_port_mappings_reach_the_node_ports_of_the_services_the_operator_creates() {
    let report = report();
    let (cluster, children) = dev_cluster(&report);
    let services = children_of_kind(&children, "Service");
    let mut mapped = Vec::new();
    for m in &report.kind.port_mappings {
        assert_eq!(m.listen_address, "127.0.0.1", "{m:?}: loopback only");
        assert_eq!(m.protocol, "TCP", "{m:?}");
        let service = services
            .iter()
            .find(|s| {
                s.object["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["nodePort"] == m.container_port && p["port"] == m.host_port)
            })
            .unwrap_or_else(|| {
                panic!("{m:?}: no Service of the dev ChatCluster has that node port and port")
            });
        assert_eq!(
            service.object["spec"]["type"], "NodePort",
            "{}",
            service.name
        );
        mapped.push((service.name.clone(), m.host_port));
    }
    let name = cluster.metadata.name.as_deref().unwrap();
    assert_eq!(
        mapped,
        [
            (format!("{name}-auth"), 5001),
            (format!("{name}-chat"), 5002),
            (format!("{name}-websocket"), 5003),
        ],
        "the three services, on their usual ports"
    );
    for s in &services {
        let node_port = s.object["spec"]["ports"][0]["nodePort"].as_i64();
        assert!(
            node_port.is_none() || mapped.iter().any(|(n, _)| *n == s.name),
            "{} has a node port that kind does not publish",
            s.name
        );
    }

    // The links Tilt shows are the mapped ports.
    let links: Vec<String> = report
        .k8s_resources
        .iter()
        .flat_map(|r| r.links.iter().flatten())
        .map(|l| l.url.clone())
        .collect();
    for (_, port) in &mapped {
        let url = format!("http://localhost:{port}/healthz");
        assert!(links.contains(&url), "{url} is linked in Tilt: {links:?}");
    }
}

#[test]
fn the_kind_node_runs_a_kubernetes_the_chart_accepts() {
    let report = report();
    let roles: Vec<&str> = report.kind.nodes.iter().map(|n| n.role.as_str()).collect();
    assert_eq!(roles, ["control-plane"], "one control-plane node");
    // Pinned by digest, as kind advises.
    let image = &report.kind.nodes[0].image;
    let (tag, digest) = image
        .strip_prefix("kindest/node:v")
        .and_then(|rest| rest.split_once("@sha256:"))
        .unwrap_or_else(|| panic!("{image}: a kindest/node image pinned by digest"));
    assert_eq!(digest.len(), 64, "{image}");
    let minor: u32 = tag.split('.').nth(1).unwrap().parse().unwrap();
    let chart = std::fs::read_to_string(root().join("charts/chat/Chart.yaml")).unwrap();
    let needed: u32 = chart
        .lines()
        .find_map(|l| l.strip_prefix("kubeVersion: \">=1."))
        .and_then(|rest| rest.split('.').next())
        .expect("the chart's kubeVersion is \">=1.N...\"")
        .parse()
        .unwrap();
    assert!(
        minor >= needed,
        "{image}: the chart needs 1.{needed} or later"
    );
}

/// The RabbitMQ management UI's port-forward names a Service and port the operator creates.
#[test]
fn the_rabbitmq_port_forward_reaches_the_management_port_the_operator_exposes() {
    let report = report();
    let (_, children) = dev_cluster(&report);
    let services = children_of_kind(&children, "Service");
    let forward = report
        .local_resources
        .iter()
        .find(|r| r.serve_cmd.contains("port-forward"))
        .expect("a port-forward for the RabbitMQ management UI");
    let words: Vec<&str> = forward.serve_cmd.split_whitespace().collect();
    let arg = |flag: &str| {
        let at = words.iter().position(|w| *w == flag).unwrap();
        words[at + 1].trim_end_matches(';')
    };
    assert_eq!(arg("--context"), report.context, "{}", forward.serve_cmd);
    assert_eq!(arg("-n"), report.helm[0].namespace, "{}", forward.serve_cmd);
    let target = arg("port-forward");
    let service_name = target.strip_prefix("svc/").expect("forwards to a Service");
    let ports = words[words.iter().position(|w| *w == target).unwrap() + 1].trim_end_matches(';');
    assert_eq!(ports, "15672:15672", "{}", forward.serve_cmd);
    let service = services
        .iter()
        .find(|s| s.name == service_name)
        .unwrap_or_else(|| panic!("the operator creates no Service {service_name}"));
    assert!(
        service.object["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 15672 && p["name"] == "management"),
        "{service_name} serves the management UI on 15672"
    );
    assert!(
        forward
            .links
            .iter()
            .flatten()
            .any(|l| l.url == "http://localhost:15672"),
        "the UI is linked in Tilt"
    );
}

/// CPU in millicores and memory in bytes, for the quantities the dev values use.
fn millicores(q: &str) -> u64 {
    q.strip_suffix('m').map_or_else(
        || q.parse::<u64>().expect("cores") * 1000,
        |m| m.parse().expect("millicores"),
    )
}

fn bytes(q: &str) -> u64 {
    for (suffix, factor) in [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a whole number") * factor;
        }
    }
    q.parse().expect("bytes")
}

#[test]
fn the_dev_cluster_is_small_runs_one_pod_each_and_uses_the_images_tilt_loads() {
    let report = report();
    let (_, children) = dev_cluster(&report);
    let operator = report
        .objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the operator's Deployment");
    let mut workloads: Vec<(String, &Value)> = vec![("Deployment/chat-operator".into(), operator)];
    for child in &children {
        // What runs for good (MongoDB's init Job runs once, and the operator gives it no size).
        if matches!(child.resource.kind.as_str(), "Deployment" | "StatefulSet") {
            workloads.push((child.describe(), &child.object));
        }
    }
    let (mut cpu, mut memory) = (0, 0);
    for (name, object) in &workloads {
        assert_eq!(object["spec"]["replicas"], 1, "{name}: one replica");
        for container in object["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            let requests = &container["resources"]["requests"];
            cpu += millicores(requests["cpu"].as_str().unwrap());
            memory += bytes(requests["memory"].as_str().unwrap());
            let limit = container["resources"]["limits"]["memory"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: a memory limit"));
            assert!(bytes(limit) <= 768 << 20, "{name}: limit {limit}");
            let image = container["image"].as_str().unwrap();
            if let Some(binary) = BINARIES
                .iter()
                .find(|b| image.starts_with(&format!("ghcr.io/chat-backend/{b}:")))
            {
                // Tilt swaps in its tag; the kubelet must then use the copy loaded into the node.
                assert_eq!(
                    container["imagePullPolicy"], "IfNotPresent",
                    "{name}: {binary} is pulled only if absent"
                );
            }
        }
    }
    let images: Vec<&str> = workloads
        .iter()
        .flat_map(|(_, o)| {
            o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
        })
        .filter_map(|c| c["image"].as_str())
        .collect();
    for binary in BINARIES {
        let prefix = format!("ghcr.io/chat-backend/{binary}:");
        assert!(
            images.iter().any(|i| i.starts_with(&prefix)),
            "{binary} runs in the dev cluster: {images:?}"
        );
    }
    // The whole system fits on a laptop's kind node next to everything else.
    assert!(cpu <= 500, "{cpu}m of CPU requested");
    assert!(
        memory <= 1 << 30,
        "{} MiB of memory requested",
        memory >> 20
    );
}

#[test]
fn the_tiltfile_refuses_every_other_kubernetes_context() {
    for context in ["kind-kind", "docker-desktop", "gke_prod_europe-west1_main"] {
        let (ok, _, stderr) = tiltcheck(&root(), &["-context", context]);
        assert!(!ok, "the Tiltfile runs against {context}");
        assert!(
            stderr.contains("deploys only to the kind cluster of kind-config.yaml"),
            "{context}: {stderr}"
        );
    }
}

/// A scratch folder with a Dockerfile of stages `a` and `b`, the repository's kind config and
/// `tiltfile` as its Tiltfile, checked by tiltcheck.
fn check_scratch(name: &str, tiltfile: &str, kind_config: Option<&str>) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("tiltcheck-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch AS a\nFROM scratch AS b\n",
    )
    .unwrap();
    std::fs::write(dir.join("Tiltfile"), tiltfile).unwrap();
    let repo_config = std::fs::read_to_string(root().join("kind-config.yaml")).unwrap();
    std::fs::write(
        dir.join("kind-config.yaml"),
        kind_config.unwrap_or(&repo_config),
    )
    .unwrap();
    let (ok, _, stderr) = tiltcheck(&dir, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
    (ok, stderr)
}

const DEPLOYMENT: &str = r#"k8s_yaml(blob("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: example/web}]}
"""))
"#;

/// tiltcheck itself: it passes a correct Tiltfile, and fails (saying why) on each mistake Tilt
/// or kind would stop at.
#[test]
fn tiltcheck_refuses_what_tilt_or_kind_would_refuse() {
    let good = format!(
        "{DEPLOYMENT}docker_build('example/web', '.', target = 'a')\n\
         k8s_resource('web', labels = ['app'], links = [link('http://localhost:8080')])\n"
    );
    let (ok, stderr) = check_scratch("good", &good, None);
    assert!(ok, "a correct Tiltfile is refused: {stderr}");

    let cases: [(&str, String, &str); 9] = [
        (
            "builtin",
            "docker_biuld('example/web', '.')".into(),
            "undefined: docker_biuld",
        ),
        (
            "argument",
            format!("{DEPLOYMENT}docker_build('example/web', '.', targt = 'a')"),
            "unexpected keyword argument \"targt\"",
        ),
        (
            "target",
            format!("{DEPLOYMENT}docker_build('example/web', '.', target = 'c')"),
            "target \"c\" is not a stage of Dockerfile",
        ),
        (
            "file",
            "k8s_yaml('missing.yaml')".into(),
            "k8s_yaml file \"missing.yaml\" does not exist",
        ),
        (
            "unused-image",
            format!("{DEPLOYMENT}docker_build('example/api', '.', target = 'a')"),
            "no object the Tiltfile deploys uses this image",
        ),
        (
            "workload",
            format!("{DEPLOYMENT}k8s_resource('api')"),
            "k8s_resource(\"api\"): no such workload",
        ),
        (
            "resource-dep",
            "local_resource('x', serve_cmd = 'true', resource_deps = ['db'])".into(),
            "resource_deps names \"db\", which is no resource",
        ),
        (
            "locator",
            "k8s_yaml(blob('apiVersion: x/v1\\nkind: Widget\\nmetadata: {name: w}\\nspec: {}\\n'))\n\
             k8s_kind('Widget', image_json_path = '{.spec.image}')"
                .into(),
            "image is not found",
        ),
        (
            "syntax",
            "docker_build('example/web', '.'".into(),
            "does not load",
        ),
    ];
    for (name, tiltfile, expected) in cases {
        let (ok, stderr) = check_scratch(name, &tiltfile, None);
        assert!(!ok, "{name}: accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }

    let repo_config = std::fs::read_to_string(root().join("kind-config.yaml")).unwrap();
    for (name, config, expected) in [
        (
            "kind-field",
            repo_config.replace("extraPortMappings", "extraPortMapping"),
            "unknown field \"extraPortMapping\"",
        ),
        (
            "kind-api",
            repo_config.replace("v1alpha4", "v1alpha3"),
            "want Cluster, kind.x-k8s.io/v1alpha4",
        ),
        (
            "kind-role",
            repo_config.replace("role: control-plane", "role: master"),
            "has role \"master\"",
        ),
        (
            "kind-address",
            repo_config.replacen("127.0.0.1", "localhost", 1),
            "listenAddress \"localhost\" is not an IP address",
        ),
    ] {
        let (ok, stderr) = check_scratch(name, &good, Some(&config));
        assert!(!ok, "{name}: accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}

/// Applies `doc` by server-side apply, dry-run unless `for_real`.
async fn apply(client: &Client, doc: &Value, for_real: bool) -> Result<DynamicObject, kube::Error> {
    let api_version = doc["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, doc["kind"].as_str().unwrap());
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            doc["metadata"]["namespace"].as_str().expect("a namespace"),
            &resource,
        ),
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply("devloop-test").force();
    if !for_real {
        params = params.dry_run();
    }
    let name = doc["metadata"]["name"].as_str().unwrap();
    api.patch(name, &params, &Patch::Apply(doc)).await
}

/// What Tilt applies (the namespace, the CRD, the operator and the ChatCluster, with the
/// namespace Tilt sets on every object) and what the operator then creates from the dev
/// ChatCluster all pass the real API server's validation: the chart's schema already held at
/// render, the CRD's schema and CEL rules hold for the ChatCluster, and each child is valid.
#[tokio::test]
async fn every_object_of_the_dev_loop_is_accepted_by_the_api_server() {
    let report = report();
    let client = support::client().await;
    support::install_crd(&client).await;
    let mut checked = 0;
    for doc in &report.objects {
        // The namespace for real: the namespaced objects' dry-runs need it to exist.
        let for_real = doc["kind"] == "Namespace";
        apply(&client, doc, for_real).await.unwrap_or_else(|e| {
            panic!(
                "{} {} is refused: {e}",
                doc["kind"], doc["metadata"]["name"]
            )
        });
        checked += 1;
    }
    let (cluster, children) = dev_cluster(&report);
    let namespace = cluster.metadata.namespace.clone().unwrap();
    for child in &children {
        if child.resource.kind == "ServiceMonitor" {
            continue; // not asked for by the dev values, and not served here
        }
        let mut doc = child.object.clone();
        doc["metadata"]["namespace"] = Value::String(namespace.clone());
        if child.resource.kind == "Service" {
            // Node ports are one per API server, and other tests' Services (really applied on
            // this shared server) may hold 30001: the range is the CRD's to check (above).
            for port in doc["spec"]["ports"].as_array_mut().unwrap() {
                port.as_object_mut().unwrap().remove("nodePort");
            }
        }
        apply(&client, &doc, false)
            .await
            .unwrap_or_else(|e| panic!("{} is refused: {e}", child.describe()));
        checked += 1;
    }
    assert!(checked >= 15, "{checked} objects checked");
}
