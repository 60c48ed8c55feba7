//! The operator process: configuration, the HTTP endpoints (/metrics, /livez, /readyz),
//! leader election on a Lease, and the two controllers until SIGTERM.

use crate::controller::cache::{Feed, Writers};
use crate::controller::{Context, alias, collection};
use crate::crd::{CollectionAlias, VectorCollection};
use crate::metrics::Metrics;
use crate::probes::Grpc;
use crate::resources::Defaults;
use crate::resources::labels::{FIELD_MANAGER, MANAGED_BY};
use futures::StreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, controller, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// The label that names an EndpointSlice's Service, and the one that says who keeps the slice
/// (discovery.k8s.io/v1 well-known labels).
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY_SLICE: &str = "endpointslice.kubernetes.io/managed-by";

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "quiver-operator", version, about = "Reconciles VectorCollection and CollectionAlias objects")]
pub struct Config {
    /// Address of the HTTP endpoints /metrics, /livez and /readyz.
    #[arg(long, env = "QUIVER_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Serve the read-only console here (none when absent). A loopback address is reached with
    /// `kubectl port-forward` only, by whoever may port-forward to the operator's pod.
    #[arg(long, env = "QUIVER_OPERATOR_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "QUIVER_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// The quiver image for collections that do not name one.
    #[arg(long, env = "QUIVER_OPERATOR_IMAGE", default_value_t = Defaults::default().image)]
    pub image: String,
    /// Run the controllers only while holding the Lease (for more than one operator replica).
    #[arg(long, env = "QUIVER_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    #[arg(long, env = "QUIVER_OPERATOR_LEASE_NAME", default_value = "quiver-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (default: the pod name, from POD_NAME).
    #[arg(long, env = "POD_NAME", default_value = "quiver-operator")]
    pub identity: String,
    /// Seconds a Lease stays valid after its last renewal.
    #[arg(long, env = "QUIVER_OPERATOR_LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// Seconds before expiry when the holder renews.
    #[arg(long, env = "QUIVER_OPERATOR_LEASE_GRACE_SECS", default_value_t = 5)]
    pub lease_grace_secs: u64,
    /// Seconds between an alias Service's endpoints listing only the new target's pods and the
    /// previous target's drain (kube-proxies and load balancers follow the EndpointSlices).
    #[arg(long, env = "QUIVER_OPERATOR_DRAIN_DELAY_SECS", default_value_t = crate::controller::alias::DRAIN_DELAY.as_secs())]
    pub drain_delay_secs: u64,
    /// Seconds between looks at a settled collection or alias (changes are watched; this bounds
    /// how long drift in an unwatched object goes unrepaired).
    #[arg(long, env = "QUIVER_OPERATOR_RESYNC_SECS", default_value_t = crate::controller::RESYNC.as_secs())]
    pub resync_secs: u64,
    /// Give each collection NetworkPolicies for its writer and replicas (see resources/network.rs).
    #[arg(long, env = "QUIVER_OPERATOR_NETWORK_POLICIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_policies: bool,
    /// Scale a Ready collection made by a rebuild to zero replicas while no alias serves (as current
    /// or previous) or targets it; its replicas come back when an alias points at it again.
    #[arg(long, env = "QUIVER_OPERATOR_SCALE_DOWN_UNSERVED", default_value_t = true, action = clap::ArgAction::Set)]
    pub scale_down_unserved: bool,
    /// Let collections ask for the node's identity on object storage (`source.ambientCredentials`,
    /// `snapshots.ambientCredentials`: instance profile, managed identity, metadata server). Off:
    /// such a collection gets no pods and says why, since its author would get the node's access.
    #[arg(long, env = "QUIVER_OPERATOR_ALLOW_AMBIENT_CREDENTIALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_ambient_credentials: bool,
    /// Log as JSON lines.
    #[arg(long, env = "QUIVER_OPERATOR_LOG_JSON")]
    pub log_json: bool,
}

/// What /readyz reports: the API server answered and the controllers run (or wait for the
/// Lease as a standby).
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The gauges of what the caches hold, made at each scrape (empty before the caches exist).
pub type StateSource = Arc<dyn Fn() -> prometheus_client::registry::Registry + Send + Sync>;

/// The HTTP endpoints.
pub fn router(metrics: Arc<Metrics>, health: Health, state: StateSource) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (metrics, state) = (metrics.clone(), state.clone());
                async move {
                    let body = metrics.render_with(&state());
                    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                }
            }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    if health.is_ready() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

/// A shutdown signal many tasks can wait on.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Fires on SIGTERM or Ctrl-C.
    pub fn on_signals() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            #[cfg(unix)]
            {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// A signal fired by sending `true` on the returned sender (an embedding program, a test).
    pub fn manual() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = ()> + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Collections an alias names (pinned target, newest rebuild, current, previous), in its namespace.
pub fn collections_of(alias: &CollectionAlias) -> Vec<ObjectRef<VectorCollection>> {
    let ns = alias.namespace().unwrap_or_default();
    let status = alias.status.clone().unwrap_or_default();
    alias::served(alias, &status).iter().map(|name| ObjectRef::new(name).within(&ns)).collect()
}

/// Reconciles at once per controller: bounded, so hundreds of collections do not turn a
/// resync into hundreds of concurrent API calls.
pub const CONCURRENCY: u16 = 8;

/// A primary object's changes that need a reconcile: its spec (generation), labels (the
/// served-by marks), annotations (a retry, a rebuild request), finalizers and deletion, or a
/// new object of the same name (uid). Not its status: the controller's own status writes would
/// otherwise each bring one more reconcile.
pub fn changed_by_user<K: Resource>(obj: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.uid.hash(&mut hasher);
    meta.generation.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()).hash(&mut hasher);
    hasher.finish()
}

/// The objects of `changes` whose [`changed_by_user`] hash moved since each was last seen.
/// Objects gone from `store` are forgotten as the record grows.
pub fn changed_by_user_only<K>(
    changes: impl futures::Stream<Item = Arc<K>>,
    store: reflector::Store<K>,
) -> impl futures::Stream<Item = Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut seen: std::collections::HashMap<ObjectRef<K>, u64> = Default::default();
    changes.filter(move |obj| {
        let changed = seen.insert(ObjectRef::from_obj(obj.as_ref()), changed_by_user(obj.as_ref()));
        if seen.len() > 2 * store.len() + 64 {
            seen.retain(|key, _| store.get(key).is_some());
        }
        std::future::ready(changed != Some(changed_by_user(obj.as_ref())))
    })
}

/// Keeps `feed`'s store filled from a watch of `api` and hands its changes to the subscribed
/// controllers; ends only with the operator. Watch errors are retried with kube's default
/// backoff (and logged). Managed fields are dropped from every kind but Deployments (the
/// autoscaler handover reads them): they are most of a pod's size and nothing else reads them.
async fn reflect<K>(api: Api<K>, config: watcher::Config, mut feed: Feed<K>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let kind = K::kind(&()).into_owned();
    let keep_managed_fields = kind == "Deployment";
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(event) if keep_managed_fields => feed.apply(event).await,
            Ok(event) => {
                feed.apply(event.modify(|object| object.meta_mut().managed_fields = None)).await;
            }
            Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying"),
        }
    }
}

/// Runs both controllers until `shutdown`, and the watches that fill `writers`.
pub async fn controllers(ctx: Arc<Context>, writers: Writers, namespace: Option<String>, shutdown: Shutdown) {
    let client = ctx.client.clone();
    // Only objects this operator made: smaller caches, no reconciles for others' objects.
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY}={FIELD_MANAGER}"));
    let all = watcher::Config::default();
    // Only the slices of alias Services: the EndpointSlice controller keeps them and copies the
    // Service's labels onto them (quiver.dev/alias among them).
    let slices = watcher::Config::default()
        .labels(&format!("{MANAGED_BY_SLICE}=endpointslice-controller.k8s.io,{}", crate::resources::labels::ALIAS));
    let config = controller::Config::default().concurrency(CONCURRENCY);
    let caches = &ctx.caches;

    // Watched: what the pipeline reads (StatefulSet and Deployment readiness, Jobs finishing,
    // Services); not the HPA, PDB, NetworkPolicies or pods, whose changes nothing waits for
    // (they are read from their caches at the next look).
    let mut writers = writers;
    let collection_changes = changed_by_user_only(writers.collections.subscribe(), caches.collections.store.clone());
    let collections = Controller::for_shared_stream(collection_changes, caches.collections.store.clone())
        .with_config(config.clone())
        .owns_shared_stream(writers.stateful_sets.subscribe())
        .owns_shared_stream(writers.deployments.subscribe())
        .owns_shared_stream(writers.services.subscribe())
        .owns_shared_stream(writers.jobs.subscribe())
        // An alias moving away may unblock a deletion.
        .watches_shared_stream(writers.aliases.subscribe(), |a| collections_of(&a))
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(collection::reconcile, collection::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "collection controller");
            }
        });
    let alias_changes = changed_by_user_only(writers.aliases.subscribe(), caches.aliases.store.clone());
    let alias_store = caches.aliases.store.clone();
    let aliases = Controller::for_shared_stream(alias_changes, caches.aliases.store.clone())
        .with_config(config)
        .owns_shared_stream(writers.services.subscribe())
        // The drain waits for the alias Service's endpoints to move; their changes wake it.
        .watches_shared_stream(writers.slices.subscribe(), |slice| {
            let service = slice.labels().get(SERVICE_NAME).cloned()?;
            Some(ObjectRef::<CollectionAlias>::new(&service).within(&slice.namespace()?))
        })
        // A collection becoming Ready and verified is what an alias waits for.
        .watches_shared_stream(writers.collections.subscribe(), move |vc| {
            let vc_ref = ObjectRef::from_obj(vc.as_ref());
            alias_store
                .state()
                .into_iter()
                .filter(|a| collections_of(a).contains(&vc_ref))
                .map(|a| ObjectRef::from_obj(a.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(alias::reconcile, alias::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "alias controller");
            }
        });
    let Writers {
        collections: vc_writer,
        aliases: alias_writer,
        stateful_sets,
        deployments,
        services,
        jobs,
        slices: slice_writer,
        pods,
        autoscalers,
        budgets,
        network_policies,
    } = writers;
    let watches = async {
        futures::join!(
            caches.fill(),
            reflect(api(&client, &namespace), all.clone(), vc_writer),
            reflect(api(&client, &namespace), all, alias_writer),
            reflect(api(&client, &namespace), owned.clone(), stateful_sets),
            reflect(api(&client, &namespace), owned.clone(), deployments),
            reflect(api(&client, &namespace), owned.clone(), services),
            reflect(api(&client, &namespace), owned.clone(), jobs),
            reflect(api(&client, &namespace), slices, slice_writer),
            reflect(api(&client, &namespace), owned.clone(), pods),
            reflect(api(&client, &namespace), owned.clone(), autoscalers),
            reflect(api(&client, &namespace), owned.clone(), budgets),
            reflect(api(&client, &namespace), owned, network_policies),
        )
    };
    // The watches never end by themselves: the controllers' end (shutdown) ends them.
    tokio::select! {
        _ = async { futures::join!(collections, aliases) } => {}
        _ = watches => {}
    }
}

/// The whole operator process.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals();
    let client = Client::try_default().await?;
    let version = client.apiserver_version().await?;
    tracing::info!(kubernetes = %version.git_version, "connected");
    let metrics = Arc::new(Metrics::default());
    let health = Health::default();
    let listener = tokio::net::TcpListener::bind(config.metrics_addr).await?;
    // Set once the controllers' context (and its caches) exists.
    let context = Arc::new(std::sync::OnceLock::<Arc<Context>>::new());
    let state: StateSource = {
        let context = context.clone();
        Arc::new(move || match context.get() {
            Some(ctx) => crate::state_metrics::registry(
                ctx.caches.collections.all().iter().map(|c| c.as_ref()),
                ctx.caches.aliases.all().iter().map(|a| a.as_ref()),
                &ctx.defaults,
            ),
            None => Default::default(),
        })
    };
    let app = router(metrics.clone(), health.clone(), state);
    let http_shutdown = shutdown.clone();
    let http =
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(http_shutdown.wait()).await });
    if let Some(addr) = config.console_listen {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        // One parseable line, for scripts and tests that bind port 0.
        tracing::info!("console listening on {}", listener.local_addr()?);
        let app = crate::console::router(context.clone());
        let console_shutdown = shutdown.clone();
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(console_shutdown.wait()).await });
    }
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: FIELD_MANAGER.into(), instance: Some(config.identity.clone()) },
    );
    let grpc = Arc::new(Grpc::default());
    let (caches, writers) = crate::controller::cache::caches();
    let mut ctx = Context::new(
        client.clone(),
        caches,
        recorder,
        grpc.clone(),
        grpc,
        Defaults {
            image: config.image.clone(),
            network_policies: config.network_policies,
            operator_namespace: config.lease_namespace.clone(),
            scale_down_unserved: config.scale_down_unserved,
            allow_ambient_credentials: config.allow_ambient_credentials,
        },
        metrics,
        k8s_openapi::jiff::Timestamp::now,
    );
    ctx.drain_delay = std::time::Duration::from_secs(config.drain_delay_secs);
    ctx.resync = std::time::Duration::from_secs(config.resync_secs.max(1));
    let ctx = Arc::new(ctx);
    let _ = context.set(ctx.clone());
    // A standby is healthy and ready: it serves nothing until it leads.
    health.set_ready(true);
    if !config.leader_election {
        controllers(ctx, writers, config.namespace.clone(), shutdown).await;
        http.await??;
        return Ok(());
    }
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_duration_secs)
        .with_grace(config.lease_grace_secs)
        .build()
        .await?;
    let (mut leader, lease_task) = lease.watch().await;
    tracing::info!(lease = %config.lease_name, identity = %config.identity, "waiting for the lease");
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => changed?,
            _ = shutdown.clone().wait() => {
                drop(leader);
                lease_task.await??;
                http.await??;
                return Ok(());
            }
        }
    }
    tracing::info!("leading: starting the controllers");
    let lost = async {
        while leader.changed().await.is_ok() {
            if !*leader.borrow() {
                break;
            }
        }
    };
    tokio::select! {
        _ = controllers(ctx, writers, config.namespace.clone(), shutdown.clone()) => {}
        _ = lost => {
            // Another replica may already act: stop at once and let Kubernetes restart us.
            anyhow::bail!("lost the lease");
        }
    }
    drop(leader); // releases the Lease for the next replica
    lease_task.await??;
    http.await??;
    Ok(())
}
