//! Bazel, end to end: Bazel 4.2.3 builds `examples/bazel` on BuildGrid through `sa proxy`;
//! `sa` learns from build 1's recording, primes build 2's changed compile and link steps with no
//! local store, and build 2 takes them from the cache. `scripts/demo-bazel.sh` runs this test
//! and shows what it prints.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sa_cas::testing::BuildGrid;

use super::buildgrid::{INSTANCE, Workers};
use super::proxy::ProxyProcess;
use super::*;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bazel")
}

/// The `bazel` executable, provisioned by `scripts/provision-bazel.sh` on first use.
fn bazel() -> PathBuf {
    static BAZEL: OnceLock<PathBuf> = OnceLock::new();
    BAZEL
        .get_or_init(|| {
            let lines = sa_cas::testing::provision("provision-bazel.sh");
            PathBuf::from(lines.last().expect("the script prints bazel's path"))
        })
        .clone()
}

/// One Bazel build of `ws` on `endpoint` with a fresh output base under `root` (no local
/// action cache), remote execution only.
fn bazel_build(root: &Path, name: &str, ws: &Path, endpoint: &str) {
    let overrides = example().join("overrides");
    let out = Process::new(bazel())
        .arg("--nohome_rc")
        .arg(format!("--output_user_root={}", root.join("user").display()))
        .arg(format!("--output_base={}", root.join(name).display()))
        .arg("--max_idle_secs=5")
        .args(["build", "--symlink_prefix=/", "--spawn_strategy=remote"])
        .args(["--noremote_local_fallback", "--incompatible_strict_action_env"])
        .args(["--remote_accept_cached", "--jobs=4"])
        .arg(format!("--remote_executor={endpoint}"))
        .arg(format!("--remote_instance_name={INSTANCE}"))
        .arg(format!("--override_repository=rules_cc={}", overrides.join("rules_cc").display()))
        .arg(format!("--override_repository=rules_java={}", overrides.join("rules_java").display()))
        .arg("//:app")
        .current_dir(ws)
        .output()
        .unwrap();
    assert!(out.status.success(), "bazel {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The one recording file a build left.
fn recording(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one invocation recorded: {files:?}");
    files[0].clone()
}

/// One recorded request: the action, whether it was a cache hit, Bazel's mnemonic.
type Asked = (String, bool, String);

/// What one loop saw: build 2's requests, the actions `sa` executed, build 1's actions.
type LoopRun = (Vec<Asked>, BTreeSet<String>, BTreeSet<String>);

/// What a build asked for: every recorded action (Execute or GetActionResult) and whether it
/// was a cache hit.
fn asked(recording: &Path) -> Vec<Asked> {
    sa_proxy::read_recording(recording, 1 << 24)
        .unwrap()
        .lines
        .iter()
        .map(|l| {
            let cached = l["cached"] == true;
            let mnemonic = l["action_mnemonic"].as_str().unwrap_or_default().to_owned();
            (l["action"].as_str().unwrap().to_owned(), cached, mnemonic)
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Build 1 and build 2 of the example on a fresh BuildGrid; with `prime`, `sa` learns from
/// build 1 and primes between them. Returns build 2's requests and, with `prime`, the actions
/// `sa` executed, with build 1's actions.
fn run_loop(dir: &Path, prime: bool) -> LoopRun {
    let grid = BuildGrid::start(&dir.join("grid"), INSTANCE, 30, 128);
    let _workers = Workers::start(&grid, dir, 2);
    let upstream = grid.endpoint();
    let ws = dir.join("ws");
    copy_dir(&example().join("workspace"), &ws);
    let remote = ["--remote", upstream.as_str(), "--instance-name", INSTANCE];

    let rec1 = dir.join("rec1");
    {
        let proxy = ProxyProcess::start(&upstream, &rec1);
        bazel_build(dir, "build1", &ws, &proxy.endpoint);
    }
    let rec1 = recording(&rec1);
    let build1: BTreeSet<String> = asked(&rec1).into_iter().map(|(a, _, _)| a).collect();
    let mut primed = BTreeSet::new();
    let g1 = dir.join("g1.json").display().to_string();
    let out1 = dir.join("g1.out.json").display().to_string();
    if prime {
        let args = ["graph", "from-recording", "--recording", rec1.to_str().unwrap()];
        let more = ["--sources", ws.to_str().unwrap(), "--name", "app", "--output", &g1];
        sa_ok(&[&remote[..], &args, &more].concat());
        sa_ok(&[&remote[..], &["generate", "--graph", &g1, "--output", &out1]].concat());
    }
    // The edit: a library header, an application source, one of two identical headers.
    copy_dir(&example().join("edit"), &ws);
    if prime {
        let sources2 = sa_ok(&[&remote[..], &["ingest", ws.to_str().unwrap()]].concat());
        let g2 = dir.join("g2.json");
        std::fs::write(
            &g2,
            format!(r#"{{"elements": [{{"name": "app", "sources": "{}"}}]}}"#, sources2.trim()),
        )
        .unwrap();
        let g2 = g2.display().to_string();
        let out = sa_ok(
            &[&remote[..], &["--json", "prime", "--graph", &g2, "--previous", &out1]].concat(),
        );
        for line in prime_lines(&out) {
            assert!(line["status"] == "executed" || line["status"] == "cached", "{line}");
            if line["status"] == "executed" {
                primed.insert(line["action"].as_str().unwrap().to_owned());
            }
        }
    }
    let rec2 = dir.join("rec2");
    {
        let proxy = ProxyProcess::start(&upstream, &rec2);
        bazel_build(dir, "build2", &ws, &proxy.endpoint);
    }
    (asked(&recording(&rec2)), primed, build1)
}

#[test]
fn bazel_build_2_finds_every_changed_compile_and_link_primed() {
    let dir = tempfile::tempdir().unwrap();
    let (build2, primed, build1) = run_loop(&dir.path().join("primed"), true);
    let actions: BTreeSet<&str> = build2.iter().map(|(a, _, _)| a.as_str()).collect();
    let hits: BTreeSet<&str> =
        build2.iter().filter(|(_, cached, _)| *cached).map(|(a, _, _)| a.as_str()).collect();
    let primed_hits = hits.iter().filter(|a| primed.contains(**a)).count();
    println!(
        "bazel: build 2 ran {} actions, {} remote cache hits, {primed_hits} of them primed by sa",
        actions.len(),
        hits.len()
    );
    // Every action sa executed is one Bazel asked for, byte for byte (same digest).
    for action in &primed {
        assert!(
            actions.contains(action.as_str()),
            "sa primed {action}, which Bazel never asked for"
        );
    }
    // Every compile and link step of build 2 that build 1 did not run was a hit sa primed.
    let mut changed = 0;
    for (action, cached, mnemonic) in &build2 {
        if build1.contains(action)
            || !["CppCompile", "CppLink", "Genrule"].contains(&mnemonic.as_str())
        {
            continue;
        }
        changed += 1;
        assert!(*cached && primed.contains(action), "{mnemonic} {action} was not primed");
    }
    assert!(changed >= 10, "the edit changes most steps: {changed}");
    assert_eq!(primed_hits, primed.len());

    // The same two builds with no priming, on a fresh BuildGrid.
    let (plain, _, _) = run_loop(&dir.path().join("plain"), false);
    let plain_actions: BTreeSet<&str> = plain.iter().map(|(a, _, _)| a.as_str()).collect();
    let plain_hits = plain.iter().filter(|(_, cached, _)| *cached).count();
    println!(
        "bazel: build 2 without priming ran {} actions, {plain_hits} remote cache hits",
        plain_actions.len()
    );
    assert_eq!(plain_actions, actions, "the same actions with or without priming");
    assert!(plain_hits < hits.len(), "priming added hits");
}
