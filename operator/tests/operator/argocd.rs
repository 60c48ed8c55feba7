//! Argo CD health checks for both kinds (examples/argocd/*.lua): run through `lua5.4` on the
//! statuses the controllers write, and embedded verbatim in the argocd-cm patch.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn argocd() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/argocd")
}

/// A JSON value as a Lua table constructor.
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            format!("{{{}}}", map.iter().map(|(k, v)| format!("[{k:?}] = {}", lua(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

fn lua_available() -> bool {
    let found = Command::new("lua5.4").arg("-v").output().is_ok_and(|o| o.status.success());
    if !found {
        println!("SKIPPED: lua5.4 is not installed (apt-get install lua5.4); the health scripts were not run");
    }
    found
}

/// (status, message) the script returns for `obj`.
fn health(script: &str, obj: Value) -> (String, String) {
    let path = argocd().join(script);
    let program = format!(
        "obj = {}\nlocal hs = dofile({:?})\nio.write(hs.status, \"\\t\", hs.message or \"\")",
        lua(&obj),
        path.to_str().unwrap()
    );
    let out = Command::new("lua5.4").args(["-e", &program]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\t').unwrap();
    (status.into(), message.into())
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": if status {"True"} else {"False"}, "reason": reason, "message": message})
}

fn collection(phase: &str, conditions: Vec<Value>) -> Value {
    json!({"metadata": {"generation": 2}, "status": {"phase": phase, "observedGeneration": 2, "readyReplicas": 2,
        "message": "1/2 replicas ready", "conditions": conditions}})
}

#[test]
fn vectorcollection_health_follows_the_conditions() {
    if !lua_available() {
        return;
    }
    let h = |obj| health("vectorcollection-health.lua", obj);
    assert_eq!(h(json!({"metadata": {}})).0, "Progressing");
    let ready = collection(
        "Ready",
        vec![
            condition("Ready", true, "Ready", ""),
            condition("Verified", true, "GatesPassed", ""),
            condition("Degraded", false, "AsExpected", ""),
        ],
    );
    assert_eq!(h(ready.clone()), ("Healthy".into(), "verified, 2 replicas ready".into()));
    let mut stale = ready;
    stale["metadata"]["generation"] = json!(3);
    assert_eq!(h(stale).0, "Progressing");
    let replicating = collection(
        "Replicating",
        vec![condition("Ready", false, "Replicating", ""), condition("Degraded", false, "AsExpected", "")],
    );
    assert_eq!(h(replicating), ("Progressing".into(), "Replicating: 1/2 replicas ready".into()));
    let failed = collection("Failed", vec![condition("Degraded", true, "Failed", "verification failed: recall")]);
    assert_eq!(h(failed.clone()), ("Degraded".into(), "Failed: verification failed: recall".into()));
    // A collection being deleted (held by its finalizer) is on its way, not broken.
    let mut deleting = failed;
    deleting["metadata"]["deletionTimestamp"] = json!("2025-11-25T12:00:00Z");
    assert_eq!(h(deleting), ("Progressing".into(), "being deleted".into()));
}

#[test]
fn collectionalias_health_is_healthy_only_when_serving_its_target() {
    if !lua_available() {
        return;
    }
    let h = |conditions: Vec<Value>| {
        health(
            "collectionalias-health.lua",
            json!({"status": {"current": "p-1", "message": "collection p-2 is Verifying", "conditions": conditions}}),
        )
    };
    assert_eq!(h(vec![condition("Flipped", true, "Serving", "")]), ("Healthy".into(), "serving p-1".into()));
    // An alias an operator before the flip rename reconciled last.
    assert_eq!(h(vec![condition("Switched", true, "Serving", "")]), ("Healthy".into(), "serving p-1".into()));
    assert_eq!(
        h(vec![condition("Flipped", false, "WaitingForTarget", "x")]),
        ("Progressing".into(), "collection p-2 is Verifying".into())
    );
    assert_eq!(
        h(vec![condition("Flipped", false, "TargetFailed", "p-2 is Failed")]),
        ("Degraded".into(), "p-2 is Failed".into())
    );
    // Flipped, but nothing answers behind the Service: an outage.
    let unreachable = vec![
        condition("Ready", false, "NoReadyEndpoints", "serving p-1, but its Service has no ready endpoint"),
        condition("Flipped", true, "Serving", ""),
    ];
    assert_eq!(h(unreachable), ("Degraded".into(), "serving p-1, but its Service has no ready endpoint".into()));
    let deleting = health(
        "collectionalias-health.lua",
        json!({"metadata": {"deletionTimestamp": "2025-11-25T12:00:00Z"}, "status": {"current": "p-1"}}),
    );
    assert_eq!(deleting, ("Progressing".into(), "being deleted".into()));
}

/// The argocd-cm patch embeds the scripts verbatim (regenerate with QUIVER_UPDATE_ARGOCD=1).
#[test]
fn argocd_cm_patch_embeds_the_scripts() {
    let script = |name| std::fs::read_to_string(argocd().join(name)).unwrap();
    let patch = json!({"data": {
        "resource.customizations.health.quiver.dev_VectorCollection": script("vectorcollection-health.lua"),
        "resource.customizations.health.quiver.dev_CollectionAlias": script("collectionalias-health.lua"),
    }});
    let header = "# Argo CD health checks for quiver's kinds. Apply with:\n#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file examples/argocd/argocd-cm-patch.yaml\n# Generated from the .lua files beside it by `QUIVER_UPDATE_ARGOCD=1 cargo test -p quiver-operator --test operator argocd`.\n";
    let expected = format!("{header}{}", serde_yaml::to_string(&patch).unwrap());
    let path = argocd().join("argocd-cm-patch.yaml");
    if std::env::var_os("QUIVER_UPDATE_ARGOCD").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == expected, "{} is out of date: run with QUIVER_UPDATE_ARGOCD=1", path.display());
}
