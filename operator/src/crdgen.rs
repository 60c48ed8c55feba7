//! Renders the CRD YAML that `kubectl apply -f crds/` and the Helm chart install.

use crate::crd::{CollectionAlias, VectorCollection};
use kube::CustomResourceExt;

/// `(file name, YAML)` for each CRD, in a stable order.
pub fn render() -> Vec<(&'static str, String)> {
    let yaml = |crd| serde_yaml::to_string(&crd).expect("a CRD serializes to YAML");
    vec![
        ("quiver.dev_vectorcollections.yaml", yaml(VectorCollection::crd())),
        ("quiver.dev_collectionaliases.yaml", yaml(CollectionAlias::crd())),
    ]
}
