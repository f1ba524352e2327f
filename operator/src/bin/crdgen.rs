//! Prints the ChatCluster CustomResourceDefinition (`cargo run -p chat-operator --bin crdgen`).
//! `k8s/crd.yaml` is this output; a test fails when they drift apart.

fn main() {
    print!("{}", chat_operator::crd_yaml());
}
