//! A collection as it is searched: the stored collection with its search state (the durable
//! index opened, the sign codes once built). Every role serves searchers; storage knows
//! nothing of them.

use super::strategy::PartitionSearch;
use super::strategy::durable::IndexSearch;
use super::strategy::exact::ExactScan;
use super::strategy::signscan::SignScan;
use crate::collection::Collection;
use crate::error::Result;
use crate::types::Strategy;
use std::path::Path;
use std::sync::OnceLock;

pub struct Searcher {
    collection: Collection,
    index: IndexSearch,
    signscan: OnceLock<SignScan>,
}

impl std::fmt::Debug for Searcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.collection.fmt(f)
    }
}

/// A searcher is its collection with search state beside it: everything a collection answers
/// (manifest, vectors, ids, members) is asked of the searcher directly.
impl std::ops::Deref for Searcher {
    type Target = Collection;

    fn deref(&self) -> &Collection {
        &self.collection
    }
}

impl Searcher {
    pub fn new(collection: Collection) -> Searcher {
        let index = IndexSearch::open(&collection);
        Searcher { collection, index, signscan: OnceLock::new() }
    }

    /// Opens a sealed collection directory for searching.
    pub fn open(path: &Path) -> Result<Searcher> {
        Collection::open(path).map(Searcher::new)
    }

    /// The code path for a strategy; the sign-code scan is built on first use (or preload).
    pub fn strategy(&self, strategy: Strategy) -> &dyn PartitionSearch {
        static EXACT: ExactScan = ExactScan;
        match strategy {
            Strategy::Exact => &EXACT,
            Strategy::Index => &self.index,
            Strategy::SignScan => self.signscan(),
        }
    }

    /// Whether the in-memory sign codes are built (by [`Searcher::preload`] or a first query).
    pub fn is_preloaded(&self) -> bool {
        self.signscan.get().is_some()
    }

    pub fn signscan(&self) -> &SignScan {
        self.signscan.get_or_init(|| {
            // Built by a thread of its own on a pool of its own, while the caller blocks: a
            // rayon worker building them in place would, while it waits for the build's
            // parallel parts, run other queued work, and a query there that needs the codes
            // would re-enter this initialisation on the same thread and hang. Workers that
            // block here instead wait for a build that does not need them.
            let collection = &self.collection;
            std::thread::scope(|scope| {
                let build = scope.spawn(|| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(rayon::current_num_threads()).build();
                    pool.expect("threads for the sign-code build").install(|| SignScan::build(collection))
                });
                build.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        })
    }

    /// Faults every page of the collection into this process and builds the in-memory
    /// structures the default strategy needs, so the first query is not a cold one.
    pub fn preload(&self) -> Result<PreloadStats> {
        let start = std::time::Instant::now();
        let map_bytes = self.collection.prefault()?;
        let signscan_bytes = if self.collection.manifest().search.strategy == Strategy::SignScan {
            self.signscan().memory_bytes()
        } else {
            0
        };
        Ok(PreloadStats { map_bytes, signscan_bytes, seconds: start.elapsed().as_secs_f64() })
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PreloadStats {
    pub map_bytes: u64,
    pub signscan_bytes: usize,
    pub seconds: f64,
}
