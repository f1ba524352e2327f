//! Generated credentials: which Secrets a plan needs, their first contents, and the hashes of
//! what the pods read.
//!
//! A generated Secret is created once (a plain create: if it exists, whoever made it wins) and
//! never overwritten, so the passwords a store was initialised with stay valid. Values are
//! alphanumeric: they go into `mongodb://` and `amqp://` URIs unescaped.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};

use crate::build::{SecretHashes, meta};
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
    Secret {
        metadata: meta(plan, generated.name.clone(), generated.component),
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
