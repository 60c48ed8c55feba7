//! The operator process: configuration, the HTTP endpoints (/metrics, /livez, /readyz),
//! leader election on a Lease, and the two controllers until SIGTERM.

use crate::controller::{Context, alias, collection};
use crate::crd::{CollectionAlias, VectorCollection};
use crate::engine::Grpc;
use crate::metrics::Metrics;
use crate::resources::Defaults;
use crate::resources::labels::{FIELD_MANAGER, MANAGED_BY};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
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
    /// Give each collection NetworkPolicies for its writer and replicas (see resources/network.rs).
    #[arg(long, env = "QUIVER_OPERATOR_NETWORK_POLICIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_policies: bool,
    /// Scale a Ready collection made by a rebuild to zero replicas while no alias serves (as current
    /// or previous) or targets it; its replicas come back when an alias points at it again.
    #[arg(long, env = "QUIVER_OPERATOR_SCALE_DOWN_UNSERVED", default_value_t = true, action = clap::ArgAction::Set)]
    pub scale_down_unserved: bool,
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

/// The HTTP endpoints.
pub fn router(metrics: Arc<Metrics>, health: Health) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.render())
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
/// served-by marks), annotations (a retry, a rebuild request), finalizers and deletion. Not its
/// status: the controller's own status writes would otherwise each bring one more reconcile.
pub fn changed_by_user<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()).hash(&mut hasher);
    Some(hasher.finish())
}

/// The primary stream of a controller: every object in its reflector, reconciles only for
/// [`changed_by_user`] changes.
fn primary<K>(
    api: Api<K>,
) -> (reflector::Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(changed_by_user::<K>, Default::default());
    (reader, stream)
}

/// Runs both controllers until `shutdown`.
pub async fn controllers(ctx: Arc<Context>, namespace: Option<String>, shutdown: Shutdown) {
    let client = ctx.client.clone();
    // Only objects this operator made: smaller caches, no reconciles for others' objects.
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY}={FIELD_MANAGER}"));
    let all = watcher::Config::default();
    let config = controller::Config::default().concurrency(CONCURRENCY);
    let (store, stream) = primary(api::<VectorCollection>(&client, &namespace));
    // Watched: what the pipeline reads (StatefulSet and Deployment readiness, Jobs finishing,
    // Services); not the HPA, PDB or NetworkPolicies, whose changes nothing reads.
    let collections = Controller::for_stream(stream, store)
        .with_config(config.clone())
        .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
        .owns(api::<Deployment>(&client, &namespace), owned.clone())
        .owns(api::<Service>(&client, &namespace), owned.clone())
        .owns(api::<Job>(&client, &namespace), owned.clone())
        // An alias moving away may unblock a deletion.
        .watches(api::<CollectionAlias>(&client, &namespace), all.clone(), |a| collections_of(&a))
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(collection::reconcile, collection::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "collection controller");
            }
        });
    // Only the slices of alias Services: the EndpointSlice controller keeps them and copies the
    // Service's labels onto them (quiver.dev/alias among them).
    let slices = watcher::Config::default()
        .labels(&format!("{MANAGED_BY_SLICE}=endpointslice-controller.k8s.io,{}", crate::resources::labels::ALIAS));
    let (store, stream) = primary(api::<CollectionAlias>(&client, &namespace));
    let alias_controller = Controller::for_stream(stream, store).with_config(config);
    let aliases = alias_controller.store();
    let aliases = alias_controller
        .owns(api::<Service>(&client, &namespace), owned)
        // The drain waits for the alias Service's endpoints to move; their changes wake it.
        .watches(api::<EndpointSlice>(&client, &namespace), slices, |slice| {
            let service = slice.labels().get(SERVICE_NAME).cloned()?;
            Some(ObjectRef::<CollectionAlias>::new(&service).within(&slice.namespace()?))
        })
        // A collection becoming Ready and verified is what an alias waits for.
        .watches(api::<VectorCollection>(&client, &namespace), all, move |vc| {
            let vc_ref = ObjectRef::from_obj(&vc);
            aliases
                .state()
                .into_iter()
                .filter(|a| collections_of(a).contains(&vc_ref))
                .map(|a| ObjectRef::from_obj(a.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.wait())
        .run(alias::reconcile, alias::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "alias controller");
            }
        });
    futures::join!(collections, aliases);
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
    let app = router(metrics.clone(), health.clone());
    let http_shutdown = shutdown.clone();
    let http =
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(http_shutdown.wait()).await });
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: FIELD_MANAGER.into(), instance: Some(config.identity.clone()) },
    );
    let grpc = Arc::new(Grpc::default());
    let mut ctx = Context::new(
        client.clone(),
        recorder,
        grpc.clone(),
        grpc,
        Defaults {
            image: config.image.clone(),
            network_policies: config.network_policies,
            operator_namespace: config.lease_namespace.clone(),
            scale_down_unserved: config.scale_down_unserved,
        },
        metrics,
        k8s_openapi::jiff::Timestamp::now,
    );
    ctx.drain_delay = std::time::Duration::from_secs(config.drain_delay_secs);
    let ctx = Arc::new(ctx);
    // A standby is healthy and ready: it serves nothing until it leads.
    health.set_ready(true);
    if !config.leader_election {
        controllers(ctx, config.namespace.clone(), shutdown).await;
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
        _ = controllers(ctx, config.namespace.clone(), shutdown.clone()) => {}
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
