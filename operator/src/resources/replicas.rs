//! Read replicas: a Deployment whose pods fetch the sealed snapshot from the writer (or a ready
//! peer), warm it and serve Search; the Service in front of them; their disruption budget.

use super::Defaults;
use super::labels::{self, Role};
use super::pod::{self, flag, optional_flag};
use crate::crd::{CollectionAlias, Phase, ReplicasSpec, VectorCollection};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvVar, PodSpec, PodTemplateSpec, Service, ServiceSpec, Volume,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

pub const DEFAULT_COUNT: i32 = 2;
/// Seconds a terminating replica keeps answering while Services stop routing to it.
pub const DRAIN_DELAY_SECS: u64 = 5;

/// Whether an HPA owns the replica count.
pub fn autoscaled(spec: &ReplicasSpec) -> bool {
    spec.min.is_some() || spec.max.is_some()
}

/// Replicas that must be ready before the collection is warmed up and verified.
pub fn wanted(spec: &ReplicasSpec) -> i32 {
    if autoscaled(spec) { spec.min.unwrap_or(1) } else { spec.count.unwrap_or(DEFAULT_COUNT) }
}

/// Whether a Ready collection a rebuild made sits unused: no alias serves it (no served-by
/// mark: neither current nor previous) and none of `aliases` points at it. Its replicas are
/// then scaled to zero (`--scale-down-unserved`), and come back when an alias points at it
/// again; the writer keeps its snapshot. Pure, so the state metrics export the replicas the
/// controller wants from the same answer.
pub fn idle<'a>(
    vc: &VectorCollection,
    aliases: impl IntoIterator<Item = &'a CollectionAlias>,
    defaults: &Defaults,
) -> bool {
    let rebuilt = vc.labels().contains_key(labels::ALIAS);
    let marked = vc.labels().keys().any(|k| k.starts_with(labels::SERVED_BY_PREFIX));
    let status = vc.status.as_ref();
    let ready = status.is_some_and(|s| s.phase == Phase::Ready && s.observed_generation == vc.metadata.generation);
    defaults.scale_down_unserved && rebuilt && !marked && ready && !aliases.into_iter().any(|ca| points_at(ca, vc))
}

/// Whether `ca` points at `vc` (an alias of another namespace never does): it targets it (a
/// pin, or the newest rebuild about to be flipped to), serves it, or keeps it for a rollback.
pub fn points_at(ca: &CollectionAlias, vc: &VectorCollection) -> bool {
    let status = ca.status.clone().unwrap_or_default();
    let name = Some(vc.name_any());
    ca.namespace() == vc.namespace()
        && (ca.target(&status) == name || status.current == name || status.previous == name)
}

/// `quiver replica ...` for this collection.
pub fn args(vc: &VectorCollection, defaults: &Defaults) -> Vec<String> {
    let name = vc.name_any();
    let mut args = vec!["replica".to_string()];
    flag(&mut args, "data-dir", pod::DATA_DIR);
    flag(&mut args, "collection", &name);
    // The store first (it needs no writer); then the writer; ready peers (behind the replicas
    // Service) take over when it is busy or gone.
    let peers = format!("{},{}", labels::writer_url(&name), labels::replicas_url(&name));
    let snapshots = vc.spec.snapshots.as_ref();
    flag(
        &mut args,
        "snapshot-from",
        snapshots.map_or(peers.clone(), |_| format!("{},{peers}", pod::snapshot_store(vc).expect("a store"))),
    );
    // Only while this operator allows it: a pod it renders never keeps a grant withdrawn since.
    if snapshots.is_some_and(|s| s.ambient_credentials) && defaults.allow_ambient_credentials {
        args.push("--ambient-credentials".into());
    }
    pod::listen_flags(vc, &mut args);
    flag(&mut args, "warmup-max-queries", vc.spec.warmup.max_queries);
    // On SIGTERM stay NOT_SERVING this long before closing, while endpoints drop the pod.
    flag(&mut args, "drain-delay-secs", DRAIN_DELAY_SECS);
    optional_flag(&mut args, "max-connection-age-secs", vc.spec.replicas.max_connection_age_seconds);
    args
}

pub fn deployment(vc: &VectorCollection, defaults: &Defaults, pinned: Option<&str>) -> Deployment {
    let name = vc.name_any();
    let spec = &vc.spec.replicas;
    // The snapshot volume holds one compacted copy of the collection, at most what the writer's
    // volume holds; the pod asks for that much ephemeral storage so it lands where it fits.
    let snapshot_limit = vc.spec.writer.storage.clone().unwrap_or_else(|| super::writer::DEFAULT_STORAGE.into());
    let mut resources = spec.resources.clone().unwrap_or_else(|| pod::default_resources("500m", "1Gi"));
    resources
        .requests
        .get_or_insert_with(Default::default)
        .entry("ephemeral-storage".into())
        .or_insert_with(|| Quantity(snapshot_limit.clone()));
    let mut container = pod::serving(pod::container(vc, defaults, args(vc, defaults), Some(resources), true));
    // Their own read-only key when given, else the writer's (one set, see the CRD's rule).
    let store_secret = vc.spec.snapshots.as_ref().and_then(|s| {
        (s.replica_credentials_secret.as_ref()).or(s.credentials_secret.as_ref()).or(vc
            .spec
            .source
            .credentials_secret
            .as_ref())
    });
    let mut env = store_secret.map(|secret| pod::object_store_env(&secret.name)).unwrap_or_default();
    // Serving only the snapshot the writer sealed, once it is known. An environment variable,
    // not a flag: an engine older than the pin (an image rolled back) ignores it, where it
    // would refuse an unknown flag and crash-loop every replica. A value that is not a sha256
    // would make every replica exit with a usage error: no pin is rendered from it.
    let pinned = pinned.filter(|sha256| quiver_api::types::is_sha256_hex(sha256));
    let mut metadata = labels::owned_meta(vc, labels::replicas_name(&name), Role::Replica);
    if let Some(sha256) = pinned {
        env.push(EnvVar {
            name: quiver_api::environment::SNAPSHOT_SHA256.into(),
            value: Some(sha256.into()),
            ..Default::default()
        });
        let retried = vc.annotations().get(labels::RETRIED).cloned().unwrap_or_default();
        metadata.annotations = Some(BTreeMap::from([(labels::PINNED_AT_RETRY.to_string(), retried)]));
    }
    container.env = (!env.is_empty()).then_some(env);
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            // Left unset when autoscaled, so the HPA, not this field manager, owns the count.
            replicas: (!autoscaled(spec)).then(|| wanted(spec)),
            selector: LabelSelector {
                match_labels: Some(labels::selector(&name, Role::Replica)),
                ..Default::default()
            },
            // A new pod must be ready (snapshot fetched, warm) before an old one goes.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels::labels(&name, Role::Replica)), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod::pod_security()),
                    volumes: Some(
                        [
                            pod::volumes(vc),
                            // The fetched snapshot: fetched again from the writer or a peer on restart.
                            vec![Volume {
                                name: pod::DATA_VOLUME.into(),
                                empty_dir: Some(EmptyDirVolumeSource {
                                    size_limit: Some(Quantity(snapshot_limit)),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }],
                        ]
                        .concat(),
                    ),
                    automount_service_account_token: Some(false),
                    // Draining replicas finish calls in flight and send GOAWAY before exiting.
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Deployment of a collection no alias serves or targets: no replicas (and no HPA).
pub fn scaled_down(mut deployment: Deployment) -> Deployment {
    if let Some(spec) = deployment.spec.as_mut() {
        spec.replicas = Some(0);
    }
    deployment
}

/// The collection's own Service (jobs and peers use it; clients use the alias Service).
pub fn service(vc: &VectorCollection) -> Service {
    let name = vc.name_any();
    Service {
        metadata: labels::owned_meta(vc, labels::replicas_name(&name), Role::Replica),
        spec: Some(ServiceSpec {
            selector: Some(labels::selector(&name, Role::Replica)),
            ports: Some(vec![super::writer::grpc_port()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// At most one replica voluntarily evicted at a time.
pub fn disruption_budget(vc: &VectorCollection) -> PodDisruptionBudget {
    let name = vc.name_any();
    PodDisruptionBudget {
        metadata: labels::owned_meta(vc, labels::replicas_name(&name), Role::Replica),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&name, Role::Replica)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
