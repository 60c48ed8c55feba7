//! The Helm chart without helm: its RBAC grants exactly what the controllers call (least
//! privilege, nothing missing), and its Deployment passes only flags the binary knows.

use clap::CommandFactory;
use quiver_operator::run::Config;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/quiver")
}

/// A template with its `{{ ... }}` actions replaced, parsed as YAML documents.
fn documents(template: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(chart().join("templates").join(template)).unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{-") && !l.trim_start().starts_with("{{ include"))
        .map(|l| {
            let mut out = String::new();
            let mut rest = l;
            while let Some(start) = rest.find("{{") {
                out.push_str(&rest[..start]);
                let end = rest[start..].find("}}").map(|e| start + e + 2).unwrap_or(rest.len());
                out.push_str("TEMPLATED");
                rest = &rest[end..];
            }
            out.push_str(rest);
            out
        })
        .collect();
    serde_yaml::Deserializer::from_str(&lines.join("\n"))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

type Grant = (String, String, String);

fn grants(rules: &serde_yaml::Value) -> BTreeSet<Grant> {
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_sequence().unwrap() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

fn expand(group: &str, resources: &[&str], verbs: &[&str]) -> Vec<Grant> {
    resources
        .iter()
        .flat_map(|r| verbs.iter().map(move |v| (group.to_string(), r.to_string(), v.to_string())))
        .collect()
}

/// What the controllers do, call by call (see controller/collection.rs, controller/alias.rs,
/// controller/cache.rs and run.rs): every kind they read is watched into a cache (list and
/// watch), but Secrets (read by name once, never listed); server-side apply may create, so
/// applied kinds need create and patch. A GET is left only where a cache cannot answer: a token
/// Secret the first time, the alias Service when the cache disagrees with the alias's status, a
/// rebuild still building under Forbid, the previous target just before its drain.
fn needed() -> BTreeSet<Grant> {
    let watch = ["list", "watch"];
    let apply = ["list", "watch", "create", "patch"];
    [
        expand("quiver.dev", &["vectorcollections"], &["get", "list", "watch", "patch", "create", "delete"]),
        expand("quiver.dev", &["collectionaliases"], &watch),
        expand("quiver.dev", &["vectorcollections/status", "collectionaliases/status"], &["get", "patch"]),
        expand("quiver.dev", &["vectorcollections/finalizers", "collectionaliases/finalizers"], &["update"]),
        // delete: a writer released after publishing (writer.afterPublish: Delete); get: the
        // re-read after a 409 on that delete's uid precondition (controller::delete_if_present).
        expand("apps", &["statefulsets"], &[&apply[..], &["delete", "get"]].concat()),
        expand("apps", &["deployments"], &apply),
        expand("", &["services"], &[&apply[..], &["get", "delete"]].concat()),
        expand("batch", &["jobs"], &[&apply[..], &["deletecollection"]].concat()),
        expand("autoscaling", &["horizontalpodautoscalers"], &[&apply[..], &["delete"]].concat()),
        expand("policy", &["poddisruptionbudgets"], &apply),
        // delete, get: a released writer's policy, as its StatefulSet.
        expand("networking.k8s.io", &["networkpolicies"], &[&apply[..], &["delete", "get"]].concat()),
        expand("", &["pods"], &["list", "watch", "delete"]),
        expand("discovery.k8s.io", &["endpointslices"], &watch),
        expand("", &["secrets"], &["get", "create"]),
        expand("events.k8s.io", &["events"], &["create", "patch"]),
        expand("", &["events"], &["list"]),
    ]
    .concat()
    .into_iter()
    .collect()
}

#[test]
fn cluster_role_grants_exactly_what_the_controllers_use() {
    let docs = documents("clusterrole.yaml");
    // The kind is templated (ClusterRole, or a Role in namespaced mode): the rules are the same.
    let role = docs.iter().find(|d| !d["rules"].is_null()).expect("a ClusterRole");
    let granted = grants(&role["rules"]);
    let needed = needed();
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(missing.is_empty(), "the ClusterRole lacks {missing:?}");
    assert!(extra.is_empty(), "the ClusterRole grants more than needed: {extra:?}");
    assert!(!granted.iter().any(|(g, r, v)| g == "*" || r == "*" || v == "*"));
    let binding = docs.iter().find(|d| !d["subjects"].is_null()).expect("a ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
}

/// `helm template` of the chart with `--set`s, when .ci/run gave the helm it installs.
fn helm_template() -> Option<impl Fn(&[&str]) -> Vec<serde_yaml::Value>> {
    let Some(helm) = std::env::var_os("QUIVER_HELM") else {
        println!(
            "SKIPPED: QUIVER_HELM is not set (.ci/run sets it to the helm it installs); the chart was not rendered"
        );
        return None;
    };
    Some(move |set: &[&str]| -> Vec<serde_yaml::Value> {
        let out = std::process::Command::new(&helm)
            .args(["template".as_ref(), "quiver".as_ref(), chart().as_os_str()])
            .args(["--namespace", "quiver-system"])
            .args(set.iter().flat_map(|s| ["--set", s]))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_yaml::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &serde_yaml::Value| !v.is_null())
            .collect()
    })
}

/// Secure by default: no collection gets the node's identity unless the admin says so.
#[test]
fn the_nodes_identity_is_off_unless_the_chart_turns_it_on() {
    let Some(render) = helm_template() else { return };
    let ambient = |docs: &[serde_yaml::Value]| {
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].as_sequence().unwrap();
        let values = args.iter().filter_map(|a| a.as_str()?.strip_prefix("--allow-ambient-credentials="));
        values.map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(ambient(&render(&[])), ["false"]);
    assert_eq!(ambient(&render(&["objectStore.allowAmbientCredentials=true"])), ["true"]);
}

/// The chart rendered by helm (`QUIVER_HELM`, set by .ci/run; skipped loudly without it): by
/// default the rights are a ClusterRole; with `watchNamespace` a Role and RoleBinding in that
/// namespace with the same rules, and no cluster-wide grant at all.
#[test]
fn namespaced_mode_grants_the_same_rules_in_the_watched_namespace_only() {
    let Some(render) = helm_template() else { return };
    let kinds = |docs: &[serde_yaml::Value]| -> Vec<String> {
        docs.iter().map(|d| d["kind"].as_str().unwrap_or_default().to_string()).collect()
    };
    let cluster = render(&[]);
    assert!(kinds(&cluster).contains(&"ClusterRole".to_string()), "{:?}", kinds(&cluster));
    let namespaced = render(&["watchNamespace=search"]);
    let kinds_namespaced = kinds(&namespaced);
    assert!(!kinds_namespaced.iter().any(|k| k.starts_with("Cluster")), "{kinds_namespaced:?}");
    let role = namespaced
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "search")
        .expect("a Role in search");
    assert_eq!(grants(&role["rules"]), needed());
    let binding = namespaced
        .iter()
        .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == "search")
        .expect("a RoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    let deployment = namespaced.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args = serde_yaml::to_string(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]).unwrap();
    assert!(args.contains("--namespace=search"), "{args}");
}

#[test]
fn the_lease_is_granted_only_in_the_release_namespace() {
    let docs = documents("leader-election.yaml");
    let role = docs.iter().find(|d| d["kind"] == "Role").expect("a namespaced Role");
    let granted = grants(&role["rules"]);
    assert!(granted.iter().all(|(g, r, _)| g == "coordination.k8s.io" && r == "leases"), "{granted:?}");
    assert!(granted.contains(&("coordination.k8s.io".into(), "leases".into(), "patch".into())));
}

#[test]
fn deployment_passes_only_flags_the_operator_knows_and_runs_restricted() {
    let known: BTreeSet<String> =
        Config::command().get_arguments().filter_map(|a| a.get_long().map(String::from)).collect();
    let docs = documents("deployment.yaml");
    let pod = &docs[0]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = container["args"].as_sequence().unwrap();
    assert!(args.len() >= 5, "{args:?}");
    for arg in args {
        let arg = arg.as_str().unwrap();
        let flag = arg.trim_start_matches("--").split('=').next().unwrap();
        assert!(known.contains(flag), "the chart passes {arg}, which quiver-operator does not know");
    }
    let env: Vec<&str> = container["env"].as_sequence().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"), "{env:?}");
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
}

/// The admission policy refuses to delete a collection an alias serves, naming the alias, and
/// lets every other deletion through; evaluated client-side with the Kubernetes CEL libraries
/// (kube-cel), `oldObject` bound to the stored collection and `object` null, as the API server
/// binds them for a DELETE. Not kube-cel's VapEvaluator: it escapes every object key
/// (`served-by.quiver.dev/x` becomes `served__dash__by__dot__...`), while the API server escapes
/// only declared properties and leaves map keys such as labels as they are.
#[test]
fn the_admission_policy_refuses_to_delete_a_served_collection() {
    use kube_cel::{KubeCelExt, cel};
    use quiver_operator::resources::labels;
    let docs = documents("admission-policy.yaml");
    let policy = docs.iter().find(|d| d["kind"] == "ValidatingAdmissionPolicy").expect("a policy");
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rules["operations"], serde_yaml::from_str::<serde_yaml::Value>("[DELETE]").unwrap());
    assert_eq!(rules["resources"][0], "vectorcollections");
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let binding = docs.iter().find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding").expect("a binding");
    assert_eq!(binding["spec"]["validationActions"][0], "Deny");
    let validation = &policy["spec"]["validations"][0];
    let (expression, message) =
        (validation["expression"].as_str().unwrap(), validation["messageExpression"].as_str().unwrap());
    // The prefix the operator writes is the one the policy looks for (and cuts off).
    let prefix = labels::SERVED_BY_PREFIX;
    assert!(expression.contains(&format!("'{prefix}'")), "{expression}");
    assert!(message.contains(&format!("substring({})", prefix.len())), "{message}");
    let (expression, message) = (cel::Program::compile(expression).unwrap(), cel::Program::compile(message).unwrap());
    // (allowed, message when refused) for a DELETE of a collection with these labels.
    let delete = |labels: serde_json::Value| {
        let stored = serde_json::json!({"apiVersion": "quiver.dev/v1alpha1", "kind": "VectorCollection",
            "metadata": {"name": "products-v1", "namespace": "search", "labels": labels}});
        let mut stored = stored;
        if stored["metadata"]["labels"].is_null() {
            stored["metadata"].as_object_mut().unwrap().remove("labels");
        }
        let mut ctx = cel::Context::default().with_all();
        ctx.add_variable_from_value("oldObject", cel::to_value(&stored).unwrap());
        ctx.add_variable_from_value("object", cel::Value::Null);
        match expression.execute(&ctx).unwrap() {
            cel::Value::Bool(true) => (true, None),
            cel::Value::Bool(false) => match message.execute(&ctx).unwrap() {
                cel::Value::String(m) => (false, Some(m.to_string())),
                other => panic!("the message is not a string: {other:?}"),
            },
            other => panic!("the expression is not a bool: {other:?}"),
        }
    };
    let served = delete(serde_json::json!({
        labels::served_by("products"): "current", labels::served_by("related"): "previous", "team": "search"}));
    assert!(!served.0);
    // Map iteration order is not fixed: both orders name both aliases.
    let message = served.1.unwrap();
    assert!(
        message.starts_with("collection products-v1 is served by alias ")
            && message.contains("products (current)")
            && message.contains("related (previous)")
            && message.ends_with(": flip the alias to another collection (or delete the alias) first"),
        "{message}"
    );
    assert_eq!(delete(serde_json::json!({"team": "search"})), (true, None));
    // The namespace controller (deleting the whole namespace) is not matched.
    let condition = policy["spec"]["matchConditions"][0]["expression"].as_str().unwrap();
    let condition = cel::Program::compile(condition).unwrap();
    let matched = |username: &str| {
        let mut ctx = cel::Context::default().with_all();
        let request = serde_json::json!({"operation": "DELETE", "userInfo": {"username": username}});
        ctx.add_variable_from_value("request", cel::to_value(&request).unwrap());
        condition.execute(&ctx).unwrap() == cel::Value::Bool(true)
    };
    assert!(matched("kubernetes-admin") && matched("system:serviceaccount:argocd:argocd-application-controller"));
    assert!(!matched("system:serviceaccount:kube-system:namespace-controller"));
    assert_eq!(delete(serde_json::Value::Null), (true, None), "no labels at all");
}
