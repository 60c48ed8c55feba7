//! NetworkPolicies of a collection (on unless the operator runs with `--network-policies=false`):
//! its writer's gRPC port (Ingest, Snapshot, Admin) is reachable only from the collection's own
//! pods (replicas fetching the snapshot, the Jobs), from the operator and from pods labelled
//! `quiver.dev/ingest: "true"` (an ETL pushing vectors); its replicas' gRPC port only from the
//! collection's own pods, the operator and pods labelled `quiver.dev/search: "true"`, in the
//! collection's namespace. The HTTP port (probes, /metrics) stays open. The token still guards
//! Ingest, Admin and Snapshot: the policies are the second line, and the only one for Search of
//! a collection without a `tokenSecret`.

use super::labels::{self, Role};
use super::{Defaults, GRPC_PORT, HTTP_PORT};
use crate::crd::VectorCollection;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// The label an ETL pod carries to push to writers in its namespace.
pub const INGEST_CLIENT: &str = "quiver.dev/ingest";
/// The label a client pod carries to search collections in its namespace.
pub const SEARCH_CLIENT: &str = "quiver.dev/search";
/// The label the namespace controller sets on every namespace (Kubernetes >= 1.22).
const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

fn matching(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()),
        ..Default::default()
    }
}

fn pods(pairs: &[(&str, &str)]) -> NetworkPolicyPeer {
    NetworkPolicyPeer { pod_selector: Some(matching(pairs)), ..Default::default() }
}

fn port(number: i32) -> Vec<NetworkPolicyPort> {
    vec![NetworkPolicyPort { port: Some(IntOrString::Int(number)), protocol: Some("TCP".into()), ..Default::default() }]
}

fn policy(vc: &VectorCollection, defaults: &Defaults, role: Role, client: &str) -> NetworkPolicy {
    let name = vc.name_any();
    let object = match role {
        Role::Writer => labels::writer_name(&name),
        _ => labels::replicas_name(&name),
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(matching(&[(NAMESPACE_NAME, &defaults.operator_namespace)])),
        pod_selector: Some(matching(&[(labels::NAME, "quiver-operator")])),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: labels::owned_meta(vc, object, role),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&name, role)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![pods(&[(labels::COLLECTION, &name)]), operator, pods(&[(client, "true")])]),
                    ports: Some(port(GRPC_PORT)),
                },
                // Probes and metrics scrapes come from anywhere.
                NetworkPolicyIngressRule { from: None, ports: Some(port(HTTP_PORT)) },
            ]),
            ..Default::default()
        }),
    }
}

pub fn writer(vc: &VectorCollection, defaults: &Defaults) -> NetworkPolicy {
    policy(vc, defaults, Role::Writer, INGEST_CLIENT)
}

pub fn replicas(vc: &VectorCollection, defaults: &Defaults) -> NetworkPolicy {
    policy(vc, defaults, Role::Replica, SEARCH_CLIENT)
}
