//! Generated credentials: which Secrets a plan needs, their first contents, and the hashes of
//! what the pods read.
//!
//! A generated Secret is created once (a plain create: if it exists, whoever made it wins) and
//! its data is never overwritten, so the passwords a store was initialised with stay valid.
//! Under `deletionPolicy: Retain` (the default) it also outlives the ChatCluster, as the
//! volumes do: the data and the credentials that open it are kept together. Values are
//! alphanumeric: they go into `mongodb://` and `amqp://` URIs unescaped.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};

use crate::build::{SecretHashes, labels, meta};
use crate::crd::DeletionPolicy;
use crate::plan::{Component, Plan, Store};

/// A Secret the plan needs that the operator generates if it is missing.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub name: String,
    /// Which component it belongs to (its `component` label).
    pub component: &'static str,
    /// Keys and how long a random value each gets (`None`: a fixed value).
    pub keys: Vec<(&'static str, Value)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Random(usize),
    Fixed(&'static str),
}

/// The Secrets the plan needs the operator to generate.
pub fn generated(plan: &Plan) -> Vec<Generated> {
    let names = plan.secret_names();
    let credentials = |user: &'static str| {
        vec![
            ("username", Value::Fixed(user)),
            ("password", Value::Random(32)),
        ]
    };
    let mut out = Vec::new();
    if plan.jwt.generated {
        // 48 random alphanumerics: about 285 bits, above HS256's 256.
        out.push(Generated {
            name: names.jwt,
            component: "jwt",
            keys: vec![("secret", Value::Random(48))],
        });
    }
    if let Store::Provisioned(store) = &plan.mongodb {
        out.push(Generated {
            name: names.mongodb_root,
            component: "mongodb",
            keys: credentials("root"),
        });
        out.push(Generated {
            name: names.mongodb_app,
            component: "mongodb",
            keys: credentials("chat"),
        });
        if store.replicas > 1 {
            // A keyfile holds 6 to 1024 base64 characters; alphanumerics are a subset.
            out.push(Generated {
                name: names.mongodb_keyfile,
                component: "mongodb",
                keys: vec![("keyfile", Value::Random(756))],
            });
        }
    }
    if let Store::Provisioned(store) = &plan.rabbitmq {
        out.push(Generated {
            name: names.rabbitmq_user,
            component: "rabbitmq",
            keys: credentials("chat"),
        });
        if store.replicas > 1 {
            out.push(Generated {
                name: names.rabbitmq_cookie,
                component: "rabbitmq",
                keys: vec![("cookie", Value::Random(64))],
            });
        }
    }
    out
}

/// Owner references a generated Secret should carry: the ChatCluster's controller reference
/// under `deletionPolicy: Delete` (it goes with the cluster), none of ours under `Retain` (it
/// stays with the retained volumes whose data it unlocks, and a ChatCluster re-created with the
/// same name finds it). Others' references are kept.
fn owner_references(plan: &Plan, existing: &[OwnerReference]) -> Vec<OwnerReference> {
    let mut refs: Vec<OwnerReference> = existing
        .iter()
        .filter(|r| !(r.kind == plan.owner.kind && r.name == plan.owner.name))
        .cloned()
        .collect();
    if plan.deletion_policy == DeletionPolicy::Delete {
        refs.push(plan.owner.clone());
    }
    refs
}

/// The merge patch that gives an existing generated Secret our labels and the owner references
/// the deletion policy asks for, or `None` when it has them.
pub fn metadata_patch(
    plan: &Plan,
    generated: &Generated,
    meta: &ObjectMeta,
) -> Option<serde_json::Value> {
    let want_labels = labels(plan, generated.component);
    let have_labels = meta.labels.clone().unwrap_or_default();
    let labels_ok = want_labels
        .iter()
        .all(|(k, v)| have_labels.get(k) == Some(v));
    let existing = meta.owner_references.clone().unwrap_or_default();
    let want_owners = owner_references(plan, &existing);
    if labels_ok && want_owners == existing {
        return None;
    }
    Some(serde_json::json!({
        "metadata": {"labels": want_labels, "ownerReferences": want_owners},
    }))
}

/// A new Secret with fresh random values.
pub fn new_secret(plan: &Plan, generated: &Generated) -> Secret {
    let mut rng = rand::rng();
    let data = generated
        .keys
        .iter()
        .map(|(key, value)| {
            let text = match value {
                Value::Random(len) => (&mut rng)
                    .sample_iter(Alphanumeric)
                    .take(*len)
                    .map(char::from)
                    .collect(),
                Value::Fixed(v) => (*v).to_owned(),
            };
            ((*key).to_owned(), ByteString(text.into_bytes()))
        })
        .collect();
    let mut metadata = meta(plan, generated.name.clone(), generated.component);
    metadata.owner_references = Some(owner_references(plan, &[]));
    Secret {
        metadata,
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The contents of the Secrets pods read, by Secret name (absent: not found).
pub type SecretContents = BTreeMap<String, BTreeMap<String, ByteString>>;

fn hash(parts: &[(&str, Option<&BTreeMap<String, ByteString>>)]) -> String {
    let mut digest = Sha256::new();
    for (name, data) in parts {
        digest.update(name.as_bytes());
        digest.update([0]);
        match data {
            Some(data) => {
                for (key, value) in *data {
                    digest.update(key.as_bytes());
                    digest.update([0]);
                    digest.update(&value.0);
                    digest.update([0]);
                }
            }
            None => digest.update(b"<missing>"),
        }
        digest.update([1]);
    }
    crate::build::hex(&digest.finalize()[..8])
}

/// Hashes of what each kind of pod reads: the JWT secret, MongoDB's and RabbitMQ's credentials
/// (or the external URIs). Only the keys pods read count for a user's Secret.
pub fn hashes(plan: &Plan, contents: &SecretContents) -> SecretHashes {
    let names = plan.secret_names();
    let pick = |name: &str, key: Option<&str>| -> (String, Option<BTreeMap<String, ByteString>>) {
        let data = contents.get(name).map(|data| match key {
            Some(key) => data
                .iter()
                .filter(|(k, _)| k.as_str() == key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => data.clone(),
        });
        (name.to_owned(), data)
    };
    let store = |component: Component, own: &[&str]| -> String {
        let picked: Vec<_> = match plan.store(component) {
            Store::External(r) => vec![pick(&r.name, Some(&r.key))],
            Store::Provisioned(_) => own.iter().map(|n| pick(n, None)).collect(),
        };
        let parts: Vec<_> = picked
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_ref()))
            .collect();
        hash(&parts)
    };
    let (jwt_name, jwt_data) = pick(&plan.jwt.secret_name, Some(&plan.jwt.key));
    SecretHashes {
        jwt: hash(&[(&jwt_name, jwt_data.as_ref())]),
        mongodb: store(
            Component::MongoDb,
            &[
                &names.mongodb_root,
                &names.mongodb_app,
                &names.mongodb_keyfile,
            ],
        ),
        rabbitmq: store(
            Component::RabbitMq,
            &[&names.rabbitmq_user, &names.rabbitmq_cookie],
        ),
    }
}

/// The Secrets a plan reads that the user provides: `(name, key)`.
pub fn referenced(plan: &Plan) -> Vec<(String, String)> {
    let mut refs = Vec::new();
    if !plan.jwt.generated {
        refs.push((plan.jwt.secret_name.clone(), plan.jwt.key.clone()));
    }
    for component in [Component::MongoDb, Component::RabbitMq] {
        if let Store::External(r) = plan.store(component) {
            refs.push((r.name.clone(), r.key.clone()));
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_plan;
    use serde_json::json;

    #[test]
    fn default_plan_generates_jwt_and_store_credentials_without_cluster_secrets() {
        let names: Vec<_> = generated(&test_plan(json!({})))
            .into_iter()
            .map(|g| g.name)
            .collect();
        assert_eq!(
            names,
            [
                "demo-jwt",
                "demo-mongodb-root",
                "demo-mongodb-app",
                "demo-rabbitmq-user"
            ]
        );
        let three = test_plan(
            json!({"mongodb": {"replicas": 3}, "rabbitmq": {"replicas": 3},
            "jwt": {"secretRef": {"name": "mine"}}}),
        );
        let names: Vec<_> = generated(&three).into_iter().map(|g| g.name).collect();
        assert!(names.contains(&"demo-mongodb-keyfile".to_owned()));
        assert!(names.contains(&"demo-rabbitmq-erlang-cookie".to_owned()));
        assert!(!names.contains(&"demo-jwt".to_owned()));
    }

    #[test]
    fn generated_secrets_are_owned_only_under_the_delete_policy() {
        let retain = test_plan(json!({}));
        let g = &generated(&retain)[0];
        assert_eq!(
            new_secret(&retain, g).metadata.owner_references,
            Some(vec![])
        );
        let delete = test_plan(json!({"deletionPolicy": "Delete"}));
        let owners = new_secret(&delete, g).metadata.owner_references.unwrap();
        assert_eq!(owners, vec![delete.owner.clone()]);
        // A Secret made by someone else: labelled, owned per policy, others' owners kept.
        let other = OwnerReference {
            kind: "Backup".into(),
            name: "nightly".into(),
            ..OwnerReference::default()
        };
        let found = ObjectMeta {
            owner_references: Some(vec![other.clone()]),
            ..ObjectMeta::default()
        };
        let patch = metadata_patch(&delete, g, &found).unwrap();
        assert_eq!(
            patch["metadata"]["ownerReferences"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            patch["metadata"]["labels"]["app.kubernetes.io/instance"],
            "demo"
        );
        // Already right: no patch.
        let right = new_secret(&delete, g).metadata;
        assert!(metadata_patch(&delete, g, &right).is_none());
        assert!(metadata_patch(&retain, g, &new_secret(&retain, g).metadata).is_none());
    }

    #[test]
    fn random_values_are_alphanumeric_of_the_asked_length_and_differ() {
        let plan = test_plan(json!({}));
        let jwt = &generated(&plan)[0];
        let a = new_secret(&plan, jwt).data.unwrap()["secret"].0.clone();
        let b = new_secret(&plan, jwt).data.unwrap()["secret"].0.clone();
        assert_eq!(a.len(), 48);
        assert!(a.iter().all(u8::is_ascii_alphanumeric));
        assert_ne!(a, b);
    }

    #[test]
    fn a_changed_secret_changes_only_the_hashes_of_its_readers() {
        let plan = test_plan(json!({}));
        let mut contents = SecretContents::new();
        for g in generated(&plan) {
            contents.insert(g.name.clone(), new_secret(&plan, &g).data.unwrap());
        }
        let before = hashes(&plan, &contents);
        contents
            .get_mut("demo-jwt")
            .unwrap()
            .insert("secret".into(), ByteString(b"x".to_vec()));
        let after = hashes(&plan, &contents);
        assert_ne!(before.jwt, after.jwt);
        assert_eq!(before.mongodb, after.mongodb);
        assert_eq!(before.rabbitmq, after.rabbitmq);
        // A user's Secret: only the referenced key counts.
        let plan = test_plan(json!({"jwt": {"secretRef": {"name": "mine", "key": "k"}}}));
        let mut contents = SecretContents::new();
        contents.insert(
            "mine".into(),
            BTreeMap::from([("k".into(), ByteString(b"s".to_vec()))]),
        );
        let one = hashes(&plan, &contents).jwt;
        contents
            .get_mut("mine")
            .unwrap()
            .insert("other".into(), ByteString(b"y".to_vec()));
        assert_eq!(one, hashes(&plan, &contents).jwt);
    }
}
