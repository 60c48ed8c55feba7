//! quiver-operator: the `VectorCollection` and `CollectionAlias` custom resources, the
//! collection phase machine, the builders of the objects the operator owns, and the controllers.

pub mod crd;
pub mod crdgen;
pub mod phase;
pub mod resources;
