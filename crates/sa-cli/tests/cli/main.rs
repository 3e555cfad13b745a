//! `sa` end to end: every command on a local store and against a real buildbox-casd.

// Test helpers unwrap: a failure is a panic naming the line, which is what a test wants.
#![allow(clippy::unwrap_used)]

mod abuse;
mod bazel;
mod buildgrid;
mod demo;
mod errors;
mod faults;
mod hostile;
mod launchers;
mod learn;
mod local;
mod proxy;
mod record;
mod remote;
mod serve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};

use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{ActionCache, Digest, DigestFunction, LocalCas, LocalCasConfig, Store, write_message};
use sa_proto::reapi::{Action, ActionResult, Command, OutputFile, command::EnvironmentVariable};
use serde_json::Value;

/// Runs `sa` with `args`; returns the output.
pub fn sa(args: &[&str]) -> Output {
    Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(args)
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE")
        .output()
        .unwrap()
}

/// Runs `sa`, expects success, returns stdout.
pub fn sa_ok(args: &[&str]) -> String {
    let out = sa(args);
    assert!(out.status.success(), "sa {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Parses JSON lines.
pub fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `sa prime --json` output: the per-action lines, the closing summary line checked and left
/// out.
pub fn prime_lines(text: &str) -> Vec<Value> {
    let mut all = lines(text);
    let summary = all.pop().expect("a summary line");
    assert!(summary["summary"]["actions"].as_u64() == Some(all.len() as u64), "{summary}");
    all
}

pub type Files = BTreeMap<String, String>;

/// Writes files under `dir` (plus the symlinks a `/bin/sh` sandbox needs when `runnable`).
pub fn write_tree(dir: &Path, files: &Files, runnable: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    if runnable {
        for (link, target) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")] {
            std::os::unix::fs::symlink(target, dir.join(link)).unwrap();
        }
    }
}

/// A two-build project: an app whose two compile steps read its sources and a library's
/// installed headers; build 2 edits one app source, one of two identical app headers, and the
/// library header (the library is not rebuilt yet).
#[derive(Debug)]
pub struct Project {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub graph1: PathBuf,
    pub graph2: PathBuf,
    /// The compile actions each build really runs, by source.
    pub actions1: BTreeMap<String, Digest>,
    pub actions2: BTreeMap<String, Digest>,
}

pub fn app_sources(build: u32) -> Files {
    app_sources_with(build, 0)
}

/// The app's sources with `extra` more compile units `src/gen{i}.c`.
pub fn app_sources_with(build: u32, extra: usize) -> Files {
    let mut f = Files::new();
    for i in 0..extra {
        f.insert(format!("src/gen{i}.c"), format!("int gen{i} = {i};\n"));
    }
    f.insert("src/main.c".into(), "int main(void) { return 0; }\n".into());
    f.insert(
        "src/util.c".into(),
        if build == 1 { "int util = 1;\n" } else { "int util = 2;\n" }.into(),
    );
    f.insert("include/a.h".into(), "// stub\n".into());
    f.insert(
        "include/b.h".into(),
        if build == 1 { "// stub\n" } else { "// stub changed\n" }.into(),
    );
    f
}

pub fn lib_sources(build: u32) -> Files {
    let mut f = Files::new();
    f.insert("include/lib.h".into(), format!("int lib(void); /* v{build} */\n"));
    f.insert("lib.c".into(), "int lib(void) { return 1; }\n".into());
    f
}

fn lib_artifact(build: u32) -> Files {
    let mut f = Files::new();
    f.insert("sysroot/include/lib.h".into(), lib_sources(build)["include/lib.h"].clone());
    f
}

/// The compile step for `source`, as recc would build it: the source, the app headers and the
/// library's installed headers in the input root.
fn compile(
    store: &LocalCas,
    dir: &Path,
    build: u32,
    source: &str,
    extra: usize,
    pause: &str,
) -> Digest {
    let mut inputs = Files::new();
    let app = app_sources_with(build, extra);
    inputs.insert(source.into(), app[source].clone());
    for (p, c) in &app {
        if p.starts_with("include/") {
            inputs.insert(p.clone(), c.clone());
        }
    }
    inputs.extend(lib_artifact(build));
    let stage = dir.join(format!("stage{build}-{}", source.replace('/', "_")));
    write_tree(&stage, &inputs, true);
    let root = merkle::ingest(store, &stage, &TreeLimits::default()).unwrap();
    let object = source.replace("src/", "").replace(".c", ".o");
    let command = Command {
        arguments: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("{pause}cat {source} include/*.h sysroot/include/lib.h > {object}"),
        ],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: vec![object],
        ..Default::default()
    };
    let command = write_message(store, &command).unwrap();
    let action = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    write_message(store, &action).unwrap()
}

fn ingest(store: &LocalCas, dir: &Path, files: &Files) -> Digest {
    write_tree(dir, files, false);
    merkle::ingest(store, dir, &TreeLimits::default()).unwrap()
}

impl Project {
    #[allow(clippy::new_without_default)] // a fixture with side effects, not a value
    pub fn new() -> Project {
        Project::with_extra_sources(0)
    }

    /// The project with `extra` more compile steps in the app (every one reads the edited
    /// headers, so each is adapted in build 2).
    pub fn with_extra_sources(extra: usize) -> Project {
        Project::build(extra, 0.0)
    }

    /// [`Project::with_extra_sources`] whose every compile step first sleeps `seconds`.
    pub fn build(extra: usize, seconds: f64) -> Project {
        let pause = if seconds > 0.0 { format!("sleep {seconds}; ") } else { String::new() };
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let store = LocalCas::open(&store_dir, LocalCasConfig::default()).unwrap();
        let mut actions1 = BTreeMap::new();
        let mut actions2 = BTreeMap::new();
        let sources = ["src/main.c".to_owned(), "src/util.c".to_owned()]
            .into_iter()
            .chain((0..extra).map(|i| format!("src/gen{i}.c")));
        for source in sources {
            actions1.insert(source.clone(), compile(&store, dir.path(), 1, &source, extra, &pause));
            actions2.insert(source.clone(), compile(&store, dir.path(), 2, &source, extra, &pause));
        }
        // Build 1 recorded its subactions under a parent action.
        let parent = DigestFunction::Sha256.hash_bytes(b"app build action");
        let record = ActionResult {
            subactions: actions1.values().map(|d| d.to_proto()).collect(),
            output_files: vec![OutputFile {
                path: "x".into(),
                digest: Some(DigestFunction::Sha256.empty_digest().to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        store.update_action_result(&parent, &record).unwrap();
        let app1 = ingest(&store, &dir.path().join("app1"), &app_sources_with(1, extra));
        let app2 = ingest(&store, &dir.path().join("app2"), &app_sources_with(2, extra));
        let lib1 = ingest(&store, &dir.path().join("lib1"), &lib_sources(1));
        let lib2 = ingest(&store, &dir.path().join("lib2"), &lib_sources(2));
        let libart1 = ingest(&store, &dir.path().join("libart1"), &lib_artifact(1));
        let graph1 = serde_json::json!({
            "digest_function": "sha256",
            "elements": [
                {"name": "lib.bst", "cache_key": "lib-1", "sources": lib1.to_string(), "artifact": libart1.to_string()},
                {"name": "app.bst", "cache_key": "app-1", "sources": app1.to_string(), "build_deps": ["lib.bst"],
                 "subactions": actions1.values().map(|d| d.to_string()).collect::<Vec<_>>()},
            ]
        });
        // Build 2: lib's sources changed and it is not built yet.
        let graph2 = serde_json::json!({
            "elements": [
                {"name": "lib.bst", "cache_key": "lib-2", "sources": lib2.to_string()},
                {"name": "app.bst", "cache_key": "app-2", "sources": app2.to_string(), "build_deps": ["lib.bst"]},
            ]
        });
        let graph1_path = dir.path().join("graph1.json");
        let graph2_path = dir.path().join("graph2.json");
        std::fs::write(&graph1_path, graph1.to_string()).unwrap();
        std::fs::write(&graph2_path, graph2.to_string()).unwrap();
        let _ = parent;
        Project {
            store: store_dir,
            graph1: graph1_path,
            graph2: graph2_path,
            actions1,
            actions2,
            dir,
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn store(&self) -> String {
        self.store.display().to_string()
    }

    /// `sa STORE_ARGS generate --graph graph1.json --output graph1.out.json --json`: the JSON
    /// lines and the output graph's path.
    pub fn generate(&self, store_args: &[&str]) -> (Vec<Value>, String) {
        let out1 = self.path("graph1.out.json");
        let graph1 = self.graph1.display().to_string();
        let args = [store_args, &["generate", "--graph", &graph1, "--output", &out1, "--json"]];
        (lines(&sa_ok(&args.concat())), out1)
    }

    /// `sa STORE_ARGS instantiate --graph graph2.json --previous PREVIOUS EXTRA…`.
    pub fn instantiate(&self, store_args: &[&str], previous: &str, extra: &[&str]) -> Output {
        let graph2 = self.graph2.display().to_string();
        let args =
            [store_args, &["instantiate", "--graph", &graph2, "--previous", previous], extra];
        sa(&args.concat())
    }

    /// Opens the project's local store.
    pub fn cas(&self) -> LocalCas {
        LocalCas::open(&self.store, LocalCasConfig::default()).unwrap()
    }
}

pub fn parent_action() -> Digest {
    DigestFunction::Sha256.hash_bytes(b"app build action")
}

pub fn copy_store(from: &LocalCas, to: &dyn Store) {
    // Every blob and action result of a local store, into another store.
    let mut blobs = Vec::new();
    for prefix in std::fs::read_dir(from.root().join("cas/objects")).unwrap() {
        for entry in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            blobs.push(sa_cas::Blob::new(DigestFunction::Sha256, data));
        }
    }
    merkle::write_in_batches(to, &blobs).unwrap();
}
