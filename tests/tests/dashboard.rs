//! The Grafana dashboard (`charts/chat/dashboards/chat-backend.json`) and the chart's
//! PrometheusRule against what the services really export: every PromQL expression is parsed by
//! Prometheus' own parser (`promcheck`, tests/k8s/promcheck, built by tests/k8s/build.sh), and
//! every metric, label and label value it reads is compared with the `/metrics` of the three
//! services after real traffic (the standalone stack, twice: once healthy, once with an
//! unreachable RabbitMQ so that publishes fail).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::{Client, Standalone, post_json};
use serde_json::{Value, json};

/// Labels Prometheus itself attaches to every scraped series (a ServiceMonitor's targets carry
/// `job` = the Kubernetes Service's name, `instance`, `namespace` and `pod`); dashboards and
/// alerts may match and group on them whatever the metric.
const TARGET_LABELS: [&str; 4] = ["job", "instance", "namespace", "pod"];

/// Series that are not the services' own and that only the alerts read, with the labels they
/// carry besides the target labels: kube-state-metrics' Deployment and StatefulSet replica
/// counts (ChatComponentNotReady) and Prometheus' `up` (ChatMetricsTargetDown, ChatOperatorDown).
const EXTERNAL: [(&str, &[&str]); 5] = [
    ("kube_deployment_spec_replicas", &["deployment"]),
    ("kube_deployment_status_replicas_available", &["deployment"]),
    ("kube_statefulset_replicas", &["statefulset"]),
    ("kube_statefulset_status_replicas_ready", &["statefulset"]),
    ("up", &[]),
];

/// What the dashboard must show (issue 8): sends/s, deliveries/s, open sockets, delivery
/// latency, publish failures, HTTP errors by route, login outcomes, memory per pod.
const DASHBOARD_MUST_READ: [&str; 8] = [
    "chat_messages_stored_total",
    "ws_deliveries_total",
    "ws_open_sockets",
    "ws_delivery_latency_seconds_bucket",
    "chat_events_published_total",
    "http_requests_total",
    "auth_logins_total",
    "process_resident_memory_bytes",
];

/// Grafana's built-in interval variables, replaced by a duration for parsing.
const GRAFANA_INTERVALS: [&str; 3] = ["__rate_interval", "__range", "__interval"];

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("..")
}

fn dashboard() -> Value {
    let path = root().join("charts/chat/dashboards/chat-backend.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn variables(dashboard: &Value) -> &Vec<Value> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
}

/// Every series name (histograms: `_bucket`, `_sum`, `_count`) of a text exposition, with the
/// values each label takes.
type Exposition = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn parse_exposition(text: &str, into: &mut Exposition) {
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).expect("a sample line");
        let labels = into.entry(line[..end].to_owned()).or_default();
        let mut rest = &line[end..];
        if let Some(body) = rest.strip_prefix('{') {
            rest = body;
            while let Some((name, after)) = rest.split_once("=\"") {
                let name = name.trim_start_matches(',');
                let mut value = String::new();
                let mut chars = after.char_indices();
                let close = loop {
                    match chars.next().expect("a closed label value") {
                        (_, '\\') => {
                            let (_, c) = chars.next().expect("an escaped character");
                            value.push(if c == 'n' { '\n' } else { c });
                        }
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                labels.entry(name.to_owned()).or_default().insert(value);
                rest = &after[close + 1..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
}

/// Registers and logs in `user` on the stack; returns the token.
async fn user(http: &reqwest::Client, addrs: chat_stack::Addrs, user: &str) -> String {
    let creds = json!({"username": user, "password": "password-123"});
    let url = format!("http://{}/auth/register", addrs.auth);
    assert_eq!(post_json(http, url, None, &creds).await.0, 201);
    let url = format!("http://{}/auth/login", addrs.auth);
    let (status, body) = post_json(http, url, None, &creds).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn scrape(http: &reqwest::Client, addrs: chat_stack::Addrs, into: &mut Exposition) {
    for addr in [addrs.auth, addrs.chat, addrs.websocket] {
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_exposition(&text, into);
    }
}

/// The three services' metrics after traffic that gives every labelled metric its series (a
/// `*Vec` metric shows a label value only once it was observed): registrations created, taken
/// and invalid; logins that succeed and fail; sends delivered over a WebSocket (lookups, events,
/// deliveries, latency); errors of several routes; and, on a second stack whose RabbitMQ is
/// unreachable, sends whose publish fails.
async fn exported_metrics() -> Exposition {
    let http = reqwest::Client::new();
    let mut exposition = Exposition::new();

    let dir = tempfile::tempdir().unwrap();
    let stack = Standalone::start(dir.path(), &[]).await;
    let a = stack.addrs;
    let alice = user(&http, a, "alice").await;
    let bob = user(&http, a, "bob").await;
    let register = format!("http://{}/auth/register", a.auth);
    let login = format!("http://{}/auth/login", a.auth);
    let taken = json!({"username": "alice", "password": "password-123"});
    assert_eq!(
        post_json(&http, register.clone(), None, &taken).await.0,
        409
    );
    let invalid = json!({"username": "x", "password": "password-123"});
    assert_eq!(post_json(&http, register, None, &invalid).await.0, 400);
    let wrong = json!({"username": "alice", "password": "wrong-password"});
    assert_eq!(post_json(&http, login, None, &wrong).await.0, 401);
    let mut socket = Client::connect(&format!("ws://{}/?token={bob}", a.websocket)).await;
    let send = format!("http://{}/chat/send", a.chat);
    let message = json!({"recipient": "bob", "content": "hello"});
    let (status, body) = post_json(&http, send.clone(), Some(&alice), &message).await;
    assert_eq!(status, 201, "{body}");
    let frame = socket
        .next_json(Duration::from_secs(5))
        .await
        .expect("the message is delivered");
    assert_eq!(frame["content"], "hello");
    let nobody = json!({"recipient": "nobody", "content": "hello"});
    assert_eq!(post_json(&http, send, Some(&alice), &nobody).await.0, 404);
    let unmatched = http.get(format!("http://{}/nowhere", a.chat)).send().await;
    assert_eq!(unmatched.unwrap().status(), 404);
    scrape(&http, a, &mut exposition).await;
    socket.close().await;
    stack.stop().await;

    // Nothing listens on port 1: every publish fails (the message is stored all the same).
    let dir = tempfile::tempdir().unwrap();
    let stack = Standalone::start(
        dir.path(),
        &[
            ("RABBITMQ_URL", "amqp://127.0.0.1:1/%2f"),
            ("PUBLISH_TIMEOUT", "1s"),
        ],
    )
    .await;
    let b = stack.addrs;
    let carol = user(&http, b, "carol").await;
    let to_self = json!({"recipient": "carol", "content": "note to self"});
    let url = format!("http://{}/chat/send", b.chat);
    let (status, body) = post_json(&http, url, Some(&carol), &to_self).await;
    assert_eq!(status, 201, "{body}");
    scrape(&http, b, &mut exposition).await;
    stack.stop().await;

    for (name, label, value) in [
        ("auth_logins_total", "result", "success"),
        ("auth_logins_total", "result", "invalid"),
        ("chat_events_published_total", "result", "ok"),
        ("chat_events_published_total", "result", "failed"),
        ("ws_events_total", "kind", "new_message"),
        ("http_requests_total", "route", "/chat/send"),
    ] {
        assert!(
            exposition[name][label].contains(value),
            "the traffic produced {name}{{{label}=\"{value}\"}}: {:?}",
            exposition[name]
        );
    }
    exposition
}

/// Replaces Grafana's variables by values PromQL parses: interval variables by a duration, the
/// dashboard's own variables (which must only stand in regex matchers, where a multi-value or
/// "All" selection is valid) by `.*`.
fn substitute(expr: &str, defined: &BTreeSet<String>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("a closed ${...}");
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if GRAFANA_INTERVALS.contains(&name) {
            out.push_str("5m");
        } else {
            assert!(
                defined.contains(name),
                "{expr}: ${name} is not a variable of the dashboard"
            );
            assert!(
                out.ends_with("=~\""),
                "{expr}: ${name} must stand in a regex matcher (=~\"$...\"), where a multi-value \
                 selection is valid"
            );
            out.push_str(".*");
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// What promcheck answers for one expression (see tests/k8s/promcheck/main.go).
#[derive(Debug)]
struct Checked {
    expr: String,
    error: Option<String>,
    selectors: Vec<Selector>,
    /// Labels grouped by or matched on, with their clause (by, without, on, group_left, ...).
    labels: Vec<(String, String)>,
}

#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

fn string(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("promcheck's answer lacks {key}: {v}"))
        .to_owned()
}

impl Checked {
    fn from_json(v: &Value) -> Self {
        let list = |key: &str| v[key].as_array().cloned().unwrap_or_default();
        Checked {
            expr: string(v, "expr"),
            error: v["error"].as_str().map(str::to_owned),
            selectors: list("selectors")
                .iter()
                .map(|s| Selector {
                    name: string(s, "name"),
                    matchers: s["matchers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| Matcher {
                            label: string(m, "label"),
                            op: string(m, "op"),
                            value: string(m, "value"),
                        })
                        .collect(),
                })
                .collect(),
            labels: list("labels")
                .iter()
                .map(|l| (string(l, "label"), string(l, "clause")))
                .collect(),
        }
    }
}

/// Parses `exprs` with Prometheus' parser (the promcheck tool on PATH).
fn promcheck(exprs: &[String]) -> Vec<Checked> {
    let mut child = Command::new("promcheck")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promcheck is not on PATH ({e}): tests/k8s/build.sh builds it (tests/k8s/promcheck) \
                 into the folder it prints; run through `bash tests/run.sh`, which puts it there"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(exprs).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promcheck failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).expect("promcheck's JSON");
    assert_eq!(answers.len(), exprs.len());
    answers.iter().map(Checked::from_json).collect()
}

/// The chart's PrometheusRule rendered with `charts/chat/ci/full-values.yaml` (every alert on)
/// by the real helm CLI: (alert name, expression).
fn rendered_alerts() -> Vec<(String, String)> {
    let chart = root().join("charts/chat");
    let out = Command::new("helm")
        .args(["template", "chat"])
        .arg(&chart)
        .args(["--namespace", "chat-system", "-f"])
        .arg(chart.join("ci/full-values.yaml"))
        .args(["--show-only", "templates/prometheusrule.yaml"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the helm CLI is not on PATH ({e}): tests/k8s/build.sh builds it; run through \
                 `bash tests/run.sh`, which puts it there"
            )
        });
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rule: Value = serde_yaml::from_slice(&out.stdout).expect("the rendered rule is YAML");
    rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Checks one parsed expression against the exposition; `legend` labels (Grafana's `{{x}}`)
/// must exist as well. Returns the metric names it reads.
fn check_expression(
    what: &str,
    checked: &Checked,
    exported: &Exposition,
    external_allowed: bool,
    legend: &[String],
) -> Vec<String> {
    if let Some(error) = &checked.error {
        panic!("{what}: {} does not parse: {error}", checked.expr);
    }
    assert!(
        !checked.selectors.is_empty(),
        "{what}: {} reads no metric",
        checked.expr
    );
    let mut available: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
    for selector in &checked.selectors {
        let name = selector.name.as_str();
        assert!(!name.is_empty(), "{what}: a selector without a metric name");
        let labels: BTreeSet<&str> = if let Some(labels) = exported.get(name) {
            labels.keys().map(String::as_str).collect()
        } else if let Some((_, labels)) = EXTERNAL.iter().find(|(n, _)| *n == name) {
            assert!(
                external_allowed,
                "{what}: {name} is not a metric the services export"
            );
            labels.iter().copied().collect()
        } else {
            panic!(
                "{what}: {name} is not a metric the services export (they export: {:?})",
                exported.keys().collect::<Vec<_>>()
            );
        };
        for m in &selector.matchers {
            let label = m.label.as_str();
            assert!(
                labels.contains(label) || TARGET_LABELS.contains(&label),
                "{what}: {name} has no label {label}"
            );
            // Under a ServiceMonitor the target's own `service` label (the Kubernetes Service)
            // wins, and the services' `service` label is renamed exported_service: no query may
            // rely on it.
            assert_ne!(label, "service", "{what}: matches on `service`");
            if m.op == "=" && !TARGET_LABELS.contains(&label) && exported.contains_key(name) {
                assert!(
                    exported[name][label].contains(&m.value),
                    "{what}: {name}{{{label}=\"{}\"}} is never exported (values: {:?})",
                    m.value,
                    exported[name][label]
                );
            }
        }
        available.extend(labels);
    }
    for (label, clause) in &checked.labels {
        assert_ne!(label, "service", "{what}: groups on `service`");
        if matches!(clause.as_str(), "by" | "on" | "group_left" | "group_right") {
            assert!(
                available.contains(label.as_str()),
                "{what}: {label} ({clause}) is a label none of its metrics has"
            );
        }
    }
    for label in legend {
        assert!(
            available.contains(label.as_str()),
            "{what}: the legend shows {{{{{label}}}}}, a label none of its metrics has"
        );
    }
    checked.selectors.iter().map(|s| s.name.clone()).collect()
}

/// `{{label}}` placeholders of a Grafana legend format.
fn legend_labels(format: &str) -> Vec<String> {
    format
        .split("{{")
        .skip(1)
        .map(|part| {
            part.split_once("}}")
                .expect("a closed {{")
                .0
                .trim()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_read_is_one_the_services_export() {
    let exported = exported_metrics().await;
    let dashboard = dashboard();
    let defined: BTreeSet<String> = variables(&dashboard)
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();

    // The dashboard's queries: every panel target, and the variables' label_values() selectors.
    let mut queries: Vec<(String, String, Vec<String>)> = Vec::new(); // (what, expr, legend labels)
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL target");
            let legend = legend_labels(target["legendFormat"].as_str().unwrap_or_default());
            let what = format!("panel {:?} {}", panel["title"], target["refId"]);
            queries.push((what, substitute(expr, &defined), legend));
        }
    }
    for variable in variables(&dashboard) {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .expect("a variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: label_values(...) expected", variable["name"]));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let what = format!("variable {}", variable["name"]);
        queries.push((
            what,
            substitute(selector.trim(), &defined),
            vec![label.trim().to_owned()],
        ));
    }
    let checked = promcheck(&queries.iter().map(|q| q.1.clone()).collect::<Vec<_>>());
    let mut shown = BTreeSet::new();
    for ((what, _, legend), checked) in queries.iter().zip(&checked) {
        shown.extend(check_expression(what, checked, &exported, false, legend));
    }
    for name in DASHBOARD_MUST_READ {
        assert!(shown.contains(name), "the dashboard shows {name}");
    }

    // The alerts, as the chart renders them with every option on.
    let alerts = rendered_alerts();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    let checked = promcheck(&alerts.iter().map(|a| a.1.clone()).collect::<Vec<_>>());
    let mut watched = BTreeSet::new();
    for ((alert, _), checked) in alerts.iter().zip(&checked) {
        watched.extend(check_expression(alert, checked, &exported, true, &[]));
        // full-values.yaml's metrics.prometheusRule.matchers scope every selector but the
        // operator's own target.
        if alert != "ChatOperatorDown" {
            for selector in &checked.selectors {
                assert!(
                    selector.matchers.iter().any(|m| m.label == "namespace"
                        && m.op == "=~"
                        && m.value == "chat|chat-staging"),
                    "{alert}: {} lacks metrics.prometheusRule.matchers",
                    selector.name
                );
            }
        }
    }
    for name in [
        "chat_events_published_total",
        "ws_delivery_latency_seconds_bucket",
        "ws_slow_clients_dropped_total",
        "kube_deployment_status_replicas_available",
        "up",
    ] {
        assert!(watched.contains(name), "the alerts read {name}");
    }
}

/// The dashboard file itself: a current Grafana schema, a Prometheus datasource variable that
/// every panel and query uses, namespace and job variables, unique panel ids on a 24-column grid.
#[test]
fn the_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource_variable() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "chat-backend");
    assert_eq!(dashboard["title"], "Chat backend");
    // Grafana 12's schema (41; later migrations touch nothing this file uses).
    assert_eq!(dashboard["schemaVersion"], 41);
    assert!(
        dashboard["id"].is_null(),
        "no database id: it is provisioned"
    );
    let vars = variables(&dashboard);
    let names: Vec<_> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["datasource", "namespace", "job"]);
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");
    // Without Kubernetes (compose) there is no namespace label: "All" must match its absence.
    assert_eq!(vars[1]["allValue"], ".*");
    let datasource = json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: a description says what it shows"
        );
        assert_eq!(panel["datasource"], datasource, "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"], datasource, "{title}");
        }
    }
    for var in &vars[1..] {
        assert_eq!(var["datasource"], datasource, "{}", var["name"]);
    }
}
