//! The status subresource: the status built from the phase machine's decision (pure), written
//! with server-side apply, and the Events that announce a phase.

use super::*;
use k8s_openapi::jiff::Timestamp;

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

/// The status the decision `d` makes of `vc` at `now`: its fields, and the conditions (whose
/// transition times stay while their status holds). Pure: no clock, no API.
pub fn status(vc: &VectorCollection, d: &Decision, observed: &Observed, now: Timestamp) -> VectorCollectionStatus {
    let previous = vc.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = vc.metadata.generation;
    let phase = format!("{:?}", d.phase);
    // Conditions carry no counter that moves on its own (the import's row count is in
    // status.message only): a condition changes when the state does.
    let message = match d.phase {
        Phase::Importing => "importing vectors".to_string(),
        Phase::Restoring => "restoring the snapshot".to_string(),
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
        WriterState::Released => (false, "Released"),
        WriterState::Restoring { .. } => (false, "Restoring"),
        WriterState::Importing { .. } => (false, "Importing"),
        WriterState::Building => (false, "Building"),
        WriterState::Publishing => (false, "Publishing"),
        WriterState::Failed { .. } => (false, "Failed"),
    };
    let writer_message = match &observed.writer {
        WriterState::Failed { reason } => reason.clone(),
        WriterState::Released => match &d.stored {
            Some(stored) => {
                format!("deleted after publishing its snapshot to {} (writer.afterPublish: Delete)", stored.location)
            }
            None => "deleted (writer.afterPublish: Delete)".into(),
        },
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
        snapshot: d.stored.clone(),
        sealed_sha256: d.sealed_sha256.clone(),
        verified_sha256: d.verified_sha256.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::GateResult;
    use crate::phase::JobState;
    use crate::phase::tests::gate;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn collection(status: Option<VectorCollectionStatus>) -> VectorCollection {
        let mut vc: VectorCollection = serde_json::from_value(serde_json::json!({
            "apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection",
            "metadata": {"name": "products-v2", "namespace": "search", "generation": 3},
            "spec": {"dimensions": 4, "distance": "cosine", "source": {"url": "https://example.test/v.npy"}},
        }))
        .unwrap();
        vc.status = status;
        vc
    }

    fn observed(writer: WriterState, ready: i32, gates: Vec<GateResult>) -> Observed {
        Observed {
            generation: 3,
            writer,
            writer_problem: None,
            ready_replicas: ready,
            wanted_replicas: 2,
            warmup: JobState::Succeeded,
            verify: JobState::Succeeded,
            gates,
            idle: false,
        }
    }

    fn decision(phase: Phase, verified: bool, message: Option<&str>) -> Decision {
        Decision {
            phase,
            message: message.map(str::to_string),
            vector_count: Some(1000),
            search_setting: Some("signscan quality=200".into()),
            verified,
            stored: None,
            sealed_sha256: None,
            verified_sha256: None,
        }
    }

    fn find<'a>(s: &'a VectorCollectionStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_ready_verified_collection_short_of_replicas_is_degraded() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let sealed =
            WriterState::Sealed { count: 1000, setting: "signscan quality=200".into(), stored: None, sha256: None };
        let s =
            status(&collection(None), &decision(Phase::Ready, true, None), &observed(sealed, 1, vec![gate(true)]), t0);
        assert_eq!(
            (s.phase, s.observed_generation, s.vector_count, s.ready_replicas),
            (Phase::Ready, Some(3), Some(1000), 1)
        );
        assert_eq!(s.verification, vec![gate(true)]);
        let ready = find(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str(), ready.observed_generation),
            ("True", "Ready", Some(3))
        );
        assert_eq!(
            (find(&s, "Verified").status.as_str(), find(&s, "Verified").reason.as_str()),
            ("True", "GatesPassed")
        );
        assert_eq!(find(&s, "Progressing").status, "False");
        let degraded = find(&s, "Degraded");
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ReplicasUnavailable"));
        assert_eq!(find(&s, "WriterAvailable").reason, "Sealed");

        // The same facts later: every transition time stays where it was.
        let t1 = Timestamp::from_second(2_000).unwrap();
        let again = status(
            &collection(Some(s.clone())),
            &decision(Phase::Ready, true, None),
            &observed(WriterState::Unavailable, 2, vec![gate(true)]),
            t1,
        );
        assert_eq!(find(&again, "Ready").last_transition_time, find(&s, "Ready").last_transition_time);
        // What changed moves: enough replicas, the writer gone after sealing.
        assert_eq!(
            (find(&again, "Degraded").status.as_str(), find(&again, "Degraded").reason.as_str()),
            ("False", "AsExpected")
        );
        assert_eq!(find(&again, "Degraded").last_transition_time, Time(t1));
        assert_eq!(find(&again, "WriterAvailable").status, "False");
    }

    #[test]
    fn failed_gates_are_named_in_verified_and_degraded() {
        let now = Timestamp::from_second(1_000).unwrap();
        let why = "count: measured 999 == 1000 failed (off by 1)";
        let sealed = WriterState::Sealed { count: 999, setting: "s".into(), stored: None, sha256: None };
        let s = status(
            &collection(None),
            &decision(Phase::Failed, false, Some(why)),
            &observed(sealed, 2, vec![gate(false)]),
            now,
        );
        let verified = find(&s, "Verified");
        assert_eq!(
            (verified.status.as_str(), verified.reason.as_str(), verified.message.as_str()),
            ("False", "GatesFailed", why)
        );
        assert_eq!((find(&s, "Degraded").reason.as_str(), find(&s, "Degraded").message.as_str()), ("Failed", why));
        assert_eq!(find(&s, "Ready").status, "False");
        assert_eq!(s.message.as_deref(), Some(why));
        // Not failed by its gates (no report): not verified yet, with no gate to blame.
        let importing = status(
            &collection(None),
            &decision(Phase::Importing, false, Some("imported 10 rows")),
            &observed(WriterState::Importing { rows: 10 }, 0, vec![]),
            now,
        );
        assert_eq!(find(&importing, "Verified").reason, "NotVerified");
        // The row count moves on its own, so it stays out of the conditions.
        assert_eq!(find(&importing, "Progressing").message, "importing vectors");
        assert_eq!(importing.message.as_deref(), Some("imported 10 rows"));
    }
}
