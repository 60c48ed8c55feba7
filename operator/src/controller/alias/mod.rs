//! The CollectionAlias controller: flips the alias Service to `spec.collection` once that
//! collection is Ready and verified for its current generation, keeps the previous target for
//! rollback, drains the previous target's replicas after a flip, and runs scheduled rebuilds.
//!
//! One file per step: `gate.rs` (may the alias flip to its target?), `flip.rs` (the Service's
//! selector, the served-by marks, the status), `drain.rs` (the previous target afterwards),
//! `rebuilds.rs` (the schedule and its history); this file drives them and writes status.

mod drain;
mod flip;
mod gate;
mod rebuilds;

use drain::{drain_previous, ready_endpoints};
use flip::flip;
pub use gate::flip_gate;
use rebuilds::{prune, start_rebuild};

use super::{Context, Error, Result, apply, collection_ref, collection_token, condition, key, namespace, replica_pods};
use crate::crd::{
    AliasFlip, CollectionAlias, CollectionAliasStatus, ConcurrencyPolicy, Phase, RebuildSpec, VectorCollection,
};
use crate::rebuild::{self, Schedule};
use crate::resources::alias_service;
use crate::resources::labels::{self, FIELD_MANAGER};
use crate::resources::replicas;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub const CONTROLLER: &str = "alias";
/// Annotate an alias with a new value of this to start a rebuild at once (as `kubectl create
/// job --from=cronjob/...` does for a CronJob): `kubectl annotate ca products
/// quiver.dev/rebuild-requested="$(date +%s)" --overwrite`.
pub const REBUILD_REQUESTED: &str = "quiver.dev/rebuild-requested";
/// Flips kept in `status.history`.
pub const HISTORY: usize = 10;
/// How often a waiting alias looks again (collection changes also wake it).
pub const WAIT_INTERVAL: Duration = Duration::from_secs(30);
/// Default time between the alias Service's endpoints listing only the new target and the
/// previous target's drain (`--drain-delay-secs`): kube-proxies and load balancers follow.
pub const DRAIN_DELAY: Duration = Duration::from_secs(5);
/// How often endpoints are looked at while they have not moved (their changes also wake it).
pub const ENDPOINTS_INTERVAL: Duration = Duration::from_secs(5);
/// A drain that failed is tried again after this long.
pub const DRAIN_RETRY_INTERVAL: Duration = Duration::from_secs(10);

#[tracing::instrument(skip_all, fields(namespace = ca.namespace().as_deref().unwrap_or_default(), alias = %ca.name_any()))]
pub async fn reconcile(ca: Arc<CollectionAlias>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches.wait_until_ready().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    match steps(&ca, &ctx).await {
        Ok(wait) => {
            ctx.succeeded(&key(ca.as_ref()));
            Ok(Action::requeue(wait))
        }
        Err(e) => {
            // Where the user looks: a Warning Event (the recorder folds repeats into a series).
            let note = format!("reconcile failed: {e}");
            ctx.event(ca.as_ref(), EventType::Warning, "ReconcileError", "Reconcile", note).await;
            Err(e)
        }
    }
}

async fn steps(ca: &CollectionAlias, ctx: &Context) -> Result<Duration> {
    let mut status = ca.status.clone().unwrap_or_default();
    let (mut wait, problem) = match &ca.spec.rebuild {
        Some(rebuild) => start_rebuild(ca, ctx, rebuild, &mut status).await?,
        None => (ctx.resync, None),
    };
    let (until, status) = flip(ca, ctx, status, problem).await?;
    wait = wait.min(until);
    if let Some(rebuild) = &ca.spec.rebuild {
        prune(ca, ctx, &status, rebuild.history_limit as usize).await?;
    }
    Ok(wait)
}

pub fn error_policy(ca: Arc<CollectionAlias>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(alias = %key(ca.as_ref()), %error, "reconcile failed");
    ctx.metrics.error(CONTROLLER, error.kind());
    super::backoff(&ctx, &key(ca.as_ref()))
}

/// Why an alias does not serve its target yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub message: String,
    /// The target failed (a failed build or verification): it will not become servable
    /// without a change, so this is reported as a warning.
    pub failed: bool,
}

/// The collection a live alias Service selects.
pub fn selected_collection(service: &Service) -> Option<String> {
    service.spec.as_ref()?.selector.as_ref()?.get(labels::COLLECTION).cloned()
}

/// Whether `service` is this alias's own (its controller owner reference names the alias).
fn controlled_by(service: &Service, ca: &CollectionAlias) -> bool {
    let uid = ca.metadata.uid.as_deref();
    service.owner_references().iter().any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// A Service this operator made for an alias of this name that lost its owner: orphaned by
/// `kubectl delete --cascade=orphan`, or owned by the uid of an alias since re-created. The
/// apply adopts it (its owner reference is the field manager's own).
fn adoptable(service: &Service, ca: &CollectionAlias) -> bool {
    let labels = service.labels();
    let ours = labels.get(labels::ALIAS) == Some(&ca.name_any())
        && labels.get(labels::MANAGED_BY).map(String::as_str) == Some(FIELD_MANAGER);
    let controller = service.owner_references().iter().find(|o| o.controller == Some(true));
    ours && controller.is_none_or(|o| o.kind == "CollectionAlias" && o.name == ca.name_any())
}

/// The alias's Service as it is: from the cache when it selects what the stored status says the
/// alias serves (nothing has moved since the last reconcile wrote it), else from the API server
/// (a flip the cache has not seen yet, a restored alias without status, a Service this
/// operator did not make), whose answer is the truth the flip acts on.
async fn alias_service(
    ca: &CollectionAlias,
    ctx: &Context,
    ns: &str,
    stored: &CollectionAliasStatus,
) -> Result<Option<Service>> {
    let cached = ctx.caches.services.get(ns, &ca.name_any());
    if let Some(service) = cached.filter(|s| controlled_by(s, ca) && selected_collection(s) == stored.current) {
        return Ok(Some((*service).clone()));
    }
    Ok(Api::<Service>::namespaced(ctx.client.clone(), ns).get_opt(&ca.name_any()).await?)
}

/// A Service of the alias's name that something else controls: reported, never taken over.
async fn conflict(
    ca: &CollectionAlias,
    ctx: &Context,
    service: &Service,
    previous_status: CollectionAliasStatus,
    mut status: CollectionAliasStatus,
) -> Result<(Duration, CollectionAliasStatus)> {
    let owner = service
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{} {}", o.kind, o.name))
        .unwrap_or_else(|| "nothing (no controller owner reference)".into());
    let message = format!(
        "Service {} exists and is not this alias's (its controller is {owner}); the alias does not take it over: rename the alias or remove the Service",
        ca.name_any()
    );
    let now = (ctx.now)();
    let generation = ca.metadata.generation;
    let old = &previous_status.conditions;
    status.message = Some(message.clone());
    status.conditions = vec![
        condition(old, "Ready", false, "ServiceConflict", &message, generation, now),
        condition(old, "Flipped", false, "ServiceConflict", &message, generation, now),
    ];
    if status != previous_status {
        patch_status(ca, ctx, &status, &mut ca.resource_version()).await?;
        ctx.event(ca, EventType::Warning, "ServiceConflict", "Flip", message).await;
    }
    Ok((WAIT_INTERVAL, status))
}

/// What an alias must keep: its pin, its newest rebuild, what it serves and served before.
pub fn served(ca: &CollectionAlias, status: &CollectionAliasStatus) -> Vec<String> {
    [&ca.spec.collection, &status.last_rebuild_collection, &status.current, &status.previous]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

/// Writes the alias's status, computed from the copy at `version` (its resourceVersion, then
/// the one this write returns): a resourceVersion in an apply is a precondition, so a status
/// built from a cached copy older than the stored object (a previous target the last
/// reconcile recorded) fails with 409 and the reconcile looks again, instead of overwriting it.
async fn patch_status(
    ca: &CollectionAlias,
    ctx: &Context,
    status: &CollectionAliasStatus,
    version: &mut Option<String>,
) -> Result<()> {
    let api: Api<CollectionAlias> = Api::namespaced(ctx.client.clone(), &namespace(ca)?);
    let mut patch = serde_json::json!({
        "apiVersion": CollectionAlias::api_version(&()),
        "kind": CollectionAlias::kind(&()),
        "status": status,
    });
    if let Some(version) = version.as_ref() {
        patch["metadata"] = serde_json::json!({"resourceVersion": version});
    }
    let written =
        api.patch_status(&ca.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    *version = written.resource_version();
    Ok(())
}
