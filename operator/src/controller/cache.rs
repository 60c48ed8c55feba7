//! What the controllers read, kept by reflectors: one watch per kind, and reconciles that read
//! memory instead of sending GETs and LISTs. At hundreds of collections a reconcile per
//! collection every few minutes would otherwise be a steady stream of requests.
//!
//! The stores of the kinds whose changes trigger reconciles are shared (`Writer::new_shared`):
//! the controllers subscribe to the same watch that fills the store, so no kind is watched
//! twice. Only objects this operator made are watched (the managed-by label), except the
//! custom resources (every one) and EndpointSlices (those of alias Services).
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
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Events a subscriber may fall behind the watch before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// One kind's store, and what the operator last applied to each of its objects.
pub struct Cached<K: kube::Resource<DynamicType = ()> + 'static> {
    pub store: Store<K>,
    applied: Mutex<HashMap<ObjectRef<K>, Applied>>,
}

/// What an apply left on the API server: the object's uid, its generation (or, for kinds
/// without one, its resourceVersion), and the hash of the desired state applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub uid: String,
    pub version: String,
    pub hash: String,
}

impl Applied {
    /// The stamp of `object` as it is, with the hash its annotation carries.
    pub fn of<K: kube::Resource>(object: &K, hash: String) -> Applied {
        let meta = object.meta();
        // Status updates bump the resourceVersion but never the generation: where the API
        // server keeps a generation (spec changes only), it is the stamp.
        let version = match meta.generation {
            Some(generation) => format!("g{generation}"),
            None => format!("rv{}", meta.resource_version.clone().unwrap_or_default()),
        };
        Applied { uid: meta.uid.clone().unwrap_or_default(), version, hash }
    }
}

impl<K> Cached<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    fn new(store: Store<K>) -> Self {
        Cached { store, applied: Mutex::default() }
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

    /// Every object in `ns`, by name.
    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        self.labelled(ns, &[])
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<K>, Applied>> {
        self.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached object, when it is exactly what the last apply of `hash` left: same object
    /// (uid), unchanged since (generation or resourceVersion), carrying that hash. Anything else
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
        applied.insert(key, stamp);
        if applied.len() > 2 * self.store.len() + 64 {
            applied.retain(|key, _| self.store.get(key).is_some());
        }
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
    /// The generated token Secrets only (a user's `spec.tokenSecret` is read when needed).
    pub secrets: Cached<Secret>,
    pub autoscalers: Cached<HorizontalPodAutoscaler>,
    pub budgets: Cached<PodDisruptionBudget>,
    pub network_policies: Cached<NetworkPolicy>,
    /// True once every store has listed its kind (see `fill`).
    ready: tokio::sync::watch::Sender<bool>,
}

/// The writing side of every cache: the watches fill them (see `run::controllers`), tests fill
/// them by hand.
pub struct Writers {
    pub collections: Writer<VectorCollection>,
    pub aliases: Writer<CollectionAlias>,
    pub stateful_sets: Writer<StatefulSet>,
    pub deployments: Writer<Deployment>,
    pub services: Writer<Service>,
    pub jobs: Writer<Job>,
    pub slices: Writer<EndpointSlice>,
    pub pods: Writer<Pod>,
    pub secrets: Writer<Secret>,
    pub autoscalers: Writer<HorizontalPodAutoscaler>,
    pub budgets: Writer<PodDisruptionBudget>,
    pub network_policies: Writer<NetworkPolicy>,
}

/// New, empty caches: readers for the context, writers for the watches.
pub fn caches() -> (Caches, Writers) {
    let writers = Writers {
        collections: Writer::new_shared(SUBSCRIBER_BUFFER, ()),
        aliases: Writer::new_shared(SUBSCRIBER_BUFFER, ()),
        stateful_sets: Writer::new_shared(SUBSCRIBER_BUFFER, ()),
        deployments: Writer::new_shared(SUBSCRIBER_BUFFER, ()),
        services: Writer::new_shared(SUBSCRIBER_BUFFER, ()),
        jobs: Writer::new_shared(SUBSCRIBER_BUFFER, ()),
        slices: Writer::new_shared(SUBSCRIBER_BUFFER, ()),
        pods: Writer::default(),
        secrets: Writer::default(),
        autoscalers: Writer::default(),
        budgets: Writer::default(),
        network_policies: Writer::default(),
    };
    let caches = Caches {
        collections: Cached::new(writers.collections.as_reader()),
        aliases: Cached::new(writers.aliases.as_reader()),
        stateful_sets: Cached::new(writers.stateful_sets.as_reader()),
        deployments: Cached::new(writers.deployments.as_reader()),
        services: Cached::new(writers.services.as_reader()),
        jobs: Cached::new(writers.jobs.as_reader()),
        slices: Cached::new(writers.slices.as_reader()),
        pods: Cached::new(writers.pods.as_reader()),
        secrets: Cached::new(writers.secrets.as_reader()),
        autoscalers: Cached::new(writers.autoscalers.as_reader()),
        budgets: Cached::new(writers.budgets.as_reader()),
        network_policies: Cached::new(writers.network_policies.as_reader()),
        ready: tokio::sync::watch::channel(false).0,
    };
    (caches, writers)
}

impl Caches {
    /// Waits for every store's first list, then lets reconciles through (`wait_until_ready`).
    /// One task runs this while the watches fill the stores: a store's own readiness future
    /// wakes only the task that polled it last (its oneshot keeps one waker), so the reconciles
    /// of several tasks must not each wait on it.
    pub async fn fill(&self) {
        // A writer dropped (the operator stopping) ends the wait.
        let _ = futures::join!(
            self.collections.store.wait_until_ready(),
            self.aliases.store.wait_until_ready(),
            self.stateful_sets.store.wait_until_ready(),
            self.deployments.store.wait_until_ready(),
            self.services.store.wait_until_ready(),
            self.jobs.store.wait_until_ready(),
            self.slices.store.wait_until_ready(),
            self.pods.store.wait_until_ready(),
            self.secrets.store.wait_until_ready(),
            self.autoscalers.store.wait_until_ready(),
            self.budgets.store.wait_until_ready(),
            self.network_policies.store.wait_until_ready(),
        );
        self.ready.send_replace(true);
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
        // Changed by someone else since (a new resourceVersion): applied again.
        writers.services.apply_watcher_event(&Event::Apply(service("u1", "8", Some("h1"))));
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
        writers.collections.apply_watcher_event(&Event::InitDone);
        writers.aliases.apply_watcher_event(&Event::InitDone);
        writers.stateful_sets.apply_watcher_event(&Event::InitDone);
        writers.deployments.apply_watcher_event(&Event::InitDone);
        writers.services.apply_watcher_event(&Event::InitDone);
        writers.jobs.apply_watcher_event(&Event::InitDone);
        writers.slices.apply_watcher_event(&Event::InitDone);
        writers.pods.apply_watcher_event(&Event::InitDone);
        writers.secrets.apply_watcher_event(&Event::InitDone);
        writers.autoscalers.apply_watcher_event(&Event::InitDone);
        writers.budgets.apply_watcher_event(&Event::InitDone);
        writers.network_policies.apply_watcher_event(&Event::InitDone);
        let all = futures::future::join_all(waiting);
        tokio::time::timeout(std::time::Duration::from_secs(5), all).await.expect("every waiter woke");
        fill.await.unwrap();
    }

    #[test]
    fn a_generation_is_the_stamp_where_the_kind_keeps_one() {
        let mut sts: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "uid": "u", "generation": 3, "resourceVersion": "10"}
        }))
        .unwrap();
        let before = Applied::of(&sts, "h".into());
        sts.metadata.resource_version = Some("11".into()); // a status update
        assert_eq!(Applied::of(&sts, "h".into()), before);
        sts.metadata.generation = Some(4); // a spec change
        assert_ne!(Applied::of(&sts, "h".into()), before);
    }
}
