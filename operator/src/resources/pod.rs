//! What every quiver pod shares: the image, the restricted security context, ports, probes
//! and the writable volumes a read-only root filesystem needs.

use super::{Defaults, GRPC_PORT, HTTP_PORT};
use crate::crd::VectorCollection;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    PodSecurityContext, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The binary every container runs; its subcommand is the role.
pub const BINARY: &str = "quiver";
/// Where a role keeps its collection (the writer's PVC, a replica's emptyDir).
pub const DATA_DIR: &str = "/data";
pub const DATA_VOLUME: &str = "data";
const TMP_VOLUME: &str = "tmp";
const TOKEN_VOLUME: &str = "token";
const TOKEN_DIR: &str = "/var/run/secrets/quiver";
const TOKEN_FILE: &str = "token";
/// A non-root uid/gid; `fsGroup` makes the data volume writable for it.
const UID: i64 = 65532;

pub fn image(vc: &VectorCollection, defaults: &Defaults) -> String {
    vc.spec.image.clone().unwrap_or_else(|| defaults.image.clone())
}

/// The Pod Security Standards "restricted" profile.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(UID),
        run_as_group: Some(UID),
        fs_group: Some(UID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// A container running `quiver <args>` with the restricted context, a writable /tmp, and the
/// collection's bearer token file.
pub fn container(
    vc: &VectorCollection,
    defaults: &Defaults,
    mut args: Vec<String>,
    resources: Option<ResourceRequirements>,
    data: bool,
) -> Container {
    let mut mounts = vec![VolumeMount { name: TMP_VOLUME.into(), mount_path: "/tmp".into(), ..Default::default() }];
    if data {
        mounts.push(VolumeMount { name: DATA_VOLUME.into(), mount_path: DATA_DIR.into(), ..Default::default() });
    }
    // Every pod requires (and sends) the collection's token: the user's Secret, or the one
    // the operator generated.
    mounts.push(VolumeMount {
        name: TOKEN_VOLUME.into(),
        mount_path: TOKEN_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    flag(&mut args, "token-file", format!("{TOKEN_DIR}/{TOKEN_FILE}"));
    Container {
        name: BINARY.into(),
        image: Some(image(vc, defaults)),
        command: Some(vec![BINARY.into()]),
        args: Some(args),
        resources,
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        // The Jobs' JSON report is their termination message; a crash falls back to the log tail.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// Ports and probes of a serving role (writer, replica).
pub fn serving(mut container: Container) -> Container {
    container.ports = Some(vec![
        ContainerPort { name: Some("grpc".into()), container_port: GRPC_PORT, ..Default::default() },
        ContainerPort { name: Some("http".into()), container_port: HTTP_PORT, ..Default::default() },
    ]);
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    container.liveness_probe = Some(probe("/livez", 10, 6));
    // Readiness means "has a verified snapshot and is warm", which can take long; it is not a
    // liveness signal, so it only gates traffic.
    // Three misses in a row, not one: a replica busy with a burst of scans or a GC-like pause
    // must not drop out of every Service's endpoints at once.
    container.readiness_probe = Some(probe("/readyz", 5, 3));
    container
}

/// What a pod of a role asks the scheduler for when the spec says nothing: without requests a
/// pod lands anywhere, is evicted first, and an HPA (which scales on CPU requests) never scales.
pub fn default_resources(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        ..Default::default()
    }
}

/// The size limit of the /tmp scratch volume (the root filesystem is read-only; nothing large
/// is written there).
pub const TMP_SIZE_LIMIT: &str = "256Mi";

/// The scratch volume behind /tmp (the root filesystem is read-only), and the token Secret's
/// key as a file.
pub fn volumes(vc: &VectorCollection) -> Vec<Volume> {
    let secret = super::token::selector(vc);
    vec![
        Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(TMP_SIZE_LIMIT.into())),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: TOKEN_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath { key: secret.key.clone(), path: TOKEN_FILE.into(), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// Where a serving role listens: every interface of the pod, with the token required. Search
/// of a collection whose token the operator generated needs none (see `token`): clients of an
/// alias cannot follow a token that changes with every rebuild.
pub fn listen_flags(vc: &VectorCollection, args: &mut Vec<String>) {
    flag(args, "listen", format!("0.0.0.0:{}", super::GRPC_PORT));
    flag(args, "http-listen", format!("0.0.0.0:{}", super::HTTP_PORT));
    if super::token::generated(vc) {
        args.push("--search-without-token".into());
    }
}

/// Spelled-out argument lists, so the rendered pods read like the commands one types.
pub fn flag(args: &mut Vec<String>, name: &str, value: impl ToString) {
    args.push(format!("--{name}"));
    args.push(value.to_string());
}

pub fn optional_flag(args: &mut Vec<String>, name: &str, value: Option<impl ToString>) {
    if let Some(value) = value {
        flag(args, name, value);
    }
}

/// The object store's credentials from `secret`: only the variables its client reads (not
/// `envFrom`, which would let any key of the Secret set any flag), each optional, so a Secret
/// with some of them works and a sealed writer restarts after the Secret is gone.
pub fn object_store_env(secret: &str) -> Vec<EnvVar> {
    quiver_api::environment::object_store_credentials()
        .map(|key| EnvVar {
            name: key.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(true) }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Where this collection's snapshots go in its store: under the namespace, so collections of
/// the same name in two namespaces (or clusters sharing a store by namespace) never meet.
pub fn snapshot_store(vc: &VectorCollection) -> Option<String> {
    let store = &vc.spec.snapshots.as_ref()?.store;
    let namespace = vc.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{}/{namespace}", store.trim_end_matches('/')))
}
