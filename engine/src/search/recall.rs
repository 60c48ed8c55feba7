//! Recall, and the queries it is measured with: calibration chooses a setting by it, the
//! verification gate checks it.

use crate::collection::Collection;
use crate::datagen::gaussian;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::HashSet;

/// Queries near stored vectors: a sampled vector plus Gaussian noise of a quarter of its
/// per-dimension RMS, so a query is not trivially its own nearest neighbour.
pub fn sample_queries(collection: &Collection, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let count = collection.len() as u32;
    (0..n)
        .map(|_| {
            let v = collection.vector(rng.random_range(0..count));
            let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            v.iter().map(|x| x + 0.25 * rms * gaussian(&mut rng)).collect()
        })
        .collect()
}

/// Recall@k of `found` ids against `truth` ids.
pub fn recall(found: &[u64], truth: &[u64]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let truth: HashSet<u64> = truth.iter().copied().collect();
    found.iter().filter(|id| truth.contains(id)).count() as f64 / truth.len() as f64
}
