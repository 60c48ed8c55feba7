//! What the controllers read, kept by reflectors: one watch per kind, and reconciles that read
//! memory instead of sending GETs and LISTs. At hundreds of collections a reconcile per
//! collection every few minutes would otherwise be a steady stream of requests.
//!
//! Each kind is watched once ([`Feed`]): the watch fills the store, then hands every object it
//! applied or deleted to the controllers that subscribed (so a deleted Service triggers its
//! owner's reconcile, which re-creates it). Only objects this operator made are watched (the
//! managed-by label), except the custom resources (every one) and EndpointSlices (those of alias
//! Services). Secrets are not watched (list and watch on Secrets would let the operator read
//! every Secret in the cluster): a collection's token is remembered once read ([`Tokens`]).
//!
//! Reads from a cache can lag the API server by a watch event. Every decision that could go
//! wrong on a stale read either guards its write with the resourceVersion it read (a 409 makes
//! the reconcile look again) or reads the live object when the cache disagrees with what the
//! controller last wrote (the alias Service); a stale read otherwise costs one more request,
//! never a wrong state.

use crate::crd::{CollectionAlias, VectorCollection};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Objects a subscriber may fall behind the watch before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// One kind's watch output: its store's writer and the controllers subscribed to its changes.
pub struct Feed<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    subscribers: Vec<mpsc::Sender<Arc<K>>>,
    /// Set once the first complete list is in the store (shared with the kind's [`Cached`]).
    listed: Arc<std::sync::atomic::AtomicBool>,
}

impl<K> Feed<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    fn new() -> Self {
        Feed { writer: Writer::default(), subscribers: Vec::new(), listed: Arc::default() }
    }

    /// Every object the watch applies or deletes from now on (and, after each complete list,
    /// every object listed).
    pub fn subscribe(&mut self) -> tokio_stream::wrappers::ReceiverStream<Arc<K>> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        self.subscribers.push(tx);
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Applies one watch event to the store, then hands what changed to the subscribers: the
    /// object itself, not a reference looked up later (kube's shared-store dispatcher does the
    /// latter, drops deletions, and can stall a subscriber whose object went in between). A
    /// subscriber that is gone (its controller stopped) is skipped.
    pub async fn apply(&mut self, event: watcher::Event<K>) {
        self.apply_watcher_event(&event);
        if self.subscribers.is_empty() {
            return; // A kind only read (pods): no copy of every object after each list.
        }
        let changed: Vec<Arc<K>> = match event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => vec![Arc::new(object)],
            watcher::Event::InitDone => self.writer.as_reader().state(),
            watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
        };
        for object in changed {
            for subscriber in &self.subscribers {
                let _ = subscriber.send(object.clone()).await;
            }
        }
    }

    /// Applies a watch event to the store only (tests fill caches this way).
    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) {
        self.writer.apply_watcher_event(event);
        if matches!(event, watcher::Event::InitDone) {
            self.listed.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    fn cached(&self) -> Cached<K> {
        Cached { store: self.writer.as_reader(), applied: Mutex::default(), listed: self.listed.clone() }
    }
}

/// One kind's store, and what the operator last applied to each of its objects.
pub struct Cached<K: kube::Resource<DynamicType = ()> + 'static> {
    pub store: Store<K>,
    applied: Mutex<HashMap<ObjectRef<K>, Applied>>,
    listed: Arc<std::sync::atomic::AtomicBool>,
}

/// What an apply left on the API server: the object's uid, a hash of everything but its
/// status and server-kept metadata (spec, labels, annotations, owner references, finalizers),
/// and the hash of the desired state applied. Any change by someone else to what the operator
/// owns moves the content hash; status updates (a controller's, the HPA's every 15 s) do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub uid: String,
    pub content: u64,
    pub hash: String,
}

impl Applied {
    /// The stamp of `object` as it is, with the hash its annotation carries.
    pub fn of<K: kube::Resource + serde::Serialize>(object: &K, hash: String) -> Applied {
        use std::hash::{Hash, Hasher};
        let meta = object.meta();
        let mut json = serde_json::to_value(object).unwrap_or_default();
        if let Some(fields) = json.as_object_mut() {
            fields.remove("status");
            fields.remove("metadata");
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        json.to_string().hash(&mut hasher);
        (&meta.labels, &meta.annotations, &meta.finalizers).hash(&mut hasher);
        serde_json::to_string(&meta.owner_references).unwrap_or_default().hash(&mut hasher);
        Applied { uid: meta.uid.clone().unwrap_or_default(), content: hasher.finish(), hash }
    }
}

impl<K> Cached<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize + 'static,
{
    /// Whether the first complete list is in.
    fn listed(&self) -> bool {
        self.listed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(ns))
    }

    /// The objects in `ns` that carry every label of `selector`.
    pub fn labelled(&self, ns: &str, selector: &[(&str, &str)]) -> Vec<Arc<K>> {
        let mut found = self.store.state_filter(|o| {
            o.namespace().as_deref() == Some(ns)
                && selector.iter().all(|(k, v)| o.labels().get(*k).map(String::as_str) == Some(*v))
        });
        found.sort_by_key(|o| o.name_any());
        found
    }

    /// Every object the cache holds, in every namespace.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// Every object in `ns`, by name.
    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        self.labelled(ns, &[])
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<K>, Applied>> {
        self.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached object, when it is exactly what the last apply of `hash` left: same object
    /// (uid), unchanged since in all but its status, carrying that hash. Anything else
    /// (never applied by this process, changed by someone else, not yet in the cache) is None,
    /// and the apply goes to the API server.
    pub fn unchanged(&self, ns: &str, name: &str, hash: &str) -> Option<Arc<K>> {
        let key = ObjectRef::new(name).within(ns);
        let live = self.store.get(&key)?;
        let stamp = Applied::of(live.as_ref(), live.annotations().get(APPLIED_HASH)?.clone());
        let recorded = self.applied().get(&key).cloned()?;
        (stamp == recorded && recorded.hash == hash).then_some(live)
    }

    /// Records what an apply returned. Entries of objects gone from the cache are dropped as
    /// the record grows, so deleted collections do not accumulate.
    pub fn record(&self, object: &K, hash: String) {
        let key = ObjectRef::from_obj(object);
        let stamp = Applied::of(object, hash);
        let mut applied = self.applied();
        if applied.len() > 2 * self.store.len() + 64 {
            applied.retain(|key, _| self.store.get(key).is_some());
        }
        // After the pruning: the object just applied may not be in the cache yet.
        applied.insert(key, stamp);
    }
}

/// The annotation that carries the hash of the desired state an object was last applied with.
pub const APPLIED_HASH: &str = "quiver.dev/applied-hash";

/// Every cache the controllers read.
pub struct Caches {
    pub collections: Cached<VectorCollection>,
    pub aliases: Cached<CollectionAlias>,
    pub stateful_sets: Cached<StatefulSet>,
    pub deployments: Cached<Deployment>,
    pub services: Cached<Service>,
    pub jobs: Cached<Job>,
    pub slices: Cached<EndpointSlice>,
    pub pods: Cached<Pod>,
    pub autoscalers: Cached<HorizontalPodAutoscaler>,
    pub budgets: Cached<PodDisruptionBudget>,
    pub network_policies: Cached<NetworkPolicy>,
    /// True once every store has listed its kind (see `fill`).
    ready: tokio::sync::watch::Sender<bool>,
    pub tokens: Tokens,
}

/// The bearer tokens of collections, by their Secret (namespace, name), as last read. A
/// generated token never changes (its Secret is immutable); a user's may be rotated, so a
/// token a pod refuses is forgotten and read again.
#[derive(Default)]
pub struct Tokens(Mutex<HashMap<(String, String), String>>);

/// The memo key of a token: the Secret's name and the key in it.
fn token_key(secret: &str, key: &str) -> String {
    format!("{secret}/{key}")
}

impl Tokens {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, ns: &str, secret: &str, key: &str) -> Option<String> {
        self.map().get(&(ns.to_string(), token_key(secret, key))).cloned()
    }

    pub fn remember(&self, ns: &str, secret: &str, key: &str, token: &str) {
        self.map().insert((ns.to_string(), token_key(secret, key)), token.to_string());
    }

    /// Forgets every key of `secret`.
    pub fn forget(&self, ns: &str, secret: &str) {
        let prefix = format!("{secret}/");
        self.map().retain(|(n, k), _| !(n == ns && k.starts_with(&prefix)));
    }
}

/// The writing side of every cache: the watches fill them (see `run::controllers`), tests fill
/// them by hand.
pub struct Writers {
    pub collections: Feed<VectorCollection>,
    pub aliases: Feed<CollectionAlias>,
    pub stateful_sets: Feed<StatefulSet>,
    pub deployments: Feed<Deployment>,
    pub services: Feed<Service>,
    pub jobs: Feed<Job>,
    pub slices: Feed<EndpointSlice>,
    pub pods: Feed<Pod>,
    pub autoscalers: Feed<HorizontalPodAutoscaler>,
    pub budgets: Feed<PodDisruptionBudget>,
    pub network_policies: Feed<NetworkPolicy>,
}

impl Writers {
    /// Every kind's first list done, with what the stores hold so far (tests start from here).
    pub fn mark_listed(&mut self) {
        self.collections.apply_watcher_event(&watcher::Event::InitDone);
        self.aliases.apply_watcher_event(&watcher::Event::InitDone);
        self.stateful_sets.apply_watcher_event(&watcher::Event::InitDone);
        self.deployments.apply_watcher_event(&watcher::Event::InitDone);
        self.services.apply_watcher_event(&watcher::Event::InitDone);
        self.jobs.apply_watcher_event(&watcher::Event::InitDone);
        self.slices.apply_watcher_event(&watcher::Event::InitDone);
        self.pods.apply_watcher_event(&watcher::Event::InitDone);
        self.autoscalers.apply_watcher_event(&watcher::Event::InitDone);
        self.budgets.apply_watcher_event(&watcher::Event::InitDone);
        self.network_policies.apply_watcher_event(&watcher::Event::InitDone);
    }
}

/// New, empty caches: readers for the context, writers for the watches.
pub fn caches() -> (Caches, Writers) {
    let writers = Writers {
        collections: Feed::new(),
        aliases: Feed::new(),
        stateful_sets: Feed::new(),
        deployments: Feed::new(),
        services: Feed::new(),
        jobs: Feed::new(),
        slices: Feed::new(),
        pods: Feed::new(),
        autoscalers: Feed::new(),
        budgets: Feed::new(),
        network_policies: Feed::new(),
    };
    let caches = Caches {
        collections: writers.collections.cached(),
        aliases: writers.aliases.cached(),
        stateful_sets: writers.stateful_sets.cached(),
        deployments: writers.deployments.cached(),
        services: writers.services.cached(),
        jobs: writers.jobs.cached(),
        slices: writers.slices.cached(),
        pods: writers.pods.cached(),
        autoscalers: writers.autoscalers.cached(),
        budgets: writers.budgets.cached(),
        network_policies: writers.network_policies.cached(),
        ready: tokio::sync::watch::channel(false).0,
        tokens: Tokens::default(),
    };
    (caches, writers)
}

impl Caches {
    /// Waits for every store's first list, then lets reconciles through (`wait_until_ready`).
    /// One task runs this while the watches fill the stores. It watches the feeds' own flags,
    /// not kube's `Store::wait_until_ready`, whose oneshot wakes only the last task (or waker)
    /// that polled it. A kind not listed after a minute (a missing RBAC grant, a CRD that does
    /// not decode) is named in the log every minute.
    pub async fn fill(&self) {
        let started = std::time::Instant::now();
        let mut warned = 0;
        loop {
            let unlisted = self.unlisted();
            if unlisted.is_empty() {
                break;
            }
            let minutes = started.elapsed().as_secs() / 60;
            if minutes > warned {
                warned = minutes;
                tracing::warn!(waiting = ?unlisted, "reconciles wait: these kinds are not listed yet");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.ready.send_replace(true);
    }

    /// The kinds whose first list is not in yet.
    fn unlisted(&self) -> Vec<&'static str> {
        [
            ("VectorCollection", self.collections.listed()),
            ("CollectionAlias", self.aliases.listed()),
            ("StatefulSet", self.stateful_sets.listed()),
            ("Deployment", self.deployments.listed()),
            ("Service", self.services.listed()),
            ("Job", self.jobs.listed()),
            ("EndpointSlice", self.slices.listed()),
            ("Pod", self.pods.listed()),
            ("HorizontalPodAutoscaler", self.autoscalers.listed()),
            ("PodDisruptionBudget", self.budgets.listed()),
            ("NetworkPolicy", self.network_policies.listed()),
        ]
        .into_iter()
        .filter(|(_, listed)| !listed)
        .map(|(kind, _)| kind)
        .collect()
    }

    /// Until every watch has listed its kind once: before that a missing object may only be
    /// not listed yet (a writer pod read as absent would be reported as one).
    pub async fn wait_until_ready(&self) {
        let _ = self.ready.subscribe().wait_for(|ready| *ready).await;
    }
}

/// The cache of a kind the operator applies.
pub trait Applies: kube::Resource<DynamicType = ()> + Clone + Sized + 'static {
    fn cached(caches: &Caches) -> &Cached<Self>;
}

macro_rules! applies {
    ($($kind:ty => $field:ident),* $(,)?) => {
        $(impl Applies for $kind {
            fn cached(caches: &Caches) -> &Cached<Self> {
                &caches.$field
            }
        })*
    };
}

applies!(
    StatefulSet => stateful_sets,
    Deployment => deployments,
    Service => services,
    Job => jobs,
    HorizontalPodAutoscaler => autoscalers,
    PodDisruptionBudget => budgets,
    NetworkPolicy => network_policies,
);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    fn service(uid: &str, rv: &str, hash: Option<&str>) -> Service {
        let mut s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "n", "uid": uid, "resourceVersion": rv}
        }))
        .unwrap();
        if let Some(hash) = hash {
            s.annotations_mut().insert(APPLIED_HASH.into(), hash.into());
        }
        s
    }

    #[test]
    fn an_apply_is_skipped_only_for_the_object_it_left_unchanged() {
        let (caches, mut writers) = caches();
        let applied = service("u1", "7", Some("h1"));
        caches.services.record(&applied, "h1".into());
        // Not in the cache yet (the watch lags): applied again.
        assert!(caches.services.unchanged("n", "s", "h1").is_none());
        writers.services.apply_watcher_event(&Event::Apply(applied.clone()));
        assert!(caches.services.unchanged("n", "s", "h1").is_some());
        // Another desired state: applied.
        assert!(caches.services.unchanged("n", "s", "h2").is_none());
        // Only its resourceVersion moved (a status or managed-fields write): still as applied.
        writers.services.apply_watcher_event(&Event::Apply(service("u1", "8", Some("h1"))));
        assert!(caches.services.unchanged("n", "s", "h1").is_some());
        // Someone else's label on it (metadata drift no generation records): applied again.
        let mut labelled = service("u1", "9", Some("h1"));
        labelled.labels_mut().insert("team".into(), "search".into());
        writers.services.apply_watcher_event(&Event::Apply(labelled));
        assert!(caches.services.unchanged("n", "s", "h1").is_none());
        // Deleted and re-created with the annotation copied (a restore): another uid.
        writers.services.apply_watcher_event(&Event::Apply(service("u2", "7", Some("h1"))));
        assert!(caches.services.unchanged("n", "s", "h1").is_none());
    }

    #[tokio::test]
    async fn every_reconcile_waiting_for_the_caches_is_let_through() {
        let (caches, mut writers) = caches();
        let caches = Arc::new(caches);
        // Reconciles of several tasks wait before the first lists are in (the controllers'
        // concurrency): each must wake, not only the one that waited last.
        let waiting: Vec<_> = (0..4)
            .map(|_| {
                let caches = caches.clone();
                tokio::spawn(async move { caches.wait_until_ready().await })
            })
            .collect();
        tokio::task::yield_now().await;
        let fill = tokio::spawn({
            let caches = caches.clone();
            async move { caches.fill().await }
        });
        writers.mark_listed();
        let all = futures::future::join_all(waiting);
        tokio::time::timeout(std::time::Duration::from_secs(5), all).await.expect("every waiter woke");
        fill.await.unwrap();
    }

    #[test]
    fn status_updates_are_not_drift_and_spec_or_owner_changes_are() {
        let sts = |json: serde_json::Value| -> StatefulSet { serde_json::from_value(json).unwrap() };
        let base = serde_json::json!({"metadata": {"name": "w", "uid": "u", "generation": 3, "resourceVersion": "10",
            "ownerReferences": [{"apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection", "name": "c",
                "uid": "o", "controller": true}]},
            "spec": {"replicas": 1, "selector": {}, "template": {}, "serviceName": "w"}});
        let before = Applied::of(&sts(base.clone()), "h".into());
        let mut status = base.clone();
        status["metadata"]["resourceVersion"] = "11".into();
        status["status"] = serde_json::json!({"replicas": 1, "readyReplicas": 1});
        assert_eq!(Applied::of(&sts(status), "h".into()), before);
        let mut scaled = base.clone();
        scaled["spec"]["replicas"] = 2.into();
        assert_ne!(Applied::of(&sts(scaled), "h".into()), before);
        let mut orphaned = base.clone();
        orphaned["metadata"]["ownerReferences"] = serde_json::json!([]);
        assert_ne!(Applied::of(&sts(orphaned), "h".into()), before);
    }
}
