//! Bad graphs, bad digests, bad usage: the documented messages and exit codes.

use super::*;

fn graph_error(graph: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.json");
    std::fs::write(&path, graph).unwrap();
    let out = sa(&[
        "--cas",
        &dir.path().join("s").display().to_string(),
        "generate",
        "--graph",
        &path.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let prefix = format!("error: graph {}: ", path.display());
    assert!(stderr.starts_with(&prefix), "{stderr}");
    stderr[prefix.len()..].trim_end().to_owned()
}

const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn bad_graphs_are_errors_naming_the_element_and_key() {
    assert_eq!(
        graph_error(r#"{"elements": [{"name": "a", "colour": "red"}]}"#),
        "element \"a\": unknown key \"colour\""
    );
    assert_eq!(
        graph_error(r#"{"elements": [{"name": "a"}, {"name": "a"}]}"#),
        "element \"a\" appears twice"
    );
    assert_eq!(
        graph_error(r#"{"elements": [{"name": "a", "build_deps": ["b"]}]}"#),
        "element \"a\": key \"build_deps\": unknown element \"b\""
    );
    assert_eq!(
        graph_error(
            r#"{"elements": [{"name": "a", "build_deps": ["b"]}, {"name": "b", "build_deps": ["a"]}]}"#
        ),
        "build_deps form a cycle among [\"a\", \"b\"]"
    );
    assert_eq!(
        graph_error(r#"{"elements": [{"name": "a", "sources": "xyz/1"}]}"#),
        "element \"a\": key \"sources\": invalid digest \"xyz/1\": hash has 3 characters, sha256 needs 64"
    );
    assert_eq!(
        graph_error(&format!(
            r#"{{"elements": [{{"name": "a", "subactions": ["{H}/0", "{H}"]}}]}}"#
        )),
        format!(
            "element \"a\": key \"subactions\": item 1: invalid digest \"{H}\": expected <hash>/<size>"
        )
    );
    assert_eq!(
        graph_error(r#"{"elements": [{"cache_key": "k"}]}"#),
        "element 0: missing key \"name\""
    );
    assert_eq!(
        graph_error(r#"{"digest_function": "blake3", "elements": []}"#),
        "the graph uses blake3, the store uses sha256 (see --digest-function)"
    );
    assert!(
        graph_error("{\"elements\": [\n  {\"name\": }\n]}")
            .starts_with("invalid JSON: expected value at line 2 column")
    );
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let out = sa(&["generate", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let out = sa(&["--digest-function", "md5", "ingest", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"md5\" is not sha256 or blake3"));
    let dir = tempfile::tempdir().unwrap();
    LocalCas::open(dir.path(), LocalCasConfig::default()).unwrap();
    let store = dir.path().display().to_string();
    let missing = format!("{H}0/5").replacen('0', "", 1);
    let out = sa(&["--cas", &store, "inspect", &missing]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("error: missing blob {missing}")
    );
    let out = sa(&["--cas", &store, "inspect", "nothex/5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid digest \"nothex/5\""));
    let out = sa(&["--cas", &store, "prime", "--graph", "g", "--previous", "p"]);
    assert_eq!(out.status.code(), Some(2), "options that cannot work together are usage errors");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "sa prime needs an execution service (--remote URL, --executor URL) or --local"
        )
    );
}

#[test]
fn options_that_cannot_work_together_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().display().to_string();
    let prime = ["--cas", &store, "prime", "--graph", "g", "--previous", "p"];
    for (extra, expected) in [
        (&["--local", "--jobs", "0"][..], "invalid value '0' for '--jobs <N>'"),
        (&["--local", "--no-wait"][..], "--no-wait needs an execution service"),
        (&["--local", "--executor", "grpc://127.0.0.1:1"][..], "cannot be used with"),
        (&["--local", "--remote", "grpc://127.0.0.1:1"][..], "--local or an execution service"),
        (
            &["--remote-header", "foo", "--remote", "grpc://127.0.0.1:1"][..],
            "--remote-header \"foo\": expected KEY=VALUE",
        ),
        (
            &["--tls-client-cert", "c.pem", "--remote", "grpcs://127.0.0.1:1"][..],
            "--tls-client-cert and --tls-client-key go together",
        ),
    ] {
        let out = sa(&[&prime[..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
}

#[test]
fn empty_store_variables_mean_unset() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    let store = dir.path().join("store");
    let out = Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(["--cas", store.to_str().unwrap(), "ingest", src.to_str().unwrap()])
        .env("SA_REMOTE", "")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(store.join("cas/objects").is_dir(), "the local store was used");
    // An empty SA_CAS beside --cas, and an empty SA_CAS alone (the default store then).
    let out = Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(["--cas", store.to_str().unwrap(), "ingest", src.to_str().unwrap()])
        .env("SA_CAS", "")
        .env_remove("SA_REMOTE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let home = dir.path().join("cache");
    let out = Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(["ingest", src.to_str().unwrap()])
        .env("SA_CAS", "")
        .env_remove("SA_REMOTE")
        .env("XDG_CACHE_HOME", &home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(home.join("speculative-actions/cas/objects").is_dir(), "the default store");
}

#[test]
fn unknown_element_and_missing_speculative_actions_are_errors() {
    let p = Project::new();
    let store = p.store();
    let graph1 = p.graph1.display().to_string();
    let out = sa(&["--cas", &store, "generate", "--graph", &graph1, "--element", "nope.bst"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown element \"nope.bst\" (--element)")
    );
    let out = p.instantiate(&["--cas", &store], &graph1, &["--element", "app.bst"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("element \"app.bst\" has no speculative_actions in")
    );
}

#[test]
fn limits_are_errors_naming_what_exceeded_them() {
    let p = Project::new();
    let store = p.store();
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();
    // Tree depth: a/b/c/d/file is four directories below the root.
    let deep = p.dir.path().join("deep");
    std::fs::create_dir_all(deep.join("a/b/c/d")).unwrap();
    std::fs::write(deep.join("a/b/c/d/file"), "x").unwrap();
    let deep = deep.display().to_string();
    let out = sa(&["--cas", &store, "--max-tree-depth", "3", "ingest", &deep]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("limit exceeded"), "{}", stderr(&out));
    // Blob size read into memory.
    let action = p.actions1["src/main.c"];
    let out = sa(&["--cas", &store, "--max-blob-bytes", "10", "inspect", &action.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "blob {action} has {} bytes, more than the 10 a blob read into memory may have",
            action.size()
        )),
        "{}",
        stderr(&out)
    );
    // Graph size.
    let graph = p.graph1.display().to_string();
    let out = sa(&["--cas", &store, "--max-graph-bytes", "10", "generate", "--graph", &graph]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("more than --max-graph-bytes 10"), "{}", stderr(&out));
    // Endless inputs and pipes are counted as they are read, not by their size on disk.
    for endless in ["/dev/zero", "/dev/urandom"] {
        let out =
            sa(&["--cas", &store, "--max-graph-bytes", "4096", "generate", "--graph", endless]);
        assert_eq!(out.status.code(), Some(1), "{endless}");
        let expected = format!("graph {endless}: more than --max-graph-bytes 4096");
        assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    }
    let piped = Process::new("bash")
        .arg("-c")
        .arg(format!(
            "exec {} --cas {store} --max-graph-bytes 10 instantiate --graph <(cat {graph}) \
             --previous {graph}",
            env!("CARGO_BIN_EXE_sa")
        ))
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(1));
    assert!(stderr(&piped).contains("more than --max-graph-bytes 10"), "{}", stderr(&piped));
    // Zero is not a limit: a usage error.
    for flag in ["--max-in-flight-rpcs", "--max-tree-depth", "--max-blob-bytes"] {
        let out = sa(&["--cas", &store, flag, "0", "ingest", &p.path("app1")]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
    }
    // Within the limits, the same commands work.
    sa_ok(&["--cas", &store, "--max-tree-depth", "4", "ingest", &deep]);
}

#[test]
fn no_silent_no_ops_and_messages_that_tell_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();
    // A graph with nothing to generate says so.
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"elements": []}"#).unwrap();
    let empty = empty.display().to_string();
    let out = sa(&["--cas", &store, "generate", "--graph", &empty]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("nothing to generate"), "{}", stderr(&out));
    // instantiate with a --previous graph that generate did not write is an error saying so.
    let plain = dir.path().join("plain.json");
    std::fs::write(&plain, r#"{"elements": [{"name": "a"}]}"#).unwrap();
    let plain = plain.display().to_string();
    let out = sa(&["--cas", &store, "instantiate", "--graph", &plain, "--previous", &plain]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nothing to instantiate"), "{}", stderr(&out));
    assert!(stderr(&out).contains("0 with speculative_actions"), "{}", stderr(&out));
    // Read-only commands do not create a store.
    let absent = dir.path().join("absent");
    let out = sa(&["--cas", absent.to_str().unwrap(), "inspect", &format!("{H}/0")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("no store at {}", absent.display())),
        "{}",
        stderr(&out)
    );
    assert!(!absent.exists());
    // A port out of range is refused as such, at once.
    let out = sa(&["--remote", "grpc://127.0.0.1:70000", "inspect", &format!("{H}/0")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: cannot connect to grpc://127.0.0.1:70000: port 70000 is out of range (1-65535)"
    );
    // An action with a result but no subactions says so.
    let cas = LocalCas::open(dir.path().join("store"), LocalCasConfig::default()).unwrap();
    let action = DigestFunction::Sha256.hash_bytes(b"no subactions");
    cas.update_action_result(&action, &ActionResult::default()).unwrap();
    let out = sa(&["--cas", &store, "subactions", &action.to_string()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("records no subactions"), "{}", stderr(&out));
}

#[test]
fn verbose_says_something_per_phase() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let store = dir.path().join("store").display().to_string();
    let out = sa(&["--cas", &store, "-v", "ingest", &dir.path().join("f").display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Ingest of a file (not a directory) fails, but the phase was entered and said.
    assert!(stderr.contains("phase ingest:"), "{stderr}");
}

#[test]
fn cas_and_remote_are_never_silently_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let src = dir.path().display().to_string();
    // Both named on the command line, for a command that uses one store: a usage error.
    let out = sa(&["--cas", &store, "--remote", "grpc://127.0.0.1:1", "ingest", &src]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cas and --remote both name the store")
    );
    // An explicit --cas overrides SA_REMOTE from the environment.
    let out = Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(["--cas", &store, "ingest", &src])
        .env("SA_REMOTE", "grpc://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("store/cas/objects").is_dir());
}

#[test]
fn a_store_of_another_digest_function_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s").display().to_string();
    sa_ok(&["--cas", &store, "ingest", &dir.path().display().to_string()]);
    let out = sa(&["--cas", &store, "--digest-function", "blake3", "ingest", "."]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds sha256 blobs"), "{stderr}");
    assert!(stderr.contains("not blake3 (see --digest-function)"), "{stderr}");
    // A store buildbox-casd made (objects, no digest-function file) is SHA-256.
    let casd_made = dir.path().join("casd");
    std::fs::create_dir_all(casd_made.join("cas/objects/ab")).unwrap();
    let out = sa(&[
        "--cas",
        &casd_made.display().to_string(),
        "--digest-function",
        "blake3",
        "ingest",
        ".",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a buildbox-casd or BuildStream store"));
}

#[test]
fn a_broken_subaction_is_warned_about_once_and_stats_are_printed_on_failure() {
    let p = Project::new();
    let mut graph: Value =
        serde_json::from_str(&std::fs::read_to_string(&p.graph1).unwrap()).unwrap();
    let missing = format!("{}/77", "ab".repeat(32));
    let element = graph["elements"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["subactions"].as_array().is_some_and(|s| !s.is_empty()))
        .unwrap();
    element["subactions"].as_array_mut().unwrap().push(missing.clone().into());
    let path = p.path("broken.json");
    std::fs::write(&path, graph.to_string()).unwrap();
    let out = sa(&["--cas", &p.store(), "generate", "--graph", &path, "--skip-broken-subactions"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("warning:").count(), 1, "one warning: {stderr}");
    assert!(stderr.contains(&format!("skipped subaction {missing}")), "{stderr}");
    // Without the flag it is an error; --stats still says what was done before it.
    let out = sa(&["--cas", &p.store(), "--stats", "generate", "--graph", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("subaction {missing}")), "{stderr}");
    assert!(
        stderr.contains("stats: store") && stderr.contains("stats: phase generate"),
        "{stderr}"
    );
}
