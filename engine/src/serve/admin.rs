//! The Admin service: status, warm-up, verification and drain of the collections this process
//! serves.

use super::ServingProcess;
use super::proto::{self, admin_server};
use super::wire;
use crate::verify::verify;
use crate::warmup::{WarmupOptions, warm};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminService {
    process: Arc<ServingProcess>,
}

impl AdminService {
    pub fn new(process: Arc<ServingProcess>) -> Self {
        AdminService { process }
    }
}

/// The status of long work; when it stopped because its call was gone, a warning says so
/// (nobody else will see the answer, and a gate that never got its report should be traceable).
fn logged<T>(work: &str, collection: &str, result: crate::Result<T>) -> Result<T, Status> {
    if let Err(e @ crate::Error::Cancelled { .. }) = &result {
        tracing::warn!(collection, "{work} stopped: {e}");
    }
    result.map_err(super::status)
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    #[tracing::instrument(skip_all, fields(collection = %super::span_field(&request.get_ref().collection).escape_debug()))]
    async fn status(&self, request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        let c = self.process.collection(&request.into_inner().collection)?;
        Ok(Response::new(wire::status_response(c.manifest())))
    }

    #[tracing::instrument(skip_all, fields(collection = %super::span_field(&request.get_ref().collection).escape_debug()))]
    async fn warmup(&self, request: Request<proto::WarmupRequest>) -> Result<Response<proto::WarmupResponse>, Status> {
        let r = request.into_inner();
        let c = self.process.collection(&r.collection)?;
        let mut options = WarmupOptions::default();
        if r.max_queries > 0 {
            options.max_queries = r.max_queries as usize;
        }
        // Dropped with this future: a call that is gone stops the work (and frees the slot).
        let _cancel = options.cancel.on_drop();
        let report = self.process.admin_work(move || logged("warm-up", c.name(), warm(&c, &options))).await?;
        Ok(Response::new(wire::warmup_response(&report)))
    }

    #[tracing::instrument(skip_all, fields(collection = %super::span_field(&request.get_ref().collection).escape_debug()))]
    async fn verify(&self, request: Request<proto::VerifyRequest>) -> Result<Response<proto::VerifyResponse>, Status> {
        let r = request.into_inner();
        let c = self.process.collection(&r.collection)?;
        let options = wire::verify_options(r);
        let _cancel = options.cancel.on_drop();
        let report = self.process.admin_work(move || logged("verification", c.name(), verify(&c, &options))).await?;
        Ok(Response::new(wire::verify_response(&report)))
    }

    #[tracing::instrument(skip_all)]
    async fn drain(&self, _request: Request<proto::DrainRequest>) -> Result<Response<proto::DrainResponse>, Status> {
        self.process.drain().await;
        Ok(Response::new(proto::DrainResponse {}))
    }
}
