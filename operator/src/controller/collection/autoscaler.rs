//! The replica count's hand-over between the operator and the HPA.

use super::*;

/// Deletes the collection's HPA (gone already is fine). A scaled-down collection asks only when
/// its cache holds one (it is looked at every few minutes); a spec change asks once, whatever
/// the cache says (an HPA made a moment ago may not be in it yet).
pub(super) async fn delete_autoscaler(ctx: &Context, ns: &str, name: &str) -> Result<()> {
    delete_if_present::<HorizontalPodAutoscaler>(ctx, ns, &labels::replicas_name(name), &DeleteParams::background())
        .await?;
    Ok(())
}

/// The field manager that keeps the replica count while it passes from the operator to the HPA.
pub const HANDOVER_MANAGER: &str = "quiver-operator-handover";

/// Moving a collection from a fixed count to min/max: the operator stops applying
/// `spec.replicas` so that the HPA owns it. Under server-side apply a field its only manager
/// stops applying is removed, and the Deployment would fall to 1 replica until the HPA acts.
/// As the Kubernetes documentation's "transferring ownership" to an HPA does it, the current
/// count is applied first by a second field manager, which keeps it (and which the HPA's
/// updates then overwrite). Only while the operator's own manager still owns the field.
pub(super) async fn hand_replicas_to_the_autoscaler(vc: &VectorCollection, ctx: &Context, ns: &str) -> Result<()> {
    let name = labels::replicas_name(&vc.name_any());
    let Some(live) = ctx.caches.deployments.get(ns, &name) else {
        return Ok(());
    };
    if !owns_replicas(&live, FIELD_MANAGER) {
        return Ok(());
    }
    let count = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(replicas::wanted(&vc.spec.replicas));
    let patch = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": count},
    });
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    deployments.patch(&name, &PatchParams::apply(HANDOVER_MANAGER), &Patch::Apply(patch)).await?;
    Ok(())
}

/// Whether `manager` owns the Deployment's `spec.replicas` (its managedFields entry lists it).
pub fn owns_replicas(deployment: &Deployment, manager: &str) -> bool {
    deployment.metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
    })
}
