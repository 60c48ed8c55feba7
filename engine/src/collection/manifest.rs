//! The manifest: what a collection is, stored inside its LMDB environment.

use crate::types::Metric;
use crate::types::{IndexParams, SearchDefaults};
use serde::{Deserialize, Serialize};

/// Bumped when the on-disk layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub dimensions: usize,
    pub metric: Metric,
    /// Partition names; the position is the arroy/hannoy index number (`u16`).
    pub partitions: Vec<String>,
    pub count: u64,
    /// Rows per stored vector chunk (a power of two).
    pub chunk_rows: u32,
    pub index: IndexParams,
    pub search: SearchDefaults,
    pub source: SourceInfo,
    /// Seconds since the Unix epoch when the collection was sealed.
    pub created_at: u64,
    pub timings: BuildTimings,
    /// How the default search setting was chosen (absent when it was given explicitly).
    pub calibration: Option<crate::types::Calibration>,
    /// Set by the last write transaction of a build, after the index and the calibration are
    /// committed ([`crate::collection::builder::Staged::seal`]): only a sealed collection opens.
    pub sealed: bool,
}

/// Where the vectors came from: lets a verifier and an operator tell two builds apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub uri: String,
    /// `sha256:<hex>` of the bytes read from the source.
    pub fingerprint: String,
    pub rows_read: u64,
    /// Rows of each row group, for a source that has them (Parquet), as its footer announced
    /// them; their sum is `rows_read`, or the import failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub row_groups: Vec<u64>,
    /// The files of a source of several (a pattern or a prefix), in the order read, with their
    /// rows; their sum is `rows_read`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::import::SourceFile>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildTimings {
    pub import_s: f64,
    /// Building the ANN index.
    pub build_s: f64,
    /// Choosing the default search setting (see `calibrate`).
    #[serde(default)]
    pub calibrate_s: f64,
}

impl Manifest {
    pub fn partition_index(&self, name: &str) -> Option<u16> {
        self.partitions.iter().position(|p| p == name).map(|i| i as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Strategy as SearchStrategy;
    use proptest::prelude::*;

    fn metric() -> impl Strategy<Value = Metric> {
        prop::sample::select(Metric::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn manifest_round_trips_through_json(
            name in "[a-z][a-z0-9-]{0,20}",
            dimensions in 1usize..4096,
            metric in metric(),
            partitions in prop::collection::vec("[a-z]{1,8}", 1..5),
            count in any::<u32>(),
            n_trees in prop::option::of(1usize..500),
            quality in 1usize..5000,
        ) {
            let m = Manifest {
                format_version: FORMAT_VERSION,
                name,
                dimensions,
                metric,
                partitions,
                count: count as u64,
                chunk_rows: 1024,
                index: IndexParams::arroy(n_trees),
                search: SearchDefaults { strategy: SearchStrategy::SignScan, quality, probes: quality % 7 },
                source: SourceInfo { uri: "file:///x.npy".into(), fingerprint: "sha256:00".into(), rows_read: 3, row_groups: Vec::new(), files: Vec::new() },
                created_at: 1_700_000_000,
                timings: BuildTimings { import_s: 1.5, build_s: 2.0, calibrate_s: 0.5 },
                calibration: None,
                sealed: true,
            };
            let json = serde_json::to_string(&m).unwrap();
            let back: Manifest = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, m);
        }
    }
}
