//! chat-operator: reconciles `ChatCluster` resources into MongoDB, RabbitMQ and the auth, chat
//! and websocket services.
//!
//! - [`crd`]: the resource and its schema (`crdgen` prints it).
//! - [`plan`]: a ChatCluster with every default resolved.
//! - [`build`]: pure builders, plan in, child objects out.
//! - [`secrets`]: generated credentials and the hashes that roll pods when they change.
//! - [`status`]: status and conditions from what the children report.
//! - [`controller`]: the reconciler and its controller.
//! - [`telemetry`]: metrics and the `/metrics` + `/healthz` server.
//!
//! The operator speaks only Kubernetes: it depends on none of the services' crates.

pub mod build;
pub mod controller;
pub mod crd;
pub mod plan;
pub mod secrets;
pub mod status;
pub mod telemetry;

#[cfg(test)]
mod fixtures;

/// Fields holding core Kubernetes types, whose generated schemas carry the whole upstream
/// documentation: 5 components × these made the CRD 387 KB, over the 256 KiB that client-side
/// `kubectl apply` can store in its last-applied annotation. `kubectl explain pod.spec.affinity`
/// documents them; our own fields keep their descriptions.
const CORE_TYPE_FIELDS: &[&str] = &[
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "resources",
    "env",
];

/// The ChatCluster CustomResourceDefinition, with the embedded core types' descriptions left
/// out (see [`CORE_TYPE_FIELDS`]).
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    fn strip_descriptions(schema: &mut serde_json::Value) {
        match schema {
            serde_json::Value::Object(map) => {
                map.remove("description");
                map.values_mut().for_each(strip_descriptions);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
            _ => {}
        }
    }
    fn walk(schema: &mut serde_json::Value) {
        let Some(map) = schema.as_object_mut() else {
            return;
        };
        if let Some(serde_json::Value::Object(properties)) = map.get_mut("properties") {
            for (name, property) in properties.iter_mut() {
                if CORE_TYPE_FIELDS.contains(&name.as_str()) {
                    let own = property.get("description").cloned();
                    strip_descriptions(property);
                    if let (Some(own), Some(obj)) = (own, property.as_object_mut()) {
                        obj.insert("description".into(), own);
                    }
                } else {
                    walk(property);
                }
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(inner) = map.get_mut(key) {
                walk(inner);
            }
        }
    }
    // Converting between a CRD and JSON cannot fail: it is plain data either way.
    let mut value = serde_json::to_value(crd::ChatCluster::crd()).expect("CRD serializes");
    if let Some(versions) = value["spec"]["versions"].as_array_mut() {
        for version in versions {
            walk(&mut version["schema"]["openAPIV3Schema"]);
        }
    }
    serde_json::from_value(value).expect("CRD deserializes")
}

/// The CustomResourceDefinition as YAML (what `crdgen` prints and `k8s/crd.yaml` holds).
pub fn crd_yaml() -> String {
    to_yaml(&crd())
}

/// YAML with every mapping's keys sorted. serde_json keeps insertion order when any crate in
/// the build enables its `preserve_order` feature, so without sorting the same object would
/// print differently in a workspace build than in this crate's own.
pub fn to_yaml(value: &impl serde::Serialize) -> String {
    fn sorted(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
    // Serializing Kubernetes objects cannot fail: every map key is a string.
    let value = serde_json::to_value(value).expect("serializes to JSON");
    serde_yaml::to_string(&sorted(value)).expect("serializes to YAML")
}
