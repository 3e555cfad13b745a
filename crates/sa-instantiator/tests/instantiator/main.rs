//! sa-instantiator integration tests.

// Test helpers unwrap: a failure is a panic naming the line, which is what a test wants.
#![allow(clippy::unwrap_used)]

mod hostile;
mod index;
mod properties;
mod two_builds;

use std::collections::BTreeMap;
use std::path::Path;

use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{Digest, Store, write_message};
use sa_proto::reapi::{Action, ActionResult, OutputFile};

/// Files by path.
pub type Files = BTreeMap<String, String>;

pub fn files(pairs: &[(&str, &str)]) -> Files {
    pairs.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect()
}

/// Writes `files` under `dir` on disk and ingests the directory.
pub fn ingest(cas: &dyn Store, dir: &Path, files: &Files) -> Digest {
    std::fs::create_dir_all(dir).unwrap();
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    merkle::ingest(cas, dir, &TreeLimits::default()).unwrap()
}

/// The Action recc would build: a command blob and the input root `root`.
pub fn action(cas: &dyn Store, command: &str, root: Digest) -> Digest {
    let command = cas.write_blob(command.to_owned().into()).unwrap();
    let action = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    write_message(cas, &action).unwrap()
}

/// "Executes" an action deterministically: its output is named by `output` and its content
/// derives from the action digest, as a compiler's object derives from its inputs.
pub fn execute(cas: &dyn Store, action: &Digest, output: &str) -> String {
    let content = format!("object of {action}");
    let digest = cas.write_blob(content.clone().into()).unwrap();
    let file =
        OutputFile { path: output.into(), digest: Some(digest.to_proto()), ..Default::default() };
    cas.update_action_result(
        action,
        &ActionResult { output_files: vec![file], ..Default::default() },
    )
    .unwrap();
    content
}
