//! sa-generator integration tests.

// Test helpers unwrap: a failure is a panic naming the line, which is what a test wants.
#![allow(clippy::unwrap_used)]

mod cases;
mod properties;

use std::collections::BTreeMap;

use prost::Message;
use sa_cas::merkle::{self, DirectoryBuilder};
use sa_cas::{Digest, Store, write_message};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, Generated, generate};
use sa_proto::buildstream::v2::SpeculativeActions;
use sa_proto::buildstream::v2::speculative_actions::overlay::OverlayType;
use sa_proto::reapi::{Action, ActionResult, OutputFile};

/// Stores a tree given as `(path, content)` pairs; returns its root digest.
pub fn tree(cas: &dyn Store, files: &[(&str, &str)]) -> Digest {
    #[derive(Default)]
    struct Node<'a> {
        files: BTreeMap<&'a str, &'a str>,
        dirs: BTreeMap<&'a str, Node<'a>>,
    }
    fn store(cas: &dyn Store, node: &Node<'_>) -> Digest {
        let f = cas.digest_function();
        let mut builder = DirectoryBuilder::new();
        for (name, content) in &node.files {
            let digest = cas.write_blob(content.to_string().into()).unwrap();
            builder = builder.file(name, &digest, false);
        }
        for (name, child) in &node.dirs {
            builder = builder.directory(name, &store(cas, child));
        }
        let blob = merkle::directory_blob(f, &builder.build(f).unwrap());
        cas.write_blobs(std::slice::from_ref(&blob)).unwrap();
        *blob.digest()
    }
    let mut root = Node::default();
    for (path, content) in files {
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().unwrap();
        let mut node = &mut root;
        for part in parts {
            node = node.dirs.entry(part).or_default();
        }
        node.files.insert(name, content);
    }
    store(cas, &root)
}

/// Stores an Action whose input root holds `files`; returns its digest.
pub fn action(cas: &dyn Store, label: &str, files: &[(&str, &str)]) -> Digest {
    let command = cas.write_blob(format!("command {label}").into()).unwrap();
    let action = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(tree(cas, files).to_proto()),
        ..Default::default()
    };
    write_message(cas, &action).unwrap()
}

/// Records that `action` produced `outputs` (path, content).
pub fn result(cas: &dyn Store, action: &Digest, outputs: &[(&str, &str)]) {
    let output_files = outputs
        .iter()
        .map(|(path, content)| {
            let digest = cas.write_blob(content.to_string().into()).unwrap();
            OutputFile {
                path: path.to_string(),
                digest: Some(digest.to_proto()),
                ..Default::default()
            }
        })
        .collect();
    cas.update_action_result(action, &ActionResult { output_files, ..Default::default() }).unwrap();
}

pub fn element(name: &str, sources: Option<Digest>, artifact: Option<Digest>) -> ElementTrees {
    ElementTrees { name: name.into(), sources, artifact }
}

pub fn run(cas: &dyn Store, input: &GenerateInput) -> Generated {
    generate(cas, input, &GenerateConfig::default()).unwrap()
}

/// Renders a SpeculativeActions blob as lines: per action, its label (from `labels`) and one
/// line per overlay `TYPE element:path <- content-of-target`; then `artifact` lines.
pub fn render(cas: &dyn Store, generated: &Generated, labels: &[(&str, Digest)]) -> Vec<String> {
    let encoded = cas.read_blob(&generated.digest).unwrap();
    let message = SpeculativeActions::decode(encoded.clone()).unwrap();
    // The manual encoding is prost's encoding.
    assert_eq!(message.encode_to_vec(), encoded.to_vec());
    let f = cas.digest_function();
    let label = |proto: &sa_proto::reapi::Digest| {
        let digest = Digest::from_proto(f, proto).unwrap();
        labels
            .iter()
            .find(|(_, d)| *d == digest)
            .map(|(l, _)| l.to_string())
            .unwrap_or(digest.to_string())
    };
    let overlay_line = |o: &sa_proto::buildstream::v2::speculative_actions::Overlay| {
        let target = Digest::from_proto(f, o.target_digest.as_ref().unwrap()).unwrap();
        let content = String::from_utf8(cas.read_blob(&target).unwrap().to_vec()).unwrap();
        let kind = match o.r#type() {
            OverlayType::Source => "SOURCE",
            OverlayType::Action => "ACTION",
            OverlayType::Artifact => "ARTIFACT",
        };
        let producer = o
            .source_action_digest
            .as_ref()
            .map(|d| format!(" of {}", label(d)))
            .unwrap_or_default();
        format!("  {kind} {}:{}{producer} <- {content:?}", o.source_element, o.source_path)
    };
    let mut lines = Vec::new();
    for action in &message.actions {
        lines.push(format!("action {}", label(action.base_action_digest.as_ref().unwrap())));
        lines.extend(action.overlays.iter().map(overlay_line));
    }
    if !message.artifact_overlays.is_empty() {
        lines.push("artifact".into());
        lines.extend(message.artifact_overlays.iter().map(overlay_line));
    }
    lines
}
