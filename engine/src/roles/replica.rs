//! `quiver replica`: fetches its collection's snapshot from the writer or a ready peer
//! (resuming a partial download), checks the sha256 and the manifest, preloads and warms the
//! collection, and only then reports SERVING; it then serves Search and, to later peers, the
//! same snapshot. A snapshot that fails its checks is discarded and never served.

use super::{Listeners, ServeRole, serving_process};
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::import::object::Credentials;
use crate::metrics::Metrics;
use crate::search::searcher::Searcher;
use crate::serve::{ServingProcess, termination};
use crate::snapshot::download::Partial;
use crate::snapshot::store::{Restored, SnapshotStore};
use crate::snapshot::{SnapshotDir, SnapshotInfo};
use crate::warmup::{WarmupOptions, warm};
use quiver_api::client::{Client, ClientOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `quiver replica` fetches, from where, and how it serves.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub data_dir: PathBuf,
    /// The collection to fetch and serve.
    pub collection: String,
    /// Where the snapshot is, tried in turn: gRPC addresses (the writer, ready peers) and
    /// snapshot stores (object-store prefixes).
    pub snapshot_from: Vec<String>,
    /// How snapshot stores may be read.
    pub store_credentials: Credentials,
    pub fetch: FetchOptions,
    /// Simulated queries run before reporting SERVING.
    pub warmup_max_queries: usize,
    pub serve: ServeRole,
}

/// Runs until SIGTERM or SIGINT (see [`run_until`]).
pub fn run(a: ReplicaConfig) -> Result<i32> {
    run_until(a, termination())
}

/// Runs until `stop` resolves, then drains and exits like on SIGTERM: how a test or an
/// embedding program starts the role from its configuration alone.
pub fn run_until(a: ReplicaConfig, stop: impl Future<Output = ()> + Send + 'static) -> Result<i32> {
    let root = a.data_dir.clone();
    for source in &a.snapshot_from {
        if SnapshotStore::is_store(source) {
            SnapshotStore::new(source, a.store_credentials)?;
        } else {
            quiver_api::client::check_target(source)?;
        }
    }
    super::serve_role(&a.serve, async {
        let config = a.serve.config.clone();
        let process = serving_process(&root, &a.collection, Arc::new(Metrics::new())).await?;
        let listeners = Listeners::bind(&a.serve).await?;

        // Serve (NOT_SERVING) while preparing, so probes and Admin.Status answer meanwhile.
        let (abort, aborted) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            tokio::select! {
                _ = stop => {}
                _ = aborted => {}
            }
        };
        let mut server = tokio::spawn(super::run(process.clone(), listeners, config, None, stop));
        let joined = |r: Result<Result<()>, tokio::task::JoinError>| {
            r.map_err(|e| Error::io("serving", std::io::Error::other(e)))?
        };
        let prepared = tokio::select! {
            prepared = prepare(&a, &root, process.clone()) => prepared,
            // SIGTERM before the replica was ready: stop preparing.
            served = &mut server => return joined(served).map(|()| 0),
        };
        let code = match prepared {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e}");
                let _ = abort.send(());
                1
            }
        };
        joined(server.await)?;
        Ok::<_, Error>(code)
    })
}

/// Fetch (unless a snapshot that passes its checks on disk is already here), install,
/// preload, warm, then ready.
async fn prepare(a: &ReplicaConfig, root: &std::path::Path, process: Arc<ServingProcess>) -> Result<()> {
    let started = Instant::now();
    let snapshots = SnapshotDir::new(root);
    let present = present_snapshot(&snapshots, &a.collection).await?;
    let pinned = a.fetch.pinned.as_deref();
    if let Some((info, pinned)) = present.as_ref().zip(pinned).filter(|(info, pinned)| info.sha256 != *pinned) {
        tracing::warn!(
            "the snapshot of {} here has sha256 {}, not the pinned {pinned}: fetching the pinned one",
            a.collection,
            info.sha256
        );
    }
    let info = match present.filter(|info| pinned.is_none_or(|pinned| info.sha256 == pinned)) {
        Some(info) => {
            tracing::info!("snapshot of {} already here and checked (sha256 {})", a.collection, info.sha256);
            info
        }
        None => {
            let sources =
                a.snapshot_from.iter().map(|s| Source::of(s, a.store_credentials)).collect::<Result<Vec<_>>>()?;
            fetch_snapshot(&sources, &a.collection, &snapshots, &process.metrics, &a.fetch).await?
        }
    };
    let fetched_s = started.elapsed().as_secs_f64();
    let (root, max_queries) = (PathBuf::from(root), a.warmup_max_queries);
    let (collection, report) = tokio::task::spawn_blocking(move || -> Result<_> {
        let collection = Searcher::new(snapshots.install(&root, &info)?);
        let report = warm(&collection, &WarmupOptions { max_queries, ..Default::default() })?;
        Ok((Arc::new(collection), report))
    })
    .await
    .map_err(|e| Error::io("installing the snapshot", std::io::Error::other(e)))??;
    process.catalog.adopt(collection);
    process.set_ready(true).await;
    tracing::info!(
        "quiver replica: {} SERVING after {:.2}s (snapshot {:.2}s, cold first query {:.2} ms, warm p99 {:.2} ms)",
        a.collection,
        started.elapsed().as_secs_f64(),
        fetched_s,
        report.cold_first_query_ms,
        report.warm_p99_ms
    );
    Ok(())
}

/// The finished snapshot of `collection` already on disk, checked (on a blocking thread: it
/// hashes the file).
pub(crate) async fn present_snapshot(snapshots: &SnapshotDir, collection: &str) -> Result<Option<SnapshotInfo>> {
    let (snapshots, name) = (snapshots.clone(), collection.to_string());
    tokio::task::spawn_blocking(move || snapshots.checked_info(&name))
        .await
        .map_err(|e| Error::io("checking the snapshot", std::io::Error::other(e)))?
}

/// How a replica fetches its snapshot.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The token and CA the sources want.
    pub client: ClientOptions,
    /// Throttle, so a new replica does not saturate the writer's link.
    pub bytes_per_sec: Option<u64>,
    /// All attempts together.
    pub timeout: Duration,
    /// One attempt at one source: a live source that is too slow is left for the next.
    pub attempt_timeout: Duration,
    /// The longest wait for the next chunk: a source that stalls is left at once.
    pub stall_timeout: Duration,
    /// How often an attempt logs bytes held, rate and time left.
    pub progress_every: Duration,
    /// The hex sha256 the snapshot must have (`--snapshot-sha256`): a source that announces
    /// another is refused, and a snapshot on disk with another is fetched again.
    pub pinned: Option<String>,
}

/// Where a replica may find its snapshot.
#[derive(Debug, Clone)]
pub enum Source {
    /// A writer or a ready peer, over gRPC.
    Peer(String),
    Store(SnapshotStore),
}

impl Source {
    pub fn of(address: &str, credentials: Credentials) -> Result<Source> {
        Ok(if SnapshotStore::is_store(address) {
            Source::Store(SnapshotStore::new(address, credentials)?)
        } else {
            Source::Peer(address.to_string())
        })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Peer(address) => f.write_str(address),
            Source::Store(store) => f.write_str(&store.uri()),
        }
    }
}

/// Tries every source in turn until one delivers a snapshot that passes its checks; transient
/// failures back off and retry until the timeout, a checksum failure from every source ends it.
pub async fn fetch_snapshot(
    sources: &[Source],
    collection: &str,
    snapshots: &SnapshotDir,
    metrics: &Arc<Metrics>,
    options: &FetchOptions,
) -> Result<SnapshotInfo> {
    let deadline = Instant::now() + options.timeout;
    let mut delay = Duration::from_millis(200);
    loop {
        let mut corrupt = Vec::new();
        for source in sources {
            let fetched = match source {
                Source::Peer(address) => {
                    let client = Client::new(address, options.client.clone())?;
                    fetch_from(&client, collection, snapshots, metrics, options).await
                }
                Source::Store(store) => restore_from(store, collection, snapshots, metrics, options, deadline).await,
            };
            match fetched {
                // The pin checked on what was installed too, not only on what a source announced.
                Ok(info) if options.pinned.as_ref().is_some_and(|pinned| *pinned != info.sha256) => {
                    return Err(Error::Snapshot {
                        collection: collection.to_string(),
                        reason: format!(
                            "{source} delivered the snapshot with sha256 {}, where only {} is to be served",
                            info.sha256,
                            options.pinned.as_deref().unwrap_or_default()
                        ),
                    });
                }
                Ok(info) => return Ok(info),
                Err(e @ Error::Snapshot { .. }) => {
                    tracing::error!("{source}: {e}");
                    corrupt.push(format!("{source}: {e}"));
                }
                Err(e) => tracing::warn!("{source}: {e}; will retry"),
            }
        }
        if corrupt.len() == sources.len() {
            return Err(Error::Snapshot {
                collection: collection.to_string(),
                reason: format!("no source delivered a snapshot that passes its checks: {}", corrupt.join("; ")),
            });
        }
        if Instant::now() + delay > deadline {
            return Err(Error::Snapshot {
                collection: collection.to_string(),
                reason: format!("no source delivered the snapshot within {} s", options.timeout.as_secs()),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// One attempt at a snapshot store, on a blocking thread (the object reads wait on their own
/// runtime), bounded by the attempt timeout; the partial file stays for the next attempt.
///
/// The attempt's clock stops while the parts a resumed file holds are checked on disk: reading
/// back a large partial file is this disk's time, not the store's, and counted against the
/// attempt it would outlast it (about 200 GB at 250 MB/s in the default 900 s), so no attempt
/// would ever fetch a byte. That check is bounded by the whole fetch's `deadline` instead.
async fn restore_from(
    store: &SnapshotStore,
    collection: &str,
    snapshots: &SnapshotDir,
    metrics: &Arc<Metrics>,
    options: &FetchOptions,
    deadline: Instant,
) -> Result<SnapshotInfo> {
    let (store, name, snapshots, metrics) = (store.clone(), collection.to_string(), snapshots.clone(), metrics.clone());
    let pinned = options.pinned.clone();
    let target = store.uri();
    let every = options.progress_every;
    let cancel = Cancel::default();
    let (checking, checked) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let told = (checking.clone(), checked.clone());
    // Fires when this attempt ends early: its timeout below, or its future dropped (the
    // replica stopping), so the blocking thread stops writing instead of running on.
    let stop = cancel.on_drop();
    let mut restore = tokio::task::spawn_blocking(move || {
        store.pull(
            &name,
            &snapshots,
            pinned.as_deref(),
            &|restored| match restored {
                Restored::Checking => told.0.notify_one(),
                Restored::Checked => told.1.notify_one(),
                Restored::Fetched(n) => {
                    metrics.snapshot_fetched_bytes.inc_by(n);
                }
            },
            every,
            &cancel,
        )
    });
    let joined = |joined: std::result::Result<Result<SnapshotInfo>, tokio::task::JoinError>| {
        joined.map_err(|e| Error::io("restoring the snapshot", std::io::Error::other(e)))?
    };
    // Which bound ended the attempt, if one did: the attempt's (fetching) or the deadline.
    let started = Instant::now();
    let reached = tokio::select! {
        finished = &mut restore => return joined(finished),
        checking = tokio::time::timeout(options.attempt_timeout, checking.notified()) => checking,
    };
    let (fetching, timed) = match reached {
        Err(elapsed) => (true, Err(elapsed)),
        Ok(()) => {
            let spent = started.elapsed();
            tokio::select! {
                finished = &mut restore => return joined(finished),
                checked = tokio::time::timeout_at(deadline.into(), checked.notified()) => match checked {
                    Ok(()) => {
                        let left = options.attempt_timeout.saturating_sub(spent);
                        (true, tokio::time::timeout(left, &mut restore).await)
                    }
                    Err(elapsed) => (false, Err(elapsed)),
                },
            }
        }
    };
    match timed {
        Ok(finished) => joined(finished),
        Err(_) => {
            // Stopped and joined before the next attempt, which then resumes from bytes that
            // are all on disk and no longer changing (as fetch_from does). What the thread
            // ended with stands unless it is the stop itself: a restore that finished while
            // its sha256 was checked is installed, a checksum mismatch is a verdict.
            drop(stop);
            match restore.await {
                Ok(Ok(info)) => Ok(info),
                Ok(Err(e)) if !matches!(e, Error::Cancelled { .. }) => Err(e),
                _ => Err(Error::Remote {
                    target,
                    reason: match fetching {
                        true => format!("the attempt took longer than {} s", options.attempt_timeout.as_secs()),
                        false => format!(
                            "checking the partial file outlasted the fetch timeout ({} s)",
                            options.timeout.as_secs()
                        ),
                    },
                }),
            }
        }
    }
}

/// One attempt at one source. Whatever ends it (the source fails, stalls or times out, the
/// disk fails), the thread writing the partial file is stopped and joined before this returns,
/// so the next attempt resumes from bytes that are all on disk and no longer changing.
async fn fetch_from(
    client: &Client,
    collection: &str,
    snapshots: &SnapshotDir,
    metrics: &Metrics,
    options: &FetchOptions,
) -> Result<SnapshotInfo> {
    let remote = |e: tonic::Status| Error::Remote { target: client.target().to_string(), reason: e.to_string() };
    let announced = client.snapshot_manifest(collection).await.map_err(remote)?;
    let manifest = serde_json::from_str(&announced.manifest_json).map_err(|e| Error::Snapshot {
        collection: collection.to_string(),
        reason: format!("{} announced an unreadable manifest: {e}", client.target()),
    })?;
    let info =
        SnapshotInfo { collection: announced.collection, size: announced.size, sha256: announced.sha256, manifest };
    if info.collection != collection {
        return Err(Error::Snapshot {
            collection: collection.to_string(),
            reason: format!("{} announced collection {:?}", client.target(), info.collection),
        });
    }
    // Checked before the partial file is opened: opening it for another snapshot would drop
    // the bytes of the pinned one it holds.
    if let Some(pinned) = options.pinned.as_deref().filter(|pinned| *pinned != info.sha256) {
        return Err(Error::Snapshot {
            collection: collection.to_string(),
            reason: format!(
                "{} announces the snapshot with sha256 {}; only {pinned} is to be served (--snapshot-sha256)",
                client.target(),
                info.sha256
            ),
        });
    }
    let mut partial = {
        let (snapshots, info) = (snapshots.clone(), info.clone());
        tokio::task::spawn_blocking(move || Partial::open(&snapshots, &info))
            .await
            .map_err(|e| Error::io("opening the partial snapshot", std::io::Error::other(e)))??
    };
    if partial.offset() > 0 {
        tracing::info!("resuming the snapshot download at byte {} of {}", partial.offset(), info.size);
    }
    partial.log_progress(client.target(), options.progress_every);
    let started = Instant::now();
    let first = partial.offset();
    if !partial.is_complete() {
        // Disk writes on their own thread, overlapping the network receive.
        let (chunks, mut received) = tokio::sync::mpsc::channel::<crate::serve::proto::Chunk>(8);
        let writer = tokio::task::spawn_blocking(move || -> Result<Partial> {
            while let Some(chunk) = received.blocking_recv() {
                partial.append(chunk.offset, &chunk.data)?;
            }
            Ok(partial)
        });
        let request = crate::serve::proto::FetchRequest { collection: collection.to_string(), offset: first };
        let receive = async {
            let mut stream = client.snapshot_client().fetch(request).await.map_err(remote)?.into_inner();
            let mut sent = 0u64;
            loop {
                let next =
                    tokio::time::timeout(options.stall_timeout, stream.message()).await.map_err(|_| Error::Remote {
                        target: client.target().to_string(),
                        reason: format!("no snapshot chunk for {} s", options.stall_timeout.as_secs()),
                    })?;
                let Some(chunk) = next.map_err(remote)? else { return Ok(()) };
                let n = chunk.data.len() as u64;
                if chunks.send(chunk).await.is_err() {
                    return Ok(()); // the writer stopped on an error, returned below
                }
                sent += n;
                metrics.snapshot_fetched_bytes.inc_by(n);
                if let Some(rate) = options.bytes_per_sec {
                    let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
                    if let Some(ahead) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(ahead).await;
                    }
                }
            }
        };
        let received: Result<()> = match tokio::time::timeout(options.attempt_timeout, receive).await {
            Ok(r) => r,
            Err(_) => Err(Error::Remote {
                target: client.target().to_string(),
                reason: format!("the attempt took longer than {} s", options.attempt_timeout.as_secs()),
            }),
        };
        drop(chunks);
        let written = writer.await.map_err(|e| Error::io("writing the snapshot", std::io::Error::other(e)))?;
        // A disk or protocol failure of the writer explains a stream that stopped early.
        partial = written?;
        received?;
    }
    if !partial.is_complete() {
        return Err(Error::Remote {
            target: client.target().to_string(),
            reason: format!("the stream ended at byte {} of {}", partial.offset(), info.size),
        });
    }
    let secs = started.elapsed().as_secs_f64();
    let mib = (info.size - first) as f64 / (1 << 20) as f64;
    tracing::info!(
        "quiver replica: fetched {mib:.1} MiB from {} in {secs:.2}s ({:.1} MiB/s); checking sha256 on disk",
        client.target(),
        mib / secs.max(1e-9)
    );
    let target = client.target().to_string();
    tokio::task::spawn_blocking(move || partial.finish_from(&target))
        .await
        .map_err(|e| Error::io("checking the snapshot", std::io::Error::other(e)))?
}
