//! Clustered synthetic vectors: what `quiver demo`, tests and the scale bench use when no real
//! embeddings are at hand. Real embedding sets are clustered and anisotropic, not uniform, so
//! the generator draws cluster centres, uneven cluster sizes, and per-cluster spreads.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Debug, Clone, Copy)]
pub struct Clustered {
    pub dims: usize,
    pub clusters: usize,
    /// Within-cluster standard deviation relative to the spread of the centres.
    pub spread: f32,
    /// Dimensions of each cluster's subspace.
    pub latent: usize,
    pub seed: u64,
}

impl Clustered {
    pub fn new(dims: usize, seed: u64) -> Self {
        Clustered { dims, clusters: 64, spread: 0.5, latent: 12, seed }
    }

    /// Cluster centres, each cluster's subspace basis (`dims x latent`), and the cumulative
    /// distribution of cluster popularity.
    fn clusters(&self) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let centres: Vec<f32> = (0..self.clusters * self.dims).map(|_| gaussian(&mut rng)).collect();
        let scale = 1.0 / (self.latent as f32).sqrt();
        let bases: Vec<f32> =
            (0..self.clusters * self.dims * self.latent).map(|_| scale * gaussian(&mut rng)).collect();
        // Zipf-like cluster popularity: a few large clusters, a long tail.
        let weights: Vec<f64> = (1..=self.clusters).map(|r| 1.0 / (r as f64).powf(0.8)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights.iter().map(|w| {
            acc += w / total;
            acc
        });
        (centres, bases, cdf.collect())
    }

    /// `n` row-major vectors drawn with `stream` (use different streams for base and queries).
    pub fn generate(&self, n: usize, stream: u64) -> Vec<f32> {
        let (centres, bases, cdf) = self.clusters();
        let (d, l) = (self.dims, self.latent);
        let mut z = vec![0.0f32; l];
        let mut rng = StdRng::seed_from_u64(self.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut out = Vec::with_capacity(n * self.dims);
        for _ in 0..n {
            let u: f64 = rng.random();
            let c = cdf.iter().position(|&p| u <= p).unwrap_or(self.clusters - 1);
            // Each cluster has its own spread, so some are tight and some diffuse.
            let spread = self.spread * (0.5 + (c % 7) as f32 / 6.0);
            z.iter_mut().for_each(|x| *x = gaussian(&mut rng));
            let basis = &bases[c * d * l..(c + 1) * d * l];
            for (i, m) in centres[c * d..(c + 1) * d].iter().enumerate() {
                let along: f32 = basis[i * l..(i + 1) * l].iter().zip(&z).map(|(b, z)| b * z).sum();
                out.push(m + spread * (along + 0.1 * gaussian(&mut rng)));
            }
        }
        out
    }
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_clustered() {
        let g = Clustered::new(16, 7);
        let a = g.generate(500, 1);
        assert_eq!(a, g.generate(500, 1));
        assert_ne!(a, g.generate(500, 2));
        // Clustered: the nearest other point is much closer than an average pair.
        let dist = |i: usize, j: usize| -> f32 {
            a[i * 16..(i + 1) * 16].iter().zip(&a[j * 16..(j + 1) * 16]).map(|(x, y)| (x - y) * (x - y)).sum()
        };
        let nearest: f32 = (1..500).map(|j| dist(0, j)).fold(f32::MAX, f32::min);
        let mean: f32 = (1..500).map(|j| dist(0, j)).sum::<f32>() / 499.0;
        assert!(nearest < mean / 4.0, "nearest {nearest} mean {mean}");
    }
}
