//! The reconciler against a mocked API server (`tower-test`), as in kube-rs's controller-rs:
//! an `ApiServerVerifier` answers each request as a scenario prescribes and records them all,
//! so a test asserts which calls a reconcile made and what it wrote. Requests are answered in
//! whatever order they come (applies run concurrently), by method and path.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use crate::controller::{Context, error_policy, reconcile};
use crate::crd::ChatCluster;
use crate::plan::OperatorSettings;
use crate::telemetry::Metrics;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How the fake API server behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scenario {
    /// Nothing exists yet: every read is a 404, every write succeeds.
    Fresh,
    /// Everything exists and its controllers report every pod ready.
    ReadySystem,
    /// Every request fails with this status code.
    Failing(u16),
    /// Like `Fresh`, but applies to this resource (plural) are refused with 422.
    Refusing(&'static str),
}

/// One request the reconciler made.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

pub struct ApiServerVerifier(Handle);

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response builds")
}

fn status(code: u16, reason: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).expect("valid code"),
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("fake: {reason}"), "reason": reason, "code": code,
        }),
    )
}

/// An applied object as the server would return it, with the status its controller reports
/// in the scenario.
fn stored(mut object: Value, scenario: Scenario) -> Value {
    object["metadata"]["uid"] = json!(format!(
        "uid-{}",
        object["metadata"]["name"].as_str().unwrap_or_default()
    ));
    object["metadata"]["generation"] = json!(1);
    if scenario == Scenario::ReadySystem {
        let replicas = object["spec"]["replicas"].clone();
        match object["kind"].as_str() {
            Some("Deployment" | "StatefulSet") => {
                object["status"] = json!({
                    "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                    "readyReplicas": replicas, "availableReplicas": replicas,
                });
            }
            Some("Job") => object["status"] = json!({"succeeded": 1}),
            _ => {}
        }
    }
    object
}

fn fake_secret(name: &str) -> Value {
    // "secret", "username", "password", "keyfile", "cookie": every key a generated Secret has.
    let value = "dmFsdWU=";
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "chat", "uid": format!("uid-{name}")},
        "data": {"secret": value, "username": value, "password": value, "keyfile": value, "cookie": value},
    })
}

impl ApiServerVerifier {
    /// Serves requests as `scenario` says until the client is dropped, recording each.
    pub fn run(self, scenario: Scenario) -> Arc<Mutex<Vec<Recorded>>> {
        let mut handle = self.0;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path().to_owned();
                let query = parts.uri.query().unwrap_or_default().to_owned();
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                let response = match (scenario, &parts.method) {
                    (Scenario::Failing(code), _) => status(code, "InternalError"),
                    (_, &Method::GET) if path.contains("/secrets/") => match scenario {
                        Scenario::ReadySystem => json_response(StatusCode::OK, &fake_secret(&name)),
                        _ => status(404, "NotFound"),
                    },
                    (_, &Method::GET) if path.ends_with("/jobs") => json_response(
                        StatusCode::OK,
                        &json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []}),
                    ),
                    // Prune candidates: none exists.
                    (_, &Method::GET) => status(404, "NotFound"),
                    (_, &Method::POST) if path.contains("/events") => {
                        json_response(StatusCode::CREATED, &body)
                    }
                    (_, &Method::POST) => {
                        let mut created = body.clone();
                        created["metadata"]["uid"] = json!("uid-created");
                        json_response(StatusCode::CREATED, &created)
                    }
                    (_, &Method::PATCH) if path.ends_with("/status") => json_response(
                        StatusCode::OK,
                        &json!({
                            "apiVersion": "chat.example.io/v1alpha1", "kind": "ChatCluster",
                            "metadata": {"name": "demo", "namespace": "chat", "uid": "cluster-uid"},
                            "spec": {}, "status": body["status"],
                        }),
                    ),
                    (Scenario::Refusing(plural), &Method::PATCH)
                        if path.contains(&format!("/{plural}/")) =>
                    {
                        status(422, "Invalid")
                    }
                    (_, &Method::PATCH) => {
                        json_response(StatusCode::OK, &stored(body.clone(), scenario))
                    }
                    _ => status(405, "MethodNotAllowed"),
                };
                record.lock().expect("not poisoned").push(Recorded {
                    method: parts.method,
                    path,
                    query,
                    body,
                });
                send.send_response(response);
            }
        });
        seen
    }
}

/// A context whose client talks to the returned verifier.
pub fn testing_context() -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "chat");
    let ctx = Context::new(
        client,
        Arc::new(Metrics::new()),
        OperatorSettings::default(),
    );
    (ctx, ApiServerVerifier(handle))
}

fn cluster(spec: Value) -> Arc<ChatCluster> {
    let mut cluster = ChatCluster::new("demo", serde_json::from_value(spec).expect("spec parses"));
    cluster.metadata.namespace = Some("chat".into());
    cluster.metadata.uid = Some("cluster-uid".into());
    cluster.metadata.generation = Some(1);
    Arc::new(cluster)
}

/// What one reconcile did.
pub struct Outcome {
    pub result: Result<Action, crate::controller::Error>,
    /// `error_policy`'s answer when the reconcile failed.
    pub retry: Option<Action>,
    pub requests: Vec<Recorded>,
    pub metrics: Arc<Metrics>,
}

/// Reconciles `cluster` once against `scenario`, as the controller would (calling
/// `error_policy` on failure).
async fn reconcile_once(cluster: Arc<ChatCluster>, scenario: Scenario) -> Outcome {
    let (ctx, verifier) = testing_context();
    let requests = verifier.run(scenario);
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(cluster.clone(), ctx.clone()),
    )
    .await
    .expect("reconcile finishes");
    let retry = result
        .as_ref()
        .err()
        .map(|e| error_policy(cluster, e, ctx.clone()));
    // Events are published from spawned tasks: give them a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let requests = requests.lock().expect("not poisoned").clone();
    Outcome {
        result,
        retry,
        requests,
        metrics: ctx.metrics.clone(),
    }
}

fn applies(requests: &[Recorded]) -> Vec<&Recorded> {
    requests
        .iter()
        .filter(|r| {
            r.method == Method::PATCH && !r.path.ends_with("/status") && !r.path.contains("/events")
        })
        .collect()
}

fn status_patch(requests: &[Recorded]) -> Option<&Value> {
    requests
        .iter()
        .find(|r| r.method == Method::PATCH && r.path.ends_with("/status"))
        .map(|r| &r.body["status"])
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn the_first_reconcile_generates_secrets_applies_every_child_and_reports_status() {
    let outcome = reconcile_once(cluster(json!({})), Scenario::Fresh).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    let created: Vec<_> = outcome
        .requests
        .iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/secrets"))
        .map(|r| r.body["metadata"]["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        created,
        [
            "demo-jwt",
            "demo-mongodb-root",
            "demo-mongodb-app",
            "demo-rabbitmq-user"
        ]
    );
    let applies = applies(&outcome.requests);
    assert_eq!(applies.len(), 15, "every child of a default cluster");
    for apply in &applies {
        assert!(
            apply.query.contains("fieldManager=chat-operator")
                && apply.query.contains("force=true"),
            "{} is a forced server-side apply: {}",
            apply.path,
            apply.query
        );
        assert_eq!(
            apply.body["metadata"]["ownerReferences"][0]["uid"],
            "cluster-uid"
        );
    }
    let status = status_patch(&outcome.requests).expect("status patched");
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(outcome.metrics.reconciles.get(), 1);
    assert_eq!(outcome.metrics.duration.get_sample_count(), 1);
    // "Created" events for the new children.
    assert!(
        outcome
            .requests
            .iter()
            .any(|r| r.path.contains("/events") && r.body["reason"] == "Created")
    );
}

#[tokio::test]
async fn a_ready_system_turns_ready_true() {
    let outcome = reconcile_once(
        cluster(json!({"websocket": {"replicas": 3}})),
        Scenario::ReadySystem,
    )
    .await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    // Existing Secrets are read, and at most labelled: their data is never written.
    assert!(
        !outcome.requests.iter().any(|r| r.path.contains("/secrets")
            && (r.method == Method::POST || !r.body["data"].is_null()))
    );
    let status = status_patch(&outcome.requests).expect("status patched");
    assert_eq!(status["phase"], "Ready");
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(status["components"]["websocket"]["summary"], "3/3");
    assert_eq!(status["mongodb"]["initialized"], true);
}

#[tokio::test]
async fn a_paused_cluster_changes_nothing() {
    let outcome = reconcile_once(cluster(json!({"paused": true})), Scenario::Fresh).await;
    assert!(outcome.result.is_ok());
    assert_eq!(outcome.requests.len(), 1, "{:?}", outcome.requests);
    let status = status_patch(&outcome.requests).expect("status patched");
    assert_eq!(status["phase"], "Paused");
    assert_eq!(condition(status, "Progressing")["reason"], "Paused");
}

#[tokio::test]
async fn a_refused_child_degrades_the_cluster_while_the_rest_is_applied() {
    let outcome = reconcile_once(
        cluster(json!({"ingress": {"host": "chat.example.com"}})),
        Scenario::Refusing("ingresses"),
    )
    .await;
    assert!(
        matches!(outcome.result, Err(crate::controller::Error::Apply(1))),
        "{:?}",
        outcome.result
    );
    assert_eq!(
        applies(&outcome.requests).len(),
        16,
        "every child was still tried"
    );
    let status = status_patch(&outcome.requests).expect("status patched");
    assert_eq!(status["phase"], "Degraded");
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["reason"], "ApplyFailed");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("applying Ingress/demo failed")
    );
    assert_eq!(
        outcome.metrics.failures.with_label_values(&["apply"]).get(),
        1
    );
    assert_eq!(outcome.retry, Some(Action::requeue(Duration::from_secs(1))));
}

#[tokio::test]
async fn api_errors_requeue_with_backoff_and_are_counted() {
    let outcome = reconcile_once(cluster(json!({})), Scenario::Failing(500)).await;
    assert!(outcome.result.is_err());
    assert_eq!(outcome.retry, Some(Action::requeue(Duration::from_secs(1))));
    assert_eq!(
        outcome
            .metrics
            .failures
            .with_label_values(&["server_error"])
            .get(),
        1
    );
    // It stopped at the first failure: no child was applied on a broken server.
    assert!(applies(&outcome.requests).is_empty());
    assert!(
        outcome.requests.iter().any(|r| r.path.contains("/events")),
        "a Warning event"
    );
    let n = |k| crate::telemetry::backoff(k).as_secs();
    assert_eq!([n(1), n(2), n(3), n(9), n(30)], [1, 2, 4, 256, 300]);
}
