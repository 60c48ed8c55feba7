//! The CollectionAlias controller: points the alias Service at `spec.collection` once that
//! collection is Ready and verified for its current generation, keeps the previous target for
//! rollback, drains the previous target's replicas after a switch, and runs scheduled rebuilds.

use super::{Context, Error, Result, apply, condition, key, namespace};
use crate::crd::{AliasSwitch, CollectionAlias, CollectionAliasStatus, Phase, VectorCollection};
use crate::resources::alias_service;
use crate::resources::labels::{self, FIELD_MANAGER, Role};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

pub const CONTROLLER: &str = "alias";
/// Switches kept in `status.history`.
pub const HISTORY: usize = 10;
/// How often a waiting alias looks again (collection changes also wake it).
pub const WAIT_INTERVAL: Duration = Duration::from_secs(30);
pub const SETTLED_INTERVAL: Duration = Duration::from_secs(300);

pub async fn reconcile(ca: Arc<CollectionAlias>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let action = switch(&ca, &ctx).await?;
    ctx.succeeded(&key(ca.as_ref()));
    Ok(action)
}

pub fn error_policy(ca: Arc<CollectionAlias>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(alias = %key(ca.as_ref()), %error, "reconcile failed");
    ctx.metrics.error(CONTROLLER, error.kind());
    super::backoff(&ctx, &key(ca.as_ref()))
}

/// Why `vc` may not be served yet, or None when it may: Ready and verified for the
/// generation of its spec as it is now.
pub fn not_servable(name: &str, vc: Option<&VectorCollection>) -> Option<String> {
    let Some(vc) = vc else {
        return Some(format!("collection {name} does not exist"));
    };
    let generation = vc.metadata.generation;
    let Some(status) = vc.status.as_ref() else {
        return Some(format!("collection {name} has no status yet"));
    };
    if status.observed_generation != generation {
        return Some(format!("collection {name} has not been reconciled since its spec changed"));
    }
    if status.phase != Phase::Ready {
        let why = status.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        return Some(format!("collection {name} is {:?}{why}", status.phase));
    }
    let verified = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Verified" && c.status == "True" && c.observed_generation == generation);
    if !verified {
        return Some(format!("collection {name} is not verified for its current generation"));
    }
    None
}

async fn switch(ca: &CollectionAlias, ctx: &Context) -> Result<Action> {
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
    status.message = waiting.clone();
    let serving = status.current.clone();
    let synced = serving.as_deref() == Some(target.as_str());
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
            if synced { "Serving" } else { "WaitingForTarget" },
            waiting.as_deref().unwrap_or_default(),
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
        ctx.event(ca, EventType::Normal, "Switched", "Switch", note).await;
        if let Some(from) = from {
            drain(ca, ctx, &ns, &from).await?;
        }
    } else if let Some(why) = waiting.filter(|w| previous_status.message.as_ref() != Some(w)) {
        ctx.event(ca, EventType::Normal, "Waiting", "Switch", why).await;
    }
    Ok(Action::requeue(if synced { SETTLED_INTERVAL } else { WAIT_INTERVAL }))
}

/// Tells the replicas of the collection the alias left to drain, so clients pinned to them
/// by long-lived HTTP/2 connections reconnect through the Service to the new target.
async fn drain(ca: &CollectionAlias, ctx: &Context, ns: &str, collection: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = labels::selector(collection, Role::Replica)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    for ip in list.into_iter().filter_map(|p| p.status.and_then(|s| s.pod_ip)) {
        let endpoint = format!("http://{ip}:{}", crate::resources::GRPC_PORT);
        if let Err(e) = ctx.drainer.drain(&endpoint).await {
            // Not fatal: the pod's max connection age or restart moves its clients too.
            ctx.event(ca, EventType::Warning, "DrainFailed", "Drain", format!("{collection} at {endpoint}: {e}")).await;
        }
    }
    Ok(())
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
