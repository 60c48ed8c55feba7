//! Names, labels and owner references shared by every object of a collection or alias.

use crate::crd::{CollectionAlias, VectorCollection};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const COLLECTION: &str = "quiver.dev/collection";
pub const ROLE: &str = "quiver.dev/role";
pub const ALIAS: &str = "quiver.dev/alias";
/// Marks a collection an alias serves: `served-by.quiver.dev/<alias>: current` (or `previous`,
/// kept for an instant rollback). The chart's ValidatingAdmissionPolicy refuses to delete a
/// collection that carries one, before a foreground or cascading delete can remove its pods.
pub const SERVED_BY_PREFIX: &str = "served-by.quiver.dev/";
/// The spec generation an object was rendered for (Jobs run once per generation).
pub const GENERATION: &str = "quiver.dev/generation";

/// Annotate a Failed collection with a new value of this to run its pipeline again:
/// `kubectl annotate vc products-v2 quiver.dev/retry="$(date +%s)" --overwrite`.
pub const RETRY: &str = "quiver.dev/retry";
/// The `quiver.dev/retry` value the operator acted on.
pub const RETRIED: &str = "quiver.dev/retried";
/// On the replicas' Deployment: the collection's [`RETRIED`] value (empty before any retry)
/// when the Deployment was pinned to a snapshot. A retry clears the pin, so a pin made before
/// the last retry is not the collection's any more.
pub const PINNED_AT_RETRY: &str = "quiver.dev/pinned-at-retry";

/// The server-side apply field manager of every object the operator writes.
pub const FIELD_MANAGER: &str = "quiver-operator";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Writer,
    Replica,
    Warmup,
    Verify,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Replica => "replica",
            Role::Warmup => "warmup",
            Role::Verify => "verify",
        }
    }
}

pub fn writer_name(collection: &str) -> String {
    format!("{collection}-writer")
}

pub fn replicas_name(collection: &str) -> String {
    format!("{collection}-replicas")
}

/// Jobs carry the generation in their name: a spec change runs them again instead of
/// reusing the result of an older spec.
pub fn job_name(collection: &str, role: Role, generation: i64) -> String {
    format!("{collection}-{}-g{generation}", role.as_str())
}

/// The gRPC URL of the writer (headless Service: it resolves to the pod once it is ready).
pub fn writer_url(collection: &str) -> String {
    format!("http://{}:{}", writer_name(collection), super::GRPC_PORT)
}

pub fn replicas_url(collection: &str) -> String {
    format!("http://{}:{}", replicas_name(collection), super::GRPC_PORT)
}

/// The label that marks a collection as served by `alias`.
pub fn served_by(alias: &str) -> String {
    format!("{SERVED_BY_PREFIX}{alias}")
}

/// What selects a role's pods of a collection (Services, PDB, alias).
pub fn selector(collection: &str, role: Role) -> BTreeMap<String, String> {
    BTreeMap::from([(COLLECTION.to_string(), collection.to_string()), (ROLE.to_string(), role.as_str().to_string())])
}

/// Every label of a collection's objects and pods.
pub fn labels(collection: &str, role: Role) -> BTreeMap<String, String> {
    let mut labels = selector(collection, role);
    labels.insert(NAME.into(), "quiver".into());
    labels.insert(INSTANCE.into(), collection.into());
    labels.insert(COMPONENT.into(), role.as_str().into());
    labels.insert(MANAGED_BY.into(), FIELD_MANAGER.into());
    labels
}

/// Metadata of an object owned (and garbage-collected with) the collection.
pub fn owned_meta(vc: &VectorCollection, name: String, role: Role) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: vc.namespace(),
        labels: Some(labels(&vc.name_any(), role)),
        owner_references: Some(vec![owner(vc)]),
        ..Default::default()
    }
}

pub fn alias_meta(ca: &CollectionAlias) -> ObjectMeta {
    ObjectMeta {
        name: Some(ca.name_any()),
        namespace: ca.namespace(),
        labels: Some(BTreeMap::from([
            (NAME.to_string(), "quiver".to_string()),
            (ALIAS.to_string(), ca.name_any()),
            (MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
        ])),
        owner_references: Some(vec![owner(ca)]),
        ..Default::default()
    }
}

/// A controller owner reference. Objects read from the API server always carry the name and
/// uid it needs; the builders are only called with such objects.
pub fn owner<K: Resource<DynamicType = ()>>(object: &K) -> OwnerReference {
    object.controller_owner_ref(&()).expect("an object read from the API server has a name and a uid")
}
