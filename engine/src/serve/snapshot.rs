//! The Snapshot service: a finished snapshot's description, and its bytes from any offset as a
//! stream of chunks, read from disk on a blocking thread.

use super::Node;
use super::proto::{self, snapshot_server};
use crate::snapshot::SnapshotInfo;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Bytes per chunk message: large enough to amortise per-message work, far below the 64 MiB limit.
const CHUNK: usize = 4 << 20;

pub struct SnapshotService {
    node: Arc<Node>,
}

impl SnapshotService {
    pub fn new(node: Arc<Node>) -> Self {
        SnapshotService { node }
    }

    fn info(&self, collection: &str) -> Result<(SnapshotInfo, std::path::PathBuf), Status> {
        let store =
            self.node.snapshots.as_ref().ok_or_else(|| Status::unimplemented("this role holds no snapshots"))?;
        match store.info(collection).map_err(super::status)? {
            Some(info) => Ok((info, store.file(collection).map_err(super::status)?)),
            None => Err(Status::not_found(format!("no finished snapshot of collection {collection:?} here (yet)"))),
        }
    }
}

type ChunkStream = Pin<Box<dyn futures::Stream<Item = Result<proto::Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl snapshot_server::Snapshot for SnapshotService {
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

    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<ChunkStream>, Status> {
        let r = request.into_inner();
        let (info, path) = self.info(&r.collection)?;
        if r.offset > info.size {
            return Err(Status::out_of_range(format!(
                "invalid request: field `offset` = {}: the snapshot has {} bytes",
                r.offset, info.size
            )));
        }
        let mut file =
            std::fs::File::open(&path).map_err(|e| Status::internal(format!("opening {}: {e}", path.display())))?;
        file.seek(SeekFrom::Start(r.offset)).map_err(|e| Status::internal(format!("seeking: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let metrics = self.node.metrics.clone();
        let mut offset = r.offset;
        tokio::task::spawn_blocking(move || {
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
                        tx.blocking_send(Ok(chunk))
                    }
                    Err(e) => tx.blocking_send(Err(Status::internal(format!("reading the snapshot: {e}")))),
                };
                if sent.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
