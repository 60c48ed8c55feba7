//! quiver-operator: the `VectorCollection` and `CollectionAlias` custom resources, the
//! collection phase machine, the builders of the objects the operator owns, and the controllers.

pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod engine;
pub mod metrics;
pub mod phase;
pub mod rebuild;
pub mod resources;
pub mod run;
