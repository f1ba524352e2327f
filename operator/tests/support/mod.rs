//! Tests against a real kube-apiserver (started by `tests/run.sh`, which exports
//! `TEST_KUBECONFIG`). Each test gets its own namespace and its own in-process controller
//! scoped to it, so tests run in parallel without seeing each other.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_operator::controller;
use chat_operator::crd::ChatCluster;
use chat_operator::plan::OperatorSettings;
use chat_operator::telemetry::Metrics;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{OnceCell, watch};

/// The kubeconfig of the test API server: `tests/run.sh` starts one and exports it.
pub fn kubeconfig_path() -> String {
    std::env::var("TEST_KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "TEST_KUBECONFIG is not set: these tests need a real kube-apiserver. \
             Run them through `bash tests/run.sh -p chat-operator`, which builds and starts one."
        )
    })
}

pub async fn client() -> Client {
    client_from(&kubeconfig_path()).await
}

/// A client with the identity of the kubeconfig at `path`.
pub async fn client_from(path: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read the kubeconfig {path}: {e}"));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client builds")
}

static CRD: OnceCell<()> = OnceCell::const_new();

/// Installs the ChatCluster CRD (once per test binary) and waits until it is served.
pub async fn install_crd(client: &Client) {
    CRD.get_or_init(|| async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.patch(
            ChatCluster::crd_name(),
            &PatchParams::apply("chat-operator-tests").force(),
            &Patch::Apply(chat_operator::crd()),
        )
        .await
        .expect("CRD applies");
        eventually(
            "the CRD to be established",
            Duration::from_secs(30),
            || async {
                let crd = crds.get(ChatCluster::crd_name()).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                // Established can precede the first successful list by a moment.
                let api: Api<ChatCluster> = Api::all(client.clone());
                (established && api.list(&ListParams::default()).await.is_ok()).then_some(())
            },
        )
        .await;
    })
    .await;
}

/// A namespace of its own with a controller scoped to it; dropping it stops the controller.
pub struct TestEnv {
    pub client: Client,
    pub ns: String,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl TestEnv {
    /// A fresh namespace (`prefix-<random>`) and the CRD, without a controller.
    pub async fn bare(prefix: &str) -> Self {
        let client = client().await;
        install_crd(&client).await;
        let ns = format!("{prefix}-{:08x}", rand_u32());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .expect("namespace created");
        let (stop, _) = watch::channel(false);
        TestEnv {
            client,
            ns,
            metrics: Arc::new(Metrics::new()),
            stop,
        }
    }

    /// A fresh namespace with the controller running in this process.
    pub async fn start(prefix: &str) -> Self {
        let env = Self::bare(prefix).await;
        env.run_controller(env.client.clone());
        env
    }

    /// Runs the controller over this namespace with `client`'s identity until the env drops.
    pub fn run_controller(&self, client: Client) {
        let env = self;
        let mut rx = env.stop.subscribe();
        tokio::spawn(controller::run(
            client,
            Some(env.ns.clone()),
            OperatorSettings::default(),
            env.metrics.clone(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create_cluster(&self, name: &str, spec: serde_json::Value) -> ChatCluster {
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "chat.example.io/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("test spec parses");
        self.api::<ChatCluster>()
            .create(&PostParams::default(), &cluster)
            .await
            .expect("ChatCluster created")
    }

    pub async fn cluster(&self, name: &str) -> ChatCluster {
        self.api::<ChatCluster>()
            .get(name)
            .await
            .expect("ChatCluster exists")
    }

    /// Waits for a condition of the ChatCluster `name` to have `status`.
    pub async fn wait_condition(&self, name: &str, type_: &str, status: &str) -> ChatCluster {
        let last = std::sync::Mutex::new(None);
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let c = self.cluster(name).await;
                let matched = c
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|x| x.type_ == type_))
                    .is_some_and(|cond| cond.status == status);
                if matched {
                    return c;
                }
                last.lock().unwrap().clone_from(&c.status);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "timed out after 30s waiting for ChatCluster {name} to have {type_}={status}; last status: {:#?}",
                last.lock().unwrap()
            )
        })
    }

    pub async fn delete_cluster(&self, name: &str) {
        let _ = self
            .api::<ChatCluster>()
            .delete(name, &DeleteParams::default())
            .await;
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(Instant::now());
    u32::try_from(bits >> 32).expect("32 bits fit")
}

/// Waits until the `K` named `name` no longer exists in the test namespace.
pub async fn eventually_gone<K>(env: &TestEnv, name: &str)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api = env.api::<K>();
    eventually(
        &format!("{} {name} to be gone", K::kind(&())),
        Duration::from_secs(30),
        || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sets a Deployment's or StatefulSet's status as its controller would, with `ready` of its
/// replicas ready (and all updated).
pub async fn set_workload_status(env: &TestEnv, kind: &str, name: &str, ready: i32) {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    let (generation, replicas) = if kind == "Deployment" {
        let d = env
            .api::<Deployment>()
            .get(name)
            .await
            .expect("Deployment exists");
        (d.metadata.generation, d.spec.unwrap().replicas.unwrap_or(1))
    } else {
        let s = env
            .api::<StatefulSet>()
            .get(name)
            .await
            .expect("StatefulSet exists");
        (s.metadata.generation, s.spec.unwrap().replicas.unwrap_or(1))
    };
    let status = json!({"status": {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }});
    let pp = PatchParams::default();
    if kind == "Deployment" {
        env.api::<Deployment>()
            .patch_status(name, &pp, &Patch::Merge(&status))
            .await
            .expect("Deployment status set");
    } else {
        env.api::<StatefulSet>()
            .patch_status(name, &pp, &Patch::Merge(&status))
            .await
            .expect("StatefulSet status set");
    }
}

/// Marks MongoDB's init Job as succeeded, as the Job controller would.
pub async fn complete_init_job(env: &TestEnv, cluster: &str) {
    use k8s_openapi::api::batch::v1::Job;
    let jobs = env.api::<Job>();
    let job = eventually("the init Job", Duration::from_secs(10), || async {
        jobs.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|j| {
                j.name_any()
                    .starts_with(&format!("{cluster}-mongodb-init-"))
            })
    })
    .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "startTime": now,
        "completionTime": now,
        "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Complete", "status": "True", "lastTransitionTime": now, "lastProbeTime": now},
        ],
    }});
    jobs.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("Job status set");
}

/// Makes every workload of `cluster` ready and its init Job complete.
pub async fn make_ready(env: &TestEnv, cluster: &str) {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    for c in ["auth", "chat", "websocket"] {
        let name = format!("{cluster}-{c}");
        let deployment = eventually(
            &format!("Deployment {name}"),
            Duration::from_secs(10),
            || async { env.api::<Deployment>().get_opt(&name).await.ok()? },
        )
        .await;
        let replicas = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
        set_workload_status(env, "Deployment", &name, replicas).await;
    }
    let mut mongodb_provisioned = false;
    for c in ["mongodb", "rabbitmq"] {
        let name = format!("{cluster}-{c}");
        if let Some(s) = env.api::<StatefulSet>().get_opt(&name).await.unwrap() {
            mongodb_provisioned |= c == "mongodb";
            let replicas = s.spec.and_then(|s| s.replicas).unwrap_or(1);
            set_workload_status(env, "StatefulSet", &name, replicas).await;
        }
    }
    if mongodb_provisioned {
        complete_init_job(env, cluster).await;
    }
}

/// Creates the Secret `name` with `data` in the test namespace (as a user would).
pub async fn create_secret(env: &TestEnv, name: &str, data: &[(&str, &str)]) {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..kube::api::ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    };
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("Secret {name}: {e}"));
}
