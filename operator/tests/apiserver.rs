//! The operator against a real, current kube-apiserver (v1.37, built by `tests/k8s/build.sh`):
//! the CRD installs and validates, the controller creates, repairs, scales and reports.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_operator::crd::ChatCluster;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Resource, ResourceExt};
use serde_json::json;
use support::{
    TestEnv, create_secret, eventually, eventually_gone, make_ready, set_workload_status,
};

const WAIT: Duration = Duration::from_secs(30);

/// Every child of a default ChatCluster named `demo`: (kind, name; `*` ends a prefix).
const DEFAULT_CHILDREN: &[(&str, &str)] = &[
    ("Secret", "demo-jwt"),
    ("Secret", "demo-mongodb-root"),
    ("Secret", "demo-mongodb-app"),
    ("Secret", "demo-rabbitmq-user"),
    ("Service", "demo-mongodb"),
    ("Service", "demo-rabbitmq"),
    ("Service", "demo-rabbitmq-nodes"),
    ("Service", "demo-auth"),
    ("Service", "demo-chat"),
    ("Service", "demo-websocket"),
    ("StatefulSet", "demo-mongodb"),
    ("StatefulSet", "demo-rabbitmq"),
    ("Deployment", "demo-auth"),
    ("Deployment", "demo-chat"),
    ("Deployment", "demo-websocket"),
    ("ConfigMap", "demo-rabbitmq-config"),
    ("Job", "demo-mongodb-init-*"),
    ("NetworkPolicy", "demo-mongodb"),
    ("NetworkPolicy", "demo-rabbitmq"),
];

fn resource(kind: &str) -> ApiResource {
    use k8s_openapi::api::{batch::v1::Job, core::v1::ConfigMap, networking::v1::NetworkPolicy};
    match kind {
        "Secret" => ApiResource::erase::<Secret>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        "Job" => ApiResource::erase::<Job>(&()),
        "NetworkPolicy" => ApiResource::erase::<NetworkPolicy>(&()),
        other => panic!("no resource for {other}"),
    }
}

/// The child `kind`/`name` (a trailing `*` matches a prefix), if it exists.
async fn find_child(env: &TestEnv, kind: &str, name: &str) -> Option<DynamicObject> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &resource(kind));
    match name.strip_suffix('*') {
        Some(prefix) => api
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|o| o.name_any().starts_with(prefix)),
        None => api.get_opt(name).await.ok()?,
    }
}

#[tokio::test]
async fn a_default_cluster_gets_every_child_owned_and_applied_by_the_operator() {
    let env = TestEnv::start("children").await;
    let started = Instant::now();
    let cluster = env.create_cluster("demo", json!({})).await;
    let uid = cluster.uid().unwrap();
    let mut children = Vec::new();
    for (kind, name) in DEFAULT_CHILDREN {
        let child = eventually(&format!("{kind} {name}"), WAIT, || {
            find_child(&env, kind, name)
        })
        .await;
        children.push(((*kind, *name), child));
    }
    println!(
        "every child of a new ChatCluster existed {} ms after it was created",
        started.elapsed().as_millis()
    );
    for ((kind, name), child) in &children {
        let owners = child.owner_references();
        if *kind == "Secret" {
            // deletionPolicy Retain (the default): generated credentials stay with the volumes.
            assert!(owners.is_empty(), "{kind} {name} is not owned under Retain");
            assert_eq!(
                child
                    .labels()
                    .get("app.kubernetes.io/instance")
                    .map(String::as_str),
                Some("demo")
            );
            continue;
        }
        assert_eq!(owners.len(), 1, "{kind} {name} has one owner");
        assert_eq!(
            owners[0].uid, uid,
            "{kind} {name} is owned by the ChatCluster"
        );
        assert_eq!(
            owners[0].controller,
            Some(true),
            "{kind} {name}: controller reference"
        );
        assert_eq!(owners[0].kind, "ChatCluster");
        assert_eq!(
            child
                .labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("chat-operator"),
            "{kind} {name} is labelled"
        );
        assert!(child.labels().contains_key("app.kubernetes.io/component"));
        let managers: Vec<_> = child
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert!(
            managers.iter().any(|m| m == "chat-operator"),
            "{kind} {name} is managed by chat-operator: {managers:?}"
        );
        {
            let applied = child.managed_fields().iter().any(|m| {
                m.manager.as_deref() == Some("chat-operator")
                    && m.operation.as_deref() == Some("Apply")
            });
            assert!(applied, "{kind} {name} is written by server-side apply");
        }
    }

    assert_wiring(&env).await;

    // Status is reported at once, honestly: nothing is running yet.
    let cluster = eventually("a status", WAIT, || async {
        let c = env.cluster("demo").await;
        c.status.as_ref()?.observed_generation?;
        Some(c)
    })
    .await;
    let status = cluster.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(status.components.websocket.summary, "0/1");
    assert_eq!(
        status.mongodb.unwrap().members,
        vec![format!(
            "demo-mongodb-0.demo-mongodb.{}.svc.cluster.local:27017",
            env.ns
        )]
    );
    assert!(env.metrics.reconciles.get() >= 1);
}

/// The services are wired to the stores and to each other.
async fn assert_wiring(env: &TestEnv) {
    let chat = env.api::<Deployment>().get("demo-chat").await.unwrap();
    let container = &chat.spec.unwrap().template.spec.unwrap().containers[0];
    let env_vars: BTreeMap<_, _> = container
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let ns = &env.ns;
    assert_eq!(
        env_vars["DATABASE_URL"].value.as_deref(),
        Some(
            format!(
                "mongodb://$(MONGODB_USERNAME):$(MONGODB_PASSWORD)@demo-mongodb-0.demo-mongodb.{ns}.svc.cluster.local:27017/?authSource=admin"
            )
            .as_str()
        )
    );
    assert_eq!(env_vars["DATABASE_NAME"].value.as_deref(), Some("chat"));
    assert_eq!(
        env_vars["AUTH_SERVICE_URL"].value.as_deref(),
        Some(format!("http://demo-auth.{ns}.svc.cluster.local:5001").as_str())
    );
    let jwt = env_vars["JWT_SECRET"]
        .value_from
        .clone()
        .unwrap()
        .secret_key_ref
        .unwrap();
    assert_eq!(
        (jwt.name.as_str(), jwt.key.as_str()),
        ("demo-jwt", "secret")
    );
    assert!(
        env_vars["RABBITMQ_URL"]
            .value
            .as_deref()
            .unwrap()
            .starts_with("amqp://$(RABBITMQ_USERNAME)")
    );
}

#[tokio::test]
async fn ready_follows_the_children_and_a_lost_pod_degrades_it() {
    let env = TestEnv::start("ready").await;
    env.create_cluster("demo", json!({"websocket": {"replicas": 2}}))
        .await;
    make_ready(&env, "demo").await;
    let cluster = env.wait_condition("demo", "Ready", "True").await;
    let status = cluster.status.unwrap();
    assert_eq!(
        status.phase.map(chat_operator::crd::Phase::as_str),
        Some("Ready")
    );
    assert_eq!(status.components.websocket.summary, "2/2");
    assert!(status.mongodb.unwrap().initialized);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.observed_generation, Some(1));
    // Condition times have second precision: let one pass so a flip is visible.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.api::<ChatCluster>()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    // Wait for the reconcile the edit triggers, then look.
    let before = env.metrics.reconciles.get();
    env.api::<ChatCluster>()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "2"}}})),
        )
        .await
        .unwrap();
    eventually("a reconcile after the edit", WAIT, || async {
        (env.metrics.reconciles.get() > before).then_some(())
    })
    .await;
    let again = env.wait_condition("demo", "Ready", "True").await;
    let unchanged = again
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        unchanged.last_transition_time, ready.last_transition_time,
        "no flip, no new time"
    );

    // A websocket pod is lost: Ready turns false, Degraded true, naming the component.
    set_workload_status(&env, "Deployment", "demo-websocket", 1).await;
    let cluster = env.wait_condition("demo", "Degraded", "True").await;
    let status = cluster.status.unwrap();
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(
        degraded.message.contains("websocket: 1/2 pods ready"),
        "{}",
        degraded.message
    );
    let not_ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(not_ready.status, "False");
    assert!(not_ready.last_transition_time > ready.last_transition_time);
    assert_eq!(status.components.websocket.summary, "1/2");

    // It comes back: Ready again.
    set_workload_status(&env, "Deployment", "demo-websocket", 2).await;
    env.wait_condition("demo", "Ready", "True").await;
}

#[tokio::test]
async fn scaling_websocket_follows_the_spec_and_adds_a_disruption_budget() {
    let env = TestEnv::start("scale").await;
    env.create_cluster("demo", json!({"websocket": {"replicas": 2}}))
        .await;
    make_ready(&env, "demo").await;
    env.wait_condition("demo", "Ready", "True").await;

    let patch = json!({"spec": {"websocket": {"replicas": 3}}});
    env.api::<ChatCluster>()
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("the websocket Deployment to ask for 3", WAIT, || async {
        let d = env.api::<Deployment>().get("demo-websocket").await.ok()?;
        (d.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    let cluster = eventually("observedGeneration 2", WAIT, || async {
        let c = env.cluster("demo").await;
        (c.status.as_ref()?.observed_generation == Some(2)).then_some(c)
    })
    .await;
    let status = cluster.status.unwrap();
    // The new pod is not up yet: progressing, not degraded.
    assert_eq!(
        status.phase.map(chat_operator::crd::Phase::as_str),
        Some("Progressing")
    );
    assert_eq!(status.components.websocket.desired, 3);
    let pdb = env
        .api::<PodDisruptionBudget>()
        .get("demo-websocket")
        .await
        .unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    // Back to one replica: the budget goes.
    let patch = json!({"spec": {"websocket": {"replicas": 1}}});
    env.api::<ChatCluster>()
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually_gone::<PodDisruptionBudget>(&env, "demo-websocket").await;
}

#[tokio::test]
async fn deleted_and_edited_children_are_repaired() {
    let env = TestEnv::start("repair").await;
    env.create_cluster("demo", json!({})).await;
    let services = env.api::<Service>();
    let before = eventually("the auth Service", WAIT, || async {
        services.get_opt("demo-auth").await.ok()?
    })
    .await;
    services
        .delete("demo-auth", &DeleteParams::default())
        .await
        .unwrap();
    let after = eventually("the auth Service to come back", WAIT, || async {
        let s = services.get_opt("demo-auth").await.ok()??;
        (s.uid() != before.uid()).then_some(s)
    })
    .await;
    assert_eq!(after.spec.unwrap().ports.unwrap()[0].port, 5001);

    // Someone scales a Deployment by hand: the spec wins.
    let deployments = env.api::<Deployment>();
    deployments
        .patch(
            "demo-chat",
            &PatchParams::apply("someone").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "demo-chat"}, "spec": {"replicas": 7},
            })),
        )
        .await
        .unwrap();
    eventually("the chat Deployment back at 1 replica", WAIT, || async {
        let d = deployments.get("demo-chat").await.ok()?;
        (d.spec?.replicas == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn existing_secrets_are_kept_and_a_changed_secret_rolls_its_readers() {
    let env = TestEnv::start("secrets").await;
    let secrets = env.api::<Secret>();
    // A JWT Secret that exists before the cluster (restored from a backup, say) is kept.
    create_secret(
        &env,
        "demo-jwt",
        &[("secret", "precreated-secret-of-32-bytes!!")],
    )
    .await;
    env.create_cluster("demo", json!({})).await;
    let deployments = env.api::<Deployment>();
    let hash = |d: Deployment| {
        d.spec?
            .template
            .metadata?
            .annotations?
            .get("chat.example.io/config-hash")
            .cloned()
    };
    let auth_hash = eventually("the auth Deployment", WAIT, || async {
        hash(deployments.get_opt("demo-auth").await.ok()??)
    })
    .await;
    let generated = secrets.get("demo-mongodb-app").await.unwrap().data.unwrap();
    // Another reconcile (spec change) leaves every Secret as it was.
    env.api::<ChatCluster>()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"chat": {"replicas": 2}}})),
        )
        .await
        .unwrap();
    eventually("observedGeneration 2", WAIT, || async {
        (env.cluster("demo").await.status?.observed_generation == Some(2)).then_some(())
    })
    .await;
    let jwt = secrets.get("demo-jwt").await.unwrap().data.unwrap();
    assert_eq!(jwt["secret"].0, b"precreated-secret-of-32-bytes!!");
    assert_eq!(
        secrets.get("demo-mongodb-app").await.unwrap().data.unwrap(),
        generated
    );

    // The JWT secret is rotated: every pod that reads it rolls (its template hash changes),
    // and only those (the stores' pods keep theirs). The pre-created Secret was labelled, so
    // the edit is seen at once.
    let hash_of = |sts: StatefulSet| {
        sts.spec?
            .template
            .metadata?
            .annotations?
            .get("chat.example.io/config-hash")
            .cloned()
    };
    let mongo_hash = hash_of(env.api::<StatefulSet>().get("demo-mongodb").await.unwrap());
    let labels = secrets
        .get("demo-jwt")
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap();
    assert_eq!(labels["app.kubernetes.io/instance"], "demo");
    let services = ["demo-auth", "demo-chat", "demo-websocket"];
    let mut old = Vec::new();
    for service in services {
        old.push(hash(deployments.get(service).await.unwrap()).unwrap());
    }
    let patch = json!({"data": {"secret": "cm90YXRlZC1zZWNyZXQtb2YtMzItYnl0ZXMhISEhIQ=="}});
    secrets
        .patch("demo-jwt", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    for (service, old) in services.iter().zip(&old) {
        eventually(&format!("{service} pods to roll"), WAIT, || async {
            let now = hash(deployments.get(service).await.ok()?)?;
            (&now != old).then_some(())
        })
        .await;
    }
    let new_auth = hash(deployments.get("demo-auth").await.unwrap()).unwrap();
    assert_ne!(new_auth, auth_hash);
    assert_eq!(
        hash_of(env.api::<StatefulSet>().get("demo-mongodb").await.unwrap()),
        mongo_hash
    );
}

#[tokio::test]
async fn a_missing_referenced_secret_degrades_until_it_exists() {
    let env = TestEnv::start("external").await;
    env.create_cluster(
        "demo",
        json!({
            "mongodb": {"external": {"uriSecretRef": {"name": "atlas", "key": "uri"}}},
            "jwt": {"secretRef": {"name": "signing"}},
        }),
    )
    .await;
    let cluster = env.wait_condition("demo", "Degraded", "True").await;
    let degraded = cluster
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded.reason, "SecretNotFound");
    assert!(
        degraded.message.contains("Secret atlas"),
        "{}",
        degraded.message
    );
    assert!(
        degraded.message.contains("Secret signing"),
        "{}",
        degraded.message
    );
    // Nothing is provisioned for an external MongoDB.
    assert!(
        env.api::<StatefulSet>()
            .get_opt("demo-mongodb")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        cluster.status.unwrap().components.mongodb.summary,
        "external"
    );
    let auth = env.api::<Deployment>().get("demo-auth").await.unwrap();
    let vars = auth.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let url = vars.iter().find(|v| v.name == "DATABASE_URL").unwrap();
    let source = url.value_from.clone().unwrap().secret_key_ref.unwrap();
    assert_eq!(
        (source.name.as_str(), source.key.as_str()),
        ("atlas", "uri")
    );

    // The user creates them; the periodic re-check is 5 minutes, an edit of the cluster is now.
    create_secret(&env, "atlas", &[("uri", "mongodb://db.example:27017/")]).await;
    create_secret(
        &env,
        "signing",
        &[("secret", "0123456789abcdef0123456789abcdef")],
    )
    .await;
    env.api::<ChatCluster>()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    // The found Secrets change the pods' config hash, so the Deployments get a new generation:
    // report their status only after that.
    env.wait_condition("demo", "Degraded", "False").await;
    make_ready(&env, "demo").await;
    env.wait_condition("demo", "Ready", "True").await;
}

#[tokio::test]
async fn the_server_refuses_an_invalid_spec() {
    let env = TestEnv::bare("invalid").await;
    let api = env.api::<ChatCluster>();
    // Sent as raw JSON: the server, not our types, must refuse it.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::erase::<ChatCluster>(&()),
    );
    let attempt = |spec: serde_json::Value| {
        let raw = raw.clone();
        async move {
            let cluster: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "chat.example.io/v1alpha1", "kind": "ChatCluster",
                "metadata": {"name": "bad"}, "spec": spec,
            }))
            .unwrap();
            match raw.create(&PostParams::default(), &cluster).await {
                Err(kube::Error::Api(s)) => (s.code, s.message),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    let (code, message) = attempt(json!({"mongodb": {"replicas": 2}})).await;
    assert_eq!(code, 422);
    assert!(message.contains("spec.mongodb.replicas"), "{message}");
    let (code, message) = attempt(json!({"rabbitmq": {"replicas": 5}})).await;
    assert_eq!(code, 422, "{message}");
    let (code, message) =
        attempt(json!({"auth": {"service": {"type": "ClusterIP", "nodePort": 30001}}})).await;
    assert_eq!(code, 422);
    assert!(
        message.contains("nodePort needs type NodePort"),
        "{message}"
    );
    let (code, message) = attempt(json!({"jwt": {"tokenTtl": "forever"}})).await;
    assert_eq!(code, 422, "{message}");
    let (code, message) = attempt(json!({"websocket": {"replicas": 0}})).await;
    assert_eq!(code, 422, "{message}");
    let (code, message) = attempt(json!({"mongodb": {"replicas": 3,
        "external": {"uriSecretRef": {"name": "m", "key": "uri"}}}}))
    .await;
    assert_eq!(code, 422);
    assert!(
        message.contains("an external store takes only uriSecretRef"),
        "{message}"
    );
    let (code, message) = attempt(json!({"deletionPolicy": "Sometimes"})).await;
    assert_eq!(code, 422, "{message}");
    // A name that cannot prefix every child's name.
    for name in [
        "a-name-that-is-far-too-long-to-prefix-children",
        "Upper",
        "dotted.name",
    ] {
        let cluster: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "chat.example.io/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": name}, "spec": {},
        }))
        .unwrap();
        match raw.create(&PostParams::default(), &cluster).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{name}: {}", s.message),
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
    // Transitions: storage is fixed once the store exists, and a store never shrinks.
    let cluster: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "chat.example.io/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": "grown"},
        "spec": {"mongodb": {"replicas": 3, "storage": {"size": "1Gi"}}, "rabbitmq": {"replicas": 3}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &cluster).await.unwrap();
    for (patch, expected) in [
        (
            json!({"spec": {"mongodb": {"storage": {"size": "2Gi"}}}}),
            "storage cannot change",
        ),
        (
            json!({"spec": {"rabbitmq": {"replicas": 1}}}),
            "cannot shrink",
        ),
        (
            json!({"spec": {"mongodb": {"replicas": null}}}),
            "cannot shrink",
        ),
    ] {
        match api
            .patch("grown", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422);
                assert!(s.message.contains(expected), "{patch}: {}", s.message);
            }
            other => panic!("{patch}: expected a refusal, got {other:?}"),
        }
    }
    // `spec: {}` is a whole system.
    let cluster: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "chat.example.io/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": "good"}, "spec": {},
    }))
    .unwrap();
    api.create(&PostParams::default(), &cluster).await.unwrap();
}

#[tokio::test]
async fn paused_changes_nothing_and_says_so() {
    let env = TestEnv::start("paused").await;
    env.create_cluster("demo", json!({"paused": true})).await;
    let cluster = eventually("phase Paused", WAIT, || async {
        let c = env.cluster("demo").await;
        (c.status.as_ref()?.phase?.as_str() == "Paused").then_some(c)
    })
    .await;
    let progressing = cluster
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(progressing.reason, "Paused");
    assert!(
        env.api::<Deployment>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        env.api::<Secret>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Unpaused, it builds the system.
    env.api::<ChatCluster>()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    eventually("the Deployments", WAIT, || async {
        (env.api::<Deployment>()
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len()
            == 3)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unserved_optional_api_is_skipped_with_a_note_and_the_cluster_still_gets_ready() {
    let env = TestEnv::start("optional").await;
    env.create_cluster(
        "demo",
        json!({"monitoring": {"serviceMonitor": true}, "ingress": {"host": "chat.example.com", "className": "nginx"}}),
    )
    .await;
    make_ready(&env, "demo").await;
    let cluster = env.wait_condition("demo", "Ready", "True").await;
    let ready = cluster
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready.message.contains(
            "ServiceMonitor/demo skipped: this server does not serve monitoring.coreos.com/v1"
        ),
        "{}",
        ready.message
    );
    let ingress = env.api::<Ingress>().get("demo").await.unwrap();
    let paths: Vec<_> = ingress.spec.unwrap().rules.unwrap()[0]
        .http
        .clone()
        .unwrap()
        .paths
        .into_iter()
        .map(|p| (p.path.unwrap(), p.backend.service.unwrap().name))
        .collect();
    assert_eq!(
        paths,
        [
            ("/auth".to_owned(), "demo-auth".to_owned()),
            ("/chat".to_owned(), "demo-chat".to_owned()),
            ("/".to_owned(), "demo-websocket".to_owned())
        ]
    );
    assert_eq!(ChatCluster::kind(&()), "ChatCluster");
}

/// The README's commands, as a user types them, against this server.
#[tokio::test]
async fn the_readme_kubectl_commands_work() {
    let env = TestEnv::start("kubectl").await;
    let root = format!(
        "{}/..",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")
    );
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", support::kubeconfig_path())
            .current_dir(&root)
            .output()
            .expect("kubectl is installed (tests/run.sh builds it when missing)");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Plain client-side apply, as most people type it: the CRD must fit the last-applied
    // annotation (256 KiB).
    kubectl(&["apply", "-f", "k8s/crd.yaml"]);
    kubectl(&["apply", "-n", &env.ns, "-f", "k8s/examples/minimal.yaml"]);
    let name = "chat";
    let waiter = {
        let ns = env.ns.clone();
        let root = root.clone();
        std::thread::spawn(move || {
            std::process::Command::new("kubectl")
                .args([
                    "wait",
                    "--for=condition=Ready",
                    &format!("chatcluster/{name}"),
                    "-n",
                    &ns,
                    "--timeout=60s",
                ])
                .env("KUBECONFIG", support::kubeconfig_path())
                .current_dir(root)
                .output()
                .expect("kubectl runs")
        })
    };
    make_ready(&env, name).await;
    let out = tokio::task::spawn_blocking(move || waiter.join().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = kubectl(&["get", "chat", "-n", &env.ns]);
    assert!(
        table.contains("READY") && table.contains("WEBSOCKET"),
        "{table}"
    );
    assert!(
        table.lines().nth(1).unwrap().contains("True")
            && table.contains("Ready")
            && table.contains("1/1"),
        "{table}"
    );
}

/// Every object the builders emit for a fully specified cluster passes the API server's own
/// validation (a server-side dry-run apply: probes, claim templates, policies, ports), and
/// applying it again is a no-op.
#[tokio::test]
async fn every_built_object_passes_the_servers_validation() {
    use chat_operator::build::{SecretHashes, desired};
    use chat_operator::plan::{OperatorSettings, Plan};
    let env = TestEnv::bare("dryrun").await;
    let mut cluster: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "chat.example.io/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": "demo", "namespace": env.ns, "uid": "00000000-0000-0000-0000-000000000001"},
        "spec": {
            "deletionPolicy": "Delete",
            "mongodb": {"replicas": 3, "storage": {"size": "20Gi", "storageClassName": "fast"},
                        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}},
            "rabbitmq": {"replicas": 3},
            "auth": {"replicas": 2, "env": [{"name": "RUST_LOG", "value": "debug"}],
                     "service": {"type": "NodePort", "nodePort": 30001}},
            "chat": {"replicas": 2, "service": {"type": "LoadBalancer", "annotations": {"a": "b"}}},
            "websocket": {"replicas": 3, "tolerations": [{"key": "k", "operator": "Exists"}]},
            "ingress": {"className": "nginx", "host": "chat.example.com", "tlsSecretName": "tls"},
            "jwt": {"tokenTtl": "24h"},
            "monitoring": {"serviceMonitor": true},
        },
    }))
    .unwrap();
    cluster.metadata.namespace = Some(env.ns.clone());
    let plan = Plan::resolve(&cluster, &OperatorSettings::default()).unwrap();
    let children = desired(&plan, &SecretHashes::default());
    let mut checked = 0;
    for child in &children {
        if child.resource.kind == "ServiceMonitor" {
            continue; // this server does not serve monitoring.coreos.com
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(env.client.clone(), &env.ns, &child.resource);
        let params = PatchParams::apply("chat-operator").force().dry_run();
        api.patch(&child.name, &params, &Patch::Apply(&child.object))
            .await
            .unwrap_or_else(|e| panic!("{} is refused: {e}", child.describe()));
        // Applied for real twice: the second apply must change nothing (no new generation, no
        // new resourceVersion), or every reconcile would roll pods.
        let params = PatchParams::apply("chat-operator").force();
        let first = api
            .patch(&child.name, &params, &Patch::Apply(&child.object))
            .await
            .unwrap();
        let second = api
            .patch(&child.name, &params, &Patch::Apply(&child.object))
            .await
            .unwrap();
        assert_eq!(
            first.resource_version(),
            second.resource_version(),
            "applying {} again changed it",
            child.describe()
        );
        checked += 1;
    }
    assert!(checked >= 20, "{checked} objects checked");
}

#[tokio::test]
async fn topology_changes_replace_the_init_job_and_removed_options_are_pruned() {
    use k8s_openapi::api::batch::v1::Job;
    let env = TestEnv::start("topology").await;
    env.create_cluster("demo", json!({"ingress": {"host": "chat.example.com"}}))
        .await;
    let jobs = env.api::<Job>();
    let first = eventually("the init Job", WAIT, || async {
        jobs.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    eventually("the Ingress", WAIT, || async {
        env.api::<Ingress>().get_opt("demo").await.ok()?
    })
    .await;

    // MongoDB grows to a replica set and the Ingress goes.
    let patch = json!({"spec": {"mongodb": {"replicas": 3}, "ingress": null}});
    env.api::<ChatCluster>()
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let second = eventually("a new init Job, the old one gone", WAIT, || async {
        let items = jobs.list(&ListParams::default()).await.ok()?.items;
        let live: Vec<_> = items
            .into_iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .collect();
        (live.len() == 1 && live[0].name_any() != first.name_any()).then(|| live[0].clone())
    })
    .await;
    let container = &second.spec.unwrap().template.spec.unwrap().containers[0];
    let members = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "MEMBERS")
        .unwrap()
        .value
        .clone()
        .unwrap();
    assert_eq!(members.split(',').count(), 3, "{members}");
    eventually_gone::<Ingress>(&env, "demo").await;
    // The replica set's keyfile was generated, and the members' URI names the set.
    let secrets = env.api::<Secret>();
    assert!(
        secrets
            .get_opt("demo-mongodb-keyfile")
            .await
            .unwrap()
            .is_some()
    );
    let sts = env.api::<StatefulSet>().get("demo-mongodb").await.unwrap();
    assert_eq!(sts.spec.unwrap().replicas, Some(3));
    let status = eventually("the status to list 3 members", WAIT, || async {
        let s = env.cluster("demo").await.status?;
        (s.mongodb.as_ref()?.members.len() == 3).then_some(s)
    })
    .await;
    assert!(status.mongodb.unwrap().members[2].starts_with("demo-mongodb-2.demo-mongodb."));
}
