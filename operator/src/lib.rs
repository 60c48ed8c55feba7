//! quiver-operator: the Kubernetes operator (VectorCollection, CollectionAlias). Not built yet: see issue 5.
