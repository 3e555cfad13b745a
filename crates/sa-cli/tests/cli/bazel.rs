//! Bazel, end to end and incremental: Bazel 4.2.3 builds `examples/bazel` on BuildGrid through
//! `sa serve`, one output base and no clean, for three edits in a row (`examples/bazel/edits/`:
//! a library header every compile reads, an application source, a generated header's input and
//! the library header again). No `sa` command runs between builds: `sa serve` learns each build
//! and primes each edit by itself; the test only waits for its events. Then the same builds
//! with no `sa`, on a fresh BuildGrid, for the build times. `scripts/demo-bazel.sh` runs this
//! test and shows what it prints.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sa_cas::testing::BuildGrid;

use super::buildgrid::{INSTANCE, Workers};
use super::proxy::ProxyProcess;
use super::serve::ServeProcess;
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

/// One Bazel build of `ws` on `endpoint` with the output base `root/name` (kept between builds:
/// incremental), remote execution only.
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

/// The recording files in `dir` not in `seen` (then added to it).
fn new_recordings(dir: &Path, seen: &mut BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let files = std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect::<Vec<_>>());
    files.unwrap_or_default().into_iter().filter(|f| seen.insert(f.clone())).collect()
}

/// One recorded request: the action, whether it was a cache hit, Bazel's mnemonic.
type Asked = (String, bool, String);

/// One build of a run: what it asked for, how long it took, what `sa serve` said of it and
/// what it had primed for it.
struct Build {
    asked: Vec<Asked>,
    seconds: f64,
    event: Option<Value>,
    primed: BTreeSet<String>,
}

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

/// The example's builds on a fresh BuildGrid: build 1, then one per edit, incremental. With
/// `sa`, through `sa serve` (waiting, after each edit, for its priming of the edited sources);
/// without, through `sa proxy` (for the recording only).
fn run(dir: &Path, with_sa: bool) -> Vec<Build> {
    let grid = BuildGrid::start(&dir.join("grid"), INSTANCE, 30, 128);
    let _workers = Workers::start(&grid, dir, 2);
    let upstream = grid.endpoint();
    let ws = dir.join("ws");
    copy_dir(&example().join("workspace"), &ws);
    let rec = dir.join("rec");
    let global = ["--instance-name", INSTANCE];
    let serve_args = ["--record", rec.to_str().unwrap(), "--name", "bazel-demo"];
    let (serve, proxy) = if with_sa {
        (Some(ServeProcess::start(&global, &upstream, &ws, &serve_args)), None)
    } else {
        (None, Some(ProxyProcess::start(&upstream, &rec)))
    };
    let endpoint = serve
        .as_ref()
        .map_or_else(|| proxy.as_ref().unwrap().endpoint.clone(), |s| s.endpoint.clone());
    let edits: Vec<PathBuf> = (1..=3).map(|n| example().join(format!("edits/{n}"))).collect();
    let mut seen = BTreeSet::new();
    let mut builds = Vec::new();
    for step in 0..=edits.len() {
        let mut primed = BTreeSet::new();
        if step > 0 {
            copy_dir(&edits[step - 1], &ws);
        }
        if let (Some(serve), true) = (&serve, step > 0) {
            let remote = ["--remote", upstream.as_str(), "--instance-name", INSTANCE];
            let sources = sa_ok(&[&remote[..], &["ingest", ws.to_str().unwrap()]].concat());
            let event = serve.wait_for("primed", 300, |e| {
                e["sources"] == sources.trim() && e["cancelled"] == false
            });
            assert_eq!(
                (
                    event["failed"].as_u64(),
                    event["error"].as_u64(),
                    event["unpredictable"].as_u64()
                ),
                (Some(0), Some(0), Some(0)),
                "{event}"
            );
            primed.extend(
                event["primed"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()),
            );
        }
        let started = std::time::Instant::now();
        bazel_build(dir, "out", &ws, &endpoint);
        let seconds = started.elapsed().as_secs_f64();
        let (event, recording) = match &serve {
            Some(serve) => {
                let event = serve.wait_for("build", 120, |_| true);
                let file = rec.join(format!("{}.jsonl", event["invocation"].as_str().unwrap()));
                seen.insert(file.clone());
                (Some(event), file)
            }
            None => {
                // The proxy writes from a thread of its own: the file may come a moment later.
                let mut files = Vec::new();
                for _ in 0..50 {
                    files = new_recordings(&rec, &mut seen);
                    if !files.is_empty() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                assert_eq!(files.len(), 1, "one invocation per build: {files:?}");
                (None, files[0].clone())
            }
        };
        builds.push(Build { asked: asked(&recording), seconds, event, primed });
    }
    builds
}

/// A clean build (a fresh output base, a fresh BuildGrid) of `dir`'s workspace as it is,
/// through a proxy: the actions it asks for.
fn clean_build(dir: &Path) -> BTreeSet<String> {
    let grid = BuildGrid::start(&dir.join("grid-clean"), INSTANCE, 30, 128);
    let _workers = Workers::start(&grid, dir, 2);
    let rec = dir.join("rec-clean");
    let proxy = ProxyProcess::start(&grid.endpoint(), &rec);
    bazel_build(dir, "clean", &dir.join("ws"), &proxy.endpoint);
    drop(proxy);
    let mut seen = BTreeSet::new();
    let files = new_recordings(&rec, &mut seen);
    files.iter().flat_map(|f| asked(f)).map(|(a, _, _)| a).collect()
}

#[test]
fn bazel_incremental_builds_through_sa_serve_find_every_changed_compile_and_link_primed() {
    let dir = tempfile::tempdir().unwrap();
    let builds = run(&dir.path().join("primed"), true);
    let mut before: BTreeSet<String> = BTreeSet::new();
    for (number, build) in builds.iter().enumerate() {
        let event = build.event.as_ref().unwrap();
        println!(
            "bazel: build {} ({}): {} actions, {} remote cache hits, {} of them primed by sa, {} learned ({:.1} s)",
            number + 1,
            if number == 0 { "first" } else { "incremental" },
            event["actions"],
            event["hits"],
            event["primed_hits"],
            event["learned"],
            build.seconds
        );
        let actions: BTreeSet<&str> = build.asked.iter().map(|(a, _, _)| a.as_str()).collect();
        let unasked: BTreeSet<&String> =
            build.primed.iter().filter(|a| !actions.contains(a.as_str())).collect();
        if !unasked.is_empty() {
            println!("bazel:   {} primed and not asked for (checked below)", unasked.len());
        }
        // Every compile, link and genrule step no earlier build ran was a hit sa primed.
        let mut changed = 0;
        for (action, cached, mnemonic) in &build.asked {
            if number == 0
                || before.contains(action)
                || !["CppCompile", "CppLink", "Genrule"].contains(&mnemonic.as_str())
            {
                continue;
            }
            changed += 1;
            assert!(
                *cached && build.primed.contains(action),
                "build {}: {mnemonic} {action} was not primed",
                number + 1
            );
        }
        if number > 0 {
            assert!(changed >= 1, "build {}: the edit changes steps", number + 1);
            assert_eq!(event["primed_hits"].as_u64(), Some(changed as u64), "build {}", number + 1);
        }
        before.extend(actions.iter().map(|a| a.to_string()));
    }
    assert!(
        builds[1].asked.len() >= 10,
        "edit 1 (a header every compile reads) changes most steps"
    );
    // A primed action an incremental build did not ask for is still a true prediction: Bazel
    // re-runs a compile only when a file its last run read changed (input discovery), not when
    // a header it could read did. A clean build of the last sources asks for each of them.
    let last = builds.last().unwrap();
    let asked_last: BTreeSet<&str> = last.asked.iter().map(|(a, _, _)| a.as_str()).collect();
    let unasked: Vec<&String> =
        last.primed.iter().filter(|a| !asked_last.contains(a.as_str())).collect();
    if !unasked.is_empty() {
        let clean = clean_build(&dir.path().join("primed"));
        for action in unasked {
            assert!(clean.contains(action.as_str()), "sa primed {action}, which no build asks for");
        }
    }

    // The same builds with no sa, on a fresh BuildGrid.
    let plain = run(&dir.path().join("plain"), false);
    for (number, (primed, plain)) in builds.iter().zip(&plain).enumerate() {
        let a: BTreeSet<&str> = primed.asked.iter().map(|(a, _, _)| a.as_str()).collect();
        let b: BTreeSet<&str> = plain.asked.iter().map(|(a, _, _)| a.as_str()).collect();
        assert_eq!(a, b, "build {}: the same actions with or without sa", number + 1);
    }
    let total = |builds: &[Build]| builds[1..].iter().map(|b| b.seconds).sum::<f64>();
    let hits =
        |builds: &[Build]| builds[1..].iter().flat_map(|b| &b.asked).filter(|(_, c, _)| *c).count();
    println!(
        "bazel: the {} incremental builds took {:.1} s with sa serve ({} remote cache hits), {:.1} s without ({} hits; same edits, a fresh BuildGrid)",
        builds.len() - 1,
        total(&builds),
        hits(&builds),
        total(&plain),
        hits(&plain)
    );
    assert!(hits(&plain) < hits(&builds), "priming added hits");
}
