//! After a flip: the previous target's replicas are told to drain once the alias Service's
//! endpoints list only the new target's ready pods and the drain delay has passed.

use super::*;

/// The pods the alias Service's EndpointSlices list as ready. EndpointSlice `conditions.ready`
/// "should be interpreted as true" when unset, and is false for a terminating endpoint
/// (discovery.k8s.io/v1 EndpointConditions); a Service may have several slices.
pub(super) fn ready_endpoints(ctx: &Context, ns: &str, service: &str) -> BTreeSet<String> {
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
pub(super) async fn drain_previous(
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
    // Read live before acting: another alias that flipped to it a moment ago marked it first.
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

/// Tells the replicas of the collection the alias left to drain, so clients pinned to them
/// by long-lived HTTP/2 connections reconnect through the Service to the new target. The
/// replicas stay ready afterwards (the engine's drain is temporary), so a rollback is instant.
/// Returns whether every replica took it; each failure is a Warning Event.
async fn drain(ca: &CollectionAlias, ctx: &Context, ns: &str, collection: &str) -> bool {
    let related = Some(collection_ref(ns, collection));
    let pods = replica_pods(ctx, ns, collection);
    // The collection may be gone already: then its pods are going too; try without a token.
    let token = match ctx.caches.collections.get(ns, collection) {
        Some(vc) => collection_token(ctx, ns, &vc).await.ok().flatten(),
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
