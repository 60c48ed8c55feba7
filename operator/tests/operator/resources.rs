//! The objects the operator renders for a collection and an alias: golden YAML (insta), the
//! engine's own CLI parses every container command, and every object round-trips through its
//! k8s-openapi type. `validate_k8s_schemas.py` checks the same golden files against the
//! Kubernetes 1.33 JSON schemas.

use clap::{CommandFactory, Parser};
use quiver_api::environment::SNAPSHOT_SHA256 as SNAPSHOT_SHA256_ENV;
use quiver_engine::cli::{Cli, Command};
use quiver_operator::crd::{CollectionAlias, VectorCollection};
use quiver_operator::resources::{CollectionObjects, Defaults, alias_service};
use std::path::Path;

fn stored<T: serde::de::DeserializeOwned + kube::Resource>(yaml: &str, uid: &str) -> T {
    let mut object: T = serde_yaml::from_str(yaml).unwrap();
    let meta = object.meta_mut();
    meta.uid = Some(uid.into());
    meta.generation = Some(3);
    meta.namespace.get_or_insert_with(|| "search".into());
    object
}

/// The example from `examples/`: a URL source, autoscaled replicas.
fn example() -> VectorCollection {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/vectorcollection.yaml");
    stored(&std::fs::read_to_string(path).unwrap(), "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
}

/// An ETL-pushed collection with fixed replicas, hannoy, and a pinned image.
fn pushed() -> VectorCollection {
    stored(
        r#"
apiVersion: quiver.dev/v1alpha1
kind: VectorCollection
metadata: {name: docs-v7}
spec:
  dimensions: 768
  distance: binary_quantized_cosine
  source: {push: {expectedCount: 1000000}}
  index: {backend: hannoy, efConstruction: 200, shortlist: rabitq}
  writer: {storage: 200Gi, storageClassName: fast-ssd}
  replicas: {count: 3, maxConnectionAgeSeconds: 300}
  verify: {minRecall: 0.9, k: 20, sample: 500}
  image: registry.example/quiver:pinned
  tokenSecret: {name: docs-token, key: bearer}
"#,
        "6fa459ea-ee8a-3ca4-894e-db77e160355e",
    )
}

/// `examples/<file>` as stored with `uid`.
fn stored_example(file: &str, uid: &str) -> VectorCollection {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(file);
    stored(&std::fs::read_to_string(path).unwrap(), uid)
}

/// An ETL's Parquet parts in S3, with named columns and a credentials Secret.
fn parquet() -> VectorCollection {
    stored_example("vectorcollection-parquet.yaml", "3d0c8e4a-5b7f-4c2e-9a61-0f2b7d9e8c11")
}

/// Restored from a snapshot in a store.
fn restored() -> VectorCollection {
    stored_example("vectorcollection-restore.yaml", "5e1d7a2b-8c3f-4d6e-b9a0-1f2e3d4c5b6a")
}

fn defaults() -> Defaults {
    Defaults { image: "quiver:test".into(), ..Default::default() }
}

fn yaml(objects: &CollectionObjects) -> String {
    objects.to_yaml().iter().map(|d| serde_yaml::to_string(d).unwrap()).collect::<Vec<_>>().join("---\n")
}

#[test]
fn golden_example_collection() {
    insta::assert_snapshot!("example_collection", yaml(&CollectionObjects::render(&example(), &defaults())));
}

#[test]
fn golden_pushed_collection() {
    insta::assert_snapshot!("pushed_collection", yaml(&CollectionObjects::render(&pushed(), &defaults())));
}

#[test]
fn golden_parquet_collection() {
    insta::assert_snapshot!("parquet_collection", yaml(&CollectionObjects::render(&parquet(), &defaults())));
}

#[test]
fn golden_alias_service() {
    let ca: CollectionAlias = stored(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/collectionalias.yaml"))
            .unwrap(),
        "9b2f6c1e-0000-4000-8000-000000000001",
    );
    let service = alias_service::service(&ca, ca.spec.collection.as_deref().unwrap());
    insta::assert_snapshot!("alias_service", serde_yaml::to_string(&service).unwrap());
}

/// The engine's clap CLI accepts every rendered command, and reads back what the spec says.
#[test]
fn every_container_command_parses_with_the_engine_cli() {
    // Sealed: its replicas serve only the snapshot the writer sealed.
    let mut sealed = example();
    sealed.status = Some(quiver_operator::crd::VectorCollectionStatus {
        sealed_sha256: Some("ab".repeat(32)),
        ..Default::default()
    });
    for vc in [example(), pushed(), parquet(), restored(), sealed] {
        let objects = CollectionObjects::render(&vc, &defaults());
        for (role, template) in objects.pod_templates() {
            let container = &template.spec.as_ref().unwrap().containers[0];
            let argv = container.command.iter().flatten().chain(container.args.iter().flatten());
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{role:?}: {e}"));
            // Every role gets the collection's token file, mounted from its Secret (the user's, or
            // the one the operator generates).
            let token_file = Some(Path::new("/var/run/secrets/quiver/token"));
            let mounted = container.volume_mounts.iter().flatten().any(|m| m.mount_path == "/var/run/secrets/quiver");
            assert!(mounted, "{role:?}");
            let secret = template.spec.as_ref().unwrap().volumes.iter().flatten().find_map(|v| v.secret.clone());
            let expected = vc
                .spec
                .token_secret
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or(format!("{}-token", vc.metadata.name.clone().unwrap()));
            assert_eq!(secret.and_then(|s| s.secret_name), Some(expected), "{role:?}");
            let name = vc.metadata.name.clone().unwrap();
            match (role.as_str(), cli.command) {
                ("writer", Command::Writer(w)) => {
                    assert_eq!(w.collection, name);
                    assert_eq!(w.build.dimensions, Some(vc.spec.dimensions as usize));
                    assert_eq!(w.build.distance, vc.spec.distance);
                    assert_eq!(w.build.index, vc.spec.index.backend);
                    assert_eq!(w.build.shortlist, vc.spec.index.shortlist);
                    assert_eq!(w.build.target_recall, vc.spec.search.target_recall);
                    assert_eq!(w.source, vc.spec.source.url);
                    assert_eq!(w.restore_from, vc.spec.source.snapshot);
                    let columns = vc.spec.source.columns.clone().unwrap_or_default();
                    assert_eq!(w.build.id_column, columns.id.unwrap_or("id".into()));
                    assert_eq!(w.build.vector_column, columns.vector.unwrap_or("vector".into()));
                    assert_eq!((w.build.partition_column, w.build.tags_column), (columns.partition, columns.tags));
                    // The object store's credentials come as the variables its client reads, each
                    // an optional key of the Secret, and nothing else of the Secret.
                    assert!(container.env_from.is_none());
                    let keys: Vec<(String, String, Option<bool>)> = container
                        .env
                        .iter()
                        .flatten()
                        .map(|e| {
                            let key =
                                e.value_from.as_ref().and_then(|v| v.secret_key_ref.clone()).expect("from a Secret");
                            assert_eq!(key.key, e.name);
                            (key.name, e.name.clone(), key.optional)
                        })
                        .collect();
                    let secret = vc.spec.source.credentials_secret.as_ref();
                    let expected: Vec<(String, String, Option<bool>)> = secret
                        .or(vc.spec.snapshots.as_ref().and_then(|s| s.credentials_secret.as_ref()))
                        .iter()
                        .flat_map(|s| {
                            quiver_api::environment::object_store_credentials()
                                .map(|k| (s.name.clone(), k.to_string(), Some(true)))
                        })
                        .collect();
                    assert_eq!(keys, expected);
                    let snapshots = vc.spec.snapshots.as_ref();
                    assert_eq!(
                        w.build.ambient_credentials,
                        (vc.spec.source.ambient_credentials || snapshots.is_some_and(|s| s.ambient_credentials))
                            && defaults().allow_ambient_credentials
                    );
                    let ns = vc.metadata.namespace.clone().unwrap_or("default".into());
                    assert_eq!(w.snapshot_store, snapshots.map(|s| format!("{}/{ns}", s.store)));
                    assert_eq!(w.dir.data_dir, Path::new("/data"));
                    assert_eq!(w.serve.token.token_file.as_deref(), token_file);
                    // Search needs no token only where the operator generated it.
                    assert_eq!(w.serve.search_without_token, vc.spec.token_secret.is_none());
                    assert!(!w.serve.insecure, "never insecure: every pod has a token");
                    assert_eq!(w.serve.listen.port(), 7700);
                    assert_eq!(w.serve.http_listen.map(|a| a.port()), Some(9090));
                    if let Some(ef) = vc.spec.index.ef_construction {
                        assert_eq!(w.build.ef_construction, ef);
                    }
                }
                ("replica", Command::Replica(r)) => {
                    assert_eq!(r.collection, name);
                    // Pinned through the environment (an older engine ignores it), under the name
                    // the engine's flag reads.
                    let pin = container.env.iter().flatten().find(|e| e.name == SNAPSHOT_SHA256_ENV);
                    assert_eq!(
                        pin.and_then(|e| e.value.clone()),
                        vc.status.as_ref().and_then(|s| s.sealed_sha256.clone())
                    );
                    assert_eq!(r.snapshot_sha256, None, "not a flag");
                    let replica = Cli::command().find_subcommand("replica").cloned().expect("replica");
                    let flag = replica.get_arguments().find(|a| a.get_id() == "snapshot_sha256").expect("the flag");
                    assert_eq!(flag.get_env().and_then(|e| e.to_str()), Some(SNAPSHOT_SHA256_ENV));
                    // The store first, when there is one, then the writer and the ready peers.
                    let snapshots = vc.spec.snapshots.as_ref();
                    let peers = [
                        format!("http://{}-writer:7700", r.collection),
                        format!("http://{}-replicas:7700", r.collection),
                    ];
                    let ns = vc.metadata.namespace.clone().unwrap_or("default".into());
                    let from: Vec<String> =
                        snapshots.map(|s| format!("{}/{ns}", s.store)).into_iter().chain(peers).collect();
                    assert_eq!(r.snapshot_from, from);
                    assert_eq!(r.ambient_credentials, snapshots.is_some_and(|s| s.ambient_credentials));
                    let secrets: Vec<String> = container
                        .env
                        .iter()
                        .flatten()
                        .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref().map(|k| k.name.clone()))
                        .collect();
                    // Their read-only key when the collection names one, else the writer's.
                    let store_secret = snapshots
                        .and_then(|s| {
                            (s.replica_credentials_secret.as_ref()).or(s.credentials_secret.as_ref()).or(vc
                                .spec
                                .source
                                .credentials_secret
                                .as_ref())
                        })
                        .map(|s| s.name.clone());
                    let n = quiver_api::environment::object_store_credentials().count();
                    assert_eq!(secrets, store_secret.map(|s| vec![s; n]).unwrap_or_default());
                    assert_eq!(r.warmup_max_queries, vc.spec.warmup.max_queries as usize);
                    assert_eq!(r.serve.max_connection_age_secs, vc.spec.replicas.max_connection_age_seconds);
                    assert_eq!(r.serve.drain_delay_secs, 5);
                    assert_eq!(r.serve.token.token_file.as_deref(), token_file);
                }
                ("warmup", Command::Warmup(w)) => {
                    assert_eq!(w.remote.target, Some(format!("http://{name}-replicas:7700")));
                    assert_eq!(w.max_queries, vc.spec.warmup.max_queries as usize);
                    assert_eq!(w.remote.token.token_file.as_deref(), token_file);
                }
                ("verify", Command::Verify(v)) => {
                    let expected =
                        vc.spec.verify.expected_count.or(vc.spec.source.push.as_ref().and_then(|p| p.expected_count));
                    assert_eq!(v.gate.expected_count, expected);
                    // The count query in the arguments, its database URL (with the password) only
                    // from the Secret.
                    let from = vc.spec.verify.expected_count_from.as_ref();
                    assert_eq!(v.gate.expected_count_query.as_ref(), from.map(|f| &f.sql));
                    let env: Vec<_> =
                        container.env.iter().flatten().map(|e| (e.name.as_str(), e.value_from.clone())).collect();
                    let secret = |f: &quiver_operator::crd::ExpectedCountFrom| {
                        let mut key = f.database_url_secret.clone();
                        key.optional = Some(false);
                        Some(k8s_openapi::api::core::v1::EnvVarSource {
                            secret_key_ref: Some(key),
                            ..Default::default()
                        })
                    };
                    let expected: Vec<_> =
                        from.map(|f| ("QUIVER_SOURCE_DATABASE_URL", secret(f))).into_iter().collect();
                    assert_eq!(env, expected);
                    assert_eq!(v.gate.min_recall, vc.spec.verify.min_recall);
                    assert_eq!(v.gate.max_p99_ms, vc.spec.verify.max_p99_ms);
                    assert_eq!(v.gate.k, vc.spec.verify.k as usize);
                    assert_eq!(v.gate.sample, vc.spec.verify.sample as usize);
                    assert_eq!(v.target.collection, Some(name));
                    assert_eq!(v.remote.token.token_file.as_deref(), token_file);
                }
                (role, command) => panic!("{role} renders the wrong subcommand: {command:?}"),
            }
        }
    }
}

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(object: &T) {
    let text = serde_yaml::to_string(object).unwrap();
    let back: T = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    assert_eq!(&back, object);
    let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert!(value["apiVersion"].is_string() && value["kind"].is_string(), "{text}");
}

#[test]
fn rendered_objects_round_trip_through_k8s_openapi_types() {
    for vc in [example(), pushed()] {
        let o = CollectionObjects::render(&vc, &defaults());
        round_trip(&o.writer);
        round_trip(&o.writer_service);
        round_trip(&o.replicas);
        round_trip(&o.replicas_service);
        round_trip(&o.disruption_budget);
        round_trip(&o.warmup);
        round_trip(&o.verify);
        if let Some(hpa) = &o.autoscaler {
            round_trip(hpa);
        }
    }
}

#[test]
fn autoscaler_only_when_min_or_max_is_set_and_then_it_owns_the_count() {
    let autoscaled = CollectionObjects::render(&example(), &defaults());
    let hpa = autoscaled.autoscaler.expect("example sets min/max");
    let spec = hpa.spec.unwrap();
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 6));
    assert_eq!(autoscaled.replicas.spec.unwrap().replicas, None);
    let fixed = CollectionObjects::render(&pushed(), &defaults());
    assert!(fixed.autoscaler.is_none());
    assert_eq!(fixed.replicas.spec.unwrap().replicas, Some(3));
}

#[test]
fn every_object_is_owned_by_its_collection_and_pods_are_restricted() {
    let vc = pushed();
    let o = CollectionObjects::render(&vc, &defaults());
    for doc in o.to_yaml() {
        let owner = &doc["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"].as_str(), vc.metadata.uid.as_deref(), "{doc:?}");
        assert_eq!(owner["controller"].as_bool(), Some(true));
        assert_eq!(doc["metadata"]["labels"]["quiver.dev/collection"].as_str(), Some("docs-v7"));
    }
    for (role, t) in o.pod_templates() {
        let pod = t.spec.as_ref().unwrap();
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true), "{role:?}");
        let c = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(c.read_only_root_filesystem, Some(true), "{role:?}");
        assert_eq!(c.allow_privilege_escalation, Some(false), "{role:?}");
        assert_eq!(c.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]), "{role:?}");
        assert_eq!(pod.containers[0].image.as_deref(), Some("registry.example/quiver:pinned"));
    }
    // Jobs are per generation, so a spec change runs them again.
    assert_eq!(o.verify.metadata.name.as_deref(), Some("docs-v7-verify-g3"));
}

/// Pods that schedule and stay ready: every container of every rendered pod (writer, replicas,
/// both Jobs) asks for CPU and memory, every emptyDir has a size limit, the replicas ask for
/// the ephemeral storage their snapshot volume may take, readiness tolerates two misses, and
/// the writer's StatefulSet replaces a pod that is not Ready (Parallel), so a changed template
/// rolls out during an import or after a failure.
#[test]
fn rendered_pods_schedule_roll_out_and_stay_ready() {
    use k8s_openapi::api::core::v1::PodSpec;
    for vc in [example(), pushed()] {
        let objects = CollectionObjects::render(&vc, &Defaults::default());
        let spec = |t: &Option<k8s_openapi::api::core::v1::PodSpec>| t.clone().expect("pod spec");
        let pods: Vec<(&str, PodSpec)> = vec![
            ("writer", spec(&objects.writer.spec.as_ref().unwrap().template.spec)),
            ("replicas", spec(&objects.replicas.spec.as_ref().unwrap().template.spec)),
            ("warmup", spec(&objects.warmup.spec.as_ref().unwrap().template.spec)),
            ("verify", spec(&objects.verify.spec.as_ref().unwrap().template.spec)),
        ];
        for (role, pod) in &pods {
            for c in &pod.containers {
                let requests = c.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
                assert!(requests.contains_key("cpu") && requests.contains_key("memory"), "{role}: {requests:?}");
                if let Some(probe) = &c.readiness_probe {
                    assert!(probe.failure_threshold.unwrap_or(3) >= 3, "{role}: readiness fails after one miss");
                }
            }
            for volume in pod.volumes.iter().flatten() {
                if let Some(dir) = &volume.empty_dir {
                    assert!(dir.size_limit.is_some(), "{role}: emptyDir {} has no sizeLimit", volume.name);
                }
            }
        }
        let replica = &pods[1].1.containers[0];
        let requests = replica.resources.as_ref().unwrap().requests.clone().unwrap();
        assert!(requests.contains_key("ephemeral-storage"), "{requests:?}");
        let writer = objects.writer.spec.as_ref().unwrap();
        assert_eq!(writer.pod_management_policy.as_deref(), Some("Parallel"));
    }
}

/// The writer is released on what it reports now, never on an old record alone: Ready (verified)
/// for this generation, and its report equal to the record, at the place this spec's store names.
/// Otherwise a Ready collection says why it waits.
#[test]
fn a_writer_is_releasable_only_verified_and_on_its_own_report_at_this_store() {
    use quiver_operator::crd::{Phase, StoredSnapshot, VectorCollectionStatus};
    use quiver_operator::resources::writer::{Release, release};
    let report = StoredSnapshot {
        location: "s3://quiver-snapshots/search/products-2026-12-01".into(),
        sha256: "ab".repeat(32),
        bytes: 4096,
    };
    let with = |phase: Phase, observed: i64, recorded: Option<&StoredSnapshot>| {
        let mut vc = parquet();
        vc.metadata.generation = Some(2);
        vc.status = Some(VectorCollectionStatus {
            phase,
            observed_generation: Some(observed),
            snapshot: recorded.cloned(),
            ..Default::default()
        });
        vc
    };
    let waiting = |release: Release| match release {
        Release::Waiting(why) => why,
        other => panic!("not waiting: {other:?}"),
    };
    assert_eq!(release(&with(Phase::Ready, 2, Some(&report)), Some(&report)), Release::Now);
    // Not verified yet, or verified for another generation.
    assert_eq!(release(&with(Phase::Verifying, 2, Some(&report)), Some(&report)), Release::NotAsked);
    assert_eq!(release(&with(Phase::Ready, 1, Some(&report)), Some(&report)), Release::NotAsked);
    // A record the writer does not report now (restarted, not yet re-checked the store).
    let why = waiting(release(&with(Phase::Ready, 2, Some(&report)), None));
    assert_eq!(
        why,
        "the writer does not report its snapshot in s3://quiver-snapshots/search/products-2026-12-01 (yet)"
    );
    // A report that is not the record, or of another store than this spec's.
    let other = StoredSnapshot { sha256: "cd".repeat(32), ..report.clone() };
    let why = waiting(release(&with(Phase::Ready, 2, Some(&report)), Some(&other)));
    assert!(why.contains(&format!("sha256 {}) is not the one recorded", "cd".repeat(32))), "{why}");
    let elsewhere = StoredSnapshot { location: "s3://old-store/search/products-2026-12-01".into(), ..report.clone() };
    let why = waiting(release(&with(Phase::Ready, 2, Some(&elsewhere)), Some(&elsewhere)));
    assert!(why.starts_with("the writer reports its snapshot in s3://old-store/"), "{why}");
    // Keep never releases.
    let mut keep = with(Phase::Ready, 2, Some(&report));
    keep.spec.writer.after_publish = None;
    assert_eq!(release(&keep, Some(&report)), Release::NotAsked);
}
