//! A provisioned RabbitMQ: a StatefulSet, a headless Service for the nodes' names, a client
//! Service, and its configuration. With 3 nodes they form one cluster through the Kubernetes
//! peer discovery plugin and share a generated Erlang cookie.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, Probe, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ApiResource;

use super::stores::{self, StorePod, install_secret_file};
use super::{
    Child, SecretHashes, container, empty_dir, env, env_from_field, env_from_secret, meta, mount,
    selector_labels,
};
use crate::plan::{Component, Plan, ProvisionedStore, Store};

pub(super) fn children(plan: &Plan, hashes: &SecretHashes) -> Vec<Child> {
    let Store::Provisioned(store) = &plan.rabbitmq else {
        return Vec::new();
    };
    let mut children = vec![
        Child::typed(&config_map(plan, store)),
        Child::typed(&headless_service(plan)),
        Child::typed(&client_service(plan)),
        Child::typed(&statefulset(plan, store, hashes)),
    ];
    if store.replicas > 1 {
        children.push(Child::typed(&super::extras::pdb(plan, Component::RabbitMq)));
    }
    children
}

pub(super) fn prunable(plan: &Plan) -> Vec<(ApiResource, String)> {
    let name = plan.child_name(Component::RabbitMq);
    vec![
        (ApiResource::erase::<StatefulSet>(&()), name.clone()),
        (ApiResource::erase::<Service>(&()), name.clone()),
        (ApiResource::erase::<Service>(&()), headless_name(plan)),
        (ApiResource::erase::<ConfigMap>(&()), config_name(plan)),
    ]
}

fn headless_name(plan: &Plan) -> String {
    format!("{}-nodes", plan.child_name(Component::RabbitMq))
}

fn config_name(plan: &Plan) -> String {
    format!("{}-config", plan.child_name(Component::RabbitMq))
}

/// `rabbitmq.conf` and `enabled_plugins`. Logs go to the console only (the root filesystem is
/// read-only and a log collector reads stdout).
fn config_map(plan: &Plan, store: &ProvisionedStore) -> ConfigMap {
    let mut conf = String::from(
        "# Written by chat-operator; edits are overwritten.\n\
         log.console = true\n\
         log.console.level = info\n\
         log.file = false\n\
         # Metrics come from the Prometheus plugin (what the image's own conf.d, hidden by\n\
         # this mount, also sets).\n\
         management_agent.disable_metrics_collector = true\n\
         disk_free_limit.absolute = 500MB\n",
    );
    if let Some(bytes) = memory_limit(store) {
        // The node sizes itself from the pod's limit, not the host's memory, and blocks
        // publishers at 60% of it: Erlang's garbage collection can briefly double the heap.
        let _ = write!(
            conf,
            "total_memory_available_override_value = {bytes}\n\
             vm_memory_high_watermark.relative = 0.6\n"
        );
    }
    let mut plugins = vec!["rabbitmq_management", "rabbitmq_prometheus"];
    if store.replicas > 1 {
        plugins.push("rabbitmq_peer_discovery_k8s");
        // RabbitMQ 4.1+ discovery needs no API access: a node whose name ends in `-N` joins
        // the `-0` node of the same domain, which alone forms the cluster.
        let _ = write!(
            conf,
            "cluster_formation.peer_discovery_backend = k8s
\
             cluster_formation.target_cluster_size_hint = {}
\
             cluster_partition_handling = pause_minority
\
             cluster_name = {}
",
            store.replicas, plan.name,
        );
    }
    ConfigMap {
        metadata: meta(plan, config_name(plan), "rabbitmq"),
        data: Some(BTreeMap::from([
            ("rabbitmq.conf".into(), conf),
            (
                "enabled_plugins".into(),
                format!("[{}].\n", plugins.join(",")),
            ),
        ])),
        ..ConfigMap::default()
    }
}

/// The store's memory limit in bytes, when it has one in a form Kubernetes writes.
fn memory_limit(store: &ProvisionedStore) -> Option<u64> {
    let quantity = store
        .resources
        .limits
        .as_ref()?
        .get("memory")?
        .0
        .trim()
        .to_owned();
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(unit)
}

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// Names every node (`<pod>.<cluster>-rabbitmq-nodes.<ns>.svc`) before it is ready: nodes must
/// reach each other to cluster.
fn headless_service(plan: &Plan) -> Service {
    Service {
        metadata: meta(plan, headless_name(plan), "rabbitmq"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(plan, "rabbitmq")),
            ports: Some(vec![port("epmd", 4369), port("cluster", 25672)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// What clients use: AMQP, the management UI and Prometheus metrics.
fn client_service(plan: &Plan) -> Service {
    Service {
        metadata: meta(plan, plan.child_name(Component::RabbitMq), "rabbitmq"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(plan, "rabbitmq")),
            ports: Some(vec![
                port("amqp", 5672),
                port("management", 15672),
                port("prometheus", 15692),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn statefulset(plan: &Plan, store: &ProvisionedStore, hashes: &SecretHashes) -> StatefulSet {
    let secrets = plan.secret_names();
    let mut volumes = vec![
        empty_dir("tmp"),
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_name(plan),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut init_containers = Vec::new();
    if store.replicas > 1 {
        // Every node of one cluster needs the same cookie (else each makes its own).
        let (secret_volume, install) = install_secret_file(
            store,
            &secrets.rabbitmq_cookie,
            "cookie",
            ("data", "/var/lib/rabbitmq"),
            "/var/lib/rabbitmq/.erlang.cookie",
        );
        volumes.push(secret_volume);
        init_containers.push(install);
    }
    stores::statefulset(
        plan,
        store,
        StorePod {
            component: Component::RabbitMq,
            service_name: headless_name(plan),
            init_containers,
            container: rabbitmq_container(plan, store),
            volumes,
            config_hash: hashes.rabbitmq.clone(),
            // Lets a node hand its queues over and leave the cluster cleanly.
            termination_grace_period_seconds: Some(120),
        },
    )
}

fn rabbitmq_container(plan: &Plan, store: &ProvisionedStore) -> Container {
    let mut rabbit = container("rabbitmq", &store.image);
    let user = plan.secret_names().rabbitmq_user;
    rabbit.env = Some(vec![
        env_from_secret("RABBITMQ_DEFAULT_USER", &user, "username"),
        env_from_secret("RABBITMQ_DEFAULT_PASS", &user, "password"),
        env_from_field("MY_POD_NAME", "metadata.name"),
        // The image only turns long names on when the hostname has a domain, which a pod's
        // has not; the node name (and so the data directory's) must stay stable.
        env("RABBITMQ_USE_LONGNAME", "true"),
        env(
            "RABBITMQ_NODENAME",
            format!(
                "rabbit@$(MY_POD_NAME).{}",
                plan.service_host(&headless_name(plan))
            ),
        ),
        env("RABBITMQ_CONFIG_FILE", "/etc/rabbitmq/rabbitmq.conf"),
        env(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            "/etc/rabbitmq/enabled_plugins",
        ),
    ]);
    rabbit.ports = Some(
        [
            ("amqp", 5672),
            ("management", 15672),
            ("prometheus", 15692),
            ("epmd", 4369),
            ("cluster", 25672),
        ]
        .into_iter()
        .map(|(name, port)| ContainerPort {
            name: Some(name.into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect(),
    );
    rabbit.resources = Some(store.resources.clone());
    rabbit.volume_mounts = Some(vec![
        mount("data", "/var/lib/rabbitmq", false),
        mount("config", "/etc/rabbitmq", true),
        mount("tmp", "/tmp", false),
    ]);
    let probe = |period: i32, failures: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("amqp".into()),
            host: None,
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    rabbit.readiness_probe = Some(probe(10, 3));
    rabbit.liveness_probe = Some(Probe {
        initial_delay_seconds: Some(60),
        ..probe(20, 6)
    });
    rabbit
}
