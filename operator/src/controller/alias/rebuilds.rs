//! Scheduled rebuilds of an alias: a collection created from the template on each tick (or on
//! request), and old rebuilds pruned beyond the history limit.

use super::*;

/// Starts the rebuild that is due: a schedule tick (within its starting deadline, and under
/// concurrencyPolicy Forbid only when no rebuild is still building), or a request made with the
/// `quiver.dev/rebuild-requested` annotation. Creates the collection from the template and
/// records it in `status` (written with the rest of the status); the spec is never written.
/// Returns when the next tick is due, and what is wrong with the schedule, if anything.
pub(super) async fn start_rebuild(
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
    let since = rebuild::counted_from(ca, status).unwrap_or(now);
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
    let flip = match &ca.spec.collection {
        Some(pinned) => format!("spec.collection pins {pinned}: the alias stays there until the pin is removed"),
        None => "the alias flips once it is verified".to_string(),
    };
    let note = format!("building {name} ({why} {at}); {flip}");
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
pub(super) async fn prune(
    ca: &CollectionAlias,
    ctx: &Context,
    status: &CollectionAliasStatus,
    keep: usize,
) -> Result<()> {
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
