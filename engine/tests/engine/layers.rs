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
        &[
            "types", "error", "limits", "cancel", "durable", "fault", "latency", "metrics", "recent", "datagen",
            "distance",
        ],
    ),
    ("reading sources", &["import"]),
    ("storage", &["collection"]),
    ("durable index", &["index"]),
    ("search", &["search"]),
    ("the build pipeline", &["build"]),
    ("gates and warm-up of a collection", &["verify", "warmup"]),
    ("what a process keeps and hands on", &["snapshot", "spool", "catalog", "publish"]),
    ("gRPC and HTTP serving", &["serve"]),
    ("what a process runs", &["bench", "demo", "roles"]),
    ("the command line", &["cli"]),
];

/// The layers that may name gRPC messages (the server and the callers of the client) and use
/// tonic; `metrics` also takes a `tonic::Code` for its labels.
const PROTO_USERS: &[&str] = &["serve", "bench", "roles", "cli"];
const TONIC_USERS: &[&str] = &["serve", "bench", "roles", "cli", "metrics"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A source file: its path, its module path (`collection/builder.rs` is `[collection, builder]`,
/// `collection/mod.rs` is `[collection]`) and its code.
struct Source {
    file: PathBuf,
    path: Vec<String>,
    code: String,
}

impl Source {
    fn module(&self) -> &str {
        &self.path[0]
    }
}

/// Every source file of the library but the crate root and the binary (they wire things
/// together and belong to no layer).
fn sources() -> Vec<Source> {
    let src = src();
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let file = entry.path();
            if file.is_dir() {
                dirs.push(file);
            } else if file.extension().is_some_and(|e| e == "rs") {
                let mut path: Vec<String> = file
                    .strip_prefix(&src)
                    .unwrap()
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string())
                    .collect();
                if path.last().is_some_and(|l| l == "mod") {
                    path.pop();
                }
                if path != ["lib"] && path != ["main"] {
                    let code = code(&std::fs::read_to_string(&file).unwrap());
                    files.push(Source { file, path, code });
                }
            }
        }
    }
    files.sort_by(|a, b| a.file.cmp(&b.file));
    files
}

/// The code of a file without comments, string and char literals (a doc link or a message
/// naming a module is no dependency), whitespace around `::` removed.
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        (depth, i) = (depth + 1, i + 2);
                    } else if b[i..].starts_with(b"*/") {
                        (depth, i) = (depth - 1, i + 2);
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            // Raw strings: r"..", r#".."#, br"..".
            b'r' if (i == 0 || !ident(b[i - 1]) || (b[i - 1] == b'b' && (i < 2 || !ident(b[i - 2]))))
                && matches!(b.get(i + 1), Some(b'"' | b'#')) =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                i += 2 + hashes;
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += 1;
                }
                i += close.len();
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            // A char literal ('"', '\'', 'x', 'é'), or else a lifetime.
            b'\'' => {
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 3..].iter().position(|&c| c == b'\'').map(|p| i + 3 + p)
                } else {
                    let width = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (b.get(i + 1 + width) == Some(&b'\'')).then_some(i + 1 + width)
                };
                match end {
                    Some(end) => i = end + 1,
                    None => {
                        out.push(b'\'');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let flat = String::from_utf8_lossy(&out).split_whitespace().collect::<Vec<_>>().join(" ");
    flat.replace(" ::", "::").replace(":: ", "::")
}

/// The names the crate root re-exports, with the module each comes from (`Collection` ->
/// `collection`).
fn root_exports() -> BTreeMap<String, String> {
    let lib = code(&std::fs::read_to_string(src().join("lib.rs")).unwrap());
    let mut exports = BTreeMap::new();
    for item in lib.split(';') {
        let Some(path) = item.trim().strip_prefix("pub use ") else { continue };
        let (module, rest) = path.split_once("::").unwrap_or((path, ""));
        for name in top_level_items(rest.trim_start_matches('{').trim_end_matches('}')) {
            let name = name.rsplit("::").next().unwrap_or(&name).to_string();
            exports.insert(name, module.to_string());
        }
    }
    exports
}

/// The comma-separated items of a `use` group, nested groups kept whole.
fn top_level_items(group: &str) -> Vec<String> {
    let (mut items, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current.trim().to_string());
    items.retain(|i| !i.is_empty());
    items
}

/// The first name after a path prefix: `catalog` of `catalog::Catalog`, each item of a group.
fn first_names(rest: &str) -> Vec<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '*').collect::<String>();
    match rest.strip_prefix('{') {
        Some(group) => {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(at, _)| at);
            top_level_items(&group[..end]).iter().map(|item| ident(item)).collect()
        }
        None => vec![ident(rest)],
    }
}

/// The top-level modules a file names: through `crate::` (root re-exports resolved to their
/// module) and through `super::` chains that climb to the crate root. Names that are neither a
/// module nor a re-export (a glob, a typo of the checker) are returned as `?name`.
fn used_modules(source: &Source, exports: &BTreeMap<String, String>, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = &source.code;
    let before_ok = |at: usize| at == 0 || !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if before_ok(at) && !code[..at].ends_with('$') {
            names.extend(first_names(&code[at + "crate::".len()..]));
        }
    }
    let mut at = 0;
    while let Some(found) = code[at..].find("super::") {
        let start = at + found;
        let mut end = start;
        let mut climbs = 0;
        while code[end..].starts_with("super::") {
            (climbs, end) = (climbs + 1, end + "super::".len());
        }
        if before_ok(start) && climbs >= source.path.len() + inline_modules_open(&code[..start]) {
            names.extend(first_names(&code[end..]));
        }
        at = end;
    }
    names
        .into_iter()
        .filter(|n| !n.is_empty())
        .map(|n| match exports.get(&n) {
            _ if modules.contains(&n) => n,
            Some(module) => module.clone(),
            None => format!("?{n}"),
        })
        .collect()
}

/// How many inline `mod name { .. }` blocks are open at the end of `code` (a `super::` inside
/// one climbs out of it first).
fn inline_modules_open(code: &str) -> usize {
    let (mut depth, mut open, mut module_next) = (0usize, Vec::new(), false);
    let words: Vec<&str> = code.split_inclusive(['{', '}', ' ', ';']).collect();
    for (i, word) in words.iter().enumerate() {
        if word.trim() == "mod" && words.get(i + 1).is_some_and(|w| !w.ends_with(';')) {
            module_next = true;
        }
        if word.ends_with(';') {
            module_next = false;
        }
        if word.ends_with('{') {
            depth += 1;
            if std::mem::take(&mut module_next) {
                open.push(depth);
            }
        } else if word.ends_with('}') {
            if open.last() == Some(&depth) {
                open.pop();
            }
            depth = depth.saturating_sub(1);
        }
    }
    open.len()
}

struct Arrow {
    file: PathBuf,
    from: String,
    to: String,
}

fn arrows() -> Vec<Arrow> {
    let sources = sources();
    let exports = root_exports();
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module().to_string()).collect();
    let mut arrows = Vec::new();
    for source in &sources {
        for to in used_modules(source, &exports, &modules) {
            if to != source.module() {
                arrows.push(Arrow { file: source.file.clone(), from: source.module().to_string(), to });
            }
        }
    }
    arrows
}

#[test]
fn every_module_is_in_one_layer() {
    let unplaced: BTreeSet<String> =
        sources().iter().map(|s| s.module().to_string()).filter(|m| layer_of(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules in no layer of LAYERS (add them, and to ARCHITECTURE.md): {unplaced:?}");
    let unresolved: Vec<String> = arrows()
        .into_iter()
        .filter(|a| a.to.starts_with('?'))
        .map(|a| format!("{}: {}", a.file.display(), a.to))
        .collect();
    assert!(unresolved.is_empty(), "paths the checker cannot place (name a module, not a glob): {unresolved:?}");
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
fn only_the_server_and_client_callers_know_grpc() {
    let mut named = Vec::new();
    for source in sources() {
        let code = &source.code;
        // Below serve/, only the shared types, environment names and the error of the contract crate.
        let contract = code.match_indices("quiver_api::").any(|(at, _)| {
            let rest = &code[at + "quiver_api::".len()..];
            !(rest.starts_with("types::") || rest.starts_with("environment") || rest.starts_with("Error"))
        });
        if !PROTO_USERS.contains(&source.module()) && (contract || code.contains("proto::")) {
            named.push(format!("{} names the gRPC contract", source.file.display()));
        }
        if !TONIC_USERS.contains(&source.module()) && code.contains("tonic") {
            named.push(format!("{} uses tonic", source.file.display()));
        }
    }
    assert!(named.is_empty(), "below serve/:\n{}", named.join("\n"));
}

#[test]
fn the_checker_sees_what_it_must() {
    let source = |path: &[&str], text: &str| Source {
        file: PathBuf::from("x.rs"),
        path: path.iter().map(|p| p.to_string()).collect(),
        code: code(text),
    };
    let modules: BTreeSet<String> = ["catalog", "search", "serve", "roles", "cli", "collection", "error", "import"]
        .into_iter()
        .map(String::from)
        .collect();
    let exports: BTreeMap<String, String> = [("Collection".to_string(), "collection".to_string())].into();
    let used = |s: &Source| used_modules(s, &exports, &modules).into_iter().collect::<Vec<_>>();
    let text = "use crate::{catalog::Catalog, search::{a, b}, serve};\n// crate::cli in a comment\n\
                let s = \"http://x crate::roles\"; let c = '\"'; use crate\n  ::import;\n\
                /* crate::cli */ let r = r#\"crate::cli \" \"#; fn f<'a>(x: &'a crate::Collection) {}";
    assert_eq!(used(&source(&["verify"], text)), ["catalog", "collection", "import", "search", "serve"]);
    // super:: from a nested file stays in its module; from a top-level file it is the root.
    assert_eq!(used(&source(&["collection", "builder"], "use super::store; use super::super::serve::X;")), ["serve"]);
    assert_eq!(used(&source(&["catalog"], "use super::roles::Y;")), ["roles"]);
    assert_eq!(used(&source(&["catalog"], "use crate::*;")), ["?*"]);
    // Inside an inline module, super:: is the file's own module first.
    let tests = "mod tests { use super::*; use super::super::cli::X; } use super::roles::Y;";
    assert_eq!(used(&source(&["catalog"], tests)), ["cli", "roles"]);
    assert_eq!(used(&source(&["catalog"], "mod x; use super::roles::Y;")), ["roles"]);
    assert_eq!(root_exports().get("Error").map(String::as_str), Some("error"));
}
