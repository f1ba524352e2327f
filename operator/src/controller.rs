//! The reconciler: generated Secrets, server-side apply of every child, pruning what the spec no
//! longer asks for, and status.
//!
//! One replica of the operator is enough and two are harmless: every write is a server-side
//! apply of the same desired state under one field manager, and the only other write, creating
//! a generated Secret, is a create that fails if another created it first (then both read the
//! winner's). So there is no leader election; the Deployment runs one replica and rolls with
//! `Recreate`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    Preconditions, PropagationPolicy,
};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::build::{self, Child, MANAGER};
use crate::crd::{ChatCluster, ChatClusterStatus};
use crate::plan::{Component, OperatorSettings, Plan};
use crate::secrets::{self, SecretContents};
use crate::status::{self, JobState, Observed, Problem, Workload};
use crate::telemetry::{Metrics, backoff};

/// Periodic re-check: catches changes to Secrets the user owns (not watched) and anything a
/// watch missed.
const RESYNC: Duration = Duration::from_secs(300);
/// Applies in flight at once for one ChatCluster.
const APPLY_CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ChatCluster has no name or namespace")]
    Unnamed,
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} children could not be applied (see the Degraded condition)")]
    Apply(usize),
}

impl Error {
    /// A bounded label for the failures metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Unnamed => "unnamed",
            Error::Api { source, .. } => api_reason(source),
            Error::Apply(_) => "apply",
        }
    }
}

fn api_reason(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 409 => "conflict",
        kube::Error::Api(s) if s.code == 403 => "forbidden",
        kube::Error::Api(s) if s.code == 404 => "not_found",
        kube::Error::Api(s) if s.code == 422 => "invalid",
        kube::Error::Api(s) if s.code >= 500 => "server_error",
        kube::Error::Api(_) => "api_error",
        _ => "transport",
    }
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: OperatorSettings,
    /// Per ChatCluster (by uid): consecutive failures, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Per ChatCluster (by uid): the uid of each child last applied, to tell a recreated child.
    children: Mutex<HashMap<String, HashMap<String, String>>>,
    /// Per ChatCluster (by uid): the status this process last wrote. The watch cache can lag
    /// behind our own writes; computing from a stale copy would move `lastTransitionTime`
    /// without a flip and repeat events. This process is the status's only writer.
    statuses: Mutex<HashMap<String, ChatClusterStatus>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: OperatorSettings) -> Arc<Self> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            failures: Mutex::default(),
            children: Mutex::default(),
            statuses: Mutex::default(),
        })
    }

    /// Forgets what it remembered of a ChatCluster being deleted.
    fn forget(&self, uid: &str) {
        self.failures.lock().expect("not poisoned").remove(uid);
        self.children.lock().expect("not poisoned").remove(uid);
        self.statuses.lock().expect("not poisoned").remove(uid);
    }
}

/// Runs the controller until `shutdown` resolves, over one namespace or all of them.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    settings: OperatorSettings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Context::new(client.clone(), metrics.clone(), settings);
    let ns = namespace.as_deref();
    // Children are watched by label, so the operator neither receives nor holds the cluster's
    // other objects (every Secret, say).
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    Controller::new(
        scoped::<ChatCluster>(&client, ns),
        watcher::Config::default(),
    )
    .owns(scoped::<Deployment>(&client, ns), owned.clone())
    .owns(scoped::<StatefulSet>(&client, ns), owned.clone())
    .owns(scoped::<Service>(&client, ns), owned.clone())
    // Generated Secrets may outlive the cluster (deletionPolicy Retain keeps them with the
    // data they unlock), so they are found by their instance label rather than an owner.
    .watches(
        scoped::<Secret>(&client, ns),
        owned.clone(),
        |secret: Secret| {
            let instance = secret.labels().get("app.kubernetes.io/instance").cloned();
            instance
                .map(|name| ObjectRef::new(&name).within(&secret.namespace().unwrap_or_default()))
        },
    )
    .owns(scoped::<ConfigMap>(&client, ns), owned.clone())
    .owns(scoped::<Job>(&client, ns), owned.clone())
    .owns(scoped::<PodDisruptionBudget>(&client, ns), owned.clone())
    .owns(scoped::<NetworkPolicy>(&client, ns), owned.clone())
    .owns(scoped::<Ingress>(&client, ns), owned)
    .with_config(ControllerConfig::default().concurrency(4))
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| {
        let metrics = metrics.clone();
        async move {
            // A failed reconcile is already logged, counted and evented by error_policy; anything
            // else (a watch failing on a missing CRD, RBAC denying a kind) would leave the operator
            // idle: say so loudly.
            if let Err(e) = result
                && !matches!(e, kube::runtime::controller::Error::ReconcilerFailed(..))
            {
                metrics.watch_errors.inc();
                warn!(error = %e, "controller error");
            }
        }
    })
    .await;
    info!("controller stopped");
}

/// An API over one namespace, or all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Reconciles one ChatCluster.
pub async fn reconcile(cluster: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        let uid = cluster.uid().unwrap_or_default();
        ctx.failures.lock().expect("not poisoned").remove(&uid);
    }
    result
}

/// Requeues with exponential backoff, counts the failure and reports it as an Event.
// The signature is the one `Controller::run` calls.
#[allow(clippy::needless_pass_by_value)]
pub fn error_policy(cluster: Arc<ChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .with_label_values(&[error.metric_reason()])
        .inc();
    let uid = cluster.uid().unwrap_or_default();
    let failures = {
        let mut map = ctx.failures.lock().expect("not poisoned");
        let n = map.entry(uid).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(failures);
    warn!(cluster = %cluster.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    let recorder = ctx.recorder.clone();
    let reference = cluster.object_ref(&());
    let note = error.to_string();
    tokio::spawn(async move {
        let event = Event {
            type_: EventType::Warning,
            reason: "ReconcileFailed".into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "could not publish an event");
        }
    });
    Action::requeue(delay)
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Publishes a Normal event about `cluster` (best effort: a lost event is only logged).
async fn publish(ctx: &Context, cluster: &ChatCluster, reason: &str, note: &str) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

async fn patch_status(
    ctx: &Context,
    cluster: &ChatCluster,
    status: &crate::crd::ChatClusterStatus,
) -> Result<(), Error> {
    let name = cluster.name_any();
    let ns = cluster.namespace().unwrap_or_default();
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": ChatCluster::api_version(&()),
        "kind": ChatCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| {
        let uid = cluster.uid().unwrap_or_default();
        ctx.statuses
            .lock()
            .expect("not poisoned")
            .insert(uid, status.clone());
    })
    .map_err(api_error(format!(
        "patching the status of ChatCluster/{name}"
    )))?;
    Ok(())
}

async fn reconcile_inner(cluster: &ChatCluster, ctx: &Context) -> Result<Action, Error> {
    let plan = Plan::resolve(cluster, &ctx.settings).ok_or(Error::Unnamed)?;
    let uid = cluster.uid().unwrap_or_default();
    if cluster.metadata.deletion_timestamp.is_some() {
        // Being deleted (foreground, or with its namespace): owner references and the garbage
        // collector remove the children; creating anything now would only race them.
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }
    let generation = cluster.metadata.generation;
    let remembered = ctx
        .statuses
        .lock()
        .expect("not poisoned")
        .get(&uid)
        .cloned();
    let previous = remembered.as_ref().or(cluster.status.as_ref());

    if cluster.spec.paused {
        let status = status::paused(generation, previous, &now());
        if previous != Some(&status) {
            patch_status(ctx, cluster, &status).await?;
        }
        return Ok(Action::requeue(RESYNC));
    }

    let mut observed = Observed::default();
    let contents = secrets_in_place(ctx, &plan, &mut observed).await?;
    let hashes = secrets::hashes(&plan, &contents);
    let children = build::desired(&plan, &hashes);
    let first = previous.is_none_or(|s| s.observed_generation.is_none());

    let applied = apply_all(ctx, &plan, &children).await;
    let (failed, events) = record(ctx, cluster, &plan, &applied, first, &mut observed);
    prune(ctx, &plan, &children).await?;

    let status = status::compute(&plan, generation, &observed, previous, &now());
    let generation_moved = previous.and_then(|s| s.observed_generation) != generation;
    if previous != Some(&status) {
        patch_status(ctx, cluster, &status).await?;
    }
    // One event per reason, listing the children: a new cluster is one event, not fifteen.
    for reason in ["Created", "Recreated"] {
        let what: Vec<&str> = events
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, w)| w.as_str())
            .collect();
        if !what.is_empty() {
            publish(
                ctx,
                cluster,
                reason,
                &format!("{reason} {}", what.join(", ")),
            )
            .await;
        }
    }
    if generation_moved && !first {
        let note = format!("applied generation {}", generation.unwrap_or_default());
        publish(ctx, cluster, "Updated", &note).await;
    }
    if failed > 0 {
        return Err(Error::Apply(failed));
    }
    Ok(Action::requeue(RESYNC))
}

type Applied = Vec<(Child, Result<DynamicObject, kube::Error>)>;

/// Server-side applies every child, a few at a time; returns each with the server's answer
/// (the object as stored, status included).
async fn apply_all(ctx: &Context, plan: &Plan, children: &[Child]) -> Applied {
    stream::iter(children.iter().cloned())
        .map(|child| async move {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &plan.namespace, &child.resource);
            let result = api
                .patch(
                    &child.name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&child.object),
                )
                .await;
            (child, result)
        })
        .buffered(APPLY_CONCURRENCY)
        .collect()
        .await
}

/// Reads the apply results into `observed` (statuses, skipped optional kinds, failures) and
/// returns the failure count and the events to publish: a child created for the first time,
/// or recreated after someone deleted it (its uid changed).
fn record(
    ctx: &Context,
    cluster: &ChatCluster,
    plan: &Plan,
    applied: &Applied,
    first: bool,
    observed: &mut Observed,
) -> (usize, Vec<(&'static str, String)>) {
    let mut failed = 0;
    let mut events = Vec::new();
    let mut seen_all = ctx.children.lock().expect("not poisoned");
    let seen = seen_all
        .entry(cluster.uid().unwrap_or_default())
        .or_default();
    // After a restart the operator knows no uids: it records them without announcing them.
    let known_before = !seen.is_empty();
    for (child, result) in applied {
        match result {
            Ok(object) => {
                observe(plan, child, object, observed);
                let uid = object.uid().unwrap_or_default();
                match seen.insert(child.describe(), uid.clone()) {
                    Some(old) if old != uid => events.push(("Recreated", child.describe())),
                    None if first || known_before => events.push(("Created", child.describe())),
                    _ => {}
                }
            }
            Err(e) if status_code(e) == Some(404) && optional(&child.resource) => {
                observed.notes.push(format!(
                    "{} skipped: this server does not serve {}",
                    child.describe(),
                    child.resource.api_version
                ));
            }
            Err(e) => {
                failed += 1;
                warn!(child = %child.describe(), error = %e, "apply failed");
                observed.problems.push(Problem {
                    reason: "ApplyFailed",
                    message: format!("applying {} failed: {}", child.describe(), api_message(e)),
                });
            }
        }
    }
    (failed, events)
}

/// Kinds a server may not serve: skipped with a note instead of failing the reconcile.
fn optional(resource: &ApiResource) -> bool {
    resource.group == "monitoring.coreos.com" || resource.group == "policy"
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Reads what an applied child reports into `observed`.
fn observe(plan: &Plan, child: &Child, object: &DynamicObject, observed: &mut Observed) {
    // Only workloads and the init Job report anything; other kinds are not parsed at all.
    let component = || {
        Component::ALL
            .into_iter()
            .find(|c| plan.child_name(*c) == child.name)
    };
    match child.resource.kind.as_str() {
        "Deployment" => {
            if let (Some(c), Ok(d)) = (component(), object.clone().try_parse::<Deployment>()) {
                observed.workloads.insert(c, Workload::from_deployment(&d));
            }
        }
        "StatefulSet" => {
            if let (Some(c), Ok(s)) = (component(), object.clone().try_parse::<StatefulSet>()) {
                observed.workloads.insert(c, Workload::from_statefulset(&s));
            }
        }
        "Job" => {
            if let Ok(job) = object.clone().try_parse::<Job>() {
                observed.init_job = Some(JobState::from_job(&job));
            }
        }
        _ => {}
    }
}

/// Creates the generated Secrets that are missing (never touching existing ones) and reads
/// every Secret the pods will read. A missing Secret the user must provide is a problem.
async fn secrets_in_place(
    ctx: &Context,
    plan: &Plan,
    observed: &mut Observed,
) -> Result<SecretContents, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &plan.namespace);
    let mut contents = SecretContents::new();
    for generated in secrets::generated(plan) {
        let name = generated.name.clone();
        let existing = api
            .get_opt(&name)
            .await
            .map_err(api_error(format!("reading Secret/{name}")))?;
        let secret = match existing {
            Some(s) => s,
            None => match api
                .create(
                    &PostParams {
                        dry_run: false,
                        field_manager: Some(MANAGER.into()),
                    },
                    &secrets::new_secret(plan, &generated),
                )
                .await
            {
                Ok(s) => {
                    info!(secret = %name, "generated");
                    s
                }
                // Created meanwhile (another operator replica): theirs wins.
                Err(e) if status_code(&e) == Some(409) => api
                    .get(&name)
                    .await
                    .map_err(api_error(format!("reading Secret/{name}")))?,
                Err(e) => return Err(api_error(format!("creating Secret/{name}"))(e)),
            },
        };
        // Labels (so the Secret watch finds it) and the owner reference the deletion policy
        // asks for, on Secrets made earlier or by someone else too; the data is never touched.
        if let Some(patch) = secrets::metadata_patch(plan, &generated, &secret.metadata) {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_error(format!("labelling Secret/{name}")))?;
        }
        let data = secret.data.unwrap_or_default();
        for (key, _) in &generated.keys {
            if !data.contains_key(*key) {
                observed.problems.push(Problem {
                    reason: "SecretInvalid",
                    message: format!(
                        "Secret {name} has no key '{key}' (restore it from a backup: values the \
                         stores were initialised with cannot be generated again)"
                    ),
                });
            }
        }
        contents.insert(name, data);
    }
    for (name, key) in secrets::referenced(plan) {
        match api
            .get_opt(&name)
            .await
            .map_err(api_error(format!("reading Secret/{name}")))?
        {
            None => observed.problems.push(Problem {
                reason: "SecretNotFound",
                message: format!(
                    "Secret {name} (named in the spec) does not exist in namespace {}",
                    plan.namespace
                ),
            }),
            Some(secret) => {
                let data = secret.data.unwrap_or_default();
                if !data.contains_key(&key) {
                    observed.problems.push(Problem {
                        reason: "SecretInvalid",
                        message: format!("Secret {name} has no key '{key}' (named in the spec)"),
                    });
                }
                contents.insert(name, data);
            }
        }
    }
    Ok(contents)
}

/// Deletes children a previous spec wanted and this one does not (only ones this ChatCluster
/// controls), and init Jobs of an earlier topology.
async fn prune(ctx: &Context, plan: &Plan, desired: &[Child]) -> Result<(), Error> {
    let wanted: BTreeSet<(String, String)> = desired
        .iter()
        .map(|c| (c.resource.kind.clone(), c.name.clone()))
        .collect();
    let candidates: Vec<(ApiResource, String)> = build::prunable(plan)
        .into_iter()
        .filter(|(r, name)| !wanted.contains(&(r.kind.clone(), name.clone())))
        .collect();
    let results: Vec<Result<(), Error>> = stream::iter(candidates)
        .map(|(resource, name)| async move {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &plan.namespace, &resource);
            let existing = match api.get_opt(&name).await {
                Ok(found) => found,
                Err(e) if status_code(&e) == Some(404) && optional(&resource) => None,
                Err(e) => return Err(api_error(format!("reading {}/{name}", resource.kind))(e)),
            };
            if let Some(object) = existing {
                delete_if_ours(&api, plan, &resource.kind, &name, &object.metadata).await?;
            }
            Ok(())
        })
        .buffer_unordered(APPLY_CONCURRENCY)
        .collect()
        .await;
    for result in results {
        result?;
    }

    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &plan.namespace);
    let current: BTreeSet<&str> = desired
        .iter()
        .filter(|c| c.resource.kind == "Job")
        .map(|c| c.name.as_str())
        .collect();
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component={}",
        plan.name,
        build::MONGODB_INIT
    );
    let list = jobs
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error("listing init Jobs"))?;
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &plan.namespace,
        &ApiResource::erase::<Job>(&()),
    );
    for job in list.items {
        let name = job.name_any();
        if !current.contains(name.as_str()) {
            delete_if_ours(&dynamic, plan, "Job", &name, &job.metadata).await?;
        }
    }
    Ok(())
}

async fn delete_if_ours(
    api: &Api<DynamicObject>,
    plan: &Plan,
    kind: &str,
    name: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<(), Error> {
    let ours = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == plan.owner.uid && o.controller == Some(true));
    if !ours {
        return Ok(());
    }
    let params = DeleteParams {
        // Only the object we looked at: never one recreated by someone else meanwhile.
        preconditions: Some(Preconditions {
            uid: meta.uid.clone(),
            resource_version: None,
        }),
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            info!(child = %format!("{kind}/{name}"), "pruned");
            Ok(())
        }
        Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(api_error(format!("deleting {kind}/{name}"))(e)),
    }
}
