//! The engine's layers, held against its own `use` lines (a tidy check in the spirit of
//! rust-analyzer's): each top-level module of `engine/src` sits in one layer, and code may use
//! only its own layer and the ones below. Within a layer, modules may use each other as long as
//! no circle forms. ARCHITECTURE.md explains the table; a change to it belongs there too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &["types", "error", "limits", "cancel", "durable", "fault", "latency", "metrics", "datagen", "distance"],
    ),
    ("reading sources", &["import"]),
    ("storage", &["collection"]),
    ("durable index", &["index"]),
    ("search", &["search"]),
    ("the build pipeline", &["build"]),
    ("checks on a collection", &["verify", "warmup"]),
    ("what a process keeps and hands on", &["snapshot", "spool", "alias", "publish"]),
    ("gRPC and HTTP serving", &["serve"]),
    ("what a process runs", &["bench", "demo", "roles"]),
    ("the command line", &["cli"]),
];

/// The layers that may name gRPC messages: the server and the callers of the client.
const PROTO_USERS: &[&str] = &["serve", "bench", "roles", "cli"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// Every source file of the library, with the top-level module it belongs to.
fn sources() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(&src).unwrap();
                let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
                let module = first.trim_end_matches(".rs").to_string();
                // The crate root and the binary wire things together; they belong to no layer.
                if module != "lib" && module != "main" {
                    files.push((path, module));
                }
            }
        }
    }
    files.sort();
    files
}

/// The code of a file without comments and string literals (a doc link or a message naming a
/// module is no dependency).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut in_string = false;
        let mut escaped = false;
        for c in line.chars() {
            match (in_string, c) {
                (true, '\\') if !escaped => escaped = true,
                (true, '"') if !escaped => in_string = false,
                (true, _) => escaped = false,
                (false, '"') => in_string = true,
                (false, c) => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

/// The top-level modules a file's code names through `crate::`, including `use crate::{a, b}`.
fn used_modules(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut used = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            used.extend(group.split(',').map(|part| ident(part.trim())).filter(|m| !m.is_empty()));
        } else {
            used.insert(ident(rest));
        }
    }
    // `quiver_engine::` in a library file would be an error; `$crate::` in macros is the same.
    used.remove("");
    used
}

struct Arrow {
    file: PathBuf,
    from: String,
    to: String,
}

fn arrows() -> Vec<Arrow> {
    let mut arrows = Vec::new();
    for (file, from) in sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        for to in used_modules(&code(&text)) {
            if to != from {
                arrows.push(Arrow { file: file.clone(), from: from.clone(), to });
            }
        }
    }
    arrows
}

#[test]
fn every_module_is_in_one_layer() {
    let mut unplaced: BTreeSet<String> = BTreeSet::new();
    for (_, module) in sources() {
        if layer_of(&module).is_none() {
            unplaced.insert(module);
        }
    }
    assert!(unplaced.is_empty(), "modules in no layer of LAYERS (add them, and to ARCHITECTURE.md): {unplaced:?}");
}

#[test]
fn no_arrow_points_up() {
    let up: Vec<String> = arrows()
        .into_iter()
        .filter_map(|a| {
            let (from, to) = (layer_of(&a.from)?, layer_of(&a.to)?);
            (to > from).then(|| {
                format!(
                    "{} ({}, layer {:?}) uses crate::{} (layer {:?})",
                    a.file.display(),
                    a.from,
                    LAYERS[from].0,
                    a.to,
                    LAYERS[to].0
                )
            })
        })
        .collect();
    assert!(up.is_empty(), "arrows pointing up:\n{}", up.join("\n"));
}

#[test]
fn no_modules_form_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in arrows() {
        graph.entry(a.from).or_default().insert(a.to);
    }
    // A module on a circle reaches itself.
    let reaches = |start: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = graph.get(start).into_iter().flatten().cloned().collect();
        while let Some(m) = todo.pop() {
            if seen.insert(m.clone()) {
                todo.extend(graph.get(&m).into_iter().flatten().cloned());
            }
        }
        seen
    };
    let circles: Vec<String> = graph
        .keys()
        .filter(|m| reaches(m).contains(*m))
        .map(|m| {
            let back: Vec<&String> = graph[m].iter().filter(|n| reaches(n).contains(m)).collect();
            format!("{m} -> {back:?} -> ... -> {m}")
        })
        .collect();
    assert!(circles.is_empty(), "modules on a circle:\n{}", circles.join("\n"));
}

#[test]
fn only_the_server_and_client_callers_name_grpc_messages() {
    let mut named = Vec::new();
    for (file, module) in sources() {
        if PROTO_USERS.contains(&module.as_str()) {
            continue;
        }
        let code = code(&std::fs::read_to_string(&file).unwrap());
        if code.contains("proto::") || code.contains("quiver_api::client") || code.contains("tonic_prost") {
            named.push(file.display().to_string());
        }
    }
    assert!(named.is_empty(), "files below serve/ that know the gRPC contract: {named:?}");
}

#[test]
fn the_checker_sees_what_it_must() {
    let text = "use crate::{alias::Catalog, search};\n// crate::cli in a comment\nlet s = \"crate::roles\";\nuse crate::serve::proto;";
    let used = used_modules(&code(text));
    assert_eq!(used.into_iter().collect::<Vec<_>>(), ["alias", "search", "serve"]);
}
