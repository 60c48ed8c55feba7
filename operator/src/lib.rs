//! quiver-operator: the `VectorCollection` and `CollectionAlias` custom resources and the
//! collection phase machine. Controllers and resource builders come with issue 5.

pub mod crd;
pub mod crdgen;
pub mod phase;
