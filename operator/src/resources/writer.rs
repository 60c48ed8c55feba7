//! The writer: a one-pod StatefulSet (its LMDB on a PVC) that imports, builds, seals and
//! serves the snapshot, and the headless Service replicas fetch the snapshot through.

use super::labels::{self, Role};
use super::pod::{self, flag, optional_flag};
use super::{Defaults, GRPC_PORT};
use crate::crd::{AfterPublish, Phase, StoredSnapshot, VectorCollection};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

pub const DEFAULT_STORAGE: &str = "10Gi";

/// `quiver writer ...` for this collection.
pub fn args(vc: &VectorCollection, defaults: &Defaults) -> Vec<String> {
    let spec = &vc.spec;
    let mut args = vec!["writer".to_string()];
    flag(&mut args, "data-dir", pod::DATA_DIR);
    flag(&mut args, "collection", vc.name_any());
    pod::listen_flags(vc, &mut args);
    // Without a URL (or a snapshot to restore) the writer waits for an ETL on its Ingest API.
    optional_flag(&mut args, "source", spec.source.url.as_ref());
    optional_flag(&mut args, "restore-from", spec.source.snapshot.as_ref());
    optional_flag(&mut args, "format", spec.source.format.as_ref());
    let snapshots = spec.snapshots.as_ref();
    // Only while this operator allows it: a pod it renders never keeps a grant withdrawn since.
    let asked = spec.source.ambient_credentials || snapshots.is_some_and(|s| s.ambient_credentials);
    if asked && defaults.allow_ambient_credentials {
        args.push("--ambient-credentials".into());
    }
    optional_flag(&mut args, "snapshot-store", pod::snapshot_store(vc));
    if let Some(columns) = &spec.source.columns {
        optional_flag(&mut args, "id-column", columns.id.as_ref());
        optional_flag(&mut args, "vector-column", columns.vector.as_ref());
        optional_flag(&mut args, "partition-column", columns.partition.as_ref());
        optional_flag(&mut args, "tags-column", columns.tags.as_ref());
    }
    flag(&mut args, "distance", spec.distance.as_str());
    flag(&mut args, "dimensions", spec.dimensions);
    flag(&mut args, "index", spec.index.backend.as_str());
    optional_flag(&mut args, "n-trees", spec.index.n_trees);
    optional_flag(&mut args, "ef-construction", spec.index.ef_construction);
    optional_flag(&mut args, "lists", spec.index.lists);
    optional_flag(&mut args, "arroy-vectors", spec.index.arroy_vectors.map(|v| v.as_str()));
    optional_flag(&mut args, "shortlist", spec.index.shortlist.map(|v| v.as_str()));
    flag(&mut args, "target-recall", spec.search.target_recall);
    args
}

/// Whether the writer is released (to be gone, never made again): `writer.afterPublish:
/// Delete`, its snapshot recorded in status, and the release recorded there too (the
/// WriterAvailable condition's reason Released), written by the pass that found the writer
/// releasable before any pass deletes it. The data a snapshot holds is fixed for the
/// collection's life (source, index and search are immutable), so the release stands for every
/// later generation too.
pub fn released(vc: &VectorCollection) -> bool {
    let Some(status) = vc.status.as_ref() else { return false };
    vc.spec.writer.after_publish == Some(AfterPublish::Delete)
        && status.snapshot.is_some()
        && status.conditions.iter().any(|c| c.type_ == "WriterAvailable" && c.reason == "Released")
}

/// Where a writer stands toward its release, in a pass that reads its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// No release asked for now: `writer.afterPublish: Keep`, or the collection not Ready
    /// (verified) for this generation.
    NotAsked,
    /// Released now: the writer itself reports, in this pass, the snapshot status recorded, at
    /// the place this spec's store names (not an old record: the store may have changed, or
    /// lost the object since).
    Now,
    /// Asked for, and why not yet.
    Waiting(String),
}

pub fn release(vc: &VectorCollection, reported: Option<&StoredSnapshot>) -> Release {
    let Some(status) = vc.status.as_ref() else { return Release::NotAsked };
    if vc.spec.writer.after_publish != Some(AfterPublish::Delete)
        || status.phase != Phase::Ready
        || status.observed_generation != vc.metadata.generation
    {
        return Release::NotAsked;
    }
    let Some(expected) = super::pod::snapshot_store(vc).map(|store| format!("{store}/{}", vc.name_any())) else {
        return Release::Waiting("spec.snapshots.store is not set: the snapshot is only on the writer's volume".into());
    };
    match reported {
        None => Release::Waiting(format!("the writer does not report its snapshot in {expected} (yet)")),
        Some(r) if r.location != expected => {
            Release::Waiting(format!("the writer reports its snapshot in {}, not in {expected}", r.location))
        }
        Some(r) if status.snapshot.as_ref() != Some(r) => Release::Waiting(format!(
            "the writer's stored snapshot (sha256 {}) is not the one recorded (sha256 {})",
            r.sha256,
            status.snapshot.as_ref().map(|s| s.sha256.as_str()).unwrap_or("none")
        )),
        Some(_) => Release::Now,
    }
}

pub fn stateful_set(vc: &VectorCollection, defaults: &Defaults) -> StatefulSet {
    let name = vc.name_any();
    let writer = &vc.spec.writer;
    let resources = writer.resources.clone().unwrap_or_else(|| pod::default_resources("1", "2Gi"));
    let mut container = pod::serving(pod::container(vc, defaults, args(vc, defaults), Some(resources), true));
    let snapshots = vc.spec.snapshots.as_ref();
    let secret = vc.spec.source.credentials_secret.as_ref().or(snapshots.and_then(|s| s.credentials_secret.as_ref()));
    container.env = secret.map(|secret| pod::object_store_env(&secret.name));
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(pod::DATA_VOLUME.into()),
            labels: Some(labels::labels(&name, Role::Writer)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: writer.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(writer.storage.clone().unwrap_or_else(|| DEFAULT_STORAGE.into())),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: labels::owned_meta(vc, labels::writer_name(&name), Role::Writer),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            // OrderedReady never replaces a pod that is not Ready, and the writer is not Ready
            // until sealed: a changed template would never roll out during an import or after
            // a failure. There is one pod; ordering buys nothing.
            pod_management_policy: Some("Parallel".into()),
            service_name: Some(labels::writer_name(&name)),
            selector: LabelSelector { match_labels: Some(labels::selector(&name, Role::Writer)), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels::labels(&name, Role::Writer)), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod::pod_security()),
                    volumes: Some(pod::volumes(vc)),
                    automount_service_account_token: Some(false),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            // The volume holds a build artifact of this collection only: deleting the
            // collection (which the finalizer refuses while an alias uses it) deletes it.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Delete".into()),
                when_scaled: Some("Retain".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Headless: the name resolves to the writer pod once it is ready (sealed, snapshot written),
/// which is exactly when replicas can fetch from it.
pub fn service(vc: &VectorCollection) -> Service {
    let name = vc.name_any();
    Service {
        metadata: labels::owned_meta(vc, labels::writer_name(&name), Role::Writer),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels::selector(&name, Role::Writer)),
            ports: Some(vec![grpc_port()]),
            // The writer is ready only once sealed, but an ETL must reach it before that to push
            // (Ingest) and the operator to read its progress.
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn grpc_port() -> ServicePort {
    ServicePort {
        name: Some("grpc".into()),
        port: GRPC_PORT,
        target_port: Some(IntOrString::String("grpc".into())),
        app_protocol: Some("kubernetes.io/h2c".into()),
        ..Default::default()
    }
}
