//! The warm-up and verify Jobs: one run of `quiver warmup` / `quiver verify` against the
//! collection's replicas Service per spec generation. Their JSON report is the container's
//! termination message; exit code 1 is a verdict (a failed gate) and is not retried.

use super::Defaults;
use super::labels::{self, Role};
use super::pod::{self, flag, optional_flag};
use crate::crd::VectorCollection;
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, PodSpec, PodTemplateSpec, SecretKeySelector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

/// Retries for infrastructure failures (evictions, image pulls); a failed gate is final.
const BACKOFF_LIMIT: i32 = 3;
const DEADLINE_SECONDS: i64 = 3600;

fn generation(vc: &VectorCollection) -> i64 {
    vc.metadata.generation.unwrap_or(0)
}

/// The vector count the source promised (push sources say it in source.push), unless the
/// count comes from the source database (verify.expectedCountFrom), which then decides.
pub fn expected_count(vc: &VectorCollection) -> Option<u64> {
    if vc.spec.verify.expected_count_from.is_some() {
        return None;
    }
    vc.spec.verify.expected_count.or(vc.spec.source.push.as_ref().and_then(|p| p.expected_count))
}

pub fn warmup_args(vc: &VectorCollection) -> Vec<String> {
    let name = vc.name_any();
    let mut args = vec!["warmup".to_string()];
    flag(&mut args, "target", labels::replicas_url(&name));
    flag(&mut args, "collection", &name);
    flag(&mut args, "max-queries", vc.spec.warmup.max_queries);
    args
}

pub fn verify_args(vc: &VectorCollection) -> Vec<String> {
    let name = vc.name_any();
    let v = &vc.spec.verify;
    let mut args = vec!["verify".to_string()];
    flag(&mut args, "target", labels::replicas_url(&name));
    flag(&mut args, "collection", &name);
    optional_flag(&mut args, "expected-count", expected_count(vc));
    if let Some(from) = &v.expected_count_from {
        // One argument with `=`: SQL that starts with a `-- comment` is not read as a flag.
        args.push(format!("--expected-count-query={}", from.sql));
    }
    flag(&mut args, "min-recall", v.min_recall);
    optional_flag(&mut args, "max-p99-ms", v.max_p99_ms);
    flag(&mut args, "k", v.k);
    flag(&mut args, "sample", v.sample);
    args
}

pub fn warmup(vc: &VectorCollection, defaults: &Defaults) -> Job {
    job(vc, defaults, Role::Warmup, warmup_args(vc), Vec::new())
}

pub fn verify(vc: &VectorCollection, defaults: &Defaults) -> Job {
    job(vc, defaults, Role::Verify, verify_args(vc), verify_env(vc))
}

/// The count query's database URL holds its password: from the Secret into the environment,
/// never into the arguments (which `kubectl describe` and the process list show).
fn verify_env(vc: &VectorCollection) -> Vec<EnvVar> {
    let Some(from) = &vc.spec.verify.expected_count_from else { return Vec::new() };
    vec![EnvVar {
        name: "QUIVER_SOURCE_DATABASE_URL".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { optional: Some(false), ..from.database_url_secret.clone() }),
            ..Default::default()
        }),
        ..Default::default()
    }]
}

fn job(vc: &VectorCollection, defaults: &Defaults, role: Role, args: Vec<String>, env: Vec<EnvVar>) -> Job {
    let name = vc.name_any();
    let mut meta = labels::owned_meta(vc, labels::job_name(&name, role, generation(vc)), role);
    let mut pod_labels = labels::labels(&name, role);
    pod_labels.insert(labels::GENERATION.into(), generation(vc).to_string());
    meta.labels = Some(pod_labels.clone());
    let mut container = pod::container(vc, defaults, args, Some(pod::default_resources("250m", "256Mi")), false);
    container.env = (!env.is_empty()).then_some(env);
    Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            active_deadline_seconds: Some(DEADLINE_SECONDS),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "FailJob".into(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        container_name: Some(pod::BINARY.into()),
                        operator: "In".into(),
                        values: vec![1],
                    }),
                    ..Default::default()
                }],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".into()),
                    security_context: Some(pod::pod_security()),
                    volumes: Some(pod::volumes(vc)),
                    automount_service_account_token: Some(false),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
