//! The last minutes of search latency, by the second, for the console's live chart: p50, p99
//! and QPS over time from the process's own calls (Prometheus keeps only totals since start;
//! a chart from them needs a Prometheus). Log-spaced buckets, so a percentile is the upper
//! bound of its bucket: within 19 % of the true value.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bucket `i` holds latencies up to `FIRST * GROWTH^i`; the last holds everything above.
const BUCKETS: usize = 72;
const FIRST_SECS: f64 = 10e-6;
const GROWTH: f64 = 1.189_207_115; // 2^(1/4)
/// Seconds kept.
const KEPT: usize = 300;

#[derive(Debug, Clone)]
struct Second {
    at: u64,
    counts: [u32; BUCKETS],
}

/// Search calls of the last [`KEPT`] seconds.
#[derive(Debug, Default)]
pub struct RecentLatency {
    seconds: Mutex<VecDeque<Second>>,
}

/// One point of the chart: the calls of `seconds` seconds ending at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Unix seconds at the end of the interval.
    pub at: u64,
    pub qps: f64,
    /// None when the interval had no call.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl RecentLatency {
    pub fn record(&self, elapsed: Duration) {
        self.record_at(now(), elapsed);
    }

    fn record_at(&self, at: u64, elapsed: Duration) {
        let bucket = bucket(elapsed.as_secs_f64());
        let mut seconds = self.seconds.lock().expect("latency lock");
        match seconds.back_mut() {
            Some(last) if last.at == at => last.counts[bucket] += 1,
            // A clock stepped back lands in the latest second rather than out of order.
            Some(last) if last.at > at => last.counts[bucket] += 1,
            _ => {
                let mut counts = [0; BUCKETS];
                counts[bucket] = 1;
                seconds.push_back(Second { at, counts });
                while seconds.len() > KEPT {
                    seconds.pop_front();
                }
            }
        }
    }

    /// The last `span` seconds in points of `step` seconds each, oldest first, ending with
    /// the last whole second (the current one is still filling: it would read as a drop in QPS).
    pub fn points(&self, span: u64, step: u64) -> Vec<Point> {
        self.points_at(now().saturating_sub(1), span, step)
    }

    fn points_at(&self, end: u64, span: u64, step: u64) -> Vec<Point> {
        let step = step.max(1);
        let intervals = span.div_ceil(step).max(1);
        let seconds = self.seconds.lock().expect("latency lock");
        (0..intervals)
            .rev()
            .map(|back| {
                let last = end - back * step;
                let mut counts = [0u64; BUCKETS];
                for s in seconds.iter().filter(|s| s.at + step > last && s.at <= last) {
                    for (sum, n) in counts.iter_mut().zip(s.counts) {
                        *sum += u64::from(n);
                    }
                }
                let total: u64 = counts.iter().sum();
                Point {
                    at: last,
                    qps: total as f64 / step as f64,
                    p50_ms: quantile(&counts, total, 0.50),
                    p99_ms: quantile(&counts, total, 0.99),
                }
            })
            .collect()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn bucket(secs: f64) -> usize {
    if secs <= FIRST_SECS {
        return 0;
    }
    ((secs / FIRST_SECS).ln() / GROWTH.ln()).ceil().min((BUCKETS - 1) as f64) as usize
}

/// The upper bound, in ms, of the bucket holding the nearest-rank `q` quantile.
fn quantile(counts: &[u64; BUCKETS], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    let i = counts.iter().position(|&n| {
        seen += n;
        seen >= rank
    })?;
    Some(FIRST_SECS * GROWTH.powi(i as i32) * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_hold_the_calls_of_their_interval_with_percentiles_within_a_bucket() {
        let recent = RecentLatency::default();
        // 98 calls of 1 ms and 2 of 20 ms in second 100; 10 calls of 5 ms in second 104.
        for _ in 0..98 {
            recent.record_at(100, Duration::from_micros(1000));
        }
        recent.record_at(100, Duration::from_millis(20));
        recent.record_at(100, Duration::from_millis(20));
        for _ in 0..10 {
            recent.record_at(104, Duration::from_millis(5));
        }
        let points = recent.points_at(105, 10, 5);
        assert_eq!(points.len(), 2);
        let (first, second) = (points[0], points[1]);
        assert_eq!((first.at, first.qps), (100, 20.0), "100 calls over 5 s");
        let p50 = first.p50_ms.unwrap();
        assert!((1.0..1.19).contains(&p50), "p50 {p50}");
        let p99 = first.p99_ms.unwrap();
        assert!((20.0..23.8).contains(&p99), "p99 {p99}");
        assert_eq!((second.at, second.qps), (105, 2.0));
        assert!((5.0..5.95).contains(&second.p99_ms.unwrap()));
        // An interval without calls has no percentiles.
        let quiet = recent.points_at(200, 5, 5);
        assert_eq!(quiet, vec![Point { at: 200, qps: 0.0, p50_ms: None, p99_ms: None }]);
    }

    #[test]
    fn only_the_last_minutes_are_kept() {
        let recent = RecentLatency::default();
        for at in 0..(KEPT as u64 + 50) {
            recent.record_at(at, Duration::from_millis(1));
        }
        assert_eq!(recent.seconds.lock().unwrap().len(), KEPT);
    }
}
