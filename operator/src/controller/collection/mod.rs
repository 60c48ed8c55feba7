//! The VectorCollection controller: applies the writer, then (once sealed) the replicas, then
//! the warm-up and verify Jobs one after the other; reads what they report; feeds it to the
//! phase machine; writes status, conditions and Events. A finalizer refuses deletion while an
//! alias points at the collection. This file drives the steps; each has a file of its own:
//! [`observe`], [`generation_jobs`], [`autoscaler`], [`status`], [`deletion`].

use super::{Context, Error, Result, apply, condition, delete_if_present, key, namespace};
use crate::crd::{AfterPublish, GateResult, Phase, VectorCollection, VectorCollectionStatus};
use crate::phase::{self, Decision, JobState, Observed, WriterState};
use crate::resources::labels::{self, FIELD_MANAGER, PINNED_AT_RETRY, RETRIED, RETRY, Role};
use crate::resources::{autoscaling, jobs, network, replicas, token, writer};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use quiver_api::types::VerifyReport;
use std::sync::Arc;
use std::time::Duration;

mod autoscaler;
mod deletion;
mod generation_jobs;
pub(crate) mod observe;
mod status;

use autoscaler::*;
pub use autoscaler::{HANDOVER_MANAGER, owns_replicas};
pub use deletion::aliases_pointing_at;
use deletion::*;
use generation_jobs::*;
use observe::*;
pub use observe::{gates, pod_problem};
use status::*;

pub const CONTROLLER: &str = "collection";
/// Held while the collection may be deleted only after no alias points at it.
pub const FINALIZER: &str = "quiver.dev/alias-protection";
/// How often a collection in progress is looked at (writer progress is not a watch event).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Import progress alone is written to status at most this often.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(5);
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
    if let Some(field) = ambient_credentials_asked(vc).filter(|_| !ctx.defaults.allow_ambient_credentials) {
        withdraw_ambient_credentials(vc, ctx).await?;
        return Err(Error::AmbientCredentialsNotAllowed(field));
    }
    progress(vc, ctx).await
}

/// A collection refused the node's identity (the operator no longer allows it) keeps no pod
/// that has it: the writer and replicas the caches hold with `--ambient-credentials` are
/// applied again as rendered now, without it. A Deployment rolls: its old pods serve until new
/// ones are ready (maxUnavailable 0), so what was verified keeps serving while it can.
async fn withdraw_ambient_credentials(vc: &VectorCollection, ctx: &Context) -> Result<()> {
    let ns = namespace(vc)?;
    let name = vc.name_any();
    let granted = |spec: Option<&k8s_openapi::api::core::v1::PodSpec>| {
        spec.into_iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.args.iter().flatten())
            .any(|a| a == "--ambient-credentials")
    };
    let writer_sts = ctx.caches.stateful_sets.get(&ns, &labels::writer_name(&name));
    if writer::released(vc) {
        // Never applied again (an apply makes what is missing, and a cache that still holds
        // the deleted writer would make a new one, importing anew): the release goes on.
        release_writer(vc, ctx, &ns).await?;
    } else if writer_sts.as_ref().is_some_and(|s| granted(s.spec.as_ref().and_then(|s| s.template.spec.as_ref()))) {
        apply(ctx, &ns, &writer::stateful_set(vc, &ctx.defaults)).await?;
    }
    if let Some(deployment) = ctx.caches.deployments.get(&ns, &labels::replicas_name(&name)) {
        let spec = deployment.spec.as_ref();
        if granted(spec.and_then(|s| s.template.spec.as_ref())) {
            let pinned = vc.status.as_ref().and_then(|s| s.sealed_sha256.clone()).or_else(|| live_pin(vc, ctx, &ns));
            let mut rendered = replicas::deployment(vc, &ctx.defaults, pinned.as_deref());
            // Scaled down (unserved) stays scaled down.
            if spec.and_then(|s| s.replicas) == Some(0) {
                rendered = replicas::scaled_down(rendered);
            }
            apply(ctx, &ns, &rendered).await?;
        }
    }
    Ok(())
}

/// The snapshot the live replicas' Deployment is pinned to, if that pin is this collection's:
/// made since its last retry (a retry clears the pin, and the writer starts over; a pin made
/// by an operator from before `quiver.dev/pinned-at-retry` is taken as one), or at any
/// time once the writer is released (a retry does not start it over). A cluster whose CRD is
/// older than `status.sealedSha256` prunes it from every status write, and the pin would
/// otherwise come and go with the writer's reports, rolling every replica each time.
fn live_pin(vc: &VectorCollection, ctx: &Context, ns: &str) -> Option<String> {
    let deployment = ctx.caches.deployments.get(ns, &labels::replicas_name(&vc.name_any()))?;
    // Only this collection's own: one left by a namesake deleted with `--cascade=orphan` (or
    // not yet collected) pins another collection's data.
    let owned =
        deployment.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == vc.uid().as_ref());
    if !owned {
        return None;
    }
    // A Deployment pinned by an operator from before the annotation has none: its pin stands.
    let retried = vc.annotations().get(RETRIED).map_or("", String::as_str);
    if !writer::released(vc) && deployment.annotations().get(PINNED_AT_RETRY).is_some_and(|at| at != retried) {
        return None;
    }
    let spec = deployment.spec.as_ref()?.template.spec.as_ref()?;
    let env = spec.containers.first()?.env.as_ref()?;
    env.iter()
        .find(|e| e.name == quiver_api::environment::SNAPSHOT_SHA256)
        .and_then(|e| e.value.clone())
        .filter(|sha256| quiver_api::types::is_sha256_hex(sha256))
}

/// The field through which a collection asks for the node's identity on object storage.
fn ambient_credentials_asked(vc: &VectorCollection) -> Option<&'static str> {
    if vc.spec.source.ambient_credentials {
        Some("spec.source.ambientCredentials")
    } else if vc.spec.snapshots.as_ref().is_some_and(|s| s.ambient_credentials) {
        Some("spec.snapshots.ambientCredentials")
    } else {
        None
    }
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
    // A refused spec is not served as asked, whatever its replicas still serve.
    let refused = matches!(error, Error::AmbientCredentialsNotAllowed(_));
    let serving = status.phase == Phase::Ready && status.observed_generation == vc.metadata.generation && !refused;
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

async fn progress(vc: &VectorCollection, ctx: &Context) -> Result<Action> {
    let ns = namespace(vc)?;
    let name = vc.name_any();
    let generation = vc.metadata.generation.unwrap_or(0);
    if retry(vc, ctx, &ns).await? {
        // Observed on the next pass: the old writer pod is still terminating now.
        return Ok(Action::requeue(RETRY_SETTLE));
    }
    // The stored status, with the live replicas' pin where it has none (a CRD too old for
    // `status.sealedSha256` prunes it): the phase machine then meets a writer that sealed other
    // data after Ready as it does on a current CRD (the old CRD prunes `verifiedSha256` too, so
    // after a spec change that is no longer Ready, it fails the generation instead), rather
    // than pinning replicas to what the writer reports now.
    let stored = vc.status.clone().map(|mut status| {
        status.sealed_sha256 = status.sealed_sha256.or_else(|| live_pin(vc, ctx, &ns));
        status
    });
    let previous = stored.as_ref();

    let token = token(vc, ctx, &ns).await?;
    if ctx.defaults.network_policies {
        // A released writer has no pods left to admit traffic to (release_writer deletes its policy).
        if !writer::released(vc) {
            apply(ctx, &ns, &network::writer(vc, &ctx.defaults)).await?;
        }
        apply(ctx, &ns, &network::replicas(vc, &ctx.defaults)).await?;
    }
    let (writer_state, writer_problem) = if writer::released(vc) {
        release_writer(vc, ctx, &ns).await?;
        (WriterState::Released, None)
    } else {
        apply(ctx, &ns, &writer::service(vc)).await?;
        let sts = apply(ctx, &ns, &writer::stateful_set(vc, &ctx.defaults)).await?;
        match observe_writer(vc, ctx, &ns, &sts, token.as_deref()).await? {
            (WriterState::Sealed { count, setting, stored, sha256 }, problem) => {
                match writer::release(vc, stored.as_ref()) {
                    // Recorded now (status says Released), deleted from the next pass on: a pass
                    // whose status write fails leaves the writer as it was.
                    writer::Release::Now => (WriterState::Released, None),
                    writer::Release::Waiting(why) => (
                        WriterState::Sealed { count, setting, stored, sha256 },
                        Some(format!("release waiting: {why}")),
                    ),
                    writer::Release::NotAsked => (WriterState::Sealed { count, setting, stored, sha256 }, problem),
                }
            }
            observed => observed,
        }
    };
    // A writer that sealed other data than replicas are pinned to (its volume was lost and it
    // imported again): replicas keep serving the verified snapshot; the writer says why.
    let writer_problem = match phase::resealed(previous, &writer_state) {
        Some((pinned, now)) => Some(format!(
            "the writer now holds the snapshot with sha256 {now}, not the {pinned} this collection is pinned \
             to: replicas serve only {pinned} (a new collection takes the new data)"
        )),
        None => writer_problem,
    };
    let wanted = replicas::wanted(&vc.spec.replicas);
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
        observed.idle = idle(vc, ctx)?;
        apply(ctx, &ns, &replicas::service(vc)).await?;
        if replicas::autoscaled(&vc.spec.replicas) && !observed.idle {
            hand_replicas_to_the_autoscaler(vc, ctx, &ns).await?;
        }
        let mut rendered = replicas::deployment(vc, &ctx.defaults, sealed.sealed_sha256.as_deref());
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
        // Pods never created (a quota) say so; pods created but stuck say why, also under a
        // Ready collection (Degraded), where a replica that cannot restore (its store object
        // gone, its key refused) would otherwise show only as a count.
        let problem = match replicas_refused {
            Some(refused) => Some(format!("replicas: {refused}")),
            None => replica_problem(ctx, &ns, &name),
        };
        if let Some(problem) = problem {
            let count = decision.message.take().unwrap_or_default();
            decision.message = Some(format!("{count}; {problem}"));
        }
    }
    // A Job whose pod cannot start (a missing Secret: CreateContainerConfigError; no image)
    // would wait out its deadline silently: say why.
    let running_job = match decision.phase {
        Phase::WarmingUp if observed.warmup == JobState::Running => Some(Role::Warmup),
        Phase::Verifying if observed.verify == JobState::Running => Some(Role::Verify),
        _ => None,
    };
    if let Some(role) = running_job {
        let job = labels::job_name(&name, role, observed.generation);
        if let Some(problem) = job_problem(ctx, &ns, &job) {
            decision.message = Some(format!("{job}: {problem}"));
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
    let status = status(vc, &decision, &observed, (ctx.now)());
    // Import progress alone (the row count in status.message) is written at most every
    // PROGRESS_WRITE_INTERVAL, however often something wakes the reconcile.
    // Against the status as stored (not `previous`, which may carry the live pin): a pin the
    // status lacks is written to it.
    let written = vc.status.as_ref();
    let only_progress = matches!(decision.phase, Phase::Importing | Phase::Restoring)
        && written.is_some_and(|p| VectorCollectionStatus { message: status.message.clone(), ..p.clone() } == status);
    if written != Some(&status) && !(only_progress && ctx.progress_written_within(&key(vc), PROGRESS_WRITE_INTERVAL)) {
        patch_status(vc, ctx, &status).await?;
        ctx.progress_written(&key(vc));
    }
    let previous_phase = previous.filter(|_| !generation_changed).map(|s| s.phase);
    if previous_phase != Some(decision.phase) {
        announce(vc, ctx, &decision).await;
    }
    Ok(match decision.phase {
        // The release goes on at once (status writes do not wake a reconcile): the pass that
        // turned Ready lets the next read the writer's report, the one that recorded the
        // release lets the next delete, the one that deleted waits to see the writer gone.
        Phase::Ready if releasing(vc, ctx, &ns, previous, &status, &observed.writer) => {
            Action::requeue(PROGRESS_INTERVAL)
        }
        Phase::Ready | Phase::Failed => Action::requeue(ctx.resync),
        _ => Action::requeue(PROGRESS_INTERVAL),
    })
}

/// Whether a Ready collection under `writer.afterPublish: Delete` has a step of its release
/// due on the next pass: it just turned Ready, or recorded the writer's stored snapshot or the
/// release in this pass, or has the release recorded with the writer's StatefulSet or Service
/// still in the caches. A writer that waits
/// (it does not report its snapshot in the store) is looked at again at the resync, not every
/// few seconds for as long as it waits.
fn releasing(
    vc: &VectorCollection,
    ctx: &Context,
    ns: &str,
    previous: Option<&VectorCollectionStatus>,
    status: &VectorCollectionStatus,
    observed: &WriterState,
) -> bool {
    if vc.spec.writer.after_publish != Some(AfterPublish::Delete) {
        return false;
    }
    let name = labels::writer_name(&vc.name_any());
    let cached = ctx.caches.stateful_sets.get(ns, &name).is_some() || ctx.caches.services.get(ns, &name).is_some();
    let turned_ready =
        previous.is_none_or(|p| p.phase != Phase::Ready || p.observed_generation != vc.metadata.generation);
    // A snapshot the writer reported in the store for the first time (an upload that ended
    // after the collection turned Ready): the next pass may release.
    let stored_now = previous.and_then(|p| p.snapshot.as_ref()) != status.snapshot.as_ref();
    if writer::released(vc) {
        cached
    } else {
        *observed == WriterState::Released || (turned_ready && cached) || stored_now
    }
}

/// A Failed collection annotated `quiver.dev/retry` with a value it has not acted on is retried:
/// the value is recorded first (annotation `quiver.dev/retried`, a merge patch guarded by the
/// resourceVersion, so a retry happens once even if what follows fails, and metadata is never
/// pruned by an older CRD schema), then the writer pod is deleted (its StatefulSet starts it
/// again: a failed import runs again, a sealed collection is recovered; the PVC stays), this
/// generation's Jobs are deleted, and the phase goes back to Pending. A released writer stays
/// released. Returns whether it did (or found the object stale: a newer pass decides).
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
    match api(vc, ctx)?.patch(&vc.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => {}
        // This pass ran on an older object than the API server's (a stale cache): not an
        // error to report over the newer status; the pass on the newer object decides.
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(true),
        Err(e) => return Err(e.into()),
    }
    let pod = format!("{}-0", labels::writer_name(&vc.name_any()));
    delete_if_present::<Pod>(ctx, ns, &pod, &DeleteParams::default()).await?;
    delete_jobs(ctx, ns, &vc.name_any(), &format!("={generation}")).await?;
    let why = stored.message.clone().unwrap_or_default();
    ctx.event(vc, EventType::Normal, "Retry", "Retry", format!("retrying ({RETRY}={request}) after: {why}")).await;
    let mut pending = stored.clone();
    pending.phase = Phase::Pending;
    pending.verification.clear();
    if writer::released(vc) {
        // The verified import is in the store: the Jobs run again on the replicas, and no
        // writer imports anew (an ETL's push or files may be gone, and other data would be
        // published over what replicas serve).
        pending.message = Some("retrying: warm-up and verification run again".into());
    } else {
        // A writer that was not released imports again, or recovers its seal from its volume,
        // and reports its upload again; what it seals then is what replicas are pinned to.
        pending.snapshot = None;
        pending.sealed_sha256 = None;
        pending.verified_sha256 = None;
        pending.message = Some("retrying: the writer starts again".into());
    }
    patch_status(vc, ctx, &pending).await?;
    Ok(true)
}

/// `writer.afterPublish: Delete` with the snapshot in the store: the writer's StatefulSet
/// (with it its pod, and its volume by the StatefulSet's `whenDeleted: Delete` retention
/// policy) and Service are deleted, once (what the caches no longer hold is gone already).
async fn release_writer(vc: &VectorCollection, ctx: &Context, ns: &str) -> Result<()> {
    let name = labels::writer_name(&vc.name_any());
    // Only the object the cache saw: one made since under the same name is not this writer.
    let of = |uid: Option<String>| DeleteParams {
        preconditions: uid.map(|uid| kube::api::Preconditions { uid: Some(uid), resource_version: None }),
        ..DeleteParams::background()
    };
    // Announced only when this pass deleted something (a cache that still holds what is gone
    // answers 404 or, for a namesake, 409: no Event for those).
    // One being deleted already is not deleted again: the API server answers a DELETE of it
    // 200 while a finalizer or the garbage collector holds it, which would announce again.
    let mut deleted = false;
    let live = |meta: &kube::api::ObjectMeta| meta.deletion_timestamp.is_none();
    if let Some(sts) = ctx.caches.stateful_sets.get(ns, &name).filter(|s| live(&s.metadata)) {
        deleted |= delete_if_present::<StatefulSet>(ctx, ns, &name, &of(sts.metadata.uid.clone())).await?;
    }
    if let Some(service) = ctx.caches.services.get(ns, &name).filter(|s| live(&s.metadata)) {
        let params = of(service.metadata.uid.clone());
        deleted |= delete_if_present::<k8s_openapi::api::core::v1::Service>(ctx, ns, &name, &params).await?;
    }
    // Its NetworkPolicy is housekeeping (it would otherwise select pods that no longer exist
    // until the collection is deleted; the replicas keep their own): a delete that fails (an
    // admission policy, hand-made RBAC) is logged and tried again on the next pass, and holds
    // up nothing else.
    if let Some(policy) = ctx.caches.network_policies.get(ns, &name).filter(|p| live(&p.metadata)) {
        let params = of(policy.metadata.uid.clone());
        match delete_if_present::<NetworkPolicy>(ctx, ns, &name, &params).await {
            Ok(gone) => deleted |= gone,
            Err(e) => tracing::warn!(policy = %name, error = %e, "the released writer's NetworkPolicy stays for now"),
        }
    }
    if deleted {
        let location =
            vc.status.as_ref().and_then(|s| s.snapshot.as_ref()).map(|s| s.location.clone()).unwrap_or_default();
        let note = format!("deleted the writer: its snapshot is in {location} (writer.afterPublish: Delete)");
        ctx.event(vc, EventType::Normal, "WriterReleased", "Delete", note).await;
    }
    Ok(())
}

/// Whether the collection sits unused ([`replicas::idle`], one answer for the controller and
/// the state metrics).
fn idle(vc: &VectorCollection, ctx: &Context) -> Result<bool> {
    let aliases = ctx.caches.aliases.in_namespace(&namespace(vc)?);
    Ok(replicas::idle(vc, aliases.iter().map(|a| a.as_ref()), &ctx.defaults))
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
        let report = r#"{"collection": "c", "passed": false, "setting": "s", "queries": 1, "k": 10, "gates": [
            {"name": "recall", "measured": 0.8, "comparison": ">=", "threshold": 0.9, "passed": false, "margin": -0.1}]}"#;
        let g = gates(report);
        assert_eq!((g.len(), g[0].name.as_str(), g[0].passed), (1, "recall", false));
        assert!(gates("error: connection refused").is_empty());
        // A report written by a verify Job of an earlier version named its gates `checks`.
        let old = report.replace(r#""gates""#, r#""checks""#);
        assert_eq!(gates(&old).len(), 1);
    }
}
