//! The module graph of `host/src` has no import loop: neither between top-level modules
//! (`governance` → `context` → `state`, never back) nor between sibling submodules
//! (`ledger/chain.rs` ↔ `ledger/schema.rs`). A facade (`mod.rs`) re-exporting its children is
//! not a loop. See ARCHITECTURE.md for the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path (`["governance", "gate"]`), empty for the crate root.
type Module = Vec<String>;

fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            modules(&path, &inner, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut module = prefix.to_vec();
            if !matches!(stem, "mod" | "lib" | "main") {
                module.push(stem.to_string());
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            out.insert(module, code_only(&text));
        }
    }
}

/// The text without comments and without the unit-test module at the end of a file.
fn code_only(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i]);
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `a::b::c` path that follows `marker` in `code`.
fn paths_after<'a>(code: &'a str, marker: &'a str) -> impl Iterator<Item = Vec<String>> + 'a {
    code.match_indices(marker).filter_map(move |(i, _)| {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &code[i + marker.len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<String> = path
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        (!segments.is_empty()).then_some(segments)
    })
}

/// The modules `module` refers to, resolved to the deepest module that exists.
fn references(module: &Module, code: &str, all: &BTreeMap<Module, String>) -> BTreeSet<Module> {
    let mut found = BTreeSet::new();
    let mut add = |mut path: Module| {
        while !path.is_empty() && !all.contains_key(&path) {
            path.pop();
        }
        if !path.is_empty() && path != *module {
            found.insert(path);
        }
    };
    for path in paths_after(code, "crate::") {
        add(path);
    }
    let parent: Module = module
        .iter()
        .take(module.len().saturating_sub(1))
        .cloned()
        .collect();
    for path in paths_after(code, "super::") {
        let mut full = parent.clone();
        full.extend(path);
        add(full);
    }
    found
}

/// Strongly connected components of more than one node.
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(node.to_string()) {
            return;
        }
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, seen, order);
        }
        order.push(node.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for node in graph.keys() {
        visit(node, graph, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph {
        for to in tos {
            reversed.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut components = Vec::new();
    for node in order.iter().rev() {
        let mut component = Vec::new();
        visit(node, &reversed, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            components.push(component);
        }
    }
    components
}

#[test]
fn host_src_has_no_import_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = BTreeMap::new();
    modules(&src, &[], &mut all);
    assert!(
        all.len() > 40,
        "found only {} modules in {src:?}",
        all.len()
    );
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut siblings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &all {
        let Some(first) = module.first() else {
            continue;
        };
        for target in references(module, code, &all) {
            if target[0] != *first {
                top.entry(first.clone())
                    .or_default()
                    .insert(target[0].clone());
            } else if module.len() >= 2
                && target.len() >= 2
                && module[..module.len() - 1] == target[..target.len() - 1]
            {
                siblings
                    .entry(module.join("/"))
                    .or_default()
                    .insert(target.join("/"));
            }
        }
    }
    assert!(
        top.get("governance").is_some_and(|t| t.contains("context")),
        "the scan no longer sees `use crate::` paths: {top:?}"
    );
    assert_eq!(loops(&top), Vec::<Vec<String>>::new(), "top-level modules");
    assert_eq!(
        loops(&siblings),
        Vec::<Vec<String>>::new(),
        "sibling submodules"
    );
}

#[test]
fn the_loop_finder_finds_loops() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(loops(&graph), vec![vec!["a", "b", "c"]]);
}
