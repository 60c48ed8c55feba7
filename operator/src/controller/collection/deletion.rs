//! Deleting a collection: the finalizer that holds it while an alias targets, serves or keeps
//! it, and the clean-up once none does.

use super::*;

pub(super) async fn add_finalizer(vc: &VectorCollection, ctx: &Context) -> Result<()> {
    let mut finalizers = vc.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    set_finalizers(vc, ctx, finalizers).await
}

/// A merge patch carrying the resourceVersion: a concurrent change to the list makes it fail
/// (409) and the reconcile retry, instead of clobbering another controller's finalizer.
pub(super) async fn set_finalizers(vc: &VectorCollection, ctx: &Context, finalizers: Vec<String>) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": vc.resource_version()},
    });
    api(vc, ctx)?.patch(&vc.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Removes the served-by marks of aliases that no longer exist (an alias deleted while it
/// served this collection), so the collection can be deleted again. The merge patch carries the
/// resourceVersion: a mark an alias adds meanwhile makes it fail (409) and the reconcile retry.
pub(super) async fn unmark_gone_aliases(vc: &VectorCollection, ctx: &Context) -> Result<()> {
    let marked: Vec<String> =
        vc.labels().keys().filter_map(|k| k.strip_prefix(labels::SERVED_BY_PREFIX)).map(String::from).collect();
    if marked.is_empty() {
        return Ok(());
    }
    // An alias that marked it is in the cache: the alias controller reconciled it from there.
    let existing: Vec<String> = ctx.caches.aliases.in_namespace(&namespace(vc)?).iter().map(|a| a.name_any()).collect();
    let gone: serde_json::Map<String, serde_json::Value> = marked
        .iter()
        .filter(|a| !existing.contains(a))
        .map(|a| (labels::served_by(a), serde_json::Value::Null))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {"labels": gone, "resourceVersion": vc.resource_version()}});
    api(vc, ctx)?.patch(&vc.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Aliases in the collection's namespace that serve it or are about to.
pub fn aliases_pointing_at(vc: &VectorCollection, ctx: &Context) -> Result<Vec<String>> {
    Ok(ctx
        .caches
        .aliases
        .in_namespace(&namespace(vc)?)
        .into_iter()
        .filter(|a| crate::resources::replicas::points_at(a, vc))
        .map(|a| a.name_any())
        .collect())
}

pub(super) async fn cleanup(vc: &VectorCollection, ctx: &Context) -> Result<Action> {
    if !vc.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let blockers = aliases_pointing_at(vc, ctx)?;
    if !blockers.is_empty() {
        let message = format!("deletion waits: alias {} points at this collection", blockers.join(", "));
        let mut status = vc.status.clone().unwrap_or_default();
        let now = (ctx.now)();
        let blocked = condition(
            &status.conditions,
            "DeletionBlocked",
            true,
            "AliasPointsHere",
            &message,
            vc.metadata.generation,
            now,
        );
        if !status.conditions.contains(&blocked) {
            ctx.event(vc, EventType::Warning, "DeletionBlocked", "Delete", message).await;
            status.conditions.retain(|c| c.type_ != "DeletionBlocked");
            status.conditions.push(blocked);
            patch_status(vc, ctx, &status).await?;
        }
        return Ok(Action::requeue(BLOCKED_INTERVAL));
    }
    let rest = vc.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(vc, ctx, rest).await?;
    ctx.forget_status_writes(&key(vc));
    ctx.caches.tokens.forget(&namespace(vc)?, &token::selector(vc).name);
    Ok(Action::await_change())
}
