//! The warm-up and verify Jobs of a generation: their state and report, and the deletion of
//! older generations' Jobs.

use super::*;

/// Reads the warm-up and verify Jobs of this generation (and the verify report once).
pub(super) async fn observe_jobs(
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
pub(super) async fn delete_old_jobs(ctx: &Context, ns: &str, name: &str, generation: i64) -> Result<()> {
    delete_jobs(ctx, ns, name, &format!("!={generation}")).await
}

/// The warm-up and verify Jobs of `name` whose generation label matches `generation` (a
/// selector operator and value: `=3`, `!=3`).
pub(super) async fn delete_jobs(ctx: &Context, ns: &str, name: &str, generation: &str) -> Result<()> {
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let selector =
        format!("{}={name},{} in (warmup,verify),{}{generation}", labels::COLLECTION, labels::ROLE, labels::GENERATION);
    jobs_api.delete_collection(&DeleteParams::background(), &ListParams::default().labels(&selector)).await?;
    Ok(())
}
