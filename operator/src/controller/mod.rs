//! The controllers: `collection` reconciles a VectorCollection into its objects and status,
//! `alias` flips a CollectionAlias's Service. They share the context, errors, backoff,
//! server-side apply and condition helpers below; what they read comes from `cache`.

pub mod alias;
pub mod cache;
pub mod collection;

use crate::crd::VectorCollection;
use crate::metrics::Metrics;
use crate::probes::{Drainer, ProbeError, WriterProbe};
use crate::resources::Defaults;
use crate::resources::labels::FIELD_MANAGER;
use cache::{APPLIED_HASH, Applies, Caches};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("engine: {0}")]
    Engine(#[from] ProbeError),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("the token Secret {0} has no key {1}")]
    MissingToken(String, String),
    #[error("the token Secret {0} (spec.tokenSecret) does not exist")]
    MissingSecret(String),
    #[error("generating a token: {0}")]
    Random(std::io::Error),
    #[error(
        "{0} is true, but this operator does not let collections use the node's identity: name a credentialsSecret, or install the operator with objectStore.allowAmbientCredentials=true (--allow-ambient-credentials)"
    )]
    AmbientCredentialsNotAllowed(&'static str),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Engine(_) => "engine",
            Error::NoNamespace(_)
            | Error::MissingToken(..)
            | Error::MissingSecret(_)
            | Error::AmbientCredentialsNotAllowed(_) => "invalid",
            Error::Random(_) => "random",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Default of `Context::resync` (`--resync-secs`): watches bring every change the pipeline
/// waits for, so this only bounds how long a missed event or drift in an unwatched object
/// (an HPA, a PDB, a NetworkPolicy) goes unnoticed.
pub const RESYNC: Duration = Duration::from_secs(300);

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    /// What the watches keep: reconciles read these, not the API server.
    pub caches: Caches,
    pub recorder: Recorder,
    pub writer: Arc<dyn WriterProbe>,
    pub drainer: Arc<dyn Drainer>,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    /// The time stamped into conditions and alias history (fixed in tests).
    pub now: fn() -> Timestamp,
    /// Between an alias's endpoints moving and the previous target's drain.
    pub drain_delay: Duration,
    /// How often a settled collection (Ready, Failed) or alias is looked at again.
    pub resync: Duration,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// When each collection's status was last written, to throttle progress-only writes.
    status_writes: Mutex<HashMap<String, std::time::Instant>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        caches: Caches,
        recorder: Recorder,
        writer: Arc<dyn WriterProbe>,
        drainer: Arc<dyn Drainer>,
        defaults: Defaults,
        metrics: Arc<Metrics>,
        now: fn() -> Timestamp,
    ) -> Self {
        let drain_delay = alias::DRAIN_DELAY;
        Context {
            client,
            caches,
            recorder,
            writer,
            drainer,
            defaults,
            metrics,
            now,
            drain_delay,
            resync: RESYNC,
            failures: Mutex::default(),
            status_writes: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `key`'s status was written less than `interval` ago.
    pub(crate) fn progress_written_within(&self, key: &str, interval: Duration) -> bool {
        let writes = self.status_writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        writes.get(key).is_some_and(|at| at.elapsed() < interval)
    }

    /// A deleted collection's entry goes with it.
    pub(crate) fn forget_status_writes(&self, key: &str) {
        self.status_writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(key);
    }

    pub(crate) fn progress_written(&self, key: &str) {
        let mut writes = self.status_writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        writes.insert(key.to_string(), std::time::Instant::now());
    }

    /// Forget an object's failures after a successful reconcile.
    pub(crate) fn succeeded(&self, key: &str) {
        self.failures().remove(key);
    }

    /// Publishes an Event about `object`; a failed publish is logged, never fatal.
    pub(crate) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.event_about(object, None, type_, reason, action, note).await
    }

    /// An Event that also names `related` (e.g. the collection an alias flipped to). kube's
    /// recorder folds events with the same object, reason and related object into one series
    /// (keeping the first note), so events about different collections must name them.
    pub(crate) async fn event_about<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: related };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an event failed");
        }
    }
}

/// A reference to the collection `name` in `ns`, for Events.
pub fn collection_ref(ns: &str, name: &str) -> ObjectReference {
    use crate::crd::VectorCollection;
    ObjectReference {
        api_version: Some(VectorCollection::api_version(&()).into_owned()),
        kind: Some(VectorCollection::kind(&()).into_owned()),
        name: Some(name.into()),
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

/// `Kind/namespace/name`: the key of an object in logs and backoff (a collection and an alias
/// may share a name).
pub fn key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any())
}

/// 5s after the first failure, doubling per consecutive failure, at most 5 minutes.
pub fn backoff_delay(failures: u32) -> Duration {
    Duration::from_secs(5).saturating_mul(1 << failures.min(6)).min(Duration::from_secs(300))
}

/// Requeue after a failure, later for each consecutive one.
pub fn backoff(ctx: &Context, key: &str) -> Action {
    let mut failures = ctx.failures();
    let n = failures.entry(key.to_string()).or_insert(0);
    let delay = backoff_delay(*n);
    *n += 1;
    Action::requeue(delay)
}

pub fn namespace<K: Resource>(object: &K) -> Result<String> {
    object.namespace().ok_or_else(|| Error::NoNamespace(object.name_any()))
}

/// The bearer token of a collection's pods: from `spec.tokenSecret`, or the Secret the
/// operator generated for it; read once, then remembered (`Caches::tokens`) while the writer
/// answers (a writer that does not makes the next reconcile read it again, so a deleted Secret
/// is made again). None while a generated Secret does not exist yet, or is still the one of a
/// deleted collection of the same name (not owned by this one; the garbage collector takes it).
pub async fn collection_token(ctx: &Context, ns: &str, vc: &VectorCollection) -> Result<Option<String>> {
    let selector = crate::resources::token::selector(vc);
    if let Some(token) = ctx.caches.tokens.get(ns, &selector.name, &selector.key) {
        return Ok(Some(token));
    }
    let generated = crate::resources::token::generated(vc);
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns).get_opt(&selector.name).await?;
    let secret = match secret {
        Some(secret) if generated && !secret.owner_references().iter().any(|o| Some(&o.uid) == vc.uid().as_ref()) => {
            return Ok(None);
        }
        Some(secret) => secret,
        None if generated => return Ok(None),
        None => return Err(Error::MissingSecret(selector.name.clone())),
    };
    let value = secret
        .data
        .and_then(|mut data| data.remove(&selector.key))
        .ok_or_else(|| Error::MissingToken(selector.name.clone(), selector.key.clone()))?;
    let token = String::from_utf8_lossy(&value.0).trim().to_string();
    ctx.caches.tokens.remember(ns, &selector.name, &selector.key, &token);
    Ok(Some(token))
}

/// The replica pods of `collection` (stuck ones for its status, ready ones and their IPs for an
/// alias's drain).
pub fn replica_pods(ctx: &Context, ns: &str, collection: &str) -> Vec<Arc<Pod>> {
    let selector = crate::resources::labels::selector(collection, crate::resources::labels::Role::Replica);
    let selector: Vec<(&str, &str)> = selector.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ctx.caches.pods.labelled(ns, &selector)
}

/// Deletes `name` in `ns`; returns whether this call deleted it. One gone already (404
/// NotFound) is as good as deleted, and so is, under a uid precondition, another object made
/// since under its name: the object meant is gone, and the namesake is not this delete's to
/// take. A failed precondition answers 409 Conflict (the storage layer's InvalidObjError,
/// turned into a Conflict by k8s.io/apiserver/pkg/storage/errors InterpretDeleteError), but so
/// may other conflicts, so the object is read again: only one gone or with another uid counts.
pub async fn delete_if_present<K>(ctx: &Context, ns: &str, name: &str, params: &kube::api::DeleteParams) -> Result<bool>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let uid = params.preconditions.as_ref().and_then(|p| p.uid.as_deref());
            let Some(uid) = uid else { return Err(kube::Error::Api(e).into()) };
            match api.get_opt(name).await? {
                Some(live) if live.meta().uid.as_deref() == Some(uid) => Err(kube::Error::Api(e).into()),
                _ => {
                    tracing::info!(%ns, %name, message = %e.message, "not deleted: another object has its name now");
                    Ok(false)
                }
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Server-side apply of an object the operator owns, with the one field manager. The object
/// carries the hash of its desired state (annotation `quiver.dev/applied-hash`); when the cached
/// object is exactly what this process last applied with the same hash (same uid, nothing but
/// its status changed since: `cache::Applied`), nothing is sent and the cached object is
/// returned. Someone else's change to its spec or metadata is applied over.
pub async fn apply<K>(ctx: &Context, ns: &str, object: &K) -> Result<K>
where
    K: Applies
        + Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let hash = desired_hash(object);
    let name = object.meta().name.clone().unwrap_or_default();
    let cached = K::cached(&ctx.caches);
    let kind = match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "other",
    };
    if let Some(live) = cached.unchanged(ns, &name, &hash) {
        ctx.metrics.apply(kind, "skipped");
        return Ok((*live).clone());
    }
    let mut object = object.clone();
    object.meta_mut().annotations.get_or_insert_default().insert(APPLIED_HASH.into(), hash.clone());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let applied = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object)).await?;
    ctx.metrics.apply(kind, "sent");
    cached.record(&applied, hash);
    Ok(applied)
}

/// The first 16 bytes of the SHA-256 of the object's JSON, in hex. k8s-openapi keeps maps in
/// `BTreeMap`s, so the same desired state always serializes to the same bytes.
pub fn desired_hash<K: Serialize>(object: &K) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(object).expect("a Kubernetes object serializes");
    Sha256::digest(&json)[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A condition, keeping the previous transition time when its status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_at_five_minutes() {
        let delays: Vec<u64> = (0..9).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = condition(&[], "Ready", false, "Pending", "", Some(1), t0);
        let same = condition(std::slice::from_ref(&first), "Ready", false, "Importing", "5 rows", Some(1), t1);
        assert_eq!(same.last_transition_time, Time(t0));
        assert_eq!(same.reason, "Importing");
        let flipped = condition(&[same], "Ready", true, "Ready", "", Some(1), t1);
        assert_eq!((flipped.status.as_str(), flipped.last_transition_time), ("True", Time(t1)));
    }
}
