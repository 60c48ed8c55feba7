//! The CRDs: generated files match the Rust types, and the CEL rules accept the examples and
//! refuse the invalid fixtures, evaluated client-side (no cluster).

use quiver_operator::crd::{CollectionAlias, VectorCollection};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn load<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn generated_crds_match_the_committed_files() {
    for dir in ["crds", "charts/quiver/crds"] {
        for (name, yaml) in quiver_operator::crdgen::render() {
            let path = root().join(dir).join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == yaml,
                "{} is out of date: run `cargo run -p quiver-operator --bin crdgen`",
                path.display()
            );
        }
    }
}

#[test]
fn crds_carry_names_columns_and_rules() {
    let (_, vc) = &quiver_operator::crdgen::render()[0];
    for needle in [
        "shortNames:\n    - vc",
        "categories:\n    - quiver",
        "name: Phase",
        "name: Verified",
        "subresources:\n      status: {}",
        "rule: self == oldSelf",
        "x-kubernetes-validations",
        "Dimensions of every vector",
    ] {
        assert!(vc.contains(needle), "VectorCollection CRD lacks {needle:?}");
    }
}

#[test]
fn examples_pass_the_cel_rules() {
    for example in [
        "examples/vectorcollection.yaml",
        "examples/vectorcollection-push.yaml",
        "examples/vectorcollection-parquet.yaml",
        "examples/vectorcollection-restore.yaml",
    ] {
        let vc: VectorCollection = load(&root().join(example));
        vc.validate_cel().unwrap_or_else(|e| panic!("{example}: {e:?}"));
    }
    let ca: CollectionAlias = load(&root().join("examples/collectionalias.yaml"));
    ca.validate_cel().unwrap();
    let ca: CollectionAlias = load(&root().join("examples/collectionalias-rebuild.yaml"));
    ca.validate_cel().unwrap();
    assert_eq!(ca.spec.rebuild.as_ref().unwrap().history_limit, 1);
}

#[test]
fn a_rebuild_needs_a_cronjob_schedule_and_its_template_may_change_dimensions() {
    let ca: CollectionAlias = load(&root().join("operator/tests/fixtures/invalid-schedule.yaml"));
    let err = ca.validate_cel().expect_err("a 6-field schedule");
    assert!(format!("{err:?}").contains("schedule must be a 5-field cron expression"), "{err:?}");
    let mut nickname = ca.clone();
    nickname.spec.rebuild.as_mut().unwrap().schedule = "@daily".into();
    nickname.validate_cel().unwrap();
    nickname.spec.rebuild.as_mut().unwrap().schedule = "@fortnightly".into();
    nickname.validate_cel().expect_err("an unknown nickname");
    // The template is not a collection: the next rebuild may use other dimensions.
    let old: CollectionAlias = load(&root().join("examples/collectionalias-rebuild.yaml"));
    assert_eq!(old.spec.collection, None, "the example follows its rebuilds");
    let mut new = old.clone();
    new.spec.rebuild.as_mut().unwrap().template.dimensions = 768;
    new.validate_cel_update(&old).unwrap();
    // Rebuilt collections are named `<alias>-yyyymmdd-hhmm`: the alias name leaves room.
    let mut long = old.clone();
    long.metadata.name = Some("products-multilingual-embed".into()); // 27 characters
    let err = long.validate_cel().expect_err("a 27-character alias with rebuilds");
    assert!(format!("{err:?}").contains("at most 26 characters"), "{err:?}");
}

#[test]
fn invalid_fixtures_are_refused_with_their_message() {
    let fixtures = root().join("operator/tests/fixtures");
    for (file, message) in [
        ("invalid-replicas.yaml", "replicas.min must not exceed replicas.max"),
        ("invalid-recall.yaml", "minRecall must be in (0, 1]"),
        ("invalid-source.yaml", "set exactly one of source.push, source.url or source.snapshot"),
        ("invalid-restore-name.yaml", "source.snapshot must be a snapshot of this collection"),
        ("invalid-after-publish.yaml", "writer.afterPublish: Delete needs spec.snapshots"),
        ("invalid-ambient.yaml", "source.ambientCredentials and snapshots.ambientCredentials must be equal"),
        ("invalid-source-scheme.yaml", "source.url must be an object-store URL"),
        ("invalid-expected-count.yaml", "set at most one of verify.expectedCount or verify.expectedCountFrom"),
        ("invalid-count-query.yaml", "verify.expectedCountFrom.sql must not be blank"),
        (
            "invalid-two-credentials.yaml",
            "source.credentialsSecret and snapshots.credentialsSecret must name the same Secret",
        ),
        ("invalid-name.yaml", "at most 40 characters"),
        ("invalid-store-credentials.yaml", "snapshots.store must not carry credentials or a query"),
    ] {
        let vc: VectorCollection = load(&fixtures.join(file));
        let err = vc.validate_cel().expect_err(file);
        assert!(format!("{err:?}").contains(message), "{file}: {err:?}");
    }
    for (file, message) in [
        ("invalid-alias.yaml", "valid object name"),
        ("invalid-alias-name.yaml", "must not end in -replicas or -writer"),
        ("invalid-alias-empty.yaml", "set spec.collection, spec.rebuild, or both"),
        ("invalid-rebuild-snapshot.yaml", "rebuild.template.source.snapshot cannot be rebuilt"),
    ] {
        let ca: CollectionAlias = load(&fixtures.join(file));
        let err = ca.validate_cel().expect_err(file);
        assert!(format!("{err:?}").contains(message), "{file}: {err:?}");
    }
}

#[test]
fn what_defines_the_data_is_immutable() {
    let old: VectorCollection = load(&root().join("examples/vectorcollection.yaml"));
    let mut new = old.clone();
    new.spec.replicas.max = Some(8);
    new.spec.warmup.max_queries = 500;
    new.validate_cel_update(&old).unwrap();
    let refused = |change: &dyn Fn(&mut VectorCollection), message: &str| {
        let mut new = old.clone();
        change(&mut new);
        let err = new.validate_cel_update(&old).expect_err(message);
        assert!(format!("{err:?}").contains(message), "{message}: {err:?}");
        assert!(format!("{err:?}").contains("create a new collection"), "{err:?}");
    };
    refused(&|vc| vc.spec.dimensions = 768, "dimensions are immutable");
    refused(&|vc| vc.spec.distance = quiver_api::types::Metric::Euclidean, "distance is immutable");
    refused(&|vc| vc.spec.source.url = Some("https://data.example.com/other.npy".into()), "source is immutable");
    refused(&|vc| vc.spec.index.n_trees = Some(8), "index is immutable");
    refused(&|vc| vc.spec.search.target_recall = 0.99, "search.targetRecall is immutable");
    refused(&|vc| vc.spec.writer.storage = Some("40Gi".into()), "writer.storage is immutable");
    refused(&|vc| vc.spec.writer.storage = None, "writer.storage is immutable");
    refused(&|vc| vc.spec.writer.storage_class_name = Some("fast".into()), "writer.storageClassName is immutable");
    refused(&|vc| vc.spec.source.snapshot = Some("s3://snapshots/search/products-v2".into()), "source is immutable");
}

/// Keep may become Delete (release a writer later), never the reverse: the writer made again
/// would import anew over a volume that is gone.
#[test]
fn a_released_writer_is_not_made_again() {
    use quiver_operator::crd::AfterPublish;
    let keep: VectorCollection = load(&root().join("examples/vectorcollection-parquet.yaml"));
    let mut keep = keep;
    keep.spec.writer.after_publish = None;
    let mut delete = keep.clone();
    delete.spec.writer.after_publish = Some(AfterPublish::Delete);
    delete.validate_cel_update(&keep).unwrap();
    for undone in [None, Some(AfterPublish::Keep)] {
        let mut back = delete.clone();
        back.spec.writer.after_publish = undone;
        let err = back.validate_cel_update(&delete).expect_err("Delete undone");
        assert!(format!("{err:?}").contains("writer.afterPublish: Delete cannot be undone"), "{err:?}");
    }
    // Nor moved to another store, alone or with the switch to Delete: the released writer's
    // snapshot is in the old one.
    let mut moved = delete.clone();
    moved.spec.snapshots.as_mut().unwrap().store = "s3://other-snapshots".into();
    for old in [&delete, &keep] {
        let err = moved.validate_cel_update(old).expect_err("store moved");
        assert!(
            format!("{err:?}").contains("snapshots.store cannot change with writer.afterPublish: Delete"),
            "{err:?}"
        );
    }
    let mut kept_moved = keep.clone();
    kept_moved.spec.snapshots.as_mut().unwrap().store = "s3://other-snapshots".into();
    kept_moved.validate_cel_update(&keep).unwrap();
}

#[test]
fn autoscaled_replicas_need_a_cpu_request() {
    let mut vc: VectorCollection = load(&root().join("examples/vectorcollection.yaml"));
    vc.validate_cel().unwrap();
    let memory_only = serde_json::json!({"requests": {"memory": "1Gi"}});
    vc.spec.replicas.resources = Some(serde_json::from_value(memory_only).unwrap());
    let err = vc.validate_cel().expect_err("min/max without a CPU request");
    assert!(format!("{err:?}").contains("replicas.resources.requests.cpu (or a CPU limit) is required"), "{err:?}");
    // A CPU limit alone defaults the request.
    let limit_only = serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}});
    vc.spec.replicas.resources = Some(serde_json::from_value(limit_only).unwrap());
    vc.validate_cel().unwrap();
    vc.spec.replicas.resources =
        Some(serde_json::from_value(serde_json::json!({"requests": {"memory": "1Gi"}})).unwrap());
    // A fixed count needs none; the defaults carry one.
    vc.spec.replicas.min = None;
    vc.spec.replicas.max = None;
    vc.validate_cel().unwrap();
}

/// Every field a user reads in `kubectl explain` says what it is: the test walks both CRDs'
/// schemas (spec and status, nested objects, list items) and names each field without one.
#[test]
fn every_spec_and_status_field_has_a_description() {
    fn walk(path: &str, schema: &serde_yaml::Value, missing: &mut Vec<String>) {
        if let Some(properties) = schema["properties"].as_mapping() {
            for (name, field) in properties {
                let path = format!("{path}.{}", name.as_str().unwrap());
                if field["description"].as_str().is_none_or(|d| d.trim().is_empty()) {
                    missing.push(path.clone());
                }
                walk(&path, field, missing);
            }
        }
        if !schema["items"].is_null() {
            walk(&format!("{path}[]"), &schema["items"], missing);
        }
    }
    let mut missing = Vec::new();
    for (name, yaml) in quiver_operator::crdgen::render() {
        let crd: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        for part in ["spec", "status"] {
            walk(&format!("{name}:{part}"), &schema["properties"][part], &mut missing);
        }
    }
    assert!(missing.is_empty(), "fields without a description:\n{}", missing.join("\n"));
}

/// Conditions merge by type under server-side apply (`x-kubernetes-list-type: map`), as
/// metav1.Condition lists are declared in Kubernetes' own types.
#[test]
fn condition_lists_are_maps_keyed_by_type() {
    for (name, yaml) in quiver_operator::crdgen::render() {
        let crd: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
            ["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{name}");
        assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type", "{name}");
    }
}

/// source.credentialsSecret's description lists the variables the writer gets from the Secret
/// (by hand, for `kubectl explain`): every one the operator passes is named there.
#[test]
fn the_credentials_secret_names_every_variable_it_passes() {
    let crds = quiver_operator::crdgen::render();
    let (_, yaml) = crds.iter().find(|(name, _)| name.contains("vectorcollections")).expect("the VectorCollection CRD");
    let words: std::collections::HashSet<&str> =
        yaml.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).collect();
    for name in quiver_api::environment::object_store_credentials() {
        assert!(words.contains(name), "{name} is not in source.credentialsSecret's description");
    }
}
