//! The CollectionAlias controller.
