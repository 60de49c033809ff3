//! `docs/architecture.md` tells the crate graph: this checks it against `cargo metadata`, and
//! that the graph keeps the layering the project relies on (no cycle; the runtime knows
//! neither the connectors nor the processes above it).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// `weir-x` (and the `weir` facade) → its weir dependencies, as `docs/architecture.md` lists them under "## Crates",
/// one line per crate: "- `weir-runtime` → core, state — ...".
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/architecture.md");
    let doc = std::fs::read_to_string(path).expect("docs/architecture.md exists");
    let section = doc.split("## Crates").nth(1).expect("a '## Crates' section").split("\n## ").next().unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("- `weir-") || l.starts_with("- `weir`")) {
        let name = line.trim_start_matches("- `").split('`').next().unwrap_or_default().to_string();
        let rest = line.split_once('`').and_then(|(_, r)| r.split_once('`')).map(|(_, r)| r).unwrap_or_default();
        let deps: BTreeSet<String> = match rest.trim_start().strip_prefix('→') {
            Some(list) => list
                .split('—')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(|d| if d.trim() == "weir" { "weir".to_string() } else { format!("weir-{}", d.trim()) })
                .filter(|d| d != "weir-")
                .collect(),
            None => BTreeSet::new(),
        };
        out.insert(name, deps);
    }
    out
}

/// The same graph from `cargo metadata` (normal dependencies only).
fn actual() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let mut out = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str())
            .filter(|d| d.starts_with("weir-") || *d == "weir")
            .map(str::to_string)
            .collect();
        out.insert(name, deps);
    }
    out
}

#[test]
fn the_documented_crate_graph_is_the_real_one() {
    assert_eq!(documented(), actual(), "docs/architecture.md's crate list differs from Cargo.toml");
}

#[test]
fn the_crate_graph_keeps_its_layers() {
    let graph = actual();
    let runtime = &graph["weir-runtime"];
    for forbidden in ["weir-connectors", "weir-jobmanager", "weir-taskmanager", "weir-cli"] {
        assert!(!runtime.contains(forbidden), "weir-runtime must not depend on {forbidden}");
    }
    assert!(!graph["weir-jobmanager"].contains("weir-runtime"), "the JobManager never links the runtime");
    // No cycle: repeatedly remove crates whose dependencies are all removed.
    let mut left = graph.clone();
    while !left.is_empty() {
        let leaves: Vec<String> =
            left.iter().filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d))).map(|(n, _)| n.clone()).collect();
        assert!(!leaves.is_empty(), "a dependency cycle among {:?}", left.keys().collect::<Vec<_>>());
        for l in leaves {
            left.remove(&l);
        }
    }
}
