//! Plain data, the leaves of the engine: the settings types it shares with the operator
//! (from `quiver-api`) and its own records (a calibration). Nothing here depends on any other
//! module of the engine.

pub use quiver_api::types::{
    ArroyVectors, Backend, Gate, IndexParams, Metric, SearchDefaults, Shortlist, Strategy, VerifyReport,
};
use serde::{Deserialize, Serialize};

/// The search setting chosen at seal time for the collection's target recall, and what was
/// measured to choose it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub target_recall: f64,
    pub k: usize,
    pub strategy: Strategy,
    pub quality: usize,
    /// Coarse lists probed (0: all).
    #[serde(default)]
    pub probes: usize,
    pub recall: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub queries: usize,
    /// For each strategy (and probe count), the cheapest setting that met the target, and its
    /// cost; absent when its settings cost more than twice the fastest found before reaching it.
    pub considered: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub strategy: Strategy,
    pub quality: usize,
    #[serde(default)]
    pub probes: usize,
    pub recall: f64,
    pub p50_ms: f64,
}

impl Calibration {
    pub fn defaults(&self) -> SearchDefaults {
        SearchDefaults { strategy: self.strategy, quality: self.quality, probes: self.probes }
    }
}
