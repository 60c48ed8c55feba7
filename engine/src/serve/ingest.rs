//! The Ingest service of `quiver writer`: each Write stream is checked and spooled
//! ([`crate::spool`]) and acknowledged only once it is durable; Seal closes the spool, imports
//! the acknowledged streams into the collection (the same import, build and seal as a file
//! source), writes the snapshot and starts serving it. Acknowledged streams survive a crash of
//! the writer and are imported by the Seal after the restart.

use super::proto::{self, ingest_server};
use super::{ServingProcess, status};
use crate::publish::{Phase, Publisher, Stage};
use crate::spool::{Spool, StreamWriter};
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct IngestService {
    process: Arc<ServingProcess>,
    publisher: Arc<Publisher>,
    /// `None` when the writer imports from --source (pushes are refused).
    spool: Option<Arc<Spool>>,
    /// Set when the writer imports from --source: then pushes are refused.
    source: Option<String>,
    /// One Seal at a time (the end of a Write stream is serialized with Seal by the spool).
    sealing: Arc<tokio::sync::Mutex<()>>,
    pace: WritePace,
}

/// How slow a Write stream may be before it is dropped (none of its rows kept): a stream holds
/// a heavy-call slot and an open spool file, so a client that stalls or trickles loses it
/// instead of holding them until the call's six-hour deadline.
#[derive(Debug, Clone, Copy)]
pub struct WritePace {
    /// Longest silence between two batches ([`WRITE_IDLE`] by default).
    pub idle: std::time::Duration,
    /// Least bytes of vectors per second over each window of `idle` (0: no floor;
    /// [`MIN_WRITE_BYTES_PER_SEC`] by default).
    pub min_bytes_per_sec: u64,
}

impl Default for WritePace {
    fn default() -> Self {
        WritePace { idle: WRITE_IDLE, min_bytes_per_sec: MIN_WRITE_BYTES_PER_SEC }
    }
}

impl IngestService {
    /// Serves pushes into `spool` (none for a writer with --source); streams it kept from an
    /// earlier run count as received.
    pub fn new(
        process: Arc<ServingProcess>,
        publisher: Arc<Publisher>,
        spool: Option<Arc<Spool>>,
        source: Option<String>,
        pace: WritePace,
    ) -> Self {
        if spool.as_ref().is_some_and(|s| s.committed_rows() > 0) && publisher.stage() == Stage::Waiting {
            publisher.set_stage(Stage::Receiving);
        }
        IngestService { process, publisher, spool, source, sealing: Arc::default(), pace }
    }

    /// The collection this writer builds.
    pub fn collection(&self) -> &str {
        self.publisher.name()
    }

    /// The spool, once [`IngestService::check_writable`] passed.
    fn spool(&self) -> Result<&Arc<Spool>, Status> {
        self.spool.as_ref().ok_or_else(|| Status::failed_precondition("this writer takes no pushes"))
    }

    fn check_writable(&self, collection: &str) -> Result<(), Status> {
        if let Some(source) = &self.source {
            return Err(Status::failed_precondition(format!(
                "this writer imports from --source {source}; it does not accept pushes"
            )));
        }
        if collection != self.publisher.name() {
            return Err(Status::not_found(format!(
                "this writer builds collection {:?}, not {collection:?}",
                self.publisher.name()
            )));
        }
        self.publisher.check_open_for_writes().map_err(status)
    }
}

/// Disk writes on the blocking pool, the stream handed there and back.
async fn on_disk<T: Send + 'static>(
    stream: StreamWriter,
    f: impl FnOnce(&mut StreamWriter) -> crate::Result<T> + Send + 'static,
) -> Result<(StreamWriter, T), Status> {
    super::blocking(move || {
        let mut stream = stream;
        let out = f(&mut stream).map_err(status)?;
        Ok((stream, out))
    })
    .await
}

#[tonic::async_trait]
impl ingest_server::Ingest for IngestService {
    #[tracing::instrument(skip_all, fields(collection = %self.publisher.name()))]
    async fn write(
        &self,
        request: Request<Streaming<proto::WriteBatch>>,
    ) -> Result<Response<proto::WriteSummary>, Status> {
        let mut incoming = request.into_inner();
        // Dropped on any early return: the stream's file goes, none of its rows stay.
        let mut spooled: Option<StreamWriter> = None;
        let mut pace = Pace::new(self.pace);
        while let Some(batch) = next_batch(&mut incoming, self.pace.idle).await? {
            self.check_writable(&batch.collection)?;
            pace.received(&batch)?;
            if batch.records.is_empty() {
                // Nothing to spool; it would only keep a stream (and its heavy-call slot) alive.
                return Err(Status::invalid_argument(
                    "invalid request: field `records` is empty: a batch carries at least one record",
                ));
            }
            let stream = match spooled.take() {
                Some(stream) => stream,
                None => self.spool()?.begin().map_err(status)?,
            };
            let batch = super::wire::records(batch);
            let (stream, ()) = on_disk(stream, move |s| s.append(&batch)).await?;
            spooled = Some(stream);
        }
        let Some(stream) = spooled else { return Ok(Response::new(proto::WriteSummary { rows: 0 })) };
        // A Seal that began meanwhile closed the spool: the commit is refused, never mixed in.
        let rows = super::blocking(move || stream.commit().map_err(status)).await?;
        if self.publisher.stage() == Stage::Waiting {
            self.publisher.set_stage(Stage::Receiving);
        }
        Ok(Response::new(proto::WriteSummary { rows }))
    }

    #[tracing::instrument(skip_all, fields(collection = %self.publisher.name()))]
    async fn seal(&self, request: Request<proto::SealRequest>) -> Result<Response<proto::SealResponse>, Status> {
        // One Seal at a time: the stage is checked and moved on under the lock.
        let sealing = self.sealing.lock().await;
        self.check_writable(&request.into_inner().collection)?;
        let spool = self.spool()?.clone();
        // Refused while another Seal holds the spool closed.
        let sealing_spool = spool.close().map_err(status)?;
        self.publisher.set_stage(Stage::Building);
        drop(sealing);
        let (records, sealed_paths) = (sealing_spool.records, sealing_spool.paths);
        tracing::info!(rows = records.expected_rows, collection = self.publisher.name(), "sealing the pushed records");
        // The build and what follows it run in a task of their own: a caller that gives up (or
        // the server's deadline) does not leave the writer half-way between sealed and serving.
        let (publisher, process, lock) = (self.publisher.clone(), self.process.clone(), self.sealing.clone());
        let sealed = tokio::spawn(async move {
            let building = publisher.clone();
            let result = super::blocking(move || building.publish(records).map_err(status)).await;
            let (collection, _info) = match result {
                Ok(sealed) => sealed,
                Err(e) => {
                    // The acknowledged rows stay; the ETL may push a fix and seal again. Under
                    // the Seal lock, so no other Seal sees the spool open and the stage failed
                    // half-way.
                    let _one_seal = lock.lock().await;
                    if publisher.stage() == Stage::Building {
                        publisher.set_stage(Stage::Failed(e.message().to_string())); // a panic
                    }
                    spool.reopen();
                    return Err(e);
                }
            };
            spool.remove(&sealed_paths);
            let manifest_json = serde_json::to_string(collection.manifest()).expect("manifest serializes");
            process.catalog.adopt(collection);
            process.set_ready(true).await;
            Ok(proto::SealResponse { manifest_json })
        });
        let response = sealed.await.map_err(|e| Status::internal(format!("sealing failed: {e}")))??;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(collection = %self.publisher.name()))]
    async fn progress(
        &self,
        request: Request<proto::ProgressRequest>,
    ) -> Result<Response<proto::ProgressResponse>, Status> {
        let name = request.into_inner().collection;
        if !name.is_empty() && name != self.publisher.name() {
            return Err(Status::not_found(format!(
                "this writer builds collection {:?}, not {name:?}",
                self.publisher.name()
            )));
        }
        let mut progress = self.publisher.progress();
        if progress.phase == Phase::Receiving {
            progress.rows = self.spool.as_ref().map_or(0, |s| s.committed_rows());
        }
        Ok(Response::new(super::wire::progress(progress)))
    }
}

/// How long a Write stream may stay silent between two batches.
pub const WRITE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The slowest a Write stream may be over each window of its idle time, in bytes of vectors per
/// second (Kestrel's minimum request body rate is the model, 240 B/s there): a client trickling
/// one small batch just inside the idle window would otherwise hold a heavy-call slot for the
/// six-hour Write deadline. Each window counts on its own, so a burst at the start buys no
/// slack later. One 384-d row is 1.5 KiB; an ETL pushes megabytes a second.
pub const MIN_WRITE_BYTES_PER_SEC: u64 = 1024;

/// How fast a Write stream has been sending in its current window.
struct Pace {
    limits: WritePace,
    window_started: std::time::Instant,
    window_bytes: u64,
}

impl Pace {
    fn new(limits: WritePace) -> Pace {
        Pace { limits, window_started: std::time::Instant::now(), window_bytes: 0 }
    }

    /// Counts a batch; once a window of the idle time has passed, refuses the stream when that
    /// window carried less than the floor's worth for one idle time, else starts the next
    /// window. (The amount, not a rate over the window's length: a window checked late, up to
    /// two idle times long, must not fail a stream that kept the floor in every idle time.)
    fn received(&mut self, batch: &proto::WriteBatch) -> Result<(), Status> {
        let floats: usize = batch.records.iter().map(|r| r.vector.len()).sum();
        self.window_bytes = self.window_bytes.saturating_add(floats as u64 * 4);
        let elapsed = self.window_started.elapsed();
        if elapsed < self.limits.idle {
            return Ok(());
        }
        let floor = self.limits.min_bytes_per_sec as f64 * self.limits.idle.as_secs_f64();
        if (self.window_bytes as f64) < floor {
            return Err(Status::deadline_exceeded(format!(
                "the stream sent {} bytes of vectors in the last {:.0} s, below the minimum of {} B/s \
                 (--write-min-bytes-per-sec) over {} s: it is dropped and none of its rows are kept; send larger batches",
                self.window_bytes,
                elapsed.as_secs_f64(),
                self.limits.min_bytes_per_sec,
                self.limits.idle.as_secs(),
            )));
        }
        (self.window_started, self.window_bytes) = (std::time::Instant::now(), 0);
        Ok(())
    }
}

/// The next batch of a Write stream, or DEADLINE_EXCEEDED once it was silent for `idle`.
async fn next_batch(
    incoming: &mut Streaming<proto::WriteBatch>,
    idle: std::time::Duration,
) -> Result<Option<proto::WriteBatch>, Status> {
    match tokio::time::timeout(idle, incoming.message()).await {
        Ok(next) => next,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no batch for {} s (--write-idle-secs): the stream is dropped and none of its rows are kept; send it again",
            idle.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn batch(floats: usize) -> proto::WriteBatch {
        proto::WriteBatch {
            records: vec![proto::Record { vector: vec![0.5; floats], ..Default::default() }],
            ..Default::default()
        }
    }

    fn pace(started_ago: Duration, bytes: u64) -> Pace {
        let limits = WritePace { idle: Duration::from_secs(60), min_bytes_per_sec: 1024 };
        Pace { limits, window_started: Instant::now() - started_ago, window_bytes: bytes }
    }

    #[test]
    fn each_idle_window_must_carry_the_floor() {
        // Checked late (118 s after the window began): 110 KiB is more than 60 s at the floor.
        assert!(pace(Duration::from_secs(118), 100 << 10).received(&batch(2_560)).is_ok());
        // A trickle: 100 floats in a whole window.
        let e = pace(Duration::from_secs(61), 0).received(&batch(100)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert!(e.message().contains("400 bytes") && e.message().contains("1024 B/s"), "{}", e.message());
        // Inside the window nothing is judged yet.
        assert!(pace(Duration::from_secs(30), 0).received(&batch(1)).is_ok());
        // A window that passed starts the next one from zero.
        let mut passed = pace(Duration::from_secs(61), 1 << 20);
        passed.received(&batch(1)).unwrap();
        assert_eq!(passed.window_bytes, 0);
    }
}
