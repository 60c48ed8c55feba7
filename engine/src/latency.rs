//! Latency samples and their percentiles (nearest-rank).

use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples_ms: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub qps: f64,
    pub count: usize,
}

impl Latencies {
    pub fn record(&mut self, elapsed: Duration) {
        self.samples_ms.push(elapsed.as_secs_f64() * 1e3);
    }

    pub fn len(&self) -> usize {
        self.samples_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples_ms.is_empty()
    }

    pub fn percentile(&self, p: f64) -> f64 {
        if self.samples_ms.is_empty() {
            return 0.0;
        }
        let mut sorted = self.samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    /// Percentiles, and throughput as if the samples ran back to back.
    pub fn summary(&self) -> Summary {
        let total_s: f64 = self.samples_ms.iter().sum::<f64>() / 1e3;
        Summary {
            p50_ms: self.percentile(50.0),
            p99_ms: self.percentile(99.0),
            qps: if total_s > 0.0 { self.samples_ms.len() as f64 / total_s } else { 0.0 },
            count: self.samples_ms.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile(50.0), 50.0);
        assert_eq!(l.percentile(99.0), 99.0);
        assert_eq!(l.percentile(100.0), 100.0);
        assert!((l.summary().qps - 100.0 / 5.05).abs() < 1e-9);
    }
}
