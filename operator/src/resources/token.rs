//! The bearer token of a collection's pods. A collection that names no `tokenSecret` gets one
//! the operator creates (`<collection>-token`, key `token`, random, owned by the collection):
//! its writer, replicas and Jobs then require it on Ingest, Admin and Snapshot, as with a
//! user's Secret. Search stays open for such a collection (clients of an alias follow it across
//! rebuilds, each with its own generated token); its NetworkPolicy says who may reach it.

use super::labels::{self, Role};
use crate::crd::VectorCollection;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, SecretKeySelector};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// The key of the generated Secret.
pub const KEY: &str = "token";

pub fn secret_name(collection: &str) -> String {
    format!("{collection}-token")
}

/// Whether the operator generates the collection's token (no `spec.tokenSecret`).
pub fn generated(vc: &VectorCollection) -> bool {
    vc.spec.token_secret.is_none()
}

/// The Secret key the collection's pods read their token from.
pub fn selector(vc: &VectorCollection) -> SecretKeySelector {
    vc.spec.token_secret.clone().unwrap_or_else(|| SecretKeySelector {
        name: secret_name(&vc.name_any()),
        key: KEY.into(),
        optional: None,
    })
}

/// The generated Secret holding `token`: immutable (a changed token would lock out pods that
/// read the old one), garbage-collected with the collection.
pub fn secret(vc: &VectorCollection, token: &str) -> Secret {
    Secret {
        metadata: labels::owned_meta(vc, secret_name(&vc.name_any()), Role::Writer),
        immutable: Some(true),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(KEY.to_string(), ByteString(token.as_bytes().to_vec()))])),
        ..Default::default()
    }
}

/// 32 bytes from the operating system's random source, as 64 hex characters.
pub fn random() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
