//! The catalog every serving role holds: the collections under its data root, opened once and
//! shared by every query (the unserved ones closed beyond a bound), and the aliases of the
//! standalone role, persisted in `.catalog/`, their own LMDB environment. How an alias is
//! flipped is [`flip`]'s.
//!
//! A query resolves the alias once and holds an `Arc` to that collection until it finishes, so
//! a flip never changes a collection under a running query.

mod flip;

pub use flip::{AliasRecord, Flip};

use crate::error::{Error, Result};
use crate::search::searcher::Searcher;
use heed::types::{SerdeJson, Str};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Collections kept open that no alias serves and no role adopted: a request naming a
/// collection directly opens it; beyond this many, the least recently opened are closed (their
/// memory maps go when the last query holding one ends).
const MAX_UNSERVED_OPEN: usize = 4;

/// One opened collection. Closing drops the catalog's own reference only: a query or a
/// verification still holding the collection keeps it (and its LMDB environment, which cannot
/// be opened twice) alive, and a request meanwhile gets that same collection back.
struct Opened {
    kept: Option<Arc<Searcher>>,
    alive: std::sync::Weak<Searcher>,
    /// When it was (re)opened, for closing the oldest first.
    at: u64,
    /// Adopted by a role: never closed.
    adopted: bool,
}

#[derive(Default)]
struct OpenCollections {
    by_name: HashMap<String, Opened>,
    opened: u64,
}

pub struct Catalog {
    root: PathBuf,
    env: Env<WithoutTls>,
    db: Database<'static, Str, SerdeJson<AliasRecord>>,
    /// Open collections by name, shared by every alias and query, with the order they were
    /// opened in (for closing the unserved ones) and whether a role adopted them (kept).
    open: Mutex<OpenCollections>,
    /// What each alias serves right now.
    live: RwLock<HashMap<String, Arc<Searcher>>>,
}

/// Opens a collection, waiting a little for its last holder to finish closing it: the last
/// `Arc` of a searcher can be dropped outside the catalog's lock (a look by the console, a
/// query that outlived a flip), and LMDB answers `EnvAlreadyOpened` until that drop has
/// released the environment.
fn open_searcher(path: &Path) -> Result<Searcher> {
    let mut waited = 0;
    loop {
        match Searcher::open(path) {
            Err(Error::Lmdb(heed::Error::EnvAlreadyOpened)) if waited < 100 => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                waited += 1;
            }
            opened => return opened,
        }
    }
}

impl Catalog {
    /// Opens (or creates) the catalog of the collections under `root`.
    pub fn open(root: &Path) -> Result<Catalog> {
        let dir = root.join(".catalog");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        // SAFETY: the catalog directory belongs to this data root; LMDB locks coordinate access.
        let env = unsafe { EnvOpenOptions::new().read_txn_without_tls().map_size(1 << 30).max_dbs(2).open(&dir)? };
        let wtxn = env.write_txn()?;
        let db = env
            .create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
                dbo.create_database(wtxn, Some("aliases")).map(CommitOrAbort::<_, ()>::Commit)
            })?
            .unwrap_commit();
        Ok(Catalog {
            root: root.to_path_buf(),
            env,
            db,
            open: Mutex::new(OpenCollections::default()),
            live: RwLock::new(HashMap::new()),
        })
    }

    /// A sealed collection under the root, opened once and shared. The name is checked before
    /// any path is built, so a request cannot reach outside the data directory.
    pub fn collection(&self, name: &str) -> Result<Arc<Searcher>> {
        crate::collection::builder::check_name(name)?;
        let mut open = self.open.lock().expect("catalog lock");
        open.opened += 1;
        let at = open.opened;
        if let Some(entry) = open.by_name.get_mut(name) {
            if let Some(c) = &entry.kept {
                return Ok(c.clone());
            }
            if let Some(c) = entry.alive.upgrade() {
                (entry.kept, entry.at) = (Some(c.clone()), at);
                drop(open);
                self.close_unserved();
                return Ok(c);
            }
        }
        let c = Arc::new(open_searcher(&self.root.join(name))?);
        let entry = Opened { kept: Some(c.clone()), alive: Arc::downgrade(&c), at, adopted: false };
        open.by_name.insert(name.to_string(), entry);
        drop(open);
        self.close_unserved();
        Ok(c)
    }

    /// A sealed collection to look at (the console's overview): the open one when it is open,
    /// else opened for the caller alone. Unlike [`Catalog::collection`], a look neither keeps
    /// it open nor counts as a use, so an overview polled every few seconds cannot close (and
    /// cool) the collections that searches use.
    pub fn glance(&self, name: &str) -> Result<Arc<Searcher>> {
        crate::collection::builder::check_name(name)?;
        let mut open = self.open.lock().expect("catalog lock");
        if let Some(c) = open.by_name.get(name).and_then(|e| e.kept.clone().or_else(|| e.alive.upgrade())) {
            return Ok(c);
        }
        let c = Arc::new(open_searcher(&self.root.join(name))?);
        // Registered, not kept: a search meanwhile shares this one (LMDB opens an environment
        // once per process), and it closes when the look ends.
        let entry = Opened { kept: None, alive: Arc::downgrade(&c), at: 0, adopted: false };
        open.by_name.insert(name.to_string(), entry);
        Ok(c)
    }

    /// Closes the oldest opened collections that no alias serves and no role adopted, beyond
    /// [`MAX_UNSERVED_OPEN`], so memory and address space stay bounded after many flips.
    fn close_unserved(&self) {
        let served: std::collections::HashSet<String> =
            self.live.read().expect("alias lock").values().map(|c| c.name().to_string()).collect();
        let mut open = self.open.lock().expect("catalog lock");
        open.by_name.retain(|_, e| e.kept.is_some() || e.alive.strong_count() > 0);
        let mut unserved: Vec<(u64, String)> = open
            .by_name
            .iter()
            .filter(|(name, e)| e.kept.is_some() && !e.adopted && !served.contains(*name))
            .map(|(name, e)| (e.at, name.clone()))
            .collect();
        if unserved.len() <= MAX_UNSERVED_OPEN {
            return;
        }
        unserved.sort();
        for (_, name) in &unserved[..unserved.len() - MAX_UNSERVED_OPEN] {
            if let Some(entry) = open.by_name.get_mut(name) {
                entry.kept = None;
            }
        }
    }

    /// The data root the catalog's collections live under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Shares an already opened (preloaded, warmed) collection instead of opening it again.
    pub fn adopt(&self, collection: Arc<Searcher>) {
        let mut open = self.open.lock().expect("catalog lock");
        open.opened += 1;
        let at = open.opened;
        let name = collection.name().to_string();
        open.by_name
            .insert(name, Opened { alive: Arc::downgrade(&collection), kept: Some(collection), at, adopted: true });
    }

    /// How many collections are open.
    pub fn open_count(&self) -> usize {
        self.open.lock().expect("catalog lock").by_name.values().filter(|e| e.alive.strong_count() > 0).count()
    }

    /// The sealed collections under the root, by name: each directory with a data file whose
    /// name is a valid collection name (the root's own `.catalog`, `.snapshots`, `.staging`
    /// never are).
    pub fn collection_names(&self) -> Result<Vec<String>> {
        let listing = |e| Error::io(format!("listing {}", self.root.display()), e);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(listing)? {
            let entry = entry.map_err(listing)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if crate::collection::builder::check_name(&name).is_ok() && entry.path().join("data.mdb").is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every alias and what it serves.
    pub fn aliases(&self) -> Result<Vec<(String, AliasRecord)>> {
        let rtxn = self.env.read_txn()?;
        let all = self.db.iter(&rtxn)?.map(|r| r.map(|(k, v)| (k.to_string(), v))).collect::<heed::Result<_>>()?;
        Ok(all)
    }

    pub fn get(&self, alias: &str) -> Result<Option<AliasRecord>> {
        let rtxn = self.env.read_txn()?;
        Ok(self.db.get(&rtxn, alias)?)
    }

    /// The collection an alias serves now. The record is read on every call (one LMDB read),
    /// so a flip made by another process (`quiver alias flip` beside a running `quiver
    /// standalone`) takes effect at once; the opened collection is cached.
    pub fn resolve(&self, alias: &str) -> Result<Arc<Searcher>> {
        let record = self
            .get(alias)?
            .ok_or_else(|| Error::Alias { alias: alias.to_string(), reason: "no such alias".into() })?;
        if let Some(c) = self.live.read().expect("alias lock").get(alias)
            && c.name() == record.collection
        {
            return Ok(c.clone());
        }
        let c = self.collection(&record.collection)?;
        self.live.write().expect("alias lock").insert(alias.to_string(), c.clone());
        Ok(c)
    }
}
