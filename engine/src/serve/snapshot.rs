//! The Snapshot service: a finished snapshot's description, and its bytes from any offset as a
//! stream of chunks, read from disk on a blocking thread.

use super::ServingProcess;
use super::proto::{self, snapshot_server};
use crate::snapshot::SnapshotInfo;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Bytes per chunk message: large enough to amortise per-message work, far below the 16 MiB limit.
const CHUNK: usize = 4 << 20;
/// Snapshot streams served at once (each holds a reader thread and a few chunks in memory).
const MAX_FETCHES: usize = 8;
/// A client that reads nothing for this long loses its stream (and the thread behind it).
const STALLED: std::time::Duration = std::time::Duration::from_secs(60);

pub struct SnapshotService {
    process: Arc<ServingProcess>,
    fetches: Arc<tokio::sync::Semaphore>,
}

impl SnapshotService {
    pub fn new(process: Arc<ServingProcess>) -> Self {
        SnapshotService { process, fetches: Arc::new(tokio::sync::Semaphore::new(MAX_FETCHES)) }
    }

    fn info(&self, collection: &str) -> Result<(SnapshotInfo, std::path::PathBuf), Status> {
        let snapshots =
            self.process.snapshots.as_ref().ok_or_else(|| Status::unimplemented("this role holds no snapshots"))?;
        match snapshots.info(collection).map_err(super::status)? {
            Some(info) => Ok((info, snapshots.file(collection).map_err(super::status)?)),
            None => Err(Status::not_found(format!("no finished snapshot of collection {collection:?} here (yet)"))),
        }
    }
}

type ChunkStream = Pin<Box<dyn futures::Stream<Item = Result<proto::Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl snapshot_server::Snapshot for SnapshotService {
    #[tracing::instrument(skip_all, fields(collection = %super::span_field(&request.get_ref().collection).escape_debug()))]
    async fn manifest(
        &self,
        request: Request<proto::ManifestRequest>,
    ) -> Result<Response<proto::ManifestResponse>, Status> {
        let (info, _) = self.info(&request.into_inner().collection)?;
        Ok(Response::new(proto::ManifestResponse {
            collection: info.collection.clone(),
            size: info.size,
            sha256: info.sha256.clone(),
            manifest_json: serde_json::to_string(&info.manifest).expect("manifest serializes"),
        }))
    }

    type FetchStream = ChunkStream;

    #[tracing::instrument(skip_all, fields(collection = %super::span_field(&request.get_ref().collection).escape_debug(), offset = request.get_ref().offset))]
    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<ChunkStream>, Status> {
        let r = request.into_inner();
        let (info, path) = self.info(&r.collection)?;
        if r.offset > info.size {
            return Err(Status::out_of_range(format!(
                "invalid request: field `offset` = {}: the snapshot has {} bytes",
                r.offset, info.size
            )));
        }
        let slot = self.fetches.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("{MAX_FETCHES} snapshot streams are running; retry with backoff"))
        })?;
        let mut file =
            std::fs::File::open(&path).map_err(|e| Status::internal(format!("opening {}: {e}", path.display())))?;
        file.seek(SeekFrom::Start(r.offset)).map_err(|e| Status::internal(format!("seeking: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let metrics = self.process.metrics.clone();
        let mut offset = r.offset;
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // The stream's slot is held by the thread that feeds it, until it ends.
            let _slot = slot;
            let send = |item| match runtime.block_on(tokio::time::timeout(STALLED, tx.send(item))) {
                Ok(Ok(())) => Ok(()),
                _ => Err(()), // the client went away or stopped reading
            };
            loop {
                let mut data = vec![0u8; CHUNK.min((info.size - offset) as usize)];
                if data.is_empty() {
                    return;
                }
                let sent = match file.read_exact(&mut data) {
                    Ok(()) => {
                        let n = data.len() as u64;
                        let chunk = proto::Chunk { offset, data: data.into() };
                        offset += n;
                        metrics.snapshot_served_bytes.inc_by(n);
                        send(Ok(chunk))
                    }
                    Err(e) => send(Err(Status::internal(format!("reading the snapshot: {e}")))),
                };
                if sent.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
