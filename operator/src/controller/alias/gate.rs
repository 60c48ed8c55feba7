//! What gates a flip in Kubernetes: the alias flips to a collection only when it exists and is
//! not being deleted, its status is for its current generation, its phase is Ready, its
//! `Verified` condition (set from the verify Job's gates, `phase.rs`) is true for that
//! generation, and its wanted replicas are ready.

use super::*;

/// Why `vc` may not be served yet, or None when it may: not being deleted, Ready and verified
/// for the generation of its spec as it is now, with its wanted replicas ready (min replicas
/// when autoscaled), so the flip moves clients onto as many pods as the collection promised.
pub fn flip_gate(name: &str, vc: Option<&VectorCollection>) -> Option<Waiting> {
    let waiting = |message: String, failed| Some(Waiting { message, failed });
    let Some(vc) = vc else {
        return waiting(format!("collection {name} does not exist"), false);
    };
    if vc.metadata.deletion_timestamp.is_some() {
        return waiting(format!("collection {name} is being deleted"), true);
    }
    let generation = vc.metadata.generation;
    let Some(status) = vc.status.as_ref() else {
        return waiting(format!("collection {name} has no status yet"), false);
    };
    if status.observed_generation != generation {
        return waiting(format!("collection {name} has not been reconciled since its spec changed"), false);
    }
    if status.phase != Phase::Ready {
        let why = status.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        return waiting(format!("collection {name} is {:?}{why}", status.phase), status.phase == Phase::Failed);
    }
    let verified = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Verified" && c.status == "True" && c.observed_generation == generation);
    if !verified {
        return waiting(format!("collection {name} is not verified for its current generation"), false);
    }
    let wanted = replicas::wanted(&vc.spec.replicas).max(1);
    if status.ready_replicas < wanted {
        return waiting(format!("collection {name} has {} of {wanted} replicas ready", status.ready_replicas), false);
    }
    None
}
