//! The Ingest service of `quiver writer`: batches streamed by an ETL are checked and spooled to
//! a JSON Lines file under `<data>/.spool/`; Seal imports the spool into the collection (the
//! same import, build and seal as a file source), writes the snapshot and starts serving it.
//! A writer that dies mid-ingest leaves only a spool, which the next start discards.

use super::proto::{self, ingest_server};
use super::{Node, status};
use crate::collection::validate::prepare_vector;
use crate::error::{Error, Result};
use crate::import::{self, Format, ReadOptions};
use crate::publish::{Publisher, Stage};
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct IngestService {
    node: Arc<Node>,
    publisher: Arc<Publisher>,
    spool: Arc<tokio::sync::Mutex<Option<Spool>>>,
    /// Set when the writer imports from --source: then pushes are refused.
    source: Option<String>,
}

struct Spool {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    rows: u64,
    dimensions: Option<usize>,
}

#[derive(Serialize)]
struct Line<'a> {
    id: u64,
    vector: &'a [f32],
    #[serde(skip_serializing_if = "str::is_empty")]
    partition: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
}

impl IngestService {
    /// Discards a spool left by an earlier process: its ETL run did not reach Seal.
    pub fn new(node: Arc<Node>, publisher: Arc<Publisher>, root: &std::path::Path, source: Option<String>) -> Self {
        let stale = spool_path(root, publisher.name());
        if stale.exists() {
            tracing::warn!(path = %stale.display(), "discarding an unsealed ingest spool from an earlier run");
            let _ = std::fs::remove_file(&stale);
        }
        IngestService { node, publisher, spool: Arc::new(tokio::sync::Mutex::new(None)), source }
    }

    fn root(&self) -> PathBuf {
        self.node.catalog.root().to_path_buf()
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

fn spool_path(root: &std::path::Path, name: &str) -> PathBuf {
    root.join(".spool").join(format!("{name}.jsonl"))
}

impl Spool {
    fn create(path: PathBuf) -> Result<Spool> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let file = std::fs::File::create(&path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(Spool { path, out: BufWriter::with_capacity(1 << 20, file), rows: 0, dimensions: None })
    }

    /// Checks every record of a batch before spooling any of it, so a bad batch adds nothing.
    fn append(&mut self, batch: &proto::WriteBatch, publisher: &Publisher) -> Result<(), Status> {
        let options = publisher.options();
        let mut dims = self.dimensions.or(options.dimensions);
        for (i, record) in batch.records.iter().enumerate() {
            let expected = *dims.get_or_insert(record.vector.len());
            let mut copy = record.vector.clone();
            if let Err((field, value, reason)) = prepare_vector(&mut copy, expected, options.metric) {
                return Err(Status::invalid_argument(format!(
                    "invalid request: field `records[{i}].{field}` = {value}: {reason} (record id {})",
                    record.id
                )));
            }
        }
        for record in &batch.records {
            let line = Line { id: record.id, vector: &record.vector, partition: &record.partition, tags: &record.tags };
            serde_json::to_writer(&mut self.out, &line).map_err(|e| Status::internal(format!("spooling: {e}")))?;
            self.out.write_all(b"\n").map_err(|e| Status::internal(format!("spooling: {e}")))?;
        }
        self.rows += batch.records.len() as u64;
        self.dimensions = dims;
        Ok(())
    }
}

#[tonic::async_trait]
impl ingest_server::Ingest for IngestService {
    async fn write(
        &self,
        request: Request<Streaming<proto::WriteBatch>>,
    ) -> Result<Response<proto::WriteSummary>, Status> {
        let mut stream = request.into_inner();
        let mut received = 0u64;
        while let Some(batch) = stream.message().await? {
            self.check_writable(&batch.collection)?;
            let mut spool = self.spool.lock().await;
            if spool.is_none() {
                *spool = Some(Spool::create(spool_path(&self.root(), self.publisher.name())).map_err(status)?);
                self.publisher.set_stage(Stage::Receiving);
            }
            let spool = spool.as_mut().expect("created above");
            spool.append(&batch, &self.publisher)?;
            received += batch.records.len() as u64;
        }
        Ok(Response::new(proto::WriteSummary { rows: received }))
    }

    async fn seal(&self, request: Request<proto::SealRequest>) -> Result<Response<proto::SealResponse>, Status> {
        self.check_writable(&request.into_inner().collection)?;
        let Some(mut spool) = self.spool.lock().await.take() else {
            return Err(Status::failed_precondition("nothing to seal: no records were written"));
        };
        spool.out.flush().map_err(|e| Status::internal(format!("flushing the spool: {e}")))?;
        let (path, rows) = (spool.path.clone(), spool.rows);
        drop(spool);
        tracing::info!(rows, collection = self.publisher.name(), "sealing the pushed records");
        let publisher = self.publisher.clone();
        let read = ReadOptions { format: Some(Format::JsonLines), ..Default::default() };
        let spooled = path.clone();
        let result = super::blocking(move || {
            let records = import::read(&spooled.display().to_string(), &read).map_err(status)?;
            publisher.publish(records).map_err(status)
        })
        .await;
        let _ = std::fs::remove_file(&path);
        let (collection, _info) = result?;
        let manifest_json = serde_json::to_string(collection.manifest()).expect("manifest serializes");
        self.node.catalog.adopt(collection);
        self.node.set_ready(true).await;
        Ok(Response::new(proto::SealResponse { manifest_json }))
    }

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
        if progress.phase() == proto::WriterPhase::Receiving {
            progress.rows = self.spool.lock().await.as_ref().map_or(0, |s| s.rows);
        }
        Ok(Response::new(progress))
    }
}
