//! The VectorCollection controller: applies the writer, then (once sealed) the replicas, then
//! the warm-up and verify Jobs one after the other; reads what they report; feeds it to the
//! phase machine; writes status, conditions and Events. A finalizer refuses deletion while an
//! alias points at the collection.

use super::{Context, Error, Result, apply, condition, key, namespace};
use crate::crd::{GateResult, Phase, VectorCollection, VectorCollectionStatus};
use crate::phase::{self, Decision, JobState, Observed, WriterState};
use crate::resources::labels::{self, FIELD_MANAGER, Role};
use crate::resources::{autoscaling, jobs, network, replicas, token, writer};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use quiver_api::types::VerifyReport;
use std::sync::Arc;
use std::time::Duration;

pub const CONTROLLER: &str = "collection";
/// Held while the collection may be deleted only after no alias points at it.
pub const FINALIZER: &str = "quiver.dev/alias-protection";
/// How often a collection in progress is looked at (writer progress is not a watch event).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Import progress alone is written to status at most this often.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(5);
/// Annotate a Failed collection with a new value of this to run its pipeline again:
/// `kubectl annotate vc products-v2 quiver.dev/retry="$(date +%s)" --overwrite`.
pub const RETRY: &str = "quiver.dev/retry";
/// The `quiver.dev/retry` value the operator acted on.
pub const RETRIED: &str = "quiver.dev/retried";
/// After a retry, the next look (the old writer pod terminating meanwhile).
pub const RETRY_SETTLE: Duration = Duration::from_secs(5);
/// A deletion blocked by an alias is re-checked this often (alias changes also trigger it).
pub const BLOCKED_INTERVAL: Duration = Duration::from_secs(30);

#[tracing::instrument(skip_all, fields(namespace = vc.namespace().as_deref().unwrap_or_default(), collection = %vc.name_any()))]
pub async fn reconcile(vc: Arc<VectorCollection>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches.wait_until_ready().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let action = if vc.meta().deletion_timestamp.is_some() {
        cleanup(&vc, &ctx).await?
    } else {
        match prepare_and_progress(&vc, &ctx).await {
            Ok(action) => action,
            Err(e) => {
                report_error(&vc, &ctx, &e).await;
                return Err(e);
            }
        }
    };
    ctx.succeeded(&key(vc.as_ref()));
    Ok(action)
}

pub fn error_policy(vc: Arc<VectorCollection>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(collection = %key(vc.as_ref()), %error, "reconcile failed");
    ctx.metrics.error(CONTROLLER, error.kind());
    super::backoff(&ctx, &key(vc.as_ref()))
}

async fn prepare_and_progress(vc: &VectorCollection, ctx: &Context) -> Result<Action> {
    if !vc.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(vc, ctx).await?;
    }
    unmark_gone_aliases(vc, ctx).await?;
    progress(vc, ctx).await
}

/// A reconcile that failed (an apply refused by the API server, a quota, a missing token
/// Secret) tells the user where they look: a Warning Event and, with the reason, `Ready=False`,
/// or `Degraded=True` for a collection that is Ready for its spec (its replicas still serve what
/// was verified: failing to apply a change to, say, its PDB does not make it unready). The rest
/// of the status stays as the last successful reconcile wrote it. Best effort: when the API
/// server itself is unreachable these fail too, and the log has the error.
async fn report_error(vc: &VectorCollection, ctx: &Context, error: &Error) {
    let message = error.to_string();
    let mut status = vc.status.clone().unwrap_or_default();
    let serving = status.phase == Phase::Ready && status.observed_generation == vc.metadata.generation;
    let (type_, value) = if serving { ("Degraded", true) } else { ("Ready", false) };
    let reported =
        condition(&status.conditions, type_, value, "ReconcileError", &message, vc.metadata.generation, (ctx.now)());
    if status.conditions.contains(&reported) {
        return; // Reported already: no Event per retry.
    }
    ctx.event(vc, EventType::Warning, "ReconcileError", "Reconcile", message).await;
    let at = status.conditions.iter().position(|c| c.type_ == type_).unwrap_or(0);
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.insert(at.min(status.conditions.len()), reported);
    if let Err(e) = patch_status(vc, ctx, &status).await {
        tracing::warn!(collection = %key(vc), error = %e, "writing the reconcile error to status failed");
    }
}

fn api(vc: &VectorCollection, ctx: &Context) -> Result<Api<VectorCollection>> {
    Ok(Api::namespaced(ctx.client.clone(), &namespace(vc)?))
}

async fn add_finalizer(vc: &VectorCollection, ctx: &Context) -> Result<()> {
    let mut finalizers = vc.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    set_finalizers(vc, ctx, finalizers).await
}

/// A merge patch carrying the resourceVersion: a concurrent change to the list makes it fail
/// (409) and the reconcile retry, instead of clobbering another controller's finalizer.
async fn set_finalizers(vc: &VectorCollection, ctx: &Context, finalizers: Vec<String>) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": vc.resource_version()},
    });
    api(vc, ctx)?.patch(&vc.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Removes the served-by marks of aliases that no longer exist (an alias deleted while it
/// served this collection), so the collection can be deleted again. The merge patch carries the
/// resourceVersion: a mark an alias adds meanwhile makes it fail (409) and the reconcile retry.
async fn unmark_gone_aliases(vc: &VectorCollection, ctx: &Context) -> Result<()> {
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
    let name = vc.name_any();
    Ok(ctx
        .caches
        .aliases
        .in_namespace(&namespace(vc)?)
        .into_iter()
        .filter(|a| {
            // What it targets, serves, or keeps for a rollback.
            let status = a.status.clone().unwrap_or_default();
            super::alias::target(a, &status).as_ref() == Some(&name)
                || status.current.as_ref() == Some(&name)
                || status.previous.as_ref() == Some(&name)
        })
        .map(|a| a.name_any())
        .collect())
}

async fn cleanup(vc: &VectorCollection, ctx: &Context) -> Result<Action> {
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

async fn patch_status(vc: &VectorCollection, ctx: &Context, status: &VectorCollectionStatus) -> Result<()> {
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

/// The collection's token: read from its Secret, which is created first when the collection
/// names none and it does not exist yet. Never an apply: a token once read by pods must not
/// change under them. A user's Secret that is missing fails the reconcile (and says so).
async fn token(vc: &VectorCollection, ctx: &Context, ns: &str) -> Result<Option<String>> {
    if let Some(token) = super::collection_token(ctx, ns, vc).await? {
        return Ok(Some(token));
    }
    let token = token::random().map_err(Error::Random)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match secrets.create(&params, &token::secret(vc, &token)).await {
        Ok(_) => {
            let selector = token::selector(vc);
            ctx.caches.tokens.remember(ns, &selector.name, &selector.key, &token);
            Ok(Some(token))
        }
        // Made meanwhile (by an earlier pass whose answer was lost): its token stands.
        Err(kube::Error::Api(e)) if e.code == 409 => super::collection_token(ctx, ns, vc).await,
        Err(e) => Err(e.into()),
    }
}

/// The writer as its pod and gRPC API report it, and why a pod that does not answer is stuck.
async fn observe_writer(
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

async fn observe_writer_pod(
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
async fn writer_not_created(ctx: &Context, ns: &str, sts: &StatefulSet) -> Result<Option<String>> {
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
fn event_time(e: &CoreEvent) -> Option<k8s_openapi::jiff::Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
}

/// At most 512 characters of a message from the cluster, for status.
fn short(message: &str) -> String {
    const MAX: usize = 512;
    let message = message.trim();
    match message.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message.to_string(),
    }
}

/// Why the replicas' ReplicaSet could not create pods: the Deployment carries it as its
/// ReplicaFailure condition (reason FailedCreate, the API's refusal as the message).
fn replicas_not_created(deployment: &Deployment) -> Option<String> {
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
fn replica_problem(ctx: &Context, ns: &str, name: &str) -> Option<String> {
    let list = super::replica_pods(ctx, ns, name);
    list.iter().find_map(|p| pod_problem(p).map(|problem| format!("replica {}: {problem}", p.name_any())))
}

fn job_state(job: Option<&Job>) -> JobState {
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
fn job_report(ctx: &Context, ns: &str, job: &str) -> Option<String> {
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
            r.checks
                .into_iter()
                .map(|c| GateResult {
                    name: c.name,
                    measured: c.measured,
                    comparison: c.comparison,
                    threshold: c.threshold,
                    passed: c.passed,
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn progress(vc: &VectorCollection, ctx: &Context) -> Result<Action> {
    let ns = namespace(vc)?;
    let name = vc.name_any();
    let generation = vc.metadata.generation.unwrap_or(0);
    if retry(vc, ctx, &ns).await? {
        // Observed on the next pass: the old writer pod is still terminating now.
        return Ok(Action::requeue(RETRY_SETTLE));
    }
    let previous = vc.status.as_ref();

    let token = token(vc, ctx, &ns).await?;
    if ctx.defaults.network_policies {
        apply(ctx, &ns, &network::writer(vc, &ctx.defaults)).await?;
        apply(ctx, &ns, &network::replicas(vc, &ctx.defaults)).await?;
    }
    apply(ctx, &ns, &writer::service(vc)).await?;
    let sts = apply(ctx, &ns, &writer::stateful_set(vc, &ctx.defaults)).await?;
    let wanted = replicas::wanted(&vc.spec.replicas);
    let (writer_state, writer_problem) = observe_writer(vc, ctx, &ns, &sts, token.as_deref()).await?;
    let mut observed = Observed {
        generation,
        writer: writer_state,
        writer_problem: writer_problem.clone(),
        ready_replicas: 0,
        wanted_replicas: wanted,
        warmup: JobState::Absent,
        verify: JobState::Absent,
        idle: false,
        // What the verify Job reported for this generation, unless it is read again below.
        gates: previous
            .filter(|s| s.observed_generation == Some(generation))
            .map(|s| s.verification.clone())
            .unwrap_or_default(),
    };
    // Replicas only once there is a snapshot to fetch (the machine remembers a seal).
    let sealed = phase::next(previous, &observed);
    let mut replicas_refused = None;
    if sealed.vector_count.is_some() && sealed.phase != Phase::Failed {
        observed.idle = idle(vc, ctx, previous).await?;
        apply(ctx, &ns, &replicas::service(vc)).await?;
        if replicas::autoscaled(&vc.spec.replicas) && !observed.idle {
            hand_replicas_to_the_autoscaler(vc, ctx, &ns).await?;
        }
        let mut rendered = replicas::deployment(vc, &ctx.defaults);
        if observed.idle {
            rendered = replicas::scaled_down(rendered);
        }
        let deployment = apply(ctx, &ns, &rendered).await?;
        match autoscaling::autoscaler(vc) {
            Some(hpa) if !observed.idle => {
                apply(ctx, &ns, &hpa).await?;
            }
            // Scaled down: an HPA would bring it back to its minimum.
            Some(_) if ctx.caches.autoscalers.get(&ns, &labels::replicas_name(&name)).is_some() => {
                delete_autoscaler(ctx, &ns, &name).await?
            }
            Some(_) => {}
            None => {}
        }
        apply(ctx, &ns, &replicas::disruption_budget(vc)).await?;
        replicas_refused = replicas_not_created(&deployment);
        observed.ready_replicas = deployment.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    }
    if sealed.phase != Phase::Failed && observed.ready_replicas >= wanted.max(1) {
        observe_jobs(vc, ctx, &ns, previous, &mut observed).await?;
    }
    let mut decision = phase::next(previous, &observed);
    if let (Phase::Pending, Some(problem)) = (decision.phase, writer_problem) {
        decision.message = Some(format!("waiting for the writer: {problem}"));
    }
    let short_of_replicas = observed.ready_replicas < wanted.max(1) && !observed.idle;
    if matches!(decision.phase, Phase::Replicating | Phase::Ready) && short_of_replicas {
        // Pods never created (a quota) say so; pods created but stuck say why.
        let problem = match replicas_refused {
            Some(refused) => Some(format!("replicas: {refused}")),
            None if decision.phase == Phase::Replicating => replica_problem(ctx, &ns, &name),
            None => None,
        };
        if let Some(problem) = problem {
            let count = decision.message.take().unwrap_or_default();
            decision.message = Some(format!("{count}; {problem}"));
        }
    }
    // Start the Job the pipeline is waiting for.
    match decision.phase {
        Phase::WarmingUp if observed.warmup == JobState::Absent => {
            apply(ctx, &ns, &jobs::warmup(vc, &ctx.defaults)).await?;
        }
        Phase::Verifying if observed.verify == JobState::Absent => {
            apply(ctx, &ns, &jobs::verify(vc, &ctx.defaults)).await?;
        }
        _ => {}
    }
    let generation_changed = previous.and_then(|s| s.observed_generation).is_some_and(|g| g != generation);
    if generation_changed {
        delete_old_jobs(ctx, &ns, &name, generation).await?;
        // Autoscaling can only be turned off by a spec change: the HPA must not keep scaling.
        if !replicas::autoscaled(&vc.spec.replicas) {
            delete_autoscaler(ctx, &ns, &name).await?;
        }
    }
    let status = status(vc, ctx, &decision, &observed);
    // Import progress alone (the row count in status.message) is written at most every
    // PROGRESS_WRITE_INTERVAL, however often something wakes the reconcile.
    let only_progress = decision.phase == Phase::Importing
        && previous.is_some_and(|p| VectorCollectionStatus { message: status.message.clone(), ..p.clone() } == status);
    if previous != Some(&status) && !(only_progress && ctx.progress_written_within(&key(vc), PROGRESS_WRITE_INTERVAL)) {
        patch_status(vc, ctx, &status).await?;
        ctx.progress_written(&key(vc));
    }
    let previous_phase = previous.filter(|_| !generation_changed).map(|s| s.phase);
    if previous_phase != Some(decision.phase) {
        announce(vc, ctx, &decision).await;
    }
    Ok(match decision.phase {
        Phase::Ready | Phase::Failed => Action::requeue(ctx.resync),
        _ => Action::requeue(PROGRESS_INTERVAL),
    })
}

/// A Failed collection annotated `quiver.dev/retry` with a value it has not acted on is retried:
/// the value is recorded first (annotation `quiver.dev/retried`, a merge patch guarded by the
/// resourceVersion, so a retry happens once even if what follows fails, and metadata is never
/// pruned by an older CRD schema), then the writer pod is deleted (its StatefulSet starts it
/// again: a failed import runs again, a sealed collection is recovered; the PVC stays), this
/// generation's Jobs are deleted, and the phase goes back to Pending. Returns whether it did.
async fn retry(vc: &VectorCollection, ctx: &Context, ns: &str) -> Result<bool> {
    let generation = vc.metadata.generation.unwrap_or(0);
    let Some(stored) =
        vc.status.as_ref().filter(|s| s.phase == Phase::Failed && s.observed_generation == Some(generation))
    else {
        return Ok(false);
    };
    let annotations = vc.annotations();
    let Some(request) = annotations.get(RETRY).filter(|r| annotations.get(RETRIED) != Some(*r)) else {
        return Ok(false);
    };
    let patch = serde_json::json!({
        "metadata": {"annotations": {RETRIED: request}, "resourceVersion": vc.resource_version()},
    });
    api(vc, ctx)?.patch(&vc.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match pods.delete(&format!("{}-0", labels::writer_name(&vc.name_any())), &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    delete_jobs(ctx, ns, &vc.name_any(), &format!("={generation}")).await?;
    let why = stored.message.clone().unwrap_or_default();
    ctx.event(vc, EventType::Normal, "Retry", "Retry", format!("retrying ({RETRY}={request}) after: {why}")).await;
    let mut pending = stored.clone();
    pending.phase = Phase::Pending;
    pending.verification.clear();
    pending.message = Some("retrying: the writer starts again".into());
    patch_status(vc, ctx, &pending).await?;
    Ok(true)
}

/// Deletes the collection's HPA (gone already is fine). A scaled-down collection asks only when
/// its cache holds one (it is looked at every few minutes); a spec change asks once, whatever
/// the cache says (an HPA made a moment ago may not be in it yet).
async fn delete_autoscaler(ctx: &Context, ns: &str, name: &str) -> Result<()> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    match hpas.delete(&labels::replicas_name(name), &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a Ready collection a rebuild made sits unused: no alias serves it (no served-by
/// mark: neither current nor previous) and none targets it (a pin, or the newest rebuild about
/// to be switched to). Its replicas are then scaled to zero (`--scale-down-unserved`), and
/// come back when an alias points at it again; the writer keeps its snapshot.
async fn idle(vc: &VectorCollection, ctx: &Context, previous: Option<&VectorCollectionStatus>) -> Result<bool> {
    let rebuilt = vc.labels().contains_key(labels::ALIAS);
    let marked = vc.labels().keys().any(|k| k.starts_with(labels::SERVED_BY_PREFIX));
    let ready = previous.is_some_and(|s| s.phase == Phase::Ready && s.observed_generation == vc.metadata.generation);
    if !ctx.defaults.scale_down_unserved || !rebuilt || marked || !ready {
        return Ok(false);
    }
    Ok(aliases_pointing_at(vc, ctx)?.is_empty())
}

/// The field manager that keeps the replica count while it passes from the operator to the HPA.
pub const HANDOVER_MANAGER: &str = "quiver-operator-handover";

/// Switching a collection from a fixed count to min/max: the operator stops applying
/// `spec.replicas` so that the HPA owns it. Under server-side apply a field its only manager
/// stops applying is removed, and the Deployment would fall to 1 replica until the HPA acts.
/// As the Kubernetes documentation's "transferring ownership" to an HPA does it, the current
/// count is applied first by a second field manager, which keeps it (and which the HPA's
/// updates then overwrite). Only while the operator's own manager still owns the field.
async fn hand_replicas_to_the_autoscaler(vc: &VectorCollection, ctx: &Context, ns: &str) -> Result<()> {
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

/// Reads the warm-up and verify Jobs of this generation (and the verify report once).
async fn observe_jobs(
    vc: &VectorCollection,
    ctx: &Context,
    ns: &str,
    previous: Option<&VectorCollectionStatus>,
    observed: &mut Observed,
) -> Result<()> {
    let name = vc.name_any();
    let jobs = &ctx.caches.jobs;
    let warmup_name = labels::job_name(&name, Role::Warmup, observed.generation);
    observed.warmup = job_state(jobs.get(ns, &warmup_name).as_deref());
    if let JobState::Failed { message } = &mut observed.warmup {
        *message = job_report(ctx, ns, &warmup_name).unwrap_or_else(|| "the Job failed".into());
    }
    if observed.warmup != JobState::Succeeded {
        return Ok(());
    }
    let verify_name = labels::job_name(&name, Role::Verify, observed.generation);
    observed.verify = job_state(jobs.get(ns, &verify_name).as_deref());
    let stored = previous
        .filter(|s| s.observed_generation == Some(observed.generation) && !s.verification.is_empty())
        .map(|s| s.verification.clone());
    match (&mut observed.verify, stored) {
        (JobState::Succeeded, Some(gates)) => observed.gates = gates,
        (JobState::Succeeded, None) => {
            observed.gates = gates(&job_report(ctx, ns, &verify_name).unwrap_or_default());
        }
        (JobState::Failed { message }, _) => {
            *message = job_report(ctx, ns, &verify_name).unwrap_or_else(|| "the Job failed".into());
            observed.gates = gates(message);
        }
        _ => {}
    }
    Ok(())
}

/// Jobs of older generations: their results no longer describe the spec.
async fn delete_old_jobs(ctx: &Context, ns: &str, name: &str, generation: i64) -> Result<()> {
    delete_jobs(ctx, ns, name, &format!("!={generation}")).await
}

/// The warm-up and verify Jobs of `name` whose generation label matches `generation` (a
/// selector operator and value: `=3`, `!=3`).
async fn delete_jobs(ctx: &Context, ns: &str, name: &str, generation: &str) -> Result<()> {
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let selector =
        format!("{}={name},{} in (warmup,verify),{}{generation}", labels::COLLECTION, labels::ROLE, labels::GENERATION);
    jobs_api.delete_collection(&DeleteParams::background(), &ListParams::default().labels(&selector)).await?;
    Ok(())
}

fn status(vc: &VectorCollection, ctx: &Context, d: &Decision, observed: &Observed) -> VectorCollectionStatus {
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

async fn announce(vc: &VectorCollection, ctx: &Context, d: &Decision) {
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

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn stuck_pods_say_why_and_starting_ones_do_not() {
        let unschedulable = pod(serde_json::json!({"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes: pod has unbound PersistentVolumeClaims"}]}));
        assert_eq!(
            pod_problem(&unschedulable).as_deref(),
            Some("Unschedulable: 0/3 nodes: pod has unbound PersistentVolumeClaims")
        );
        let creating = pod(serde_json::json!({"containerStatuses": [{"name": "quiver", "image": "i", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert_eq!(pod_problem(&creating), None);
        let pulling = pod(serde_json::json!({"containerStatuses": [{"name": "quiver", "image": "i", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}));
        assert_eq!(pod_problem(&pulling).as_deref(), Some("ImagePullBackOff: not found"));
        let long = "x".repeat(2000);
        let crashed = pod(serde_json::json!({"containerStatuses": [{"name": "quiver", "image": "i", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 2, "message": long}}}]}));
        let problem = pod_problem(&crashed).unwrap();
        assert!(
            problem.starts_with("exited with 2: xxx") && problem.ends_with("...") && problem.len() < 600,
            "{problem}"
        );
    }

    #[test]
    fn verify_reports_become_gates_and_other_messages_none() {
        let report = r#"{"collection": "c", "passed": false, "setting": "s", "queries": 1, "k": 10, "checks": [
            {"name": "recall", "measured": 0.8, "comparison": ">=", "threshold": 0.9, "passed": false, "margin": -0.1}]}"#;
        let g = gates(report);
        assert_eq!((g.len(), g[0].name.as_str(), g[0].passed), (1, "recall", false));
        assert!(gates("error: connection refused").is_empty());
    }
}
