//! Flipping an alias: the one place an engine alias is flipped, and only to a collection with a
//! passing verification report of its own (every gate passed). The record and the swap of what
//! queries see happen under one LMDB write transaction; a failed commit restores the old target.

use super::Catalog;
use crate::error::{Error, Result};
use crate::search::searcher::Searcher;
use crate::types::VerifyReport;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Flips kept in an alias's history.
const HISTORY: usize = 10;

/// One flip of an alias, kept in its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    pub collection: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// What an alias serves, stored under its name in the catalog's `aliases` database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub collection: String,
    pub previous: Option<String>,
    /// Read also as `switched_at`, as records written before the field was renamed have it.
    #[serde(alias = "switched_at")]
    pub flipped_at: u64,
    /// Most recent first, at most ten.
    pub history: Vec<Flip>,
}

impl Catalog {
    /// Flips `alias` to `collection` if `report` is a passing verification of that very
    /// collection. On refusal nothing changes, and the error says why.
    pub fn flip(&self, alias: &str, collection: Arc<Searcher>, report: &VerifyReport) -> Result<AliasRecord> {
        crate::collection::builder::check_name(alias)?;
        let refuse = |reason: String| Error::Alias { alias: alias.to_string(), reason };
        if report.collection != collection.name() {
            return Err(refuse(format!(
                "the verification report is for {:?}, not {:?}",
                report.collection,
                collection.name()
            )));
        }
        if !report.passed {
            return Err(refuse(format!(
                "{:?} failed verification: {}",
                collection.name(),
                report.failures().join("; ")
            )));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut wtxn = self.env.write_txn()?;
        let old = self.db.get(&wtxn, alias)?;
        let mut history = old.as_ref().map(|r| r.history.clone()).unwrap_or_default();
        history.insert(0, Flip { collection: collection.name().to_string(), at: now });
        history.truncate(HISTORY);
        let record = AliasRecord {
            collection: collection.name().to_string(),
            previous: old.map(|r| r.collection).filter(|c| c != collection.name()),
            flipped_at: now,
            history,
        };
        self.db.put(&mut wtxn, alias, &record)?;
        // Swap what queries see while the write lock is held, then make it durable; a failed
        // commit restores the old target before returning the error.
        let mut live = self.live.write().expect("alias lock");
        let before = live.insert(alias.to_string(), collection);
        if let Err(e) = wtxn.commit() {
            match before {
                Some(b) => live.insert(alias.to_string(), b),
                None => live.remove(alias),
            };
            return Err(e.into());
        }
        drop(live);
        self.close_unserved();
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_the_rename_are_read() {
        let old =
            r#"{"collection": "v2", "previous": "v1", "switched_at": 7, "history": [{"collection": "v2", "at": 7}]}"#;
        let record: AliasRecord = serde_json::from_str(old).unwrap();
        assert_eq!((record.flipped_at, record.history[0].at), (7, 7));
        assert!(serde_json::to_string(&record).unwrap().contains(r#""flipped_at":7"#));
    }
}
