//! A flag that long work (verification, warm-up) checks between queries: the server sets it
//! when the call is gone (the client cancelled, or its deadline or the server's passed), so
//! the work stops and frees its slot instead of running for minutes for nobody.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag nobody fires, shared: work that cannot be abandoned (an in-process query, an
    /// inline served one) takes it without allocating one per call.
    pub fn never() -> &'static Cancel {
        static NEVER: std::sync::LazyLock<Cancel> = std::sync::LazyLock::new(Cancel::default);
        &NEVER
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// An error naming `what` once cancelled.
    pub fn check(&self, what: &str) -> Result<()> {
        match self.is_cancelled() {
            true => Err(Error::Cancelled { what: what.to_string() }),
            false => Ok(()),
        }
    }

    /// A guard that cancels when dropped: held by the call's future, it fires when the server
    /// drops that future (a cancelled or timed-out call) as well as when the call ends.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

pub struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_cancels_every_clone() {
        let cancel = Cancel::default();
        let work = cancel.clone();
        assert!(work.check("verify").is_ok());
        drop(cancel.on_drop());
        let e = work.check("verify").unwrap_err().to_string();
        assert!(e.contains("verify") && e.contains("cancelled"), "{e}");
    }
}
