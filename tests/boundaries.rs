//! Module boundaries: `config` is a leaf (it imports no other Outpost module), and the
//! `crate::` imports between top-level modules form no cycle. Read from the sources, the way
//! `grep -r 'crate::' src/` shows the module picture.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its files name with `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "main" | "lib") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = out.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    out
}

#[test]
fn config_is_a_leaf() {
    let graph = graph();
    assert_eq!(
        graph
            .get("config")
            .map(|d| d.iter().cloned().collect::<Vec<_>>()),
        Some(vec![]),
        "config imports other modules"
    );
}

#[test]
fn no_cycle_between_top_level_modules() {
    let graph = graph();
    // Depth-first search with the path kept, so a failure names the cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| n == node) {
            panic!("import cycle: {} -> {node}", path[at..].join(" -> "));
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
    for (from, to) in [
        ("webhook", "app"),
        ("webhook", "stack"),
        ("webhook", "proxy"),
    ] {
        assert!(!graph[from].contains(to), "{from} imports {to}");
    }
}

#[test]
fn values_config_shares_with_other_modules_agree() {
    assert_eq!(
        outpost::config::forms::DEFAULT_KEY_PREFIX,
        outpost::stack::shared::DEFAULT_KEY_PREFIX
    );
}
