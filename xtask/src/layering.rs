//! `cargo xtask layering`: the dependency direction proto <- cas <- generator <- instantiator
//! <- cli is a fact this check enforces, from `cargo metadata`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Workspace library crates in layering order; a crate may depend only on crates before it.
/// A new crate takes its place in this line: sa-proxy (the recording proxy) sits right above
/// sa-cas, sa-exec (execution) above it, sa-prime (the priming loop) above the instantiator.
pub const LAYERS: &[&str] = &[
    "sa-proto",
    "sa-cas",
    "sa-proxy",
    "sa-exec",
    "sa-generator",
    "sa-instantiator",
    "sa-prime",
    "sa-cli",
];

/// Crates outside the line: they may depend on any layer, and no layer may depend on them.
pub const TOOLS: &[&str] = &["sa-benches", "xtask"];

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
    let violations = violations(&edges);
    if violations.is_empty() {
        Ok(())
    } else {
        bail!("layering violated:\n  {}", violations.join("\n  "))
    }
}

/// The layering violations among `(crate, workspace dependencies)` pairs.
pub fn violations(edges: &[(String, Vec<String>)]) -> Vec<String> {
    let rank = |name: &str| LAYERS.iter().position(|layer| *layer == name);
    let mut found = Vec::new();
    for (name, deps) in edges {
        let is_tool = TOOLS.contains(&name.as_str());
        let Some(own) = rank(name).or(if is_tool { Some(usize::MAX) } else { None }) else {
            found.push(format!("{name} is not placed in the layering (xtask/src/layering.rs)"));
            continue;
        };
        for dep in deps {
            match rank(dep) {
                Some(dep_rank) if dep_rank < own => {}
                Some(_) => found.push(format!("{name} depends on {dep}, which is not below it")),
                None if TOOLS.contains(&dep.as_str()) => {
                    found.push(format!("{name} depends on the tool crate {dep}"))
                }
                None => found.push(format!("{name} depends on {dep}, which is not placed")),
            }
        }
    }
    found
}
