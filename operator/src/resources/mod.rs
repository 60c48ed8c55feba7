//! Resource builders: pure functions from a `VectorCollection` / `CollectionAlias` to the
//! Kubernetes objects the operator applies. No I/O here, so every object is testable as YAML.

pub mod alias_service;
pub mod autoscaling;
pub mod jobs;
pub mod labels;
pub mod network;
pub mod pod;
pub mod replicas;
pub mod token;
pub mod writer;

use crate::crd::VectorCollection;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

/// gRPC port of every role (Search, Admin, Ingest, Snapshot, health).
pub const GRPC_PORT: i32 = 7700;
/// HTTP port of every serving role (/metrics, /livez, /readyz).
pub const HTTP_PORT: i32 = 9090;

/// Operator-wide settings the builders need but the collection does not carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// The quiver image used when `spec.image` is not set.
    pub image: String,
    /// Whether each collection gets its NetworkPolicies.
    pub network_policies: bool,
    /// The operator's namespace: its pods reach writers and replicas through the policies.
    pub operator_namespace: String,
    /// Whether Ready rebuilt collections that no alias serves or targets go to zero replicas.
    pub scale_down_unserved: bool,
    /// Whether a collection may ask for the node's identity (`ambientCredentials`): off unless
    /// the cluster's admin turns it on, since every collection's author would get the node's
    /// access to object storage.
    pub allow_ambient_credentials: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            image: format!("ghcr.io/quiver-dev/quiver:{}", env!("CARGO_PKG_VERSION")),
            network_policies: true,
            operator_namespace: "quiver-system".into(),
            scale_down_unserved: true,
            allow_ambient_credentials: false,
        }
    }
}

/// Every object the operator owns for one collection, as it would be applied once the whole
/// pipeline runs (the controller applies the replica objects only after the writer sealed, and
/// the Jobs one after the other).
#[derive(Debug, Clone)]
pub struct CollectionObjects {
    pub writer: StatefulSet,
    pub writer_service: Service,
    /// Empty when the operator runs without NetworkPolicies.
    pub network_policies: Vec<NetworkPolicy>,
    pub replicas: Deployment,
    pub replicas_service: Service,
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    pub disruption_budget: PodDisruptionBudget,
    pub warmup: Job,
    pub verify: Job,
}

impl CollectionObjects {
    pub fn render(vc: &VectorCollection, defaults: &Defaults) -> CollectionObjects {
        CollectionObjects {
            writer: writer::stateful_set(vc, defaults),
            writer_service: writer::service(vc),
            network_policies: match defaults.network_policies {
                true => vec![network::writer(vc, defaults), network::replicas(vc, defaults)],
                false => Vec::new(),
            },
            replicas: replicas::deployment(vc, defaults, vc.status.as_ref().and_then(|s| s.sealed_sha256.as_deref())),
            replicas_service: replicas::service(vc),
            autoscaler: autoscaling::autoscaler(vc),
            disruption_budget: replicas::disruption_budget(vc),
            warmup: jobs::warmup(vc, defaults),
            verify: jobs::verify(vc, defaults),
        }
    }

    /// Each pod template with its role: the commands the pods run (the local e2e runs them as
    /// processes).
    pub fn pod_templates(&self) -> Vec<(labels::Role, &PodTemplateSpec)> {
        fn template(spec: Option<&PodTemplateSpec>) -> &PodTemplateSpec {
            spec.expect("builders always set a spec")
        }
        vec![
            (labels::Role::Writer, template(self.writer.spec.as_ref().map(|s| &s.template))),
            (labels::Role::Replica, template(self.replicas.spec.as_ref().map(|s| &s.template))),
            (labels::Role::Warmup, template(self.warmup.spec.as_ref().map(|s| &s.template))),
            (labels::Role::Verify, template(self.verify.spec.as_ref().map(|s| &s.template))),
        ]
    }

    /// All objects as YAML documents, in apply order.
    pub fn to_yaml(&self) -> Vec<serde_yaml::Value> {
        let v = |o: &dyn erased::Yaml| o.yaml();
        let mut docs: Vec<serde_yaml::Value> = self.network_policies.iter().map(|p| v(p)).collect();
        docs.extend([v(&self.writer_service), v(&self.writer), v(&self.replicas_service), v(&self.replicas)]);
        if let Some(hpa) = &self.autoscaler {
            docs.push(v(hpa));
        }
        docs.extend([v(&self.disruption_budget), v(&self.warmup), v(&self.verify)]);
        docs
    }
}

mod erased {
    /// Object-safe serialization to a YAML value, so mixed kinds fit in one list.
    pub trait Yaml {
        fn yaml(&self) -> serde_yaml::Value;
    }
    impl<T: serde::Serialize> Yaml for T {
        fn yaml(&self) -> serde_yaml::Value {
            serde_yaml::to_value(self).expect("Kubernetes objects serialize")
        }
    }
}
