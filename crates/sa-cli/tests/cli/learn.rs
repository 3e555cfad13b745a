//! `sa learn`, `sa prime --workspace`, `sa status`: an incremental `make` through `sa record`,
//! learning from each build's log, priming the next from the workspace alone.

use super::*;

const MAKEFILE: &str =
    "all: a.o b.o c.o\n%.o: %.c lib.h\n\t$(CC) -c $< -o $@\nc.o: c.c\n\t$(CC) -c c.c -o c.o\n";

fn make(ws: &Path, store: &str, log: &Path) {
    let cc =
        format!("{} --cas {store} record --log {} -- gcc", env!("CARGO_BIN_EXE_sa"), log.display());
    let out = Process::new("make")
        .arg(format!("CC={cc}"))
        .current_dir(ws)
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE")
        .output()
        .unwrap();
    assert!(out.status.success(), "make: {}", String::from_utf8_lossy(&out.stderr));
}

fn learn(store: &str, ws: &Path, log: &Path) -> Value {
    let out = sa_ok(&[
        "--cas",
        store,
        "--json",
        "learn",
        "--log",
        log.to_str().unwrap(),
        "--workspace",
        ws.to_str().unwrap(),
    ]);
    lines(&out).pop().unwrap()
}

/// Waits a second past the last write, so make sees an edit as newer than the objects.
fn edit(path: &Path, text: &str) {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(path, text).unwrap();
}

#[test]
fn incremental_builds_accumulate_and_prime_from_the_workspace_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("Makefile"), MAKEFILE).unwrap();
    std::fs::write(ws.join("lib.h"), "int lib(void);\n").unwrap();
    for (name, body) in [("a", "return lib();"), ("b", "return 2;")] {
        std::fs::write(
            ws.join(format!("{name}.c")),
            format!("#include \"lib.h\"\nint {name}(void) {{ {body} }}\n"),
        )
        .unwrap();
    }
    std::fs::write(ws.join("c.c"), "int c(void) { return 3; }\n").unwrap();
    let log = |n: u32| dir.path().join(format!("build{n}.log"));

    // Build 1, clean: three compiles learned.
    make(&ws, &store, &log(1));
    let build = learn(&store, &ws, &log(1));
    assert_eq!(
        (build["actions"].as_u64(), build["learned"].as_u64(), build["identities"].as_u64()),
        (Some(3), Some(3), Some(3)),
        "{build}"
    );

    // Build 2, incremental: a.c changed, make re-runs a.o only; the others are kept.
    edit(&ws.join("a.c"), "#include \"lib.h\"\nint a(void) { return lib() + 1; }\n");
    make(&ws, &store, &log(2));
    let build = learn(&store, &ws, &log(2));
    assert_eq!(
        (build["actions"].as_u64(), build["learned"].as_u64(), build["identities"].as_u64()),
        (Some(1), Some(1), Some(3)),
        "{build}"
    );

    // The header every compile but c's reads changes: priming from the workspace alone
    // executes a's and b's compiles.
    edit(&ws.join("lib.h"), "int lib(void);\nint lib2(void);\n");
    let out = sa_ok(&[
        "--cas",
        &store,
        "--json",
        "prime",
        "--local",
        "--workspace",
        ws.to_str().unwrap(),
    ]);
    let executed = prime_lines(&out).iter().filter(|l| l["status"] == "executed").count();
    assert_eq!(executed, 2, "{out}");
    let status = sa_ok(&["--cas", &store, "--json", "status", "--workspace", ws.to_str().unwrap()]);
    let status = lines(&status).pop().unwrap();
    assert_eq!(status["priming"]["predictions"]["executed"], 2, "{status}");

    // Build 3 finds both primed: two hits, both sa's.
    make(&ws, &store, &log(3));
    let build = learn(&store, &ws, &log(3));
    assert_eq!(
        (
            build["actions"].as_u64(),
            build["hits"].as_u64(),
            build["primed_hits"].as_u64(),
            build["identities"].as_u64()
        ),
        (Some(2), Some(2), Some(2), Some(3)),
        "{build}"
    );
    let human = sa_ok(&["--cas", &store, "status", "--workspace", ws.to_str().unwrap()]);
    assert!(human.contains("3 builds learned, 3 identities"), "{human}");
    assert!(
        human.contains("2 actions, 2 remote cache hits, 2 of them primed by sa, 2 learned"),
        "{human}"
    );
    assert!(human.contains("not primed since the last build"), "{human}");
}

#[test]
fn learn_and_prime_say_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let ws = dir.path().to_str().unwrap();
    // Nothing learned yet.
    let out = sa(&["--cas", &store, "prime", "--local", "--workspace", ws, "--name", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing learned for project \"nope\"") && err.contains("sa learn"),
        "{err}"
    );
    // A log line that is not the wrapper's names its line.
    let log = dir.path().join("bad.log");
    std::fs::write(&log, "not-a-digest miss\n").unwrap();
    let out = sa(&["--cas", &store, "learn", "--log", log.to_str().unwrap(), "--workspace", ws]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.log") && err.contains("line 1"), "{err}");
    // Graph mode and workspace mode do not mix.
    let out = sa(&["--cas", &store, "prime", "--local", "--workspace", ws, "--graph", "g.json"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_speculation_that_fails_is_reported_and_exits_0_unless_strict() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("Makefile"), MAKEFILE).unwrap();
    std::fs::write(ws.join("lib.h"), "int lib(void);\n").unwrap();
    for name in ["a", "b"] {
        std::fs::write(
            ws.join(format!("{name}.c")),
            "#include \"lib.h\"\nint f(void) { return lib(); }\n",
        )
        .unwrap();
    }
    std::fs::write(ws.join("c.c"), "int c(void) { return 3; }\n").unwrap();
    let log = dir.path().join("build.log");
    make(&ws, &store, &log);
    learn(&store, &ws, &log);
    let prime =
        ["--cas", &store, "--json", "prime", "--local", "--workspace", ws.to_str().unwrap()];
    // An edit the preprocessor rejects: the dependency scans fail, so the compiles' inputs
    // cannot be known and nothing is run (exit 0: priming was done, there was nothing to run).
    std::fs::write(ws.join("lib.h"), "#error half-way through an edit\n").unwrap();
    let out = sa(&prime);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let unpredictable: Vec<Value> =
        prime_lines(&stdout).into_iter().filter(|l| l["status"] == "unpredictable").collect();
    assert_eq!(unpredictable.len(), 2, "{stdout}");
    assert!(
        unpredictable.iter().all(|l| {
            let detail = l["detail"].as_str().unwrap();
            detail.contains("dependency scan") && detail.contains("half-way through an edit")
        }),
        "{stdout}"
    );
    // An edit the compiler rejects after preprocessing: the predictions run and fail.
    std::fs::write(ws.join("lib.h"), "int lib(void) half-way through an edit\n").unwrap();
    let out = sa(&prime);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<Value> =
        prime_lines(&stdout).into_iter().filter(|l| l["status"] == "failed").collect();
    assert_eq!(failed.len(), 2, "{stdout}");
    assert!(failed.iter().all(|l| l["detail"].as_str().unwrap().contains("half")), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 speculative actions ran and failed"));
    let out = sa(&[&prime[..], &["--strict"]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(--strict)"));
}
