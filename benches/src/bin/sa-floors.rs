//! The honest floors of `sa generate` and `sa instantiate`, for the benchmark report:
//!
//! - `sa-floors read --cas DIR --graph G.json`: read and prost-decode each subaction's Action
//!   and each distinct Directory of the elements' trees and the input roots once, straight
//!   from the object files (`DIR/cas/objects/xx/…`), level by level in parallel: no store
//!   abstraction, no verification, no validation. What any tool walking these trees must do.
//! - `sa-floors output --bytes N --dir DIR`: hash (SHA-256) and write (temp file + rename) one
//!   blob of N bytes: what storing generate's output costs, encoding aside.
//! - `sa-floors speculative --cas DIR --graph OUT.json`: read, verify (SHA-256) and
//!   prost-decode every element's previous `SpeculativeActions`: what instantiate must read
//!   before it can do anything.
//!
//! Each prints what it did as one JSON line.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost::Message;
use rayon::prelude::*;
use sa_cas::{Digest, DigestFunction};
use sa_generator::graph::Graph;
use sa_proto::buildstream::v2::SpeculativeActions;
use sa_proto::reapi::{Action, Directory};

const F: DigestFunction = DigestFunction::Sha256;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Result<&str> {
        let at = args.iter().position(|a| a == flag).with_context(|| format!("missing {flag}"))?;
        args.get(at + 1).map(String::as_str).with_context(|| format!("{flag} needs a value"))
    };
    let line = match args.first().map(String::as_str) {
        Some("read") => read_floor(Path::new(value("--cas")?), Path::new(value("--graph")?))?,
        Some("output") => output_floor(value("--bytes")?.parse()?, Path::new(value("--dir")?))?,
        Some("speculative") => {
            speculative_floor(Path::new(value("--cas")?), Path::new(value("--graph")?))?
        }
        _ => bail!("usage: sa-floors read|output|speculative … (see the source)"),
    };
    println!("{line}");
    Ok(())
}

fn object(cas: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hash_hex();
    cas.join("cas/objects").join(&hex[..2]).join(&hex[2..])
}

fn read(cas: &Path, digest: &Digest) -> Result<Vec<u8>> {
    let path = object(cas, digest);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

fn digest_of(proto: Option<&sa_proto::reapi::Digest>) -> Result<Digest> {
    let proto = proto.context("a digest field is missing")?;
    Ok(Digest::from_proto(F, proto)?)
}

fn read_floor(cas: &Path, graph: &Path) -> Result<serde_json::Value> {
    let graph = Graph::parse(&std::fs::read_to_string(graph)?, F)?;
    let mut roots: Vec<Digest> = Vec::new();
    let mut actions: Vec<Digest> = Vec::new();
    for element in &graph.elements {
        roots.extend(element.sources.iter().chain(&element.artifact));
        actions.extend(&element.subactions);
    }
    let inputs: Vec<Digest> = actions
        .par_iter()
        .map(|digest| {
            let action = Action::decode(&read(cas, digest)?[..])?;
            digest_of(action.input_root_digest.as_ref())
        })
        .collect::<Result<_>>()?;
    roots.extend(inputs);
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut level: Vec<Digest> = roots.into_iter().filter(|d| seen.insert(*d)).collect();
    let (mut directories, mut bytes) = (0usize, 0u64);
    while !level.is_empty() {
        let children: Vec<Vec<Digest>> = level
            .par_iter()
            .map(|digest| {
                let directory = Directory::decode(&read(cas, digest)?[..])?;
                directory.directories.iter().map(|d| digest_of(d.digest.as_ref())).collect()
            })
            .collect::<Result<_>>()?;
        directories += level.len();
        bytes += level.iter().map(Digest::size).sum::<u64>();
        level = children.into_iter().flatten().filter(|d| seen.insert(*d)).collect();
    }
    Ok(
        serde_json::json!({"actions": actions.len(), "directories": directories, "directory_bytes": bytes}),
    )
}

fn output_floor(bytes: usize, dir: &Path) -> Result<serde_json::Value> {
    // A fill, not a pattern computed byte by byte: only hashing and writing are the floor.
    let data = vec![0x5au8; bytes];
    let digest = F.hash_bytes(&data);
    let target = dir.join(digest.hash_hex());
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(&data)?;
    temp.persist(&target)?;
    Ok(serde_json::json!({"bytes": bytes, "digest": digest.to_string()}))
}

fn speculative_floor(cas: &Path, graph: &Path) -> Result<serde_json::Value> {
    let graph = Graph::parse(&std::fs::read_to_string(graph)?, F)?;
    let blobs: Vec<Digest> = graph.elements.iter().filter_map(|e| e.speculative_actions).collect();
    let counts: Vec<(usize, usize)> = blobs
        .par_iter()
        .map(|digest| {
            let data = read(cas, digest)?;
            if F.hash_bytes(&data) != *digest {
                bail!("{} does not hash to its name", object(cas, digest).display());
            }
            let decoded = SpeculativeActions::decode(&data[..])?;
            let overlays = decoded.actions.iter().map(|a| a.overlays.len()).sum();
            Ok((decoded.actions.len(), overlays))
        })
        .collect::<Result<_>>()?;
    let (actions, overlays) = counts.iter().fold((0, 0), |(a, o), (x, y)| (a + x, o + y));
    let bytes: u64 = blobs.iter().map(Digest::size).sum();
    Ok(
        serde_json::json!({"blobs": blobs.len(), "bytes": bytes, "actions": actions, "overlays": overlays}),
    )
}
