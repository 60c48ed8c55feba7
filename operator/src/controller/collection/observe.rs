//! Observing before acting: the writer (its pod and its gRPC progress), the replicas and the
//! Jobs, read from the caches and the engine, turned into the phase machine's inputs.

use super::*;

/// The writer as its pod and gRPC API report it, and why a pod that does not answer is stuck.
pub(super) async fn observe_writer(
    vc: &VectorCollection,
    ctx: &Context,
    ns: &str,
    sts: &StatefulSet,
    token: Option<&str>,
) -> Result<(WriterState, Option<String>)> {
    let writer_ready = sts.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= 1;
    let answered = observe_writer_pod(vc, ctx, ns, sts, token, writer_ready).await;
    if matches!(answered, Ok((WriterState::Unavailable, _)) | Err(_)) {
        // Not answering: its token is read again next time (a deleted Secret is made again, a
        // rotated one is read; a pod that cannot mount a missing Secret never answers).
        ctx.caches.tokens.forget(ns, &token::selector(vc).name);
    }
    answered
}

pub(super) async fn observe_writer_pod(
    vc: &VectorCollection,
    ctx: &Context,
    ns: &str,
    sts: &StatefulSet,
    token: Option<&str>,
    writer_ready: bool,
) -> Result<(WriterState, Option<String>)> {
    let Some(pod) = ctx.caches.pods.get(ns, &format!("{}-0", labels::writer_name(&vc.name_any()))) else {
        return Ok((WriterState::Unavailable, writer_not_created(ctx, ns, sts).await?));
    };
    if pod.metadata.deletion_timestamp.is_some() {
        // Terminating (a retry, a rollout, a drain): what it says is about to be gone.
        return Ok((WriterState::Unavailable, None));
    }
    let problem = pod_problem(&pod);
    let running = pod.status.as_ref().filter(|s| s.phase.as_deref() == Some("Running"));
    let Some(ip) = running.and_then(|s| s.pod_ip.clone()) else {
        return Ok((WriterState::Unavailable, problem));
    };
    let endpoint = format!("http://{ip}:{}", crate::resources::GRPC_PORT);
    match ctx.writer.progress(&endpoint, &vc.name_any(), token).await {
        // Sealed, but /readyz (snapshot written) not yet passed: still publishing.
        Ok(WriterState::Sealed { .. }) if !writer_ready => Ok((WriterState::Publishing, None)),
        Ok(state) => Ok((state, None)),
        Err(e) => {
            // A starting pod does not answer yet; the next look will tell.
            tracing::debug!(collection = %key(vc), error = %e, "writer not answering");
            Ok((WriterState::Unavailable, problem))
        }
    }
}

/// Why the StatefulSet could not create the writer pod (a ResourceQuota, a LimitRange, a
/// policy): the StatefulSet controller reports it only as a FailedCreate Event on the
/// StatefulSet ("create Pod <pod> in StatefulSet <sts> failed error: <the API's refusal>").
/// Only this StatefulSet's (by uid: a re-created collection does not inherit an old one's),
/// and only a failure newer than its last SuccessfulCreate (Events outlive what they report).
pub(super) async fn writer_not_created(ctx: &Context, ns: &str, sts: &StatefulSet) -> Result<Option<String>> {
    let events: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), ns);
    let fields = format!(
        "involvedObject.kind=StatefulSet,involvedObject.name={},involvedObject.uid={}",
        sts.name_any(),
        sts.metadata.uid.clone().unwrap_or_default()
    );
    // Any recent version will do (served from the API server's cache, not a quorum read).
    let listed = events.list(&ListParams::default().fields(&fields).match_any()).await?.items;
    let newest =
        |reason: &str| listed.iter().filter(|e| e.reason.as_deref() == Some(reason)).max_by_key(|e| event_time(e));
    let created = newest("SuccessfulCreate").and_then(event_time);
    Ok(newest("FailedCreate")
        .filter(|failed| created.is_none_or(|c| event_time(failed).is_some_and(|f| f > c)))
        .and_then(|e| e.message.as_deref())
        .map(|m| format!("FailedCreate: {}", short(m.trim_start_matches("(combined from similar events): ")))))
}

/// When an Event last happened: its series, its eventTime, or its lastTimestamp.
pub(crate) fn event_time(e: &CoreEvent) -> Option<k8s_openapi::jiff::Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
}

/// At most 512 characters of a message from the cluster, for status.
pub(super) fn short(message: &str) -> String {
    const MAX: usize = 512;
    let message = message.trim();
    match message.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message.to_string(),
    }
}

/// Why the replicas' ReplicaSet could not create pods: the Deployment carries it as its
/// ReplicaFailure condition (reason FailedCreate, the API's refusal as the message).
pub(super) fn replicas_not_created(deployment: &Deployment) -> Option<String> {
    let conditions = deployment.status.as_ref()?.conditions.as_ref()?;
    let failure = conditions.iter().find(|c| c.type_ == "ReplicaFailure" && c.status == "True")?;
    Some(format!("{}: {}", failure.reason.as_deref().unwrap_or("ReplicaFailure"), short(failure.message.as_deref()?)))
}

/// Why a pod's container is not running: a waiting reason other than a normal start
/// (CrashLoopBackOff, ImagePullBackOff...) with its last termination message.
pub fn pod_problem(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    // Not scheduled (no node fits, a volume cannot be provisioned): no container to ask.
    let unscheduled = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        let reason = c.reason.as_deref().unwrap_or("Unschedulable");
        return Some(format!("{reason}: {}", c.message.as_deref().unwrap_or_default()));
    }
    let container = status.container_statuses.as_ref()?.first()?;
    let state = container.state.as_ref()?;
    let last_message =
        container.last_state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.message.clone());
    let problem = if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.as_deref().filter(|r| !matches!(*r, "ContainerCreating" | "PodInitializing"))?;
        let detail = last_message.or_else(|| waiting.message.clone()).unwrap_or_default();
        format!("{reason}: {}", detail.trim())
    } else {
        let terminated = state.terminated.as_ref()?;
        format!("exited with {}: {}", terminated.exit_code, terminated.message.as_deref().unwrap_or_default().trim())
    };
    Some(short(problem.trim_end_matches([':', ' '])))
}

/// The first replica pod that is stuck (e.g. a snapshot that fails its checksum, crash-looping).
pub(super) fn replica_problem(ctx: &Context, ns: &str, name: &str) -> Option<String> {
    let list = crate::controller::replica_pods(ctx, ns, name);
    list.iter().find_map(|p| pod_problem(p).map(|problem| format!("replica {}: {problem}", p.name_any())))
}

pub(super) fn job_state(job: Option<&Job>) -> JobState {
    let Some(status) = job.and_then(|j| j.status.as_ref()) else {
        return if job.is_some() { JobState::Running } else { JobState::Absent };
    };
    let done = |type_: &str| status.conditions.iter().flatten().any(|c| c.type_ == type_ && c.status == "True");
    if done("Complete") {
        JobState::Succeeded
    } else if done("Failed") {
        JobState::Failed { message: String::new() }
    } else {
        JobState::Running
    }
}

/// The termination message of a finished Job's last pod (the engine's JSON report).
/// Why the pod of a running `job` does not run, if it is stuck.
pub(super) fn job_problem(ctx: &Context, ns: &str, job: &str) -> Option<String> {
    let list = ctx.caches.pods.labelled(ns, &[("batch.kubernetes.io/job-name", job)]);
    list.iter().find_map(|p| pod_problem(p))
}

pub(super) fn job_report(ctx: &Context, ns: &str, job: &str) -> Option<String> {
    let list = ctx.caches.pods.labelled(ns, &[("batch.kubernetes.io/job-name", job)]);
    let mut messages: Vec<(Option<String>, String)> = list
        .iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .filter_map(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()))
        .filter_map(|t| Some((t.finished_at.as_ref().map(|f| f.0.to_string()), t.message.clone()?)))
        .collect();
    messages.sort();
    messages.pop().map(|(_, m)| m.trim().to_string())
}

/// The verify report's gates, or none when the message is not a report (a crash's log tail).
pub fn gates(report: &str) -> Vec<GateResult> {
    serde_json::from_str::<VerifyReport>(report)
        .map(|r| {
            r.gates
                .into_iter()
                .map(|c| GateResult {
                    name: c.name,
                    measured: c.measured,
                    comparison: c.comparison,
                    threshold: c.threshold,
                    passed: c.passed,
                    threshold_from: c.threshold_from,
                    error: c.error,
                })
                .collect()
        })
        .unwrap_or_default()
}
