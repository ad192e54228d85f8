//! Dependencies between pullgate's top-level modules point one way.
//!
//! The check reads `src/` as text: every `crate::NAME` outside comments and `#[cfg(test)]`
//! modules is an edge from the file's top-level module to `NAME`. An edge that lies on a cycle
//! fails the test, unless it is on `KNOWN_CYCLE_EDGES`: the debt the house refactor (issue 13)
//! pays off. That list may only shrink: an entry that is no longer on a cycle fails the test
//! too, so it is removed in the change that removes the cycle.
//!
//! No crate does this for a single-crate project (cargo-modules draws the graph but has no
//! check mode), and forty lines of text scanning keep it readable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Edges on a cycle today, `from -> to`.
const KNOWN_CYCLE_EDGES: &[(&str, &str)] = &[];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The text of a source file without comments and without its `#[cfg(test)]` items (tests may
/// reach anywhere).
fn code_of(text: &str) -> String {
    let code = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    };
    code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn crate_paths(code: &str) -> impl Iterator<Item = &str> {
    code.match_indices("crate::").filter_map(|(at, m)| {
        let rest = &code[at + m.len()..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

fn graph(src: &Path) -> Graph {
    let mut g = Graph::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
            if top == "main" || top == "lib" {
                continue;
            }
            let code = code_of(&std::fs::read_to_string(&path).unwrap());
            for to in crate_paths(&code) {
                if to != top {
                    g.entry(top.clone()).or_default().insert(to.to_string());
                }
            }
        }
    }
    g
}

fn reaches(g: &Graph, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(m) = todo.pop() {
        if m == to {
            return true;
        }
        if seen.insert(m.clone()) {
            todo.extend(g.get(&m).into_iter().flatten().cloned());
        }
    }
    false
}

#[test]
fn module_dependencies_point_one_way() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for (from, to) in &g {
        eprintln!("{from} -> {}", to.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    let on_cycle: BTreeSet<(String, String)> =
        g.iter().flat_map(|(from, tos)| tos.iter().filter(|to| reaches(&g, to, from)).map(|to| (from.clone(), to.clone()))).collect();
    let known: BTreeSet<(String, String)> = KNOWN_CYCLE_EDGES.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let new: Vec<_> = on_cycle.difference(&known).collect();
    let paid: Vec<_> = known.difference(&on_cycle).collect();
    assert!(new.is_empty(), "new dependency cycles (a module imports one that imports it back): {new:?}");
    assert!(paid.is_empty(), "no longer on a cycle; remove from KNOWN_CYCLE_EDGES: {paid:?}");
}
