//! The operator's integration tests as one test binary: each binary links kube, k8s-openapi and
//! the engine, so one link instead of seven keeps CI's disk use and build time down.

mod alias_controller;
mod api_load;
mod argocd;
mod chart;
mod collection_controller;
mod common;
mod console;
mod crds;
mod dashboards;
mod leader;
mod process;
mod resources;
