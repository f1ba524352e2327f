//! A provisioned MongoDB: a StatefulSet with authentication on, a headless Service giving each
//! member a stable DNS name, and an init Job (from the same image, with `mongosh`) that
//! initiates the replica set once (3 members) and creates the services' user.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ContainerPort, PodSpec, PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec,
    TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ApiResource;
use sha2::{Digest, Sha256};

use super::stores::{self, STORE_UID, StorePod, install_secret_file};
use super::{
    Child, SecretHashes, container, empty_dir, env, env_from_secret, hex, meta, mount,
    pod_security, selector_labels,
};
use crate::plan::{Component, Plan, ProvisionedStore, REPLICA_SET, Store};

/// Component label of the init Job's pods.
pub const INIT: &str = "mongodb-init";
const KEYFILE_DIR: &str = "/etc/mongodb-keyfile";

pub(super) fn children(plan: &Plan, hashes: &SecretHashes) -> Vec<Child> {
    let Store::Provisioned(store) = &plan.mongodb else {
        return Vec::new();
    };
    let mut children = vec![
        Child::typed(&headless_service(plan)),
        Child::typed(&statefulset(plan, store, hashes)),
        Child::typed(&init_job(plan, store, hashes)),
    ];
    if store.replicas > 1 {
        children.push(Child::typed(&super::extras::pdb(plan, Component::MongoDb)));
    }
    children
}

pub(super) fn prunable(plan: &Plan) -> Vec<(ApiResource, String)> {
    let name = plan.child_name(Component::MongoDb);
    vec![
        (ApiResource::erase::<StatefulSet>(&()), name.clone()),
        (ApiResource::erase::<Service>(&()), name),
    ]
}

/// The members' headless Service: `<sts>-<i>.<sts>.<ns>.svc` names each member, also before
/// it is ready (members must find each other to elect a primary).
fn headless_service(plan: &Plan) -> Service {
    let name = plan.child_name(Component::MongoDb);
    Service {
        metadata: meta(plan, name, "mongodb"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(plan, "mongodb")),
            ports: Some(vec![ServicePort {
                name: Some("mongodb".into()),
                port: 27017,
                target_port: Some(IntOrString::String("mongodb".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn tcp_probe(period: i32, failures: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("mongodb".into()),
            host: None,
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn statefulset(plan: &Plan, store: &ProvisionedStore, hashes: &SecretHashes) -> StatefulSet {
    let secrets = plan.secret_names();
    let mut args = vec!["--bind_ip_all".to_owned()];
    let mut volumes = vec![empty_dir("tmp"), empty_dir("configdb")];
    let mut mounts = vec![
        mount("data", "/data/db", false),
        mount("tmp", "/tmp", false),
        mount("configdb", "/data/configdb", false),
    ];
    let mut init_containers = Vec::new();
    if store.replicas > 1 {
        let keyfile = format!("{KEYFILE_DIR}/keyfile");
        args.extend([
            "--replSet".to_owned(),
            REPLICA_SET.to_owned(),
            "--keyFile".to_owned(),
            keyfile.clone(),
        ]);
        let (secret_volume, install) = install_secret_file(
            store,
            &secrets.mongodb_keyfile,
            "keyfile",
            ("keyfile", KEYFILE_DIR),
            &keyfile,
        );
        volumes.extend([secret_volume, empty_dir("keyfile")]);
        mounts.push(mount("keyfile", KEYFILE_DIR, true));
        init_containers.push(install);
    }
    // The image's entrypoint must run: on first start it creates the root user (stripping
    // --replSet and --keyFile for that step) and turns authentication on. In a replica set
    // only the first member may do so: `replSetInitiate` refuses members that hold data, and a
    // user is data; the others get their users from the first by initial sync.
    let mut mongod = container("mongod", &store.image);
    if store.replicas > 1 {
        mongod.command = Some(vec![
            "sh".into(),
            "-c".into(),
            "case \"${HOSTNAME:-$(hostname)}\" in *-0) ;; *) unset MONGO_INITDB_ROOT_USERNAME MONGO_INITDB_ROOT_PASSWORD ;; esac; \
             exec docker-entrypoint.sh \"$@\""
                .into(),
            "mongod-entrypoint".into(),
        ]);
        args.insert(0, "mongod".into());
    }
    mongod.args = Some(args);
    mongod.ports = Some(vec![ContainerPort {
        name: Some("mongodb".into()),
        container_port: 27017,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }]);
    mongod.env = Some(vec![
        env_from_secret(
            "MONGO_INITDB_ROOT_USERNAME",
            &secrets.mongodb_root,
            "username",
        ),
        env_from_secret(
            "MONGO_INITDB_ROOT_PASSWORD",
            &secrets.mongodb_root,
            "password",
        ),
    ]);
    mongod.resources = Some(store.resources.clone());
    mongod.volume_mounts = Some(mounts);
    mongod.readiness_probe = Some(tcp_probe(10, 3));
    mongod.liveness_probe = Some(tcp_probe(20, 6));
    stores::statefulset(
        plan,
        store,
        StorePod {
            component: Component::MongoDb,
            service_name: plan.child_name(Component::MongoDb),
            init_containers,
            container: mongod,
            volumes,
            config_hash: hashes.mongodb.clone(),
            termination_grace_period_seconds: None,
        },
    )
}

/// The init script (mongosh, JavaScript). Idempotent: it waits for every member, initiates the
/// replica set unless it already is, waits for a primary, then creates the services' user, or
/// resets its password to the Secret's.
const INIT_SCRIPT: &str = r#"
const env = (k) => process.env[k];
const members = env("MEMBERS").split(",");
const replicaSet = env("REPLICA_SET");
// Waits until a member answers (no login: before the replica set exists only the first member
// has users).
function waitFor(host) {
  for (let i = 0; ; i++) {
    try {
      new Mongo(`mongodb://${host}/?directConnection=true`).getDB("admin").runCommand({ hello: 1 });
      return;
    } catch (e) {
      if (i % 15 === 0) print(`waiting for ${host}: ${e.message}`);
      sleep(2000);
    }
  }
}
function login(host) {
  waitFor(host);
  const admin = new Mongo(`mongodb://${host}/?directConnection=true`).getDB("admin");
  try {
    admin.auth(env("ROOT_USERNAME"), env("ROOT_PASSWORD"));
  } catch (e) {
    print(`the credentials in Secret ${env("ROOT_SECRET")} do not open ${host} (${e.message}): ` +
      "its volume was initialised with other ones, by an earlier cluster? Restore that Secret.");
    quit(2);
  }
  return admin;
}
members.forEach(waitFor);
let admin = login(members[0]);
if (replicaSet) {
  const status = admin.runCommand({ replSetGetStatus: 1 });
  if (status.ok !== 1 && status.codeName === "NotYetInitialized") {
    print(`initiating replica set ${replicaSet}`);
    const r = admin.runCommand({ replSetInitiate: {
      _id: replicaSet,
      members: members.map((host, i) => ({ _id: i, host })),
    } });
    if (r.ok !== 1 && r.codeName !== "AlreadyInitialized") throw new Error(r.errmsg);
  }
  for (;;) {
    const hello = admin.runCommand({ hello: 1 });
    if (hello.primary) {
      admin = login(hello.primary);
      if (admin.runCommand({ hello: 1 }).isWritablePrimary) break;
    }
    sleep(1000);
  }
}
const user = env("APP_USERNAME");
const roles = [{ role: "readWrite", db: "auth" }, { role: "readWrite", db: "chat" }];
if (admin.getUser(user)) {
  admin.updateUser(user, { pwd: env("APP_PASSWORD"), roles });
  print(`updated user ${user}`);
} else {
  admin.createUser({ user, pwd: env("APP_PASSWORD"), roles });
  print(`created user ${user}`);
}
"#;

/// The init Job. A Job's template is immutable, so its name carries a hash of what it does: a
/// change of members makes a new Job (and the reconciler removes the old one).
pub fn init_job(plan: &Plan, store: &ProvisionedStore, hashes: &SecretHashes) -> Job {
    let secrets = plan.secret_names();
    let members = plan.mongodb_members().join(",");
    let replica_set = if store.replicas > 1 { REPLICA_SET } else { "" };
    let mut mongosh = container("init", &store.image);
    mongosh.command = Some(vec![
        "mongosh".into(),
        "--quiet".into(),
        "--nodb".into(),
        "--eval".into(),
        INIT_SCRIPT.trim().into(),
    ]);
    mongosh.env = Some(vec![
        env("MEMBERS", members),
        env("REPLICA_SET", replica_set),
        env("ROOT_SECRET", secrets.mongodb_root.clone()),
        env_from_secret("ROOT_USERNAME", &secrets.mongodb_root, "username"),
        env_from_secret("ROOT_PASSWORD", &secrets.mongodb_root, "password"),
        env_from_secret("APP_USERNAME", &secrets.mongodb_app, "username"),
        env_from_secret("APP_PASSWORD", &secrets.mongodb_app, "password"),
        // mongosh writes its history and logs under HOME.
        env("HOME", "/tmp"),
    ]);
    mongosh.volume_mounts = Some(vec![mount("tmp", "/tmp", false)]);
    let mut job = Job {
        metadata: meta(plan, String::new(), INIT),
        spec: Some(JobSpec {
            // Waiting for members happens inside one run; failures are real (wrong credentials),
            // so a few retries, then `Failed`, which the status reports as Degraded.
            backoff_limit: Some(4),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(super::labels(plan, INIT)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("OnFailure".into()),
                    containers: vec![mongosh],
                    security_context: Some(pod_security(STORE_UID)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    volumes: Some(vec![empty_dir("tmp")]),
                    node_selector: store.scheduling.node_selector.clone(),
                    tolerations: store.scheduling.tolerations.clone(),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    };
    // A Job's template is immutable: the name carries a hash of the whole spec (and of the
    // credentials it applies), so any change makes a new Job and the reconciler removes the
    // old one. A changed application password is applied by the new Job's `updateUser`.
    let spec = serde_json::to_string(&job.spec).unwrap_or_default();
    let digest = Sha256::digest(format!("{spec}|{}", hashes.mongodb));
    job.metadata.name = Some(format!("{}-{INIT}-{}", plan.name, hex(&digest[..4])));
    job
}
