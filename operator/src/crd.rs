//! The custom resources: `VectorCollection` (a built, verified, replicated collection) and
//! `CollectionAlias` (the name clients query, flipped only to a verified collection).
//!
//! The collection settings that the engine also uses (distance, index, search defaults) are
//! the engine's own types, so the operator and the engine cannot disagree on them.

// `printcolumn(name = .., type_ = ..)` repeats the same keys once per column, by design of
// kube's derive; clippy reads that as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use quiver_api::types::IndexParams;
use quiver_api::types::Metric;
use serde::{Deserialize, Serialize};

/// A vector collection: imported by a writer, indexed, shipped as a snapshot to read replicas,
/// warmed up and verified. Immutable once Ready; rebuild by creating a new collection.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "quiver.dev",
    version = "v1alpha1",
    kind = "VectorCollection",
    namespaced,
    status = "VectorCollectionStatus",
    shortname = "vc",
    category = "quiver",
    cel,
    doc = "A vector collection built by a quiver writer, served by read replicas once verified.",
    // Names become Service, StatefulSet and Job names with suffixes (`-replicas`,
    // `-verify-g<generation>`) that must stay DNS labels of at most 63 characters.
    validation = Rule::new("size(self.metadata.name) <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("a collection name must be a DNS label (starting with a letter) of at most 40 characters"),
    // The collection's name is in the snapshot's manifest: it is restored under that name.
    validation = Rule::new("!has(self.spec.source.snapshot) || self.spec.source.snapshot.endsWith('/' + self.metadata.name)").message("source.snapshot must be a snapshot of this collection: <store>/<namespace>/<this collection's name>"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Vectors", type_ = "integer", json_path = ".status.vectorCount"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Verified", type_ = "string", json_path = ".status.conditions[?(@.type==\"Verified\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.replicas.min) || !has(self.replicas.max) || self.replicas.min <= self.replicas.max").message("replicas.min must not exceed replicas.max"))]
#[x_kube(validation = Rule::new("!has(self.snapshots) || (has(self.source.ambientCredentials) && self.source.ambientCredentials) == (has(self.snapshots.ambientCredentials) && self.snapshots.ambientCredentials)").message("the writer has one credentials policy: source.ambientCredentials and snapshots.ambientCredentials must be equal"))]
#[x_kube(validation = Rule::new("!has(self.writer) || !has(self.writer.afterPublish) || self.writer.afterPublish == 'Keep' || has(self.snapshots)").message("writer.afterPublish: Delete needs spec.snapshots: without a store, replicas start from the writer"))]
#[x_kube(validation = Rule::new("!has(self.snapshots) || !has(self.snapshots.credentialsSecret) || !has(self.source.credentialsSecret) || self.snapshots.credentialsSecret.name == self.source.credentialsSecret.name").message("the writer has one set of object-store credentials: source.credentialsSecret and snapshots.credentialsSecret must name the same Secret"))]
// What defines the data is fixed for the collection's life: a change would need a rebuild, and
// applying it in place would leave the pods, the index and the verification disagreeing. The
// rules sit on the spec because a field-level transition rule is skipped when the field is
// absent on either side (setting `index` for the first time would pass).
#[x_kube(validation = Rule::new("self.source == oldSelf.source").message("source is immutable: it defines the collection's data; create a new collection (or let the alias rebuild)"))]
#[x_kube(validation = Rule::new("has(self.index) == has(oldSelf.index) && (!has(self.index) || self.index == oldSelf.index)").message("index is immutable (and partitions with it): create a new collection (or let the alias rebuild)"))]
#[x_kube(validation = Rule::new("has(self.search) == has(oldSelf.search) && (!has(self.search) || self.search == oldSelf.search)").message("search.targetRecall is immutable: the build calibrated for it; create a new collection (or let the alias rebuild)"))]
#[x_kube(validation = Rule::new("(has(self.writer) && has(self.writer.storage)) == (has(oldSelf.writer) && has(oldSelf.writer.storage)) && (!has(self.writer) || !has(self.writer.storage) || self.writer.storage == oldSelf.writer.storage)").message("writer.storage is immutable (a StatefulSet's volume claim cannot change): create a new collection"))]
#[x_kube(validation = Rule::new("(has(self.writer) && has(self.writer.storageClassName)) == (has(oldSelf.writer) && has(oldSelf.writer.storageClassName)) && (!has(self.writer) || !has(self.writer.storageClassName) || self.writer.storageClassName == oldSelf.writer.storageClassName)").message("writer.storageClassName is immutable (a StatefulSet's volume claim cannot change): create a new collection"))]
// Once Delete, the writer's volume may be gone: a writer made again would import anew and
// might publish other data over the snapshot replicas serve.
#[x_kube(validation = Rule::new("!has(oldSelf.writer) || !has(oldSelf.writer.afterPublish) || oldSelf.writer.afterPublish != 'Delete' || (has(self.writer) && has(self.writer.afterPublish) && self.writer.afterPublish == 'Delete')").message("writer.afterPublish: Delete cannot be undone (the writer and its volume may be gone): create a new collection, or one restored with source.snapshot"))]
// Released against one store: another store would not hold the snapshot replicas start from.
#[x_kube(validation = Rule::new("!has(self.writer) || !has(self.writer.afterPublish) || self.writer.afterPublish != 'Delete' || !has(oldSelf.snapshots) || (has(self.snapshots) && self.snapshots.store == oldSelf.snapshots.store)").message("snapshots.store cannot change with writer.afterPublish: Delete (the writer may be gone, and the new store would not hold the snapshot replicas start from): create a new collection"))]
#[serde(rename_all = "camelCase")]
pub struct VectorCollectionSpec {
    /// Dimensions of every vector (1..=4096). Immutable: a different dimension is a new collection.
    #[x_kube(validation = Rule::new("self == oldSelf").message("dimensions are immutable; create a new collection"))]
    #[schemars(range(min = 1, max = 4096))]
    pub dimensions: u32,
    /// How vectors are compared: cosine, euclidean, dot or binary_quantized_cosine. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("distance is immutable; create a new collection"))]
    pub distance: Metric,
    /// Where the vectors come from.
    pub source: Source,
    /// The durable ANN index built after the import.
    #[serde(default)]
    pub index: IndexParams,
    /// The default search setting: calibrated after the build to reach `targetRecall`.
    #[serde(default)]
    pub search: SearchSpec,
    /// The writer (import, build, snapshot): resources and the volume that holds LMDB.
    #[serde(default)]
    pub writer: WriterSpec,
    /// Read replicas: a fixed count, or min/max for a HorizontalPodAutoscaler.
    #[serde(default)]
    pub replicas: ReplicasSpec,
    /// The warm-up a replica runs before it reports ready.
    #[serde(default)]
    pub warmup: WarmupSpec,
    /// The gates the collection must pass before an alias may flip to it.
    #[serde(default)]
    pub verify: VerifySpec,
    /// Where the sealed snapshot is also published, so replicas start from the store rather
    /// than from the writer (scale-up, node loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotsSpec>,
    /// The quiver image (default: the operator's own version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A Secret key holding the bearer token the collection's pods require on Ingest, Admin and
    /// Snapshot (and send to each other). The operator reads it to ask the writer for progress
    /// and replicas to drain; an ETL pushing to the writer sends it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<k8s_openapi::api::core::v1::SecretKeySelector>,
}

/// Exactly one of `push`, `url` or `snapshot`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("[has(self.push), has(self.url), has(self.snapshot)].filter(x, x).size() == 1").message("set exactly one of source.push, source.url or source.snapshot"))]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// An ETL pushes batches to the writer's Ingest gRPC API, then calls Seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushSource>,
    /// The writer imports this (.npy, .fvecs, .jsonl or .parquet): an object store
    /// (`s3://bucket/key`, `gs://`, `az://`, `abfs(s)://`), an http(s) URL or a path on its
    /// volume. A `*` or `?` in an object key (or the last part of a path), or a trailing `/`,
    /// imports every matching file in name order as one collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("['http://', 'https://', 's3://', 's3a://', 'gs://', 'az://', 'abfs://', 'abfss://', '/'].exists(p, self.startsWith(p))").message("source.url must be an object-store URL (s3://, gs://, az://, abfs(s)://), an http(s) URL or an absolute path"))]
    pub url: Option<String>,
    /// A snapshot in a store, `<store>/<namespace>/<name>` as a collection's `spec.snapshots`
    /// published it (e.g. `s3://snapshots/prod/search/products`): the collection is restored
    /// from it, sealed, with no import and no build; its name, dimensions and distance must be
    /// this collection's, and so must `index.backend` and each `index` setting given (leave them
    /// out to take the snapshot's). Read with `credentialsSecret` / `ambientCredentials`. Disaster
    /// recovery, or promoting a collection from one cluster to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("['s3://', 's3a://', 'gs://', 'az://', 'abfs://', 'abfss://'].exists(p, self.startsWith(p))").message("source.snapshot must be an object-store URL (s3://, gs://, az://, abfs(s)://) ending in the collection's name"))]
    pub snapshot: Option<String>,
    /// File format when the URL's extension does not tell: npy, fvecs, jsonl or parquet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The columns of a Parquet source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<SourceColumns>,
    /// A Secret with the object store's credentials, under the names its client reads (only
    /// these keys reach the writer, each optional): AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_SESSION_TOKEN, AWS_REGION, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP,
    /// AWS_VIRTUAL_HOSTED_STYLE_REQUEST, AWS_SKIP_SIGNATURE; GOOGLE_SERVICE_ACCOUNT_KEY,
    /// GOOGLE_SKIP_SIGNATURE; AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY,
    /// AZURE_STORAGE_SAS_KEY, AZURE_STORAGE_TOKEN, AZURE_STORAGE_ENDPOINT, AZURE_CLIENT_ID,
    /// AZURE_CLIENT_SECRET, AZURE_TENANT_ID, AZURE_SKIP_SIGNATURE. Without it, a pod identity
    /// the environment names is used: the pods run as the namespace's `default` ServiceAccount
    /// (quiver names none), so IRSA and EKS Pod Identity come from that ServiceAccount; Azure
    /// workload identity needs a pod label quiver does not set, so give Azure a Secret.
    /// Whoever may create a collection here may name any Secret of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<k8s_openapi::api::core::v1::LocalObjectReference>,
    /// Let the writer use the identity of the node it runs on, from the metadata service (EC2
    /// instance profile, Azure managed identity, the GCE/GKE metadata server, which is also how
    /// GKE Workload Identity is served), when no credentials are named. Off by default: every
    /// collection's author would get the node's access, so the operator also refuses it unless
    /// installed with `objectStore.allowAmbientCredentials=true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ambient_credentials: bool,
}

/// A snapshot store: an object-store prefix; collection `c` of namespace `ns` is kept under
/// `<store>/<ns>/c/`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotsSpec {
    /// `s3://bucket/prefix`, `gs://...` or `az://...`: the writer publishes collection `c` of
    /// namespace `ns` under `<store>/<ns>/c/` once sealed (in the background, retried until it
    /// lands); replicas restore from there first, then from the writer and ready peers.
    #[x_kube(validation = Rule::new("['s3://', 's3a://', 'gs://', 'az://', 'abfs://', 'abfss://'].exists(p, self.startsWith(p))").message("snapshots.store must be an object-store URL (s3://, gs://, az://, abfs(s)://)"))]
    // The writer reports where it published without credentials or a query (redacted), and
    // the release compares that with this URL: one carrying them would never match (and would
    // be echoed into status), so it is refused here; the Secret carries credentials.
    #[x_kube(validation = Rule::new("!self.contains('?') && !self.contains('#') && !self.matches('^[a-z0-9]+://[^/]*@')").message("snapshots.store must not carry credentials or a query (user:key@, ?...): name them in snapshots.credentialsSecret"))]
    pub store: String,
    /// A Secret with the store's credentials, under the names source.credentialsSecret lists
    /// (the writer and the replicas get only those keys, each optional); default: the
    /// source's. The writer has one set: with source.credentialsSecret too, both must name the
    /// same Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<k8s_openapi::api::core::v1::LocalObjectReference>,
    /// A Secret for the replicas, under the same names: they only read the store, so give
    /// them a key that can neither write nor delete there, and a serving pod never holds the
    /// writer's; default: the store's (credentialsSecret, then the source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_credentials_secret: Option<k8s_openapi::api::core::v1::LocalObjectReference>,
    /// Let the writer and the replicas reach the store with the node's identity (see
    /// source.ambientCredentials).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ambient_credentials: bool,
}

/// The columns a Parquet source is read from (the writer's --id-column and so on).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SourceColumns {
    /// Item ids, any integer type (default `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Vectors: FixedSizeList<Float32>, or a list of Float32 or Float64 (default `vector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<String>,
    /// Partitions, a string column (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Tags, a list of strings (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PushSource {
    /// Vectors the ETL promises to send; verification fails on any other count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_count: Option<u64>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SearchSpec {
    /// recall@10 the calibrated default search setting must reach, in (0, 1].
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("targetRecall must be in (0, 1]"))]
    pub target_recall: f64,
}

impl Default for SearchSpec {
    fn default() -> Self {
        SearchSpec { target_recall: 0.95 }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WriterSpec {
    /// CPU and memory of the writer pod (default: requests of 1 CPU and 2Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Size of the writer's volume (a Kubernetes quantity such as `20Gi`), default 10Gi. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub storage: Option<String>,
    /// The StorageClass of the writer's volume (default: the cluster's default class). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What becomes of the writer once its sealed snapshot is in `spec.snapshots`' store:
    /// Keep (the default) keeps it serving the snapshot to replicas beside the store; Delete,
    /// once the collection is Ready (verified) and the writer reports the snapshot in this
    /// store, deletes its StatefulSet and Service (and so its pod and, through the
    /// StatefulSet's retention policy, its volume), and new replicas start from the store alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_publish: Option<AfterPublish>,
}

/// What becomes of the writer once its snapshot is in the store.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum AfterPublish {
    /// The writer keeps running (and serving the snapshot to replicas as a second source).
    #[default]
    Keep,
    /// The writer's StatefulSet, pod, Service and volume are deleted; replicas restore from the store.
    Delete,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
// A CPU limit alone is enough: Kubernetes defaults the request to the limit.
#[x_kube(validation = Rule::new("!(has(self.min) || has(self.max)) || !has(self.resources) || (has(self.resources.requests) && 'cpu' in self.resources.requests) || (has(self.resources.limits) && 'cpu' in self.resources.limits)").message("replicas.resources.requests.cpu (or a CPU limit) is required with replicas.min/max: the autoscaler scales on CPU utilisation of the request"))]
#[serde(rename_all = "camelCase")]
pub struct ReplicasSpec {
    /// A fixed replica count (default 2) when min/max are not set; at least 1 (a collection
    /// with no replica could never be verified or served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<i32>,
    /// Autoscaling lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min: Option<i32>,
    /// Autoscaling upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max: Option<i32>,
    /// Average CPU utilisation the autoscaler aims for, in percent (default 70).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// CPU, memory and ephemeral storage of each replica (default: requests of 500m CPU, 1Gi
    /// and the writer's storage). With min/max a CPU request is required: the autoscaler
    /// measures utilisation against it and never scales a pod without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Close each client connection after this many seconds (GOAWAY; calls in flight finish),
    /// so long-lived gRPC connections spread over replicas added by scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connection_age_seconds: Option<u64>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WarmupSpec {
    /// Most simulated queries a replica runs before it reports ready.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_queries: u32,
}

impl Default for WarmupSpec {
    fn default() -> Self {
        WarmupSpec { max_queries: 2000 }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!(has(self.expectedCount) && has(self.expectedCountFrom))").message("set at most one of verify.expectedCount or verify.expectedCountFrom"))]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// The vector count the source must have produced (for a URL source; push sources say it in
    /// source.push.expectedCount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_count: Option<u64>,
    /// The expected count from the product database instead, asked when verifying (so a
    /// scheduled rebuild is checked against that day's items). A database that cannot be
    /// reached fails the gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_count_from: Option<ExpectedCountFrom>,
    /// recall@k against exact search the collection must reach, in (0, 1].
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("minRecall must be in (0, 1]"))]
    pub min_recall: f64,
    /// p99 latency budget of the verification queries, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<f64>,
    /// Neighbours per query for the recall gate (recall@k).
    #[schemars(range(min = 1, max = 1000))]
    pub k: u32,
    /// Queries sampled for the recall gate.
    #[schemars(range(min = 1, max = 100000))]
    pub sample: u32,
}

impl Default for VerifySpec {
    fn default() -> Self {
        VerifySpec {
            expected_count: None,
            expected_count_from: None,
            min_recall: 0.9,
            max_p99_ms: None,
            k: 10,
            sample: 200,
        }
    }
}

/// A count query against the source database (the verify Job's --expected-count-query).
/// Whoever may create a collection (or an alias with a rebuild template) in this namespace may
/// so run queries with the credentials of any Secret here: name a Secret of a user that may
/// only SELECT what the count needs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.databaseUrlSecret.optional) || !self.databaseUrlSecret.optional").message("verify.expectedCountFrom.databaseUrlSecret cannot be optional: without the database the gate cannot be measured"))]
#[serde(rename_all = "camelCase")]
pub struct ExpectedCountFrom {
    /// One SELECT answering one integer, counting what the collection's export holds, e.g.
    /// `SELECT count(*) FROM items WHERE active AND updated_at < current_date` for an export
    /// taken at midnight (the gate is `==`: an item added after the export fails it). It is
    /// prepared and refused unless it answers one column, and runs in a read-only transaction.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.matches('\\\\S')").message("verify.expectedCountFrom.sql must not be blank"))]
    pub sql: String,
    /// The Secret key holding the database URL with its credentials: `postgres://user:pass@host/db`
    /// or `mysql://...` (`?sslmode=require`, `?sslrootcert=...` as the driver documents).
    pub database_url_secret: k8s_openapi::api::core::v1::SecretKeySelector,
}

/// Where a collection is in its pipeline.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    /// The writer restores the sealed collection from `source.snapshot`.
    Restoring,
    Importing,
    Building,
    Publishing,
    Replicating,
    WarmingUp,
    Verifying,
    Ready,
    Failed,
}

/// One verification gate as the verify Job measured it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// The gate: count, recall, p99_ms...
    pub name: String,
    /// What the verify Job measured on the replicas.
    pub measured: f64,
    /// How measured is compared with threshold: ==, >= or <=.
    pub comparison: String,
    /// The spec's bound for this gate.
    pub threshold: f64,
    /// Whether measured meets threshold.
    pub passed: bool,
    /// Where the threshold came from when not from the spec (the count query and its database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_from: Option<String>,
    /// Why the gate could not be measured (the database did not answer, say); it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VectorCollectionStatus {
    #[serde(default)]
    pub phase: Phase,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Vectors in the sealed collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_count: Option<u64>,
    /// Replicas that are ready (snapshot fetched, warmed up).
    #[serde(default)]
    pub ready_replicas: i32,
    /// The default search setting the build calibrated, e.g. `signscan quality=100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_setting: Option<String>,
    /// The sealed snapshot as the writer published it to `spec.snapshots`' store, once it
    /// landed there (for this generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<StoredSnapshot>,
    /// Hex sha256 of the snapshot the writer sealed, recorded the first time it reported it and
    /// kept: replicas serve only this snapshot (`--snapshot-sha256`), the one verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_sha256: Option<String>,
    /// Hex sha256 of the snapshot the collection was verified on (Ready), kept across spec
    /// generations: a writer that seals other data afterwards changes nothing replicas serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_sha256: Option<String>,
    /// Each gate of the last verification: measured value, threshold, result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verification: Vec<GateResult>,
    /// Why the collection is Failed or waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Ready, Verified, Progressing, Degraded and WriterAvailable, one of each type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A snapshot completely published to a store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredSnapshot {
    /// `<store>/<namespace>/<collection>` (what a `source.snapshot` names to restore it).
    pub location: String,
    /// Hex sha256 of the snapshot file.
    pub sha256: String,
    /// Size of the snapshot file.
    pub bytes: u64,
}

/// A stable name for clients, pointing at one Ready and verified collection. Rollback = set
/// `spec.collection` to the previous one (with `spec.rebuild`: pin it; remove the pin to follow
/// the rebuilds again).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "quiver.dev",
    version = "v1alpha1",
    kind = "CollectionAlias",
    namespaced,
    status = "CollectionAliasStatus",
    shortname = "ca",
    category = "quiver",
    cel,
    doc = "A stable name in front of a VectorCollection, flipped only to a verified one.",
    // The alias is a Service name; a rebuild names collections `<alias>-yyyymmdd-hhmm`.
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && (!has(self.spec.rebuild) || size(self.metadata.name) <= 26)").message("an alias name must be a DNS label starting with a letter, at most 26 characters with spec.rebuild"),
    // The alias Service is named after the alias: it must not be a collection's own Service.
    validation = Rule::new("!self.metadata.name.endsWith('-replicas') && !self.metadata.name.endsWith('-writer')").message("an alias name must not end in -replicas or -writer: those are the Service names of collections"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.collection"),
    printcolumn(name = "Serving", type_ = "string", json_path = ".status.current"),
    printcolumn(name = "Previous", type_ = "string", json_path = ".status.previous"),
    printcolumn(name = "Rebuild", type_ = "string", json_path = ".status.lastRebuildCollection"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.collection) || has(self.rebuild)").message("set spec.collection, spec.rebuild, or both"))]
#[serde(rename_all = "camelCase")]
pub struct CollectionAliasSpec {
    /// The VectorCollection (same namespace) the alias should serve. It flips only once that
    /// collection is Ready, verified and has its replicas ready. With `rebuild` it may be left
    /// out: the alias then serves the newest rebuild once verified (status.lastRebuildCollection);
    /// set it to pin a target, e.g. to roll back. The controller never writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) <= 40 && self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("collection must be a valid object name (a collection name: DNS label starting with a letter, at most 40 characters)"))]
    pub collection: Option<String>,
    /// Scheduled rebuilds: on each `schedule` tick a new collection `<alias>-<yyyymmdd-hhmm>` is
    /// created from `template` and recorded in status; unless `collection` pins a target the
    /// alias flips to it once it is verified. A failed rebuild leaves the alias where it was.
    /// Start one at once with the annotation `quiver.dev/rebuild-requested` (any new value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildSpec>,
}

/// What a tick does while the previous rebuild is still building.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip the tick (as a CronJob's Forbid): the rebuild in progress finishes.
    #[default]
    Forbid,
    /// Start the new rebuild; the one in progress is no longer the target and is pruned like
    /// any older rebuild. (A CronJob's Allow would be the same here: only the newest is served.)
    Replace,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RebuildSpec {
    /// When to rebuild: a 5-field cron expression (minute hour day-of-month month day-of-week)
    /// or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, in `timeZone`.
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.startsWith('@') ? self in ['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly'] : size(self.split(' ').filter(f, f != '')) == 5").message("schedule must be a 5-field cron expression (minute hour day-of-month month day-of-week) or @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"))]
    pub schedule: String,
    /// The IANA time zone of the schedule, e.g. Europe/Berlin (default UTC), as a CronJob's
    /// timeZone: a nightly rebuild stays at 03:00 local time across daylight saving changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// A tick missed by more than this many seconds (the operator was down, the alias suspended)
    /// is skipped, as a CronJob's startingDeadlineSeconds. Unset: the latest tick missed within
    /// seven days still starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub starting_deadline_seconds: Option<i64>,
    /// Forbid (default) skips a tick while the previous rebuild is still building; Replace
    /// starts the new one.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// The spec of each rebuilt collection. Unlike a collection's own spec, its dimensions and
    /// distance may change: each rebuild is a new collection. Not from a `source.snapshot`:
    /// a snapshot is of one named collection, and each rebuild has a new name.
    #[schemars(schema_with = "rebuild_template_schema")]
    #[x_kube(validation = Rule::new("!has(self.source.snapshot)").message("rebuild.template.source.snapshot cannot be rebuilt: a snapshot is of one collection, and each rebuild is a new one (<alias>-<time>); use source.url or source.push"))]
    pub template: VectorCollectionSpec,
    /// Rebuilt collections kept besides those any alias serves as current or previous (which
    /// are never deleted). Older ones are deleted.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub history_limit: u32,
    /// Stop starting scheduled rebuilds (one in progress goes on; a requested one still starts).
    #[serde(default)]
    pub suspend: bool,
}

fn default_history_limit() -> u32 {
    1
}

/// The collection spec's schema without its immutability rules (`oldSelf`), which hold for a
/// collection but not for the template of future ones.
fn rebuild_template_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                    rules.retain(|r| !r["rule"].as_str().unwrap_or_default().contains("oldSelf"));
                    if rules.is_empty() {
                        map.remove("x-kubernetes-validations");
                    }
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = generator.subschema_for::<VectorCollectionSpec>().to_value();
    strip(&mut value);
    schemars::Schema::try_from(value).expect("a schema object stays a schema object")
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AliasFlip {
    /// The collection the alias flipped to.
    pub collection: String,
    /// RFC 3339 time of the flip.
    pub at: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectionAliasStatus {
    /// The collection the alias Service selects now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// The collection served before the last flip: kept at its replica count (and ready)
    /// for an instant rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// RFC 3339 time of the last flip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flipped_at: Option<String>,
    /// The last flips, most recent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AliasFlip>,
    /// The previous target whose drain is done: its replicas were told to drain (they stay
    /// ready, for a rollback), or another alias serves it and it was left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<String>,
    /// When the alias Service's EndpointSlices were first seen listing exactly the current
    /// target's ready pods (RFC 3339); the previous target drains the drain delay after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints_moved_at: Option<String>,
    /// The schedule tick (RFC 3339) last handled: started, or skipped (missed its deadline, or
    /// a rebuild was still in progress under concurrencyPolicy Forbid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebuild: Option<String>,
    /// The collection the last rebuild created: the alias's target unless spec.collection pins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebuild_collection: Option<String>,
    /// The value of the `quiver.dev/rebuild-requested` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebuild_request: Option<String>,
    /// Why the alias has not flipped to its target yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Ready (serving through ready endpoints) and Flipped (serving its target), one of each type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl CollectionAlias {
    /// What the alias should serve (given its `status`, which a reconcile may be changing):
    /// the pinned `spec.collection`, else the newest rebuild.
    pub fn target(&self, status: &CollectionAliasStatus) -> Option<String> {
        self.spec.collection.clone().or_else(|| status.last_rebuild_collection.clone())
    }
}
