//! The CollectionAlias controller: points the alias Service at `spec.collection` once that
//! collection is Ready and verified for its current generation, keeps the previous target for
//! rollback, drains the previous target's replicas after a switch, and runs scheduled rebuilds.

use super::{Context, Error, Result, apply, collection_ref, condition, key, namespace, replica_pods};
use crate::crd::{
    AliasSwitch, CollectionAlias, CollectionAliasStatus, ConcurrencyPolicy, Phase, RebuildSpec, VectorCollection,
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
/// Switches kept in `status.history`.
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
    let (until, status) = switch(ca, ctx, status, problem).await?;
    wait = wait.min(until);
    if let Some(rebuild) = &ca.spec.rebuild {
        prune(ca, ctx, &status, rebuild.history_limit as usize).await?;
    }
    Ok(wait)
}

/// What the alias should serve: the pinned `spec.collection`, else the newest rebuild.
pub fn target(ca: &CollectionAlias, status: &CollectionAliasStatus) -> Option<String> {
    ca.spec.collection.clone().or_else(|| status.last_rebuild_collection.clone())
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

/// Why `vc` may not be served yet, or None when it may: not being deleted, Ready and verified
/// for the generation of its spec as it is now, with its wanted replicas ready (min replicas
/// when autoscaled), so the switch moves clients onto as many pods as the collection promised.
pub fn not_servable(name: &str, vc: Option<&VectorCollection>) -> Option<Waiting> {
    let waiting = |message: String, failed| Some(Waiting { message, failed });
    let Some(vc) = vc else {
        return waiting(format!("collection {name} does not exist"), false);
    };
    if vc.metadata.deletion_timestamp.is_some() {
        return waiting(format!("collection {name} is being deleted"), true);
    }
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
    let wanted = replicas::wanted(&vc.spec.replicas).max(1);
    if status.ready_replicas < wanted {
        return waiting(format!("collection {name} has {} of {wanted} replicas ready", status.ready_replicas), false);
    }
    None
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

/// Points the Service at the target when it may serve; returns when to look again and the
/// status as written. What the alias serves is read from its live Service (the cluster's
/// truth: a restored alias without status keeps serving, and keeps its collection protected).
async fn switch(
    ca: &CollectionAlias,
    ctx: &Context,
    mut status: CollectionAliasStatus,
    problem: Option<String>,
) -> Result<(Duration, CollectionAliasStatus)> {
    let ns = namespace(ca)?;
    // As stored: what this reconcile changes (a rebuild started) is written with the rest.
    let previous_status = ca.status.clone().unwrap_or_default();
    let mut version = ca.resource_version();
    let now = (ctx.now)();

    let live = alias_service(ca, ctx, &ns, &previous_status).await?;
    if let Some(service) = live.as_ref().filter(|s| !controlled_by(s, ca) && !adoptable(s, ca)) {
        return conflict(ca, ctx, service, previous_status, status).await;
    }
    if let Some(selected) = live.as_ref().and_then(selected_collection) {
        status.current = Some(selected);
    }
    // What the stored status says, so far: written again only when it changes.
    let mut written = previous_status.clone();

    let target = self::target(ca, &status);
    let target_vc = match &target {
        // From the cache: the mark below carries the resourceVersion it was judged at.
        Some(t) if status.current.as_ref() != Some(t) => ctx.caches.collections.get(&ns, t).map(|vc| (*vc).clone()),
        _ => None,
    };
    let waiting = match &target {
        None => Some(Waiting { message: "no rebuild has started yet".into(), failed: false }),
        Some(t) if status.current.as_ref() == Some(t) => None,
        Some(t) => not_servable(t, target_vc.as_ref()),
    };
    let switched_from = match (&waiting, status.current.clone(), &target_vc) {
        (None, current, Some(vc)) => {
            let target = vc.name_any();
            // Protected before it serves, and only as it was judged servable: the mark carries
            // the resourceVersion not_servable read, so a deletion (or any change) admitted in
            // between fails it with 409 and the switch waits for the next look.
            mark_unchanged(ctx, &ns, ca, vc).await?;
            apply(ctx, &ns, &alias_service::service(ca, &target)).await?;
            status.previous = current.clone();
            status.current = Some(target.clone());
            status.switched_at = Some(now.to_string());
            status.endpoints_moved_at = None;
            status.history.insert(0, AliasSwitch { collection: target.clone(), at: now.to_string() });
            status.history.truncate(HISTORY);
            // Recorded at once: a failure after this must not lose the collection the alias
            // left (the rollback target, still to be drained).
            patch_status(ca, ctx, &status, &mut version).await?;
            written = status.clone();
            Some(current)
        }
        (_, Some(current), _) => {
            // Keep (or restore) the Service on what it serves now.
            apply(ctx, &ns, &alias_service::service(ca, &current)).await?;
            None
        }
        (_, None, _) => None,
    };
    reconcile_marks(ctx, &ns, ca, &status).await?;
    let endpoints = match &status.current {
        Some(_) => ready_endpoints(ctx, &ns, &ca.name_any()),
        None => BTreeSet::new(),
    };
    let wait = drain_previous(ca, ctx, &ns, &mut status, &endpoints).await?;
    // Why it waits; else what is wrong with its rebuild schedule.
    status.message = waiting.as_ref().map(|w| w.message.clone()).or(problem);
    let serving = status.current.clone();
    let synced = serving.is_some() && serving == target;
    let switched_reason = match &waiting {
        None => "Serving",
        Some(w) if w.failed => "TargetFailed",
        Some(_) => "WaitingForTarget",
    };
    let (ready, ready_reason, ready_message) = match &serving {
        None => (false, "NoVerifiedTarget", "serving nothing yet".to_string()),
        Some(c) if endpoints.is_empty() => {
            (false, "NoReadyEndpoints", format!("serving {c}, but its Service has no ready endpoint"))
        }
        Some(c) => (true, "Serving", format!("serving {c}")),
    };
    let generation = ca.metadata.generation;
    let old = &previous_status.conditions;
    status.conditions = vec![
        condition(old, "Ready", ready, ready_reason, &ready_message, generation, now),
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
    if status != written {
        patch_status(ca, ctx, &status, &mut version).await?;
    }
    let related = target.as_deref().map(|t| collection_ref(&ns, t));
    if let (Some(from), Some(target)) = (switched_from, &target) {
        let note = match &from {
            Some(from) => format!("now serving {target} (was {from})"),
            None => format!("now serving {target}"),
        };
        ctx.event_about(ca, related, EventType::Normal, "Switched", "Switch", note).await;
    } else if let Some(w) = waiting.filter(|w| previous_status.message.as_ref() != Some(&w.message)) {
        let (type_, reason) =
            if w.failed { (EventType::Warning, "TargetFailed") } else { (EventType::Normal, "Waiting") };
        ctx.event_about(ca, related, type_, reason, "Switch", w.message).await;
    }
    let settled = if synced && ready { ctx.resync } else { WAIT_INTERVAL };
    Ok((wait.map_or(settled, |w| w.min(settled)), status))
}

/// The alias's Service as it is: from the cache when it selects what the stored status says the
/// alias serves (nothing has moved since the last reconcile wrote it), else from the API server
/// (a switch the cache has not seen yet, a restored alias without status, a Service this
/// operator did not make), whose answer is the truth the switch acts on.
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
        condition(old, "Switched", false, "ServiceConflict", &message, generation, now),
    ];
    if status != previous_status {
        patch_status(ca, ctx, &status, &mut ca.resource_version()).await?;
        ctx.event(ca, EventType::Warning, "ServiceConflict", "Switch", message).await;
    }
    Ok((WAIT_INTERVAL, status))
}

/// Marks (or with None unmarks) `collection` as served by this alias. A collection already
/// gone needs no mark.
async fn mark(ctx: &Context, ns: &str, ca: &CollectionAlias, collection: &str, value: Option<&str>) -> Result<()> {
    let collections: Api<VectorCollection> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({"metadata": {"labels": {labels::served_by(&ca.name_any()): value}}});
    match collections.patch(collection, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Marks the switch target `current`, failing (409 Conflict) if it changed since `vc` was read.
async fn mark_unchanged(ctx: &Context, ns: &str, ca: &CollectionAlias, vc: &VectorCollection) -> Result<()> {
    let collections: Api<VectorCollection> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({"metadata": {
        "labels": {labels::served_by(&ca.name_any()): "current"},
        "resourceVersion": vc.resource_version(),
    }});
    collections.patch(&vc.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Brings the served-by marks of this alias in line with what it serves: `current` and
/// `previous` marked (again, if a replace or a restore lost the label), every other collection
/// unmarked (a mark left behind by a switch that failed half-way, or an older previous).
async fn reconcile_marks(ctx: &Context, ns: &str, ca: &CollectionAlias, status: &CollectionAliasStatus) -> Result<()> {
    let key = labels::served_by(&ca.name_any());
    // A mark written since the cache last heard is written again: the same merge patch.
    let marked: BTreeMap<String, String> = ctx
        .caches
        .collections
        .in_namespace(ns)
        .into_iter()
        .filter_map(|c| Some((c.name_any(), c.labels().get(&key)?.clone())))
        .collect();
    let mut wanted: BTreeMap<String, &str> = BTreeMap::new();
    if let Some(previous) = &status.previous {
        wanted.insert(previous.clone(), "previous");
    }
    if let Some(current) = &status.current {
        wanted.insert(current.clone(), "current");
    }
    for (name, value) in &wanted {
        if marked.get(name).map(String::as_str) != Some(*value) {
            mark(ctx, ns, ca, name, Some(value)).await?;
        }
    }
    for name in marked.keys().filter(|n| !wanted.contains_key(*n)) {
        mark(ctx, ns, ca, name, None).await?;
    }
    Ok(())
}

/// The pods the alias Service's EndpointSlices list as ready. EndpointSlice `conditions.ready`
/// "should be interpreted as true" when unset, and is false for a terminating endpoint
/// (discovery.k8s.io/v1 EndpointConditions); a Service may have several slices.
fn ready_endpoints(ctx: &Context, ns: &str, service: &str) -> BTreeSet<String> {
    ctx.caches
        .slices
        .labelled(ns, &[("kubernetes.io/service-name", service)])
        .iter()
        .flat_map(|slice| slice.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.target_ref.as_ref().and_then(|r| r.name.clone()))
        .collect()
}

/// The ready replica pods of `collection`, by name.
fn ready_replicas(ctx: &Context, ns: &str, collection: &str) -> BTreeSet<String> {
    let ready = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True")
    };
    replica_pods(ctx, ns, collection).iter().filter(|p| ready(p)).map(|p| p.name_any()).collect()
}

/// Drains the previous target once the alias Service's endpoints list exactly the current
/// target's ready pods and the drain delay has passed since (kube-proxies and load balancers
/// follow the slices), unless another alias serves it. Records `drained` only when every
/// replica took the drain; a failure is retried. Returns when to look again, if sooner.
async fn drain_previous(
    ca: &CollectionAlias,
    ctx: &Context,
    ns: &str,
    status: &mut CollectionAliasStatus,
    endpoints: &BTreeSet<String>,
) -> Result<Option<Duration>> {
    let (Some(previous), Some(current)) = (status.previous.clone(), status.current.clone()) else {
        return Ok(None);
    };
    if status.drained.as_ref() == Some(&previous) || previous == current {
        return Ok(None);
    }
    let related = Some(collection_ref(ns, &previous));
    let others: Vec<String> = ctx
        .caches
        .aliases
        .in_namespace(ns)
        .into_iter()
        .filter(|a| a.name_any() != ca.name_any())
        .filter(|a| a.status.as_ref().and_then(|s| s.current.as_ref()) == Some(&previous))
        .map(|a| a.name_any())
        .collect();
    if !others.is_empty() {
        return skip_drain(ca, ctx, related, status, previous, &others).await;
    }
    if endpoints.is_empty() {
        // Nothing ready behind the alias: nothing to move clients to yet (slice changes wake it).
        status.endpoints_moved_at = None;
        return Ok(Some(WAIT_INTERVAL));
    }
    if *endpoints != ready_replicas(ctx, ns, &current) {
        status.endpoints_moved_at = None;
        return Ok(Some(ENDPOINTS_INTERVAL));
    }
    let now = (ctx.now)();
    let moved_at = status.endpoints_moved_at.get_or_insert_with(|| now.to_string()).clone();
    let since = now.as_second() - moved_at.parse::<Timestamp>().map(|t| t.as_second()).unwrap_or(0);
    let delay = ctx.drain_delay.as_secs() as i64;
    if since < delay {
        return Ok(Some(Duration::from_secs((delay - since).max(1) as u64)));
    }
    // Read live before acting: another alias that switched to it a moment ago marked it first.
    let live = Api::<VectorCollection>::namespaced(ctx.client.clone(), ns).get_opt(&previous).await?;
    let marked_by: Vec<String> = live
        .iter()
        .flat_map(|vc| vc.labels().iter())
        .filter(|(_, value)| value.as_str() == "current")
        .filter_map(|(key, _)| key.strip_prefix(labels::SERVED_BY_PREFIX))
        .filter(|alias| *alias != ca.name_any())
        .map(String::from)
        .collect();
    if !marked_by.is_empty() {
        return skip_drain(ca, ctx, related, status, previous, &marked_by).await;
    }
    if drain(ca, ctx, ns, &previous).await {
        status.drained = Some(previous);
        Ok(None)
    } else {
        Ok(Some(DRAIN_RETRY_INTERVAL))
    }
}

/// Leaves `previous` undrained for good: aliases `by` serve it.
async fn skip_drain(
    ca: &CollectionAlias,
    ctx: &Context,
    related: Option<ObjectReference>,
    status: &mut CollectionAliasStatus,
    previous: String,
    by: &[String],
) -> Result<Option<Duration>> {
    let note = format!("{previous} is served by alias {}: not drained", by.join(", "));
    ctx.event_about(ca, related, EventType::Normal, "DrainSkipped", "Drain", note).await;
    status.drained = Some(previous);
    Ok(None)
}

/// Starts the rebuild that is due: a schedule tick (within its starting deadline, and under
/// concurrencyPolicy Forbid only when no rebuild is still building), or a request made with the
/// `quiver.dev/rebuild-requested` annotation. Creates the collection from the template and
/// records it in `status` (written with the rest of the status); the spec is never written.
/// Returns when the next tick is due, and what is wrong with the schedule, if anything.
async fn start_rebuild(
    ca: &CollectionAlias,
    ctx: &Context,
    rebuild: &RebuildSpec,
    status: &mut CollectionAliasStatus,
) -> Result<(Duration, Option<String>)> {
    let now = (ctx.now)();
    let schedule = match Schedule::new(&rebuild.schedule, rebuild.time_zone.as_deref()) {
        Ok(s) => s,
        Err(message) => {
            // Announced once: the message stays in status (a timeZone CEL cannot check).
            if status.message.as_ref() != Some(&message) {
                ctx.event(ca, EventType::Warning, "InvalidSchedule", "Rebuild", message.clone()).await;
            }
            return Ok((ctx.resync, Some(message)));
        }
    };
    let since = status
        .last_rebuild
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| ca.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let requested =
        ca.annotations().get(REBUILD_REQUESTED).filter(|r| status.last_rebuild_request.as_ref() != Some(*r));
    let tick = if rebuild.suspend { None } else { schedule.due(since, now) };
    let start = match (tick, requested) {
        (tick, Some(_)) => {
            // A due tick is served by the requested rebuild.
            if let Some(tick) = tick {
                status.last_rebuild = Some(tick.to_string());
            }
            // The minute of the request names the collection, as a tick does.
            Some((Timestamp::from_second(now.as_second() - now.as_second().rem_euclid(60)).unwrap_or(now), "requested"))
        }
        (Some(tick), None) => {
            status.last_rebuild = Some(tick.to_string());
            if rebuild::missed(tick, now, rebuild.starting_deadline_seconds) {
                let late = now.as_second() - tick.as_second();
                let note = format!(
                    "skipped the rebuild scheduled {tick}: {late} s late, past startingDeadlineSeconds {}",
                    rebuild.starting_deadline_seconds.unwrap_or_default()
                );
                ctx.event(ca, EventType::Warning, "RebuildMissed", "Rebuild", note).await;
                None
            } else {
                Some((tick, "scheduled"))
            }
        }
        (None, None) => None,
    };
    if let Some((at, why)) = start {
        let started = start_one(ca, ctx, rebuild, status, at, why).await?;
        if let (true, Some(request)) = (started, requested) {
            // Handled only once started: under Forbid a request waits for the build in progress.
            status.last_rebuild_request = Some(request.clone());
        }
    }
    let next = schedule.after(now).filter(|_| !rebuild.suspend);
    let wait =
        next.map_or(ctx.resync, |t| Duration::from_secs(t.as_second().saturating_sub(now.as_second()).max(1) as u64));
    Ok((wait, None))
}

/// Creates the rebuild for `at` unless concurrencyPolicy Forbid holds it back; returns whether
/// it did.
async fn start_one(
    ca: &CollectionAlias,
    ctx: &Context,
    rebuild: &RebuildSpec,
    status: &mut CollectionAliasStatus,
    at: Timestamp,
    why: &str,
) -> Result<bool> {
    let ns = namespace(ca)?;
    let collections: Api<VectorCollection> = Api::namespaced(ctx.client.clone(), &ns);
    if rebuild.concurrency_policy == ConcurrencyPolicy::Forbid
        && let Some(last) = status.last_rebuild_collection.clone().filter(|l| status.current.as_ref() != Some(l))
        && let Some(building) = collections.get_opt(&last).await?.filter(still_building)
    {
        let note = format!(
            "skipped the rebuild {why} for {at}: {} is still {:?} (concurrencyPolicy Forbid)",
            building.name_any(),
            building.status.map(|s| s.phase).unwrap_or_default()
        );
        ctx.event_about(ca, Some(collection_ref(&ns, &last)), EventType::Normal, "RebuildSkipped", "Rebuild", note)
            .await;
        return Ok(false);
    }
    let name = rebuild::collection_name(&ca.name_any(), at);
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
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match collections.create(&params, &vc).await {
        Ok(_) => {}
        // The same tick names the same collection: an earlier attempt created it.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    status.last_rebuild_collection = Some(name.clone());
    let switch = match &ca.spec.collection {
        Some(pinned) => format!("spec.collection pins {pinned}: the alias stays there until the pin is removed"),
        None => "the alias switches once it is verified".to_string(),
    };
    let note = format!("building {name} ({why} {at}); {switch}");
    ctx.event_about(ca, Some(collection_ref(&ns, &name)), EventType::Normal, "RebuildStarted", "Rebuild", note).await;
    Ok(true)
}

/// A rebuild that has neither become Ready nor Failed.
fn still_building(vc: &VectorCollection) -> bool {
    vc.metadata.deletion_timestamp.is_none()
        && !matches!(vc.status.as_ref().map(|s| s.phase), Some(Phase::Ready | Phase::Failed))
}

/// Deletes rebuilt collections beyond the history limit; never one that any alias in the
/// namespace targets, serves or served before, nor the newest rebuild.
async fn prune(ca: &CollectionAlias, ctx: &Context, status: &CollectionAliasStatus, keep: usize) -> Result<()> {
    let ns = namespace(ca)?;
    let snapshot = ctx.caches.collections.labelled(&ns, &[(labels::ALIAS, &ca.name_any())]);
    let rebuilt: Vec<(String, Timestamp)> = snapshot
        .iter()
        // Already going (or held by a finalizer until no alias points at it).
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        // Marked as served by some alias: the admission policy would refuse it anyway.
        .filter(|c| !c.labels().keys().any(|k| k.starts_with(labels::SERVED_BY_PREFIX)))
        .map(|c| (c.name_any(), c.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_default()))
        .collect();
    if rebuilt.len() <= keep {
        return Ok(());
    }
    let others = ctx.caches.aliases.in_namespace(&ns);
    let mut protected: Vec<String> = served(ca, status);
    for other in others.iter().filter(|a| a.name_any() != ca.name_any()) {
        protected.extend(served(other, &other.status.clone().unwrap_or_default()));
    }
    let protected: Vec<&str> = protected.iter().map(String::as_str).collect();
    let collections: Api<VectorCollection> = Api::namespaced(ctx.client.clone(), &ns);
    for name in rebuild::to_delete(rebuilt, &protected, keep) {
        // Only as it was when judged prunable: a mark or any change since fails the precondition.
        let read = snapshot.iter().find(|c| c.name_any() == name);
        let preconditions = kube::api::Preconditions {
            resource_version: read.as_ref().and_then(|c| c.resource_version()),
            uid: read.as_ref().and_then(|c| c.uid()),
        };
        let params = DeleteParams { preconditions: Some(preconditions), ..DeleteParams::default() };
        match collections.delete(&name, &params).await {
            Ok(_) => {}
            // Gone already, refused at admission (marked meanwhile), or changed since it was
            // read (409): not ours to force; the next look decides again.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 || e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
        let note = format!("deleted {name}: beyond the history limit");
        ctx.event_about(ca, Some(collection_ref(&ns, &name)), EventType::Normal, "Pruned", "Rebuild", note).await;
    }
    Ok(())
}

/// What an alias must keep: its pin, its newest rebuild, what it serves and served before.
pub fn served(ca: &CollectionAlias, status: &CollectionAliasStatus) -> Vec<String> {
    [&ca.spec.collection, &status.last_rebuild_collection, &status.current, &status.previous]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

/// Tells the replicas of the collection the alias left to drain, so clients pinned to them
/// by long-lived HTTP/2 connections reconnect through the Service to the new target. The
/// replicas stay ready afterwards (the engine's drain is temporary), so a rollback is instant.
/// Returns whether every replica took it; each failure is a Warning Event.
async fn drain(ca: &CollectionAlias, ctx: &Context, ns: &str, collection: &str) -> bool {
    let related = Some(collection_ref(ns, collection));
    let pods = replica_pods(ctx, ns, collection);
    // The collection may be gone already: then its pods are going too; try without a token.
    let token = match ctx.caches.collections.get(ns, collection) {
        Some(vc) => super::collection_token(ctx, ns, &vc).await.ok().flatten(),
        None => None,
    };
    let (mut drained, mut failed) = (0, 0);
    for ip in pods.iter().filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone())) {
        let endpoint = format!("http://{ip}:{}", crate::resources::GRPC_PORT);
        match ctx.drainer.drain(&endpoint, token.as_deref()).await {
            Ok(()) => drained += 1,
            Err(e) => {
                if let (true, Some(vc)) = (e.token_refused(), ctx.caches.collections.get(ns, collection)) {
                    ctx.caches.tokens.forget(ns, &crate::resources::token::selector(&vc).name);
                }
                failed += 1;
                let note = format!("{collection} at {endpoint}: {e}; retried");
                ctx.event_about(ca, related.clone(), EventType::Warning, "DrainFailed", "Drain", note).await;
            }
        }
    }
    if failed == 0 {
        let note = format!("told {drained} replicas of {collection} to drain");
        ctx.event_about(ca, related, EventType::Normal, "Drained", "Drain", note).await;
    }
    failed == 0
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
