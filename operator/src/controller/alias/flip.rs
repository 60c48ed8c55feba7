//! Flipping an alias in Kubernetes: the target is marked as served (with the resourceVersion
//! it was judged at), the alias Service's selector is set to its replicas, and the flip is recorded in
//! `status` at once; then the served-by marks are brought in line and the conditions written.

use super::*;

/// Flips the Service to the target when it may serve; returns when to look again and the
/// status as written. What the alias serves is read from its live Service (the cluster's
/// truth: a restored alias without status keeps serving, and keeps its collection protected).
pub(super) async fn flip(
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

    let target = ca.target(&status);
    let target_vc = match &target {
        // From the cache: the mark below carries the resourceVersion it was judged at.
        Some(t) if status.current.as_ref() != Some(t) => ctx.caches.collections.get(&ns, t).map(|vc| (*vc).clone()),
        _ => None,
    };
    let waiting = match &target {
        None => Some(Waiting { message: "no rebuild has started yet".into(), failed: false }),
        Some(t) if status.current.as_ref() == Some(t) => None,
        Some(t) => flip_gate(t, target_vc.as_ref()),
    };
    let flipped_from = match (&waiting, status.current.clone(), &target_vc) {
        (None, current, Some(vc)) => {
            let target = vc.name_any();
            // Protected before it serves, and only as it was judged servable: the mark carries
            // the resourceVersion flip_gate read, so a deletion (or any change) admitted in
            // between fails it with 409 and the flip waits for the next look.
            mark_unchanged(ctx, &ns, ca, vc).await?;
            apply(ctx, &ns, &alias_service::service(ca, &target)).await?;
            status.previous = current.clone();
            status.current = Some(target.clone());
            status.flipped_at = Some(now.to_string());
            status.endpoints_moved_at = None;
            status.history.insert(0, AliasFlip { collection: target.clone(), at: now.to_string() });
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
    let flipped_reason = match &waiting {
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
            "Flipped",
            synced,
            flipped_reason,
            status.message.as_deref().unwrap_or_default(),
            generation,
            now,
        ),
    ];
    if status != written {
        patch_status(ca, ctx, &status, &mut version).await?;
    }
    let related = target.as_deref().map(|t| collection_ref(&ns, t));
    if let (Some(from), Some(target)) = (flipped_from, &target) {
        let note = match &from {
            Some(from) => format!("now serving {target} (was {from})"),
            None => format!("now serving {target}"),
        };
        ctx.event_about(ca, related, EventType::Normal, "Flipped", "Flip", note).await;
    } else if let Some(w) = waiting.filter(|w| previous_status.message.as_ref() != Some(&w.message)) {
        let (type_, reason) =
            if w.failed { (EventType::Warning, "TargetFailed") } else { (EventType::Normal, "Waiting") };
        ctx.event_about(ca, related, type_, reason, "Flip", w.message).await;
    }
    let settled = if synced && ready { ctx.resync } else { WAIT_INTERVAL };
    Ok((wait.map_or(settled, |w| w.min(settled)), status))
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

/// Marks the flip target `current`, failing (409 Conflict) if it changed since `vc` was read.
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
/// unmarked (a mark left behind by a flip that failed half-way, or an older previous).
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
