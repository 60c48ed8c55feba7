//! Progress a person can follow while a snapshot arrives: bytes held of the total, the rate of
//! this attempt and the time left, logged at a steady interval (not per chunk: a 10 GiB restore
//! would otherwise write thousands of lines, and a stalled one none).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How often a replica logs its progress unless told otherwise (`--fetch-progress-interval-secs`).
pub const EVERY: Duration = Duration::from_secs(10);

/// Logs one attempt's progress from a thread of its own every interval, for as long as this
/// value lives: by the clock, not per chunk, so a stalled source shows as a falling rate
/// rather than silence, and a 4 MiB chunk is not one line.
#[derive(Debug)]
pub struct Progress {
    held: Arc<AtomicU64>,
    /// Dropped with this value: the logging thread wakes and ends.
    _stop: Sender<()>,
}

impl Progress {
    /// Starts logging "fetching `what`: …" every `every`, from `first` bytes held of `total`.
    pub fn start(what: String, first: u64, total: u64, every: Duration) -> Progress {
        let held = Arc::new(AtomicU64::new(first));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let line = Line { what, first, total, started: Instant::now() };
        let watched = held.clone();
        std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                tracing::info!("{}", line.at(watched.load(Ordering::Relaxed), line.started.elapsed()));
            }
        });
        Progress { held, _stop: stop }
    }

    /// Bytes held now.
    pub fn set(&self, held: u64) {
        self.held.store(held, Ordering::Relaxed);
    }
}

/// What one progress line says about an attempt.
struct Line {
    /// What arrives from where: "the snapshot of v1 from s3://b/p".
    what: String,
    /// Bytes held when this attempt started (a resumed download counts only its own).
    first: u64,
    total: u64,
    started: Instant,
}

impl Line {
    /// "fetching the snapshot of v1 from A: 12.0 of 40.0 MiB (30%), 4.0 MiB/s, about 7 s left".
    fn at(&self, held: u64, elapsed: Duration) -> String {
        const MIB: f64 = (1 << 20) as f64;
        let rate = held.saturating_sub(self.first) as f64 / elapsed.as_secs_f64().max(1e-3);
        let left = self.total.saturating_sub(held);
        let eta = if rate > 0.0 { format!("about {:.0} s left", left as f64 / rate) } else { "no bytes yet".into() };
        format!(
            "fetching {}: {:.1} of {:.1} MiB ({:.0}%), {:.1} MiB/s, {eta}",
            self.what,
            held as f64 / MIB,
            self.total as f64 / MIB,
            100.0 * held as f64 / self.total.max(1) as f64,
            rate / MIB,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_bytes_held_the_rate_of_this_attempt_and_the_time_left() {
        // Resumed at 10 MiB of 40: 2 MiB more in 1 s is 2 MiB/s, 28 MiB left is 14 s.
        let line = Line {
            what: "the snapshot of v1 from A".into(),
            first: 10 << 20,
            total: 40 << 20,
            started: Instant::now(),
        };
        assert_eq!(
            line.at(12 << 20, Duration::from_secs(1)),
            "fetching the snapshot of v1 from A: 12.0 of 40.0 MiB (30%), 2.0 MiB/s, about 14 s left"
        );
        assert_eq!(
            line.at(10 << 20, Duration::from_secs(5)),
            "fetching the snapshot of v1 from A: 10.0 of 40.0 MiB (25%), 0.0 MiB/s, no bytes yet"
        );
    }
}
