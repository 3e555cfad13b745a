//! `cargo xtask layering`: the crates' dependency DAG is a fact this check enforces, from
//! `cargo metadata`. Each crate lists the workspace crates it may depend on directly; a
//! dependency on anything those reach is allowed too (sa-prime may name sa-generator, which
//! sa-instantiator stands on), nothing else is (buck2 keeps its banned pairs in a test the same
//! way). ARCHITECTURE.md draws the same DAG.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Every workspace library crate and the crates it stands on directly. A new crate finds its
/// place here; an edge not drawn here (sa-generator -> sa-exec, sa-proxy -> sa-generator) is
/// a violation even where it would not make a cycle.
pub const DAG: &[(&str, &[&str])] = &[
    ("sa-proto", &[]),
    ("sa-compile", &[]),
    ("sa-cas", &["sa-proto"]),
    ("sa-proxy", &["sa-proto", "sa-cas"]),
    ("sa-exec", &["sa-proto", "sa-cas"]),
    ("sa-generator", &["sa-proto", "sa-cas"]),
    ("sa-instantiator", &["sa-generator"]),
    ("sa-learn", &["sa-generator"]),
    ("sa-prime", &["sa-exec", "sa-instantiator", "sa-compile"]),
    ("sa-cli", &["sa-proxy", "sa-prime", "sa-learn", "sa-compile"]),
];

/// Crates outside the DAG: they may depend on any crate, and no crate may depend on them.
pub const TOOLS: &[&str] = &["sa-benches", "xtask"];

/// The crates `name` may depend on: what it stands on, and all those reach.
pub fn allowed(name: &str) -> Option<BTreeSet<&'static str>> {
    let direct = |crate_name: &str| DAG.iter().find(|(n, _)| *n == crate_name).map(|(_, d)| *d);
    let mut reached = BTreeSet::new();
    let mut todo: Vec<&'static str> = direct(name)?.to_vec();
    while let Some(next) = todo.pop() {
        if reached.insert(next) {
            todo.extend(direct(next).unwrap_or_default());
        }
    }
    Some(reached)
}

/// Fails naming every upward or unknown dependency between workspace crates.
pub fn check(root: &Path) -> Result<()> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("decoding cargo metadata output")?;
    let packages = metadata["packages"].as_array().context("cargo metadata has no packages")?;
    let edges: Vec<(String, Vec<String>)> = packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().unwrap_or_default().to_owned();
            let deps = package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|dep| dep["path"].is_string())
                // A crate's dev-dependency on itself only turns on features for its own tests
                // (sa-cas's `testing`): not an edge of the layering.
                .filter(|dep| !(dep["name"] == package["name"] && dep["kind"] == "dev"))
                .filter_map(|dep| dep["name"].as_str().map(str::to_owned))
                .collect();
            (name, deps)
        })
        .collect();
    dag_is_acyclic()?;
    let mut violations = violations(&edges);
    violations.extend(
        cli_only_in_libraries(root)?
            .into_iter()
            .map(|line| format!("a library does what only the CLI may: {line}")),
    );
    if violations.is_empty() {
        Ok(())
    } else {
        bail!("layering violated:\n  {}", violations.join("\n  "))
    }
}

/// The layering violations among `(crate, workspace dependencies)` pairs.
pub fn violations(edges: &[(String, Vec<String>)]) -> Vec<String> {
    let placed = |name: &str| DAG.iter().any(|(n, _)| *n == name);
    let mut found = Vec::new();
    for (name, deps) in edges {
        let is_tool = TOOLS.contains(&name.as_str());
        let allowed = allowed(name);
        if allowed.is_none() && !is_tool {
            found.push(format!("{name} is not placed in the layering (xtask/src/layering.rs)"));
            continue;
        }
        for dep in deps {
            if TOOLS.contains(&dep.as_str()) {
                found.push(format!("{name} depends on the tool crate {dep}"));
            } else if !placed(dep) {
                found.push(format!("{name} depends on {dep}, which is not placed"));
            } else if let Some(allowed) = &allowed
                && !allowed.contains(dep.as_str())
            {
                found.push(format!("{name} depends on {dep}, which is not below it in the DAG"));
            }
        }
    }
    found
}

/// What a library crate never does (the CLI's alone): print, exit the process, or parse
/// arguments. The test harness (`sa-cas`'s `testing.rs`, a feature for tests) may print.
const CLI_ONLY: &[&str] =
    &["println!(", "eprintln!(", "print!(", "eprint!(", "process::exit", "clap::"];

/// Every line of a library crate's `src/` that does what only the CLI may, as
/// `path:line: text`.
pub fn cli_only_in_libraries(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for (name, _) in DAG.iter().filter(|(name, _)| *name != "sa-cli") {
        let src = root.join("crates").join(name).join("src");
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
            {
                let path = entry?.path();
                if path.is_dir() {
                    if !path.ends_with("generated") {
                        stack.push(path);
                    }
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("testing.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path)?;
                for (number, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or_default();
                    if CLI_ONLY.iter().any(|token| code.contains(token)) {
                        found.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
                    }
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Every edge of the DAG closes nothing into a cycle (each crate's reach excludes itself).
pub fn dag_is_acyclic() -> Result<()> {
    for (name, _) in DAG {
        if allowed(name).is_some_and(|reach| reach.contains(name)) {
            bail!("the layering DAG has a cycle through {name}");
        }
    }
    Ok(())
}
