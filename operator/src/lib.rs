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

/// The CustomResourceDefinition as YAML (what `crdgen` prints and `k8s/crd.yaml` holds).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    to_yaml(&crd::ChatCluster::crd())
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
