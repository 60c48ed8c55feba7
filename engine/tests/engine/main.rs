//! The engine's integration tests as one test binary (one link instead of five keeps CI's disk
//! use and build time down).

mod cli;
mod collection;
mod console;
mod crash;
mod format;
mod grpc;
mod layers;
mod object_store;
mod parquet;
mod snapshot;
mod source_database;
mod sources;
