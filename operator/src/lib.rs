//! quiver-operator: the `VectorCollection` and `CollectionAlias` custom resources. The
//! controllers, resource builders and phase machine come with issue 5.

pub mod crd;
pub mod crdgen;
