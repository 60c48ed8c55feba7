//! The status subresource: the status built from the phase machine's decision (pure), written
//! with server-side apply, and the Events that announce a phase.

use super::*;

pub(super) async fn patch_status(vc: &VectorCollection, ctx: &Context, status: &VectorCollectionStatus) -> Result<()> {
    let patch = serde_json::json!({
        "apiVersion": VectorCollection::api_version(&()),
        "kind": VectorCollection::kind(&()),
        "status": status,
    });
    api(vc, ctx)?
        .patch_status(&vc.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch))
        .await?;
    Ok(())
}

pub(super) fn status(
    vc: &VectorCollection,
    ctx: &Context,
    d: &Decision,
    observed: &Observed,
) -> VectorCollectionStatus {
    let previous = vc.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = vc.metadata.generation;
    let now = (ctx.now)();
    let phase = format!("{:?}", d.phase);
    // Conditions carry no counter that moves on its own (the import's row count is in
    // status.message only): a condition changes when the state does.
    let message = match d.phase {
        Phase::Importing => "importing vectors".to_string(),
        _ => d.message.clone().unwrap_or_default(),
    };
    let short = observed.ready_replicas < observed.wanted_replicas.max(1) && !observed.idle;
    let degraded = d.phase == Phase::Failed || (d.phase == Phase::Ready && short);
    let (verified_reason, verified_message) = match (d.verified, d.phase) {
        (true, _) => ("GatesPassed", String::new()),
        (false, Phase::Failed) if !observed.gates.is_empty() => ("GatesFailed", message.clone()),
        _ => ("NotVerified", "verification has not passed for this generation".to_string()),
    };
    let conditions = vec![
        condition(previous, "Ready", d.phase == Phase::Ready, &phase, &message, generation, now),
        condition(previous, "Verified", d.verified, verified_reason, &verified_message, generation, now),
        condition(
            previous,
            "Progressing",
            !matches!(d.phase, Phase::Ready | Phase::Failed),
            &phase,
            &message,
            generation,
            now,
        ),
        condition(
            previous,
            "Degraded",
            degraded,
            match (d.phase, degraded) {
                (Phase::Failed, _) => "Failed",
                (_, true) => "ReplicasUnavailable",
                _ => "AsExpected",
            },
            if degraded { &message } else { "" },
            generation,
            now,
        ),
    ];
    // The writer's own state, apart from the phase: once sealed, a writer restart is not the
    // collection's failure (replicas serve, peers share the snapshot).
    let (writer_available, writer_reason) = match &observed.writer {
        WriterState::Sealed { .. } => (true, "Sealed"),
        WriterState::Unavailable => (false, "Unavailable"),
        WriterState::Importing { .. } => (false, "Importing"),
        WriterState::Building => (false, "Building"),
        WriterState::Publishing => (false, "Publishing"),
        WriterState::Failed { .. } => (false, "Failed"),
    };
    let writer_message = match &observed.writer {
        WriterState::Failed { reason } => reason.clone(),
        _ => observed.writer_problem.clone().unwrap_or_default(),
    };
    let mut conditions = conditions;
    conditions.push(condition(
        previous,
        "WriterAvailable",
        writer_available,
        writer_reason,
        &writer_message,
        generation,
        now,
    ));
    VectorCollectionStatus {
        phase: d.phase,
        observed_generation: generation,
        vector_count: d.vector_count,
        ready_replicas: observed.ready_replicas,
        search_setting: d.search_setting.clone(),
        verification: observed.gates.clone(),
        message: d.message.clone(),
        conditions,
    }
}

pub(super) async fn announce(vc: &VectorCollection, ctx: &Context, d: &Decision) {
    let phase = format!("{:?}", d.phase);
    let note = match &d.message {
        Some(m) => format!("{phase}: {m}"),
        None => phase.clone(),
    };
    if d.phase == Phase::Failed {
        ctx.event(vc, EventType::Warning, "Failed", "Reconcile", note).await;
    } else {
        ctx.event(vc, EventType::Normal, &phase, "Reconcile", note).await;
    }
}
