//! A hostile store against each command: DAG bombs, poisoned cache entries (local and served
//! by a real casd), crafted blobs for `inspect`, and signals in the middle of an action.

use prost::Message;
use sa_cas::merkle::DirectoryBuilder;
use sa_cas::testing::Casd;
use sa_cas::{Cas, GrpcCas, GrpcConfig};
use sa_proto::buildstream::v2::SpeculativeActions;
use sa_proto::buildstream::v2::speculative_actions::overlay::OverlayType;
use sa_proto::buildstream::v2::speculative_actions::{Overlay, SpeculativeAction};
use sa_proto::reapi::{Directory, FileNode, OutputSymlink, Tree};

use super::*;

const SHA: DigestFunction = DigestFunction::Sha256;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn put_dir(store: &LocalCas, dir: &Directory) -> Digest {
    store.write_blob(dir.encode_to_vec().into()).unwrap()
}

/// 41 Directory blobs naming 2^40 paths, each ending in `leaf`.
fn dag_bomb(store: &LocalCas) -> (Digest, Digest) {
    dag_of_depth(store, 40)
}

/// `depth + 1` Directory blobs naming 2^depth paths, each ending in `leaf`.
fn dag_of_depth(store: &LocalCas, depth: usize) -> (Digest, Digest) {
    let leaf = store.write_blob("leaf\n".into()).unwrap();
    let mut level =
        put_dir(store, &DirectoryBuilder::new().file("leaf", &leaf, false).build(SHA).unwrap());
    for _ in 0..depth {
        level = put_dir(
            store,
            &DirectoryBuilder::new()
                .directory("a", &level)
                .directory("b", &level)
                .build(SHA)
                .unwrap(),
        );
    }
    (level, leaf)
}

/// Graphs for `instantiate` and `prime`: build 1 recorded one action whose input root is
/// `root`, with a SOURCE overlay on `leaf`; build 2 changed the source. Returns (next,
/// previous) graph paths.
fn instantiate_graphs(
    store: &LocalCas,
    dir: &Path,
    bomb: &Digest,
    leaf: &Digest,
) -> (String, String) {
    let command =
        write_message(store, &Command { arguments: vec!["true".into()], ..Default::default() })
            .unwrap();
    let action = write_message(
        store,
        &Action {
            command_digest: Some(command.to_proto()),
            input_root_digest: Some(bomb.to_proto()),
            ..Default::default()
        },
    )
    .unwrap();
    let spec = SpeculativeActions {
        actions: vec![SpeculativeAction {
            base_action_digest: Some(action.to_proto()),
            overlays: vec![Overlay {
                r#type: OverlayType::Source as i32,
                source_element: String::new(),
                source_path: "leaf".into(),
                target_digest: Some(leaf.to_proto()),
                ..Default::default()
            }],
        }],
        artifact_overlays: vec![],
    };
    let spec = write_message(store, &spec).unwrap();
    let new_leaf = store.write_blob("leaf 2\n".into()).unwrap();
    let sources =
        put_dir(store, &DirectoryBuilder::new().file("leaf", &new_leaf, false).build(SHA).unwrap());
    let previous = dir.join("prev.json");
    std::fs::write(&previous, format!(r#"{{"elements": [{{"name": "a.bst", "cache_key": "k1", "speculative_actions": "{spec}"}}]}}"#)).unwrap();
    let next = dir.join("next.json");
    std::fs::write(
        &next,
        format!(
            r#"{{"elements": [{{"name": "a.bst", "cache_key": "k2", "sources": "{sources}"}}]}}"#
        ),
    )
    .unwrap();
    (next.display().to_string(), previous.display().to_string())
}

#[test]
fn a_dag_bomb_is_a_clear_error_from_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = LocalCas::open(&store_dir, LocalCasConfig::default()).unwrap();
    let (bomb, leaf) = dag_bomb(&store);
    let s = store_dir.display().to_string();
    let limit = "expanded-entries limit of 100000000";

    let out = sa(&["--cas", &s, "inspect", &bomb.to_string(), "--as", "tree"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(limit), "{}", stderr(&out));

    // generate: the bomb as the element's sources and artifact.
    let graph = dir.path().join("g.json");
    std::fs::write(
        &graph,
        format!(
            r#"{{"elements": [{{"name": "a.bst", "sources": "{bomb}", "artifact": "{bomb}"}}]}}"#
        ),
    )
    .unwrap();
    let out = sa(&["--cas", &s, "generate", "--graph", &graph.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(limit), "{}", stderr(&out));
    assert!(stderr(&out).contains("element \"a.bst\""), "{}", stderr(&out));

    // instantiate and prime --local: an action whose input root is the bomb, with one SOURCE
    // overlay on `leaf`, whose source changed.
    let (next, previous) = instantiate_graphs(&store, dir.path(), &bomb, &leaf);
    for extra in [&["instantiate"][..], &["prime", "--local"][..]] {
        let args =
            [&["--cas", &s][..], extra, &["--graph", &next, "--previous", &previous][..]].concat();
        let out = sa(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(limit), "{extra:?}: {}", stderr(&out));
    }
    // The limit is a flag: lowered, a small tree hits it too.
    let one_file =
        put_dir(&store, &DirectoryBuilder::new().file("leaf", &leaf, false).build(SHA).unwrap());
    let out = sa(&[
        "--cas",
        &s,
        "--max-expanded-entries",
        "1",
        "inspect",
        &one_file.to_string(),
        "--as",
        "tree",
    ]);
    assert_eq!(out.status.code(), Some(0), "one entry is within a limit of one: {}", stderr(&out));
    let out = sa(&[
        "--cas",
        &s,
        "--max-expanded-entries",
        "1",
        "inspect",
        &bomb.to_string(),
        "--as",
        "tree",
    ]);
    assert!(stderr(&out).contains("expanded-entries limit of 1"), "{}", stderr(&out));
}

/// `sa ARGS` under GNU time: its output, and its peak resident memory in KiB.
fn sa_measured(args: &[&str]) -> (Output, u64) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("time");
    let out = Process::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&report)
        .arg(env!("CARGO_BIN_EXE_sa"))
        .args(args)
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE")
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&report).unwrap();
    let peak = text.lines().filter_map(|l| l.trim().parse().ok()).next_back().unwrap();
    (out, peak)
}

#[test]
fn a_dag_within_the_entry_limits_that_would_exhaust_memory_stops_at_the_budget() {
    // 24 blobs naming 8.4M paths: far under the expanded-entries limit (100M), and several
    // GB of memory to walk as the commands walk it.
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = LocalCas::open(&store_dir, LocalCasConfig::default()).unwrap();
    let (bomb, leaf) = dag_of_depth(&store, 23);
    let s = store_dir.display().to_string();
    let graph = dir.path().join("g.json");
    std::fs::write(
        &graph,
        format!(
            r#"{{"elements": [{{"name": "a.bst", "sources": "{bomb}", "artifact": "{bomb}"}}]}}"#
        ),
    )
    .unwrap();
    let graph = graph.display().to_string();
    // Well under 1 GiB: the same stop, sooner (the walks grow at a few hundred MB a second).
    let budget = (384u64 << 20).to_string();
    let (bomb, leaf) = (bomb.to_string(), leaf.to_string());
    let (bomb_digest, leaf) =
        (Digest::parse(SHA, &bomb).unwrap(), Digest::parse(SHA, &leaf).unwrap());
    let (next, previous) = instantiate_graphs(&store, dir.path(), &bomb_digest, &leaf);
    let instantiate = ["instantiate", "--graph", &next, "--previous", &previous];
    let prime = ["prime", "--local", "--graph", &next, "--previous", &previous];
    for command in [
        &["inspect", &bomb, "--as", "tree"][..],
        &["generate", "--graph", &graph][..],
        &instantiate[..],
        &prime[..],
    ] {
        let args = [&["--cas", &s, "--max-memory", &budget][..], command].concat();
        let (out, peak_kib) = sa_measured(&args);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {text}");
        assert!(text.contains("over the memory budget of 384 MiB"), "{command:?}: {text}");
        // The watchdog samples every 20 ms: the budget plus what a burst adds meanwhile.
        assert!(peak_kib < (384 + 128) << 10, "{command:?}: peak {peak_kib} KiB");
    }
}

/// A project with `main.c`, a Makefile, and a directory outside it that must stay untouched.
struct Victim {
    _dir: tempfile::TempDir,
    src: PathBuf,
    outside: PathBuf,
    store: String,
    log: PathBuf,
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("victim")).unwrap();
        std::fs::write(outside.join("victim/keep"), "keep").unwrap();
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("main.c"), "int main(void) { return 0; }\n").unwrap();
        std::fs::write(src.join("Makefile"), "all:\n").unwrap();
        let store = dir.path().join("store").display().to_string();
        let log = dir.path().join("log");
        Victim { _dir: dir, src, outside, store, log }
    }

    fn record(&self, store_args: &[&str]) -> Output {
        let log = self.log.display().to_string();
        let args =
            [store_args, &["record", "--log", &log, "--", "gcc", "-c", "main.c", "-o", "main.o"]]
                .concat();
        Process::new(env!("CARGO_BIN_EXE_sa"))
            .args(args)
            .current_dir(&self.src)
            .env_remove("SA_CAS")
            .env_remove("SA_REMOTE")
            .output()
            .unwrap()
    }

    fn last_action(&self) -> Digest {
        let text = std::fs::read_to_string(&self.log).unwrap();
        Digest::parse(SHA, text.lines().last().unwrap().split(' ').next().unwrap()).unwrap()
    }

    fn assert_untouched(&self) {
        assert_eq!(std::fs::read_to_string(self.src.join("Makefile")).unwrap(), "all:\n");
        assert_eq!(std::fs::read_to_string(self.outside.join("victim/keep")).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(self.src.join("main.o")).unwrap();
        assert!(meta.is_file(), "main.o is a regular file");
        let mut names: Vec<String> = std::fs::read_dir(&self.src)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["Makefile", "main.c", "main.o"], "nothing else is written");
    }

    /// The poisoned results tried against `record`.
    fn poisons(&self, pwned: Digest) -> Vec<ActionResult> {
        let outside = self.outside.display().to_string();
        let file = |path: &str| OutputFile {
            path: path.into(),
            digest: Some(pwned.to_proto()),
            ..Default::default()
        };
        let link = |path: &str, target: &str| OutputSymlink {
            path: path.into(),
            target: target.into(),
            ..Default::default()
        };
        vec![
            ActionResult {
                output_files: vec![file("main.o"), file("Makefile")],
                ..Default::default()
            },
            ActionResult {
                output_symlinks: vec![link("lnk", &outside)],
                output_files: vec![file("lnk/victim/keep")],
                ..Default::default()
            },
            ActionResult {
                output_symlinks: vec![link("main.o", "/etc/passwd")],
                ..Default::default()
            },
        ]
    }
}

#[test]
fn record_against_a_poisoned_local_cache_writes_only_declared_outputs() {
    let v = Victim::new();
    let out = v.record(&["--cas", &v.store]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let object = std::fs::read(v.src.join("main.o")).unwrap();
    let action = v.last_action();
    let store = LocalCas::open(&v.store, LocalCasConfig::default()).unwrap();
    let good = store.get_action_result(&action).unwrap().unwrap();
    let pwned = store.write_blob("pwned\n".into()).unwrap();
    for poison in v.poisons(pwned) {
        store.update_action_result(&action, &poison).unwrap();
        let out = v.record(&["--cas", &v.store]);
        // The entry is unusable: a miss, so the compile runs and replaces it.
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("the cached result is unusable, compiling instead"),
            "{}",
            stderr(&out)
        );
        v.assert_untouched();
        assert_eq!(std::fs::read(v.src.join("main.o")).unwrap(), object);
        assert_eq!(
            store.get_action_result(&action).unwrap().unwrap().output_files,
            good.output_files
        );
    }
    // A corrupt entry is a miss too.
    std::fs::write(store.action_result_path(&action), [0xff, 0xff]).unwrap();
    let out = v.record(&["--cas", &v.store]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("corrupt action cache entry"), "{}", stderr(&out));
    v.assert_untouched();
}

#[test]
fn record_against_a_poisoned_casd_treats_the_entry_as_a_miss_and_writes_nothing_else() {
    let v = Victim::new();
    // The Action, as `record` builds it, from a local run; then the same blobs on casd.
    let out = v.record(&["--cas", &v.store]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let action = v.last_action();
    let casd_dir = tempfile::tempdir().unwrap();
    let casd = Casd::start_executing_host_tools(&casd_dir.path().join("store"), 1);
    let grpc = GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap();
    copy_store(&LocalCas::open(&v.store, LocalCasConfig::default()).unwrap(), &grpc);
    let pwned = grpc.write_blob("pwned\n".into()).unwrap();
    let remote = casd.endpoint();
    for poison in v.poisons(pwned) {
        grpc.update_action_result(&action, &poison).unwrap();
        let out = v.record(&["--remote", &remote]);
        // As with a local store: the poisoned entry is a warned miss, the compile runs on the
        // service without its cache, and only the declared output is written.
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("the cached result is unusable, compiling instead"), "{text}");
        assert!(text.contains("does not declare") || text.contains("is absolute"), "{text}");
        v.assert_untouched();
        let object = std::fs::read(v.src.join("main.o")).unwrap();
        assert!(object.starts_with(b"\x7fELF"), "main.o is the compiler's object");
    }
}

#[test]
fn inspect_detects_a_kind_only_if_the_blob_validates_as_it() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = LocalCas::open(&store_dir, LocalCasConfig::default()).unwrap();
    let s = store_dir.display().to_string();
    let f = store.write_blob("x".into()).unwrap();
    let node = |name: &str| FileNode {
        name: name.into(),
        digest: Some(f.to_proto()),
        ..Default::default()
    };
    let invalid = [
        Directory { files: vec![node("a/b")], ..Default::default() },
        Directory { files: vec![node("..")], ..Default::default() },
        Directory { files: vec![node("")], ..Default::default() },
        Directory { files: vec![node("b"), node("a")], ..Default::default() },
        Directory { files: vec![node("a"), node("a")], ..Default::default() },
        Directory {
            files: vec![FileNode { name: "a".into(), ..Default::default() }],
            ..Default::default()
        },
    ];
    for directory in &invalid {
        let digest = put_dir(&store, directory);
        let out = sa(&["--cas", &s, "inspect", &digest.to_string()]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{directory:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr(&out).contains("is not any known message")
                || stderr(&out).contains("does not decode"),
            "{}",
            stderr(&out)
        );
    }
    // A REAPI Tree: detected, and decoded with symlinks.
    let root = DirectoryBuilder::new().file("f", &f, true).symlink("l", "f").build(SHA).unwrap();
    let tree = write_message(&store, &Tree { root: Some(root), children: vec![] }).unwrap();
    for args in
        [&["inspect", &tree.to_string()][..], &["inspect", &tree.to_string(), "--as", "tree"][..]]
    {
        let out: Value =
            serde_json::from_str(&sa_ok(&[&["--cas", &s, "--json"][..], args].concat())).unwrap();
        assert_eq!(out["kind"], "tree", "{out}");
        assert_eq!(out["value"]["root"]["symlinks"][0]["target"], "f", "{out}");
        assert_eq!(out["value"]["root"]["files"][0]["is_executable"], true, "{out}");
    }
    // An ActionResult's symlinks are shown (what an auditor of a poisoned entry needs).
    let action = SHA.hash_bytes(b"some action");
    let result = ActionResult {
        output_symlinks: vec![OutputSymlink {
            path: "main.o".into(),
            target: "/etc/passwd".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    store.update_action_result(&action, &result).unwrap();
    let out: Value = serde_json::from_str(&sa_ok(&[
        "--cas",
        &s,
        "--json",
        "inspect",
        &action.to_string(),
        "--as",
        "action-result",
    ]))
    .unwrap();
    assert_eq!(out["value"]["output_symlinks"][0]["target"], "/etc/passwd", "{out}");
    // A Directory listed as a tree shows its symlinks and directories too.
    let sub = put_dir(&store, &DirectoryBuilder::new().symlink("up", "..").build(SHA).unwrap());
    let top = put_dir(
        &store,
        &DirectoryBuilder::new().directory("d", &sub).file("f", &f, false).build(SHA).unwrap(),
    );
    let out: Value = serde_json::from_str(&sa_ok(&[
        "--cas",
        &s,
        "--json",
        "inspect",
        &top.to_string(),
        "--as",
        "tree",
    ]))
    .unwrap();
    assert_eq!(out["value"]["symlinks"][0]["path"], "d/up", "{out}");
    assert_eq!(out["value"]["directories"][0]["path"], "d", "{out}");
    // Unknown fields of a blob are shown as such.
    let mut command =
        Command { arguments: vec!["cc".into()], ..Default::default() }.encode_to_vec();
    prost::encoding::encode_key(77, prost::encoding::WireType::Varint, &mut command);
    prost::encoding::encode_varint(1, &mut command);
    let command = store.write_blob(command.into()).unwrap();
    let out: Value = serde_json::from_str(&sa_ok(&[
        "--cas",
        &s,
        "--json",
        "inspect",
        &command.to_string(),
        "--as",
        "command",
    ]))
    .unwrap();
    assert_eq!(out["value"]["unknown_fields"][0]["number"], 77, "{out}");
}

#[test]
fn a_signal_ends_the_running_action_and_removes_its_scratch_directory() {
    use std::os::unix::fs::PermissionsExt;
    // Each signal three times: the command failing because its action was ended raced the
    // handler's exit (exit 1 instead of 143 in 3 of 10 runs).
    let signals =
        [("TERM", 143, "sleep 31.25"), ("INT", 130, "sleep 31.375"), ("HUP", 129, "sleep 31.5")];
    for (signal, code, marker) in signals.iter().cycle().take(9).copied() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(src.join("a.c"), "int a;\n").unwrap();
        // A "compiler" that lists its inputs for -M and otherwise takes its time.
        let script = format!(
            "#!/bin/sh\ncase \" $* \" in *\" -M \"*) echo 'sa-record-deps: a.c cc.sh';; *) {marker};; esac\n"
        );
        std::fs::write(src.join("cc.sh"), script).unwrap();
        std::fs::set_permissions(src.join("cc.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let store = dir.path().join("store").display().to_string();
        let child = Process::new(env!("CARGO_BIN_EXE_sa"))
            .args(["--cas", &store, "record", "--", "./cc.sh", "-c", "a.c", "-o", "a.o"])
            .current_dir(&src)
            .env("TMPDIR", &tmp)
            .env("PATH", "/usr/bin:/bin")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut waited = 0;
        while sa_cas::testing::processes_with(marker) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            waited += 1;
            assert!(waited < 400, "the action never started");
        }
        assert!(std::fs::read_dir(&tmp).unwrap().next().is_some(), "a scratch directory exists");
        let status = Process::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{signal}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("ended 1 running actions, removed 1 scratch directories"),
            "{}",
            stderr(&out)
        );
        let mut left = sa_cas::testing::processes_with(marker);
        for _ in 0..50 {
            if left == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            left = sa_cas::testing::processes_with(marker);
        }
        assert_eq!(left, 0, "{signal}: the action's processes are gone");
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "{signal}: no scratch directory is left"
        );
    }
}
