//! `sa-floor --cas DIR --graph G.json`: the floor of `sa generate` and `sa instantiate` on a
//! graph: read every subaction's Action and every distinct Directory of their input trees and
//! of the elements' trees once, in batches, and decode them. Prints what it read as JSON.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use prost::Message;
use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{Digest, DigestFunction, LocalCas, LocalCasConfig};
use sa_generator::graph::Graph;
use sa_proto::reapi::Action;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag1, cas, flag2, graph] = args.as_slice() else {
        bail!("usage: sa-floor --cas DIR --graph G.json");
    };
    if flag1 != "--cas" || flag2 != "--graph" {
        bail!("usage: sa-floor --cas DIR --graph G.json");
    }
    let store = LocalCas::open(PathBuf::from(cas), LocalCasConfig::default())?;
    let f = DigestFunction::Sha256;
    let graph = Graph::parse(&std::fs::read_to_string(graph)?, f)?;
    let mut actions = Vec::new();
    let mut roots = Vec::new();
    for element in &graph.elements {
        roots.extend(element.sources.iter().chain(&element.artifact));
        actions.extend(&element.subactions);
    }
    let blobs = merkle::read_in_batches(&store, &actions)?;
    for (digest, blob) in actions.iter().zip(blobs) {
        let action = Action::decode(blob).with_context(|| format!("Action {digest}"))?;
        roots.push(Digest::from_proto_field(f, action.input_root_digest.as_ref(), "input_root")?);
    }
    let forest = merkle::fetch_forest(&store, &roots, &TreeLimits::default())?;
    let bytes: u64 = forest.directories().keys().map(Digest::size).sum();
    println!(
        "{}",
        serde_json::json!({"actions": actions.len(), "directories": forest.len(), "directory_bytes": bytes})
    );
    Ok(())
}
