//! The CollectionAlias controller: points the alias Service at `spec.collection` once that
//! collection is Ready and verified for its current generation, keeps the previous target for
//! rollback, drains the previous target's replicas after a switch, and runs scheduled rebuilds.

use super::{Context, Error, Result, apply, collection_ref, condition, key, namespace};
use crate::crd::{AliasSwitch, CollectionAlias, CollectionAliasStatus, Phase, VectorCollection};
use crate::rebuild::{self, Schedule};
use crate::resources::alias_service;
use crate::resources::labels::{self, FIELD_MANAGER, Role};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const CONTROLLER: &str = "alias";
/// Switches kept in `status.history`.
pub const HISTORY: usize = 10;
/// How often a waiting alias looks again (collection changes also wake it).
pub const WAIT_INTERVAL: Duration = Duration::from_secs(30);
pub const SETTLED_INTERVAL: Duration = Duration::from_secs(300);
/// Time for Service endpoints to follow a switch before the previous target is drained.
pub const DRAIN_DELAY: Duration = Duration::from_secs(5);

pub async fn reconcile(ca: Arc<CollectionAlias>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let action = if start_rebuild(&ca, &ctx).await? {
        // spec.collection moved to the new collection: that change brings the next reconcile.
        Action::requeue(WAIT_INTERVAL)
    } else {
        let (mut wait, status) = switch(&ca, &ctx).await?;
        if let Some(rebuild) = &ca.spec.rebuild {
            prune(&ca, &ctx, &status, rebuild.history_limit as usize).await?;
            let now = (ctx.now)();
            if let Some(tick) = rebuild.schedule.parse::<Schedule>().ok().and_then(|s| s.after(now)) {
                let until = Duration::from_secs(tick.as_second().saturating_sub(now.as_second()).max(1) as u64);
                wait = wait.min(until);
            }
        }
        Action::requeue(wait)
    };
    ctx.succeeded(&key(ca.as_ref()));
    Ok(action)
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

/// Why `vc` may not be served yet, or None when it may: Ready and verified for the
/// generation of its spec as it is now.
pub fn not_servable(name: &str, vc: Option<&VectorCollection>) -> Option<Waiting> {
    let waiting = |message: String, failed| Some(Waiting { message, failed });
    let Some(vc) = vc else {
        return waiting(format!("collection {name} does not exist"), false);
    };
    let generation = vc.metadata.generation;
    let Some(status) = vc.status.as_ref() else {
        return waiting(format!("collection {name} has no status yet"), false);
    };
    if status.observed_generation != generation {
        return waiting(format!("collection {name} has not been reconciled since its spec changed"), false);
    }
    if status.phase != Phase::Ready {
        let why = status.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        return waiting(format!("collection {name} is {:?}{why}", status.phase), status.phase == Phase::Failed);
    }
    let verified = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Verified" && c.status == "True" && c.observed_generation == generation);
    if !verified {
        return waiting(format!("collection {name} is not verified for its current generation"), false);
    }
    None
}

/// Points the Service at the target when it may serve; returns when to look again and the
/// status as written.
async fn switch(ca: &CollectionAlias, ctx: &Context) -> Result<(Duration, CollectionAliasStatus)> {
    let ns = namespace(ca)?;
    let target = ca.spec.collection.clone();
    let previous_status = ca.status.clone().unwrap_or_default();
    let mut status = previous_status.clone();
    let collections: Api<VectorCollection> = Api::namespaced(ctx.client.clone(), &ns);
    let now = (ctx.now)();

    let waiting = if status.current.as_deref() == Some(target.as_str()) {
        None
    } else {
        not_servable(&target, collections.get_opt(&target).await?.as_ref())
    };
    let switched_from = match (&waiting, status.current.clone()) {
        (None, current) if current.as_deref() != Some(target.as_str()) => {
            apply(&ctx.client, &ns, &alias_service::service(ca, &target)).await?;
            status.previous = current.clone();
            status.current = Some(target.clone());
            status.switched_at = Some(now.to_string());
            status.history.insert(0, AliasSwitch { collection: target.clone(), at: now.to_string() });
            status.history.truncate(HISTORY);
            Some(current)
        }
        (_, Some(current)) => {
            // Keep (or restore) the Service on what it serves now.
            apply(&ctx.client, &ns, &alias_service::service(ca, &current)).await?;
            None
        }
        (_, None) => None,
    };
    // Drain the previous target only once the Service's endpoints had time to move, or
    // clients reconnecting at once could land on (and stay pinned to) the old pods again.
    let mut wait = None;
    if let (Some(previous), Some(at)) = (status.previous.clone(), status.switched_at.as_deref()) {
        let undrained = status.drained.as_ref() != Some(&previous) && status.current.as_ref() != Some(&previous);
        let since = now.as_second() - at.parse::<Timestamp>().map(|t| t.as_second()).unwrap_or(0);
        if undrained && since >= DRAIN_DELAY.as_secs() as i64 {
            drain(ca, ctx, &ns, &previous).await;
            status.drained = Some(previous);
        } else if undrained {
            wait = Some(Duration::from_secs((DRAIN_DELAY.as_secs() as i64 - since).max(1) as u64));
        }
    }
    status.message = waiting.as_ref().map(|w| w.message.clone());
    let serving = status.current.clone();
    let synced = serving.as_deref() == Some(target.as_str());
    let switched_reason = match &waiting {
        None => "Serving",
        Some(w) if w.failed => "TargetFailed",
        Some(_) => "WaitingForTarget",
    };
    let generation = ca.metadata.generation;
    let old = &previous_status.conditions;
    status.conditions = vec![
        condition(
            old,
            "Ready",
            serving.is_some(),
            if serving.is_some() { "Serving" } else { "NoVerifiedTarget" },
            &serving.as_ref().map(|c| format!("serving {c}")).unwrap_or_else(|| "serving nothing yet".into()),
            generation,
            now,
        ),
        condition(
            old,
            "Switched",
            synced,
            switched_reason,
            status.message.as_deref().unwrap_or_default(),
            generation,
            now,
        ),
    ];
    if status != previous_status {
        patch_status(ca, ctx, &status).await?;
    }
    if let Some(from) = switched_from {
        let note = match &from {
            Some(from) => format!("now serving {target} (was {from})"),
            None => format!("now serving {target}"),
        };
        ctx.event_about(ca, Some(collection_ref(&ns, &target)), EventType::Normal, "Switched", "Switch", note).await;
    } else if let Some(w) = waiting.filter(|w| previous_status.message.as_ref() != Some(&w.message)) {
        let (type_, reason) =
            if w.failed { (EventType::Warning, "TargetFailed") } else { (EventType::Normal, "Waiting") };
        ctx.event_about(ca, Some(collection_ref(&ns, &target)), type_, reason, "Switch", w.message).await;
    }
    let settled = if synced { SETTLED_INTERVAL } else { WAIT_INTERVAL };
    Ok((wait.map_or(settled, |w| w.min(settled)), status))
}

/// Starts the rebuild whose schedule tick is due: creates the collection from the template
/// and makes it the alias's target. Returns whether it did.
async fn start_rebuild(ca: &CollectionAlias, ctx: &Context) -> Result<bool> {
    let Some(rebuild) = ca.spec.rebuild.as_ref().filter(|r| !r.suspend) else {
        return Ok(false);
    };
    let schedule = match rebuild.schedule.parse::<Schedule>() {
        Ok(s) => s,
        Err(message) => {
            ctx.event(ca, EventType::Warning, "InvalidSchedule", "Rebuild", message).await;
            return Ok(false);
        }
    };
    let now = (ctx.now)();
    let status = ca.status.clone().unwrap_or_default();
    let since = status
        .last_rebuild
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| ca.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let Some(tick) = schedule.due(since, now) else {
        return Ok(false);
    };
    let ns = namespace(ca)?;
    let name = rebuild::collection_name(&ca.name_any(), tick);
    let vc = VectorCollection {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            // Labelled, not owned: deleting the alias must not delete the collections it serves.
            labels: Some(BTreeMap::from([
                (labels::NAME.to_string(), "quiver".to_string()),
                (labels::ALIAS.to_string(), ca.name_any()),
                (labels::MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
            ])),
            ..Default::default()
        },
        spec: rebuild.template.clone(),
        status: None,
    };
    let collections: Api<VectorCollection> = Api::namespaced(ctx.client.clone(), &ns);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match collections.create(&params, &vc).await {
        Ok(_) => {}
        // The same tick names the same collection: an earlier attempt created it.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let mut status = status;
    status.last_rebuild = Some(tick.to_string());
    status.last_rebuild_collection = Some(name.clone());
    patch_status(ca, ctx, &status).await?;
    let aliases: Api<CollectionAlias> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({"spec": {"collection": name}});
    aliases.patch(&ca.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    let note = format!("building {name} (scheduled {tick}); the alias switches once it is verified");
    ctx.event_about(ca, Some(collection_ref(&ns, &name)), EventType::Normal, "RebuildStarted", "Rebuild", note).await;
    Ok(true)
}

/// Deletes rebuilt collections beyond the history limit; never the target, current or previous.
async fn prune(ca: &CollectionAlias, ctx: &Context, status: &CollectionAliasStatus, keep: usize) -> Result<()> {
    let ns = namespace(ca)?;
    let collections: Api<VectorCollection> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{}={}", labels::ALIAS, ca.name_any());
    let rebuilt: Vec<(String, Timestamp)> = collections
        .list(&ListParams::default().labels(&selector))
        .await?
        .into_iter()
        // Already going (or held by a finalizer until no alias points at it).
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| (c.name_any(), c.metadata.creation_timestamp.map(|t| t.0).unwrap_or_default()))
        .collect();
    let protected: Vec<&str> = [Some(&ca.spec.collection), status.current.as_ref(), status.previous.as_ref()]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    for name in rebuild::to_delete(rebuilt, &protected, keep) {
        match collections.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        let note = format!("deleted {name}: beyond the history limit");
        ctx.event_about(ca, Some(collection_ref(&ns, &name)), EventType::Normal, "Pruned", "Rebuild", note).await;
    }
    Ok(())
}

/// Tells the replicas of the collection the alias left to drain, so clients pinned to them
/// by long-lived HTTP/2 connections reconnect through the Service to the new target. Best
/// effort: a replica's max connection age and restarts move its clients too.
async fn drain(ca: &CollectionAlias, ctx: &Context, ns: &str, collection: &str) {
    let related = Some(collection_ref(ns, collection));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = labels::selector(collection, Role::Replica)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(e) => {
            let note = format!("listing the replicas of {collection}: {e}");
            ctx.event_about(ca, related, EventType::Warning, "DrainFailed", "Drain", note).await;
            return;
        }
    };
    // The collection may be gone already: then its pods are going too; try without a token.
    let collections: Api<VectorCollection> = Api::namespaced(ctx.client.clone(), ns);
    let token = match collections.get_opt(collection).await {
        Ok(Some(vc)) => super::collection_token(&ctx.client, ns, &vc.spec).await.ok().flatten(),
        _ => None,
    };
    let mut drained = 0;
    for ip in list.into_iter().filter_map(|p| p.status.and_then(|s| s.pod_ip)) {
        let endpoint = format!("http://{ip}:{}", crate::resources::GRPC_PORT);
        match ctx.drainer.drain(&endpoint, token.as_deref()).await {
            Ok(()) => drained += 1,
            Err(e) => {
                let note = format!("{collection} at {endpoint}: {e}");
                ctx.event_about(ca, related.clone(), EventType::Warning, "DrainFailed", "Drain", note).await;
            }
        }
    }
    let note = format!("told {drained} replicas of {collection} to drain");
    ctx.event_about(ca, related, EventType::Normal, "Drained", "Drain", note).await;
}

async fn patch_status(ca: &CollectionAlias, ctx: &Context, status: &CollectionAliasStatus) -> Result<()> {
    let api: Api<CollectionAlias> = Api::namespaced(ctx.client.clone(), &namespace(ca)?);
    let patch = serde_json::json!({
        "apiVersion": CollectionAlias::api_version(&()),
        "kind": CollectionAlias::kind(&()),
        "status": status,
    });
    api.patch_status(&ca.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    Ok(())
}
