//! The VectorCollection phase machine: a pure function of the spec's generation and what the
//! controller observed (writer progress, replicas, the warm-up and verify Jobs). The reconciler
//! only gathers observations, calls [`next`], and writes the result.

use crate::crd::{GateResult, Phase, StoredSnapshot, VectorCollectionStatus};

/// What the writer reports over its Admin API.
#[derive(Debug, Clone, PartialEq)]
pub enum WriterState {
    /// Not reachable yet (pod starting) or not created.
    Unavailable,
    /// Deleted once its snapshot was in the store (`writer.afterPublish: Delete`).
    Released,
    /// Restoring the sealed collection from `source.snapshot`; `progress` says how far.
    Restoring {
        progress: String,
    },
    Importing {
        rows: u64,
    },
    Building,
    /// Writing the compacted snapshot file.
    Publishing,
    /// Sealed, snapshot published; `count` vectors, calibrated `setting`; `stored` once the
    /// snapshot is in the snapshot store too; `sha256` of the sealed snapshot (None from an
    /// engine too old to say).
    Sealed {
        count: u64,
        setting: String,
        stored: Option<StoredSnapshot>,
        sha256: Option<String>,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Absent,
    Running,
    Succeeded,
    /// The Job's termination message (the engine writes its JSON report there).
    Failed {
        message: String,
    },
}

/// Everything [`next`] decides from.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub generation: i64,
    pub writer: WriterState,
    /// Why the writer pod is stuck (unschedulable, crash-looping), when it is.
    pub writer_problem: Option<String>,
    pub ready_replicas: i32,
    /// Replicas that must be ready before warm-up (at least 1).
    pub wanted_replicas: i32,
    pub warmup: JobState,
    pub verify: JobState,
    /// The gates of the verify Job's report, once it ran.
    pub gates: Vec<GateResult>,
    /// Ready, but scaled to zero replicas because no alias serves or targets it.
    pub idle: bool,
}

/// The decided status fields (conditions are derived from them by the reconciler).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub phase: Phase,
    pub message: Option<String>,
    pub vector_count: Option<u64>,
    pub search_setting: Option<String>,
    /// Whether the verification gate passed for this generation.
    pub verified: bool,
    /// The snapshot as published to the store, once it is there.
    pub stored: Option<StoredSnapshot>,
    /// The sha256 of the snapshot replicas serve: the first one the writer reported sealed,
    /// kept from then on (see [`next`]).
    pub sealed_sha256: Option<String>,
    /// The pinned sha256 once the collection was Ready on it, kept from then on.
    pub verified_sha256: Option<String>,
}

/// The pinned sha256 and the writer's, when the writer reports a sealed snapshot other than the
/// one `previous` pinned replicas to (its volume lost, the source imported again).
pub fn resealed<'a>(
    previous: Option<&'a VectorCollectionStatus>,
    writer: &'a WriterState,
) -> Option<(&'a str, &'a str)> {
    let pinned = previous?.sealed_sha256.as_deref()?;
    match writer {
        WriterState::Sealed { sha256: Some(now), .. } if now != pinned => Some((pinned, now)),
        _ => None,
    }
}

/// The next phase. `previous` is the status as stored (None for a new object).
pub fn next(previous: Option<&VectorCollectionStatus>, observed: &Observed) -> Decision {
    let current_generation = previous.and_then(|s| s.observed_generation) == Some(observed.generation);
    let previous_phase = previous.map(|s| s.phase).filter(|_| current_generation).unwrap_or(Phase::Pending);
    // The writer's job ends with the snapshot: once replicas have it, whatever the writer says
    // after a restart (gone, recovering, publishing again, even failed) does not undo the
    // pipeline; the sealed facts are already in the status, and the writer's own state is the
    // WriterAvailable condition.
    // A snapshot recorded in the store is a seal too (the writer may have been released after
    // it), in any generation: what defines the data is immutable.
    let recorded = previous.and_then(|s| s.snapshot.clone());
    let past_sealing = recorded.is_some()
        || matches!(previous_phase, Phase::Replicating | Phase::WarmingUp | Phase::Verifying | Phase::Ready);
    let remembered = previous.and_then(|s| {
        Some(WriterState::Sealed {
            count: s.vector_count?,
            setting: s.search_setting.clone().unwrap_or_default(),
            stored: recorded.clone(),
            sha256: s.sealed_sha256.clone(),
        })
    });
    // A writer that sealed other data than replicas are pinned to (its volume lost, the source
    // imported again): after the collection was Ready (verified), the verified facts stay and
    // replicas keep the pinned snapshot; before, the pipeline's input changed under it, which
    // fails this generation (a retry starts over, and clears the pin).
    let pinned = previous.and_then(|s| s.sealed_sha256.as_deref());
    let resealed = resealed(previous, &observed.writer);
    // Verified on the pinned snapshot in some generation (the stored phase alone would forget
    // it one pass after a spec change; a status from before the marker counts when Ready).
    let previous_verified = previous.and_then(|s| s.verified_sha256.clone());
    let verified_once = previous_verified.as_deref().is_some_and(|v| Some(v) == pinned)
        || previous.is_some_and(|s| s.phase == Phase::Ready);
    let writer = match (&observed.writer, remembered) {
        (WriterState::Sealed { .. }, Some(sealed)) if resealed.is_some() && verified_once => sealed,
        (WriterState::Sealed { .. }, _) => observed.writer.clone(),
        (_, Some(sealed)) if past_sealing => sealed,
        (writer, _) => writer.clone(),
    };
    // A restarted writer reports its upload again only once it re-checked the store.
    let stored = match &writer {
        WriterState::Sealed { stored, .. } => stored.clone().or(recorded),
        _ => None,
    };
    // Pinned once: a writer that reports another snapshot later (its volume lost, the source
    // imported again with other data) does not move what replicas serve away from what was
    // verified. The data is immutable in every generation, as above.
    // Only from the writer's own report, which comes with its first Sealed: the store's record
    // may come later (an upload after Ready), and pinning then would roll every replica.
    let sealed_sha256 = previous.and_then(|s| s.sealed_sha256.clone()).or_else(|| match &writer {
        WriterState::Sealed { sha256, .. } => sha256.clone(),
        _ => None,
    });
    let decide = |phase: Phase, message: Option<String>| Decision {
        phase,
        message,
        vector_count: match &writer {
            WriterState::Sealed { count, .. } => Some(*count),
            _ => None,
        },
        search_setting: match &writer {
            WriterState::Sealed { setting, .. } => Some(setting.clone()),
            _ => None,
        },
        verified: phase == Phase::Ready,
        stored: stored.clone(),
        sealed_sha256: sealed_sha256.clone(),
        verified_sha256: match phase {
            Phase::Ready => sealed_sha256.clone(),
            _ => previous_verified.clone(),
        },
    };
    // A failure is final for its generation: a new spec generation starts over.
    if previous_phase == Phase::Failed {
        return decide(Phase::Failed, previous.and_then(|s| s.message.clone()));
    }
    if let Some((pinned, now)) = resealed.filter(|_| !verified_once) {
        return decide(
            Phase::Failed,
            Some(format!(
                "the writer sealed other data (snapshot sha256 {now}) than replicas were given ({pinned}) before \
                 verification: retry (annotate quiver.dev/retry) to start over with the new data"
            )),
        );
    }
    match &writer {
        WriterState::Unavailable | WriterState::Released => {
            return decide(Phase::Pending, Some("waiting for the writer".into()));
        }
        WriterState::Restoring { progress } => return decide(Phase::Restoring, Some(progress.clone())),
        WriterState::Importing { rows } => return decide(Phase::Importing, Some(format!("{rows} vectors imported"))),
        WriterState::Building => return decide(Phase::Building, None),
        WriterState::Publishing => return decide(Phase::Publishing, None),
        WriterState::Failed { reason } => return decide(Phase::Failed, Some(format!("writer failed: {reason}"))),
        WriterState::Sealed { .. } => {}
    }
    let wanted = observed.wanted_replicas.max(1);
    if observed.idle && previous_phase == Phase::Ready {
        let note = "scaled down: no alias serves or targets it (replicas return when one does)";
        return decide(Phase::Ready, Some(note.into()));
    }
    if observed.ready_replicas < wanted {
        // Once Ready, losing replicas degrades serving but does not undo verification.
        if previous_phase == Phase::Ready {
            return decide(Phase::Ready, Some(format!("{}/{wanted} replicas ready", observed.ready_replicas)));
        }
        return decide(Phase::Replicating, Some(format!("{}/{wanted} replicas ready", observed.ready_replicas)));
    }
    match &observed.warmup {
        JobState::Absent | JobState::Running => return decide(Phase::WarmingUp, None),
        JobState::Failed { message } => return decide(Phase::Failed, Some(format!("warm-up failed: {message}"))),
        JobState::Succeeded => {}
    }
    match &observed.verify {
        JobState::Absent | JobState::Running => decide(Phase::Verifying, None),
        JobState::Failed { message } => {
            let failed: Vec<String> = observed
                .gates
                .iter()
                .filter(|g| !g.passed)
                .map(|g| match &g.error {
                    Some(error) => format!("{} not measured: {error}", g.name),
                    None => format!("{} measured {} (needs {} {})", g.name, g.measured, g.comparison, g.threshold),
                })
                .collect();
            let why = if failed.is_empty() { message.clone() } else { failed.join("; ") };
            decide(Phase::Failed, Some(format!("verification failed: {why}")))
        }
        JobState::Succeeded if observed.gates.iter().all(|g| g.passed) => decide(Phase::Ready, None),
        JobState::Succeeded => decide(Phase::Failed, Some("verify Job succeeded but a gate failed".into())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sealed() -> WriterState {
        WriterState::Sealed { count: 1000, setting: "signscan quality=100".into(), stored: None, sha256: None }
    }

    fn observed(writer: WriterState, ready: i32, warmup: JobState, verify: JobState) -> Observed {
        Observed {
            generation: 2,
            writer,
            writer_problem: None,
            ready_replicas: ready,
            wanted_replicas: 2,
            warmup,
            verify,
            gates: Vec::new(),
            idle: false,
        }
    }

    fn status(phase: Phase, generation: i64) -> VectorCollectionStatus {
        VectorCollectionStatus { phase, observed_generation: Some(generation), ..Default::default() }
    }

    /// A count gate (999 measured, 1000 wanted) that `passed` or not; the status tests use it too.
    pub(crate) fn gate(passed: bool) -> GateResult {
        GateResult {
            name: "count".into(),
            measured: 999.0,
            comparison: "==".into(),
            threshold: 1000.0,
            passed,
            threshold_from: None,
            error: None,
        }
    }

    #[test]
    fn every_step_of_the_pipeline() {
        use JobState::*;
        let table: Vec<(Observed, Phase)> = vec![
            (observed(WriterState::Unavailable, 0, Absent, Absent), Phase::Pending),
            (observed(WriterState::Importing { rows: 10 }, 0, Absent, Absent), Phase::Importing),
            (observed(WriterState::Building, 0, Absent, Absent), Phase::Building),
            (observed(WriterState::Publishing, 0, Absent, Absent), Phase::Publishing),
            (observed(sealed(), 1, Absent, Absent), Phase::Replicating),
            (observed(sealed(), 2, Running, Absent), Phase::WarmingUp),
            (observed(sealed(), 2, Succeeded, Running), Phase::Verifying),
            (Observed { gates: vec![gate(true)], ..observed(sealed(), 2, Succeeded, Succeeded) }, Phase::Ready),
        ];
        let mut previous: Option<VectorCollectionStatus> = None;
        for (obs, expected) in table {
            let d = next(previous.as_ref(), &obs);
            assert_eq!(d.phase, expected, "{obs:?}");
            assert_eq!(d.verified, expected == Phase::Ready);
            previous = Some(status(d.phase, 2));
        }
    }

    #[test]
    fn no_ready_before_verification_passes() {
        use JobState::*;
        let failed = Observed {
            gates: vec![gate(false)],
            ..observed(sealed(), 2, Succeeded, Failed { message: "exit 1".into() })
        };
        let d = next(Some(&status(Phase::Verifying, 2)), &failed);
        assert_eq!(d.phase, Phase::Failed);
        assert!(!d.verified);
        assert!(d.message.unwrap().contains("count measured 999 (needs == 1000)"));
        // A gate that could not be measured says why, not a threshold of 0.
        let unmeasured = GateResult { error: Some("could not connect to postgres://db/shop".into()), ..gate(false) };
        let d = next(Some(&status(Phase::Verifying, 2)), &Observed { gates: vec![unmeasured], ..failed.clone() });
        assert_eq!(
            d.message.as_deref(),
            Some("verification failed: count not measured: could not connect to postgres://db/shop")
        );
        // A succeeded Job with a failed gate is still not Ready.
        let odd = Observed { gates: vec![gate(false)], ..observed(sealed(), 2, Succeeded, Succeeded) };
        assert_eq!(next(None, &odd).phase, Phase::Failed);
    }

    #[test]
    fn failure_is_sticky_until_the_spec_changes() {
        use JobState::*;
        let mut failed = status(Phase::Failed, 2);
        failed.message = Some("writer failed: disk full".into());
        let healthy = observed(WriterState::Importing { rows: 5 }, 0, Absent, Absent);
        let d = next(Some(&failed), &healthy);
        assert_eq!((d.phase, d.message.as_deref()), (Phase::Failed, Some("writer failed: disk full")));
        // Generation 3 (a spec change) restarts the pipeline.
        let d = next(Some(&failed), &Observed { generation: 3, ..healthy });
        assert_eq!(d.phase, Phase::Importing);
    }

    #[test]
    fn a_new_generation_mid_rebuild_starts_over() {
        use JobState::*;
        let verifying = status(Phase::Verifying, 1);
        let d = next(Some(&verifying), &observed(WriterState::Unavailable, 2, Succeeded, Running));
        assert_eq!(d.phase, Phase::Pending);
    }

    #[test]
    fn losing_replicas_after_ready_keeps_ready_and_says_so() {
        use JobState::*;
        let obs = Observed { gates: vec![gate(true)], ..observed(sealed(), 1, Succeeded, Succeeded) };
        let d = next(Some(&status(Phase::Ready, 2)), &obs);
        assert_eq!(d.phase, Phase::Ready);
        assert_eq!(d.message.as_deref(), Some("1/2 replicas ready"));
        assert_eq!(d.vector_count, Some(1000));
    }

    #[test]
    fn a_writer_gone_after_sealing_does_not_undo_the_pipeline() {
        use JobState::*;
        let mut ready = status(Phase::Ready, 2);
        ready.vector_count = Some(1000);
        ready.search_setting = Some("signscan quality=100".into());
        let obs = Observed { gates: vec![gate(true)], ..observed(WriterState::Unavailable, 2, Succeeded, Succeeded) };
        let d = next(Some(&ready), &obs);
        assert_eq!((d.phase, d.vector_count), (Phase::Ready, Some(1000)));
        assert_eq!(d.search_setting.as_deref(), Some("signscan quality=100"));
        // Nor a writer that restarted and is publishing its snapshot again, or failed.
        for restarted in
            [WriterState::Publishing, WriterState::Importing { rows: 0 }, WriterState::Failed { reason: "disk".into() }]
        {
            let obs = Observed { writer: restarted.clone(), ..obs.clone() };
            assert_eq!(next(Some(&ready), &obs).phase, Phase::Ready, "{restarted:?}");
        }
        // Before sealing, an unreachable writer is just not there yet.
        let mut importing = status(Phase::Importing, 2);
        importing.vector_count = Some(1000);
        assert_eq!(next(Some(&importing), &obs).phase, Phase::Pending);
        // Nor does a remembered seal carry over to a new generation.
        assert_eq!(next(Some(&ready), &Observed { generation: 3, ..obs }).phase, Phase::Pending);
    }

    /// A writer deleted once its snapshot is in the store (`afterPublish: Delete`) is
    /// remembered by the recorded snapshot, in this generation and the next (what a snapshot
    /// holds cannot change with the spec); a restore reports its progress.
    #[test]
    fn a_released_writer_is_remembered_by_its_stored_snapshot() {
        use JobState::*;
        let stored = StoredSnapshot { location: "s3://snapshots/search/v1".into(), sha256: "ab".into(), bytes: 9 };
        let mut replicating = status(Phase::Replicating, 2);
        replicating.vector_count = Some(1000);
        replicating.search_setting = Some("signscan quality=100".into());
        replicating.snapshot = Some(stored.clone());
        let released = observed(WriterState::Released, 1, Absent, Absent);
        let d = next(Some(&replicating), &released);
        assert_eq!((d.phase, d.vector_count, d.stored.as_ref()), (Phase::Replicating, Some(1000), Some(&stored)));
        // A spec change (more replicas, say) verifies again without the writer.
        let d = next(
            Some(&replicating),
            &Observed { generation: 3, ..observed(WriterState::Released, 2, Running, Absent) },
        );
        assert_eq!((d.phase, d.stored.as_ref()), (Phase::WarmingUp, Some(&stored)));
        // Without the record a gone writer is waited for, as before.
        replicating.snapshot = None;
        let d = next(Some(&replicating), &Observed { generation: 3, ..released.clone() });
        assert_eq!((d.phase, d.stored), (Phase::Pending, None));
        // A sealed writer's upload is recorded once it landed.
        let sealed =
            WriterState::Sealed { count: 1000, setting: "s".into(), stored: Some(stored.clone()), sha256: None };
        assert_eq!(next(None, &observed(sealed, 0, Absent, Absent)).stored, Some(stored));
        let restoring = WriterState::Restoring { progress: "restoring from s3://x/v1: 5 of 9 bytes".into() };
        let d = next(None, &observed(restoring, 0, Absent, Absent));
        assert_eq!((d.phase, d.message.as_deref()), (Phase::Restoring, Some("restoring from s3://x/v1: 5 of 9 bytes")));
    }

    /// Replicas serve what was verified: the writer's first sealed sha256 is kept, and a
    /// writer that later seals other data (its volume lost, the source imported again) does
    /// not move it, in this generation or a later one; the store's record alone pins nothing
    /// (it may land after Ready, and pinning then would roll every replica).
    #[test]
    fn the_first_sealed_snapshot_pins_what_replicas_serve() {
        use JobState::*;
        let with_sha = |sha: &str| WriterState::Sealed {
            count: 1000,
            setting: "s".into(),
            stored: None,
            sha256: Some(sha.into()),
        };
        let d = next(None, &observed(with_sha("aa"), 0, Absent, Absent));
        assert_eq!((d.phase, d.sealed_sha256.as_deref()), (Phase::Replicating, Some("aa")));
        let mut ready = status(Phase::Ready, 2);
        ready.vector_count = Some(1000);
        ready.sealed_sha256 = d.sealed_sha256;
        // Other data sealed after Ready: the verified facts stay (not the new writer's count).
        let other = WriterState::Sealed { count: 2000, setting: "t".into(), stored: None, sha256: Some("bb".into()) };
        let d = next(Some(&ready), &observed(other.clone(), 2, Succeeded, Succeeded));
        assert_eq!((d.phase, d.sealed_sha256.as_deref(), d.vector_count), (Phase::Ready, Some("aa"), Some(1000)));
        // Before verification: this generation fails, saying how to start over.
        let mut replicating = ready.clone();
        replicating.phase = Phase::Replicating;
        let d = next(Some(&replicating), &observed(other.clone(), 1, Absent, Absent));
        assert_eq!(d.phase, Phase::Failed);
        assert!(d.message.as_deref().is_some_and(|m| m.contains("sha256 bb) than replicas were given (aa)")), "{d:?}");
        // Verified once, then a spec change (warming up again): the verified facts still stay.
        let d = next(Some(&ready), &observed(with_sha("aa"), 2, Succeeded, Succeeded));
        assert_eq!((d.phase, d.verified_sha256.as_deref()), (Phase::Ready, Some("aa")));
        let mut warming = ready.clone();
        (warming.phase, warming.observed_generation, warming.verified_sha256) =
            (Phase::WarmingUp, Some(3), d.verified_sha256);
        let again = Observed { generation: 3, ..observed(other, 2, Running, Absent) };
        let d = next(Some(&warming), &again);
        assert_eq!((d.phase, d.vector_count, d.sealed_sha256.as_deref()), (Phase::WarmingUp, Some(1000), Some("aa")));
        let d = next(Some(&ready), &Observed { generation: 3, ..observed(with_sha("bb"), 2, Absent, Absent) });
        assert_eq!(d.sealed_sha256.as_deref(), Some("aa"));
        // Gone (released, restarting): still pinned.
        let d = next(Some(&ready), &observed(WriterState::Released, 2, Succeeded, Succeeded));
        assert_eq!(d.sealed_sha256.as_deref(), Some("aa"));
        let stored = StoredSnapshot { location: "s3://snapshots/search/v1".into(), sha256: "cc".into(), bytes: 9 };
        let old_engine = WriterState::Sealed { count: 1000, setting: "s".into(), stored: Some(stored), sha256: None };
        assert_eq!(next(None, &observed(old_engine, 0, Absent, Absent)).sealed_sha256, None);
    }

    #[test]
    fn writer_and_warmup_failures_fail_the_collection() {
        use JobState::*;
        let d = next(None, &observed(WriterState::Failed { reason: "row 3: NaN".into() }, 0, Absent, Absent));
        assert_eq!((d.phase, d.message.as_deref()), (Phase::Failed, Some("writer failed: row 3: NaN")));
        let d = next(None, &observed(sealed(), 2, Failed { message: "timeout".into() }, Absent));
        assert_eq!(d.phase, Phase::Failed);
    }
}
