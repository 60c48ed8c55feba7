//! quiver-operator: the `VectorCollection` and `CollectionAlias` custom resources, the
//! collection phase machine, the builders of the objects the operator owns, and the controllers.

pub mod console;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod metrics;
pub mod phase;
pub mod probes;
pub mod rebuild;
pub mod resources;
pub mod run;
pub mod state_metrics;
