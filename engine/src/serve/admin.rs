//! The Admin service: status, warm-up, verification and drain of the collections this process
//! serves.

use super::Node;
use super::proto::{self, admin_server};
use crate::verify::{VerifyOptions, verify};
use crate::warmup::{WarmupOptions, warm};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("reports serialize")
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn status(&self, request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        let c = self.node.collection(&request.into_inner().collection)?;
        let m = c.manifest();
        Ok(Response::new(proto::StatusResponse {
            collection: m.name.clone(),
            count: m.count,
            dimensions: m.dimensions as u32,
            distance: m.metric.to_string(),
            search_setting: format!("{} quality={}", m.search.strategy, m.search.quality),
            manifest_json: json(m),
        }))
    }

    async fn warmup(&self, request: Request<proto::WarmupRequest>) -> Result<Response<proto::WarmupResponse>, Status> {
        let r = request.into_inner();
        let c = self.node.collection(&r.collection)?;
        let mut options = WarmupOptions::default();
        if r.max_queries > 0 {
            options.max_queries = r.max_queries as usize;
        }
        // Dropped with this future: a call that is gone stops the work (and frees the slot).
        let _cancel = options.cancel.on_drop();
        let report = self.node.admin_work(move || warm(&c, &options).map_err(super::status)).await?;
        Ok(Response::new(proto::WarmupResponse {
            cold_first_query_ms: report.cold_first_query_ms,
            warm_p50_ms: report.warm_p50_ms,
            warm_p99_ms: report.warm_p99_ms,
            report_json: json(&report),
        }))
    }

    async fn verify(&self, request: Request<proto::VerifyRequest>) -> Result<Response<proto::VerifyResponse>, Status> {
        let r = request.into_inner();
        let c = self.node.collection(&r.collection)?;
        let defaults = VerifyOptions::default();
        let options = VerifyOptions {
            expected_count: r.expected_count,
            min_recall: if r.min_recall > 0.0 { r.min_recall } else { defaults.min_recall },
            max_p99_ms: r.max_p99_ms,
            k: if r.k > 0 { r.k as usize } else { defaults.k },
            sample: if r.sample > 0 { r.sample as usize } else { defaults.sample },
            queries: r.queries.into_iter().map(|q| q.values).collect(),
            ..defaults
        };
        let _cancel = options.cancel.on_drop();
        let report = self.node.admin_work(move || verify(&c, &options).map_err(super::status)).await?;
        Ok(Response::new(proto::VerifyResponse { passed: report.passed, report_json: json(&report) }))
    }

    async fn drain(&self, _request: Request<proto::DrainRequest>) -> Result<Response<proto::DrainResponse>, Status> {
        self.node.drain().await;
        Ok(Response::new(proto::DrainResponse {}))
    }
}
