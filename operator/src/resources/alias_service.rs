//! The alias Service: named after the alias, selecting the replica pods of the collection it
//! currently serves. Flipping the alias is changing this selector.

use super::labels::{self, Role};
use crate::crd::CollectionAlias;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};

/// The alias Service selecting `collection`'s replicas.
pub fn service(ca: &CollectionAlias, collection: &str) -> Service {
    Service {
        metadata: labels::alias_meta(ca),
        spec: Some(ServiceSpec {
            selector: Some(labels::selector(collection, Role::Replica)),
            ports: Some(vec![super::writer::grpc_port()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
