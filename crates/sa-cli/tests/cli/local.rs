//! Every command on a local store.

use super::*;

#[test]
fn generate_then_instantiate_predicts_the_next_builds_actions() {
    let p = Project::new();
    let store = p.store();
    let (generated, out1) = p.generate(&["--cas", &store]);
    // lib.bst has no subactions but an artifact: it gets artifact overlays only.
    assert_eq!(generated.len(), 2);
    assert_eq!(
        (&generated[0]["element"], &generated[0]["actions"]),
        (&"lib.bst".into(), &0.into())
    );
    assert_eq!(
        (&generated[1]["element"], &generated[1]["actions"]),
        (&"app.bst".into(), &2.into())
    );
    // The JSON line carries what was left out or unattributed, too.
    assert_eq!(generated[1]["subactions"], 2);
    assert_eq!(generated[1]["skipped"], 0);
    assert!(generated[1]["unattributed_inputs"].is_u64(), "{}", generated[1]);
    assert!(generated[1]["unattributed_artifact_files"].is_u64(), "{}", generated[1]);
    let filled: Value = serde_json::from_str(&std::fs::read_to_string(&out1).unwrap()).unwrap();
    assert_eq!(filled["elements"][1]["speculative_actions"], generated[1]["speculative_actions"]);

    let out = p.instantiate(&["--cas", &store], &out1, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let instantiated = lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(instantiated.len(), 2);
    for line in &instantiated {
        let base = line["base_action"].as_str().unwrap();
        let source = p.actions1.iter().find(|(_, d)| d.to_string() == base).unwrap().0;
        assert_eq!(line["complete"], true, "{line}");
        assert_eq!(
            line["action"],
            p.actions2[source].to_string(),
            "{source}: the action build 2 runs"
        );
        assert_eq!(line["element"], "app.bst");
    }

    // Human output.
    let out = p.instantiate(&["--cas", &store], &out1, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "lib.bst: 0 actions, 0 complete, 0 changed, 0 incomplete\napp.bst: 2 actions, 2 complete, 2 changed, 0 incomplete"
    );
}

#[test]
fn inspect_detects_and_decodes_every_kind() {
    let p = Project::new();
    let store = p.store();
    let (generated, _) = p.generate(&["--cas", &store]);
    let spec = generated[1]["speculative_actions"].as_str().unwrap().to_owned();
    let inspect = |args: &[&str]| -> Value {
        serde_json::from_str(&sa_ok(&[&["--cas", &store, "--json", "inspect"][..], args].concat()))
            .unwrap()
    };
    let v = inspect(&[&spec]);
    assert_eq!(v["kind"], "speculative-actions");
    assert_eq!(v["value"]["actions"].as_array().unwrap().len(), 2);
    let action = p.actions1["src/main.c"].to_string();
    let v = inspect(&[&action]);
    assert_eq!(v["kind"], "action");
    let root = v["value"]["input_root_digest"].as_str().unwrap().to_owned();
    let command = v["value"]["command_digest"].as_str().unwrap().to_owned();
    assert_eq!(inspect(&[&root])["kind"], "directory");
    let cmd = inspect(&[&command]);
    assert_eq!(cmd["kind"], "command");
    assert_eq!(cmd["value"]["arguments"][0], "/bin/sh");
    let tree = inspect(&[&root, "--as", "tree"]);
    let paths: Vec<&str> = tree["value"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["include/a.h", "include/b.h", "src/main.c", "sysroot/include/lib.h"]);
    let result = inspect(&[&parent_action().to_string(), "--as", "action-result"]);
    assert_eq!(result["value"]["subactions"].as_array().unwrap().len(), 2);
}

#[test]
fn ingest_and_subactions() {
    let p = Project::new();
    let store = p.store();
    let root = sa_ok(&["--cas", &store, "ingest", &p.path("app1")]);
    let expected =
        merkle::ingest(&p.cas(), &p.dir.path().join("app1"), &TreeLimits::default()).unwrap();
    assert_eq!(root.trim(), expected.to_string());
    let subactions = sa_ok(&["--cas", &store, "subactions", &parent_action().to_string()]);
    let listed: Vec<&str> = subactions.lines().collect();
    let recorded: Vec<String> = p.actions1.values().map(|d| d.to_string()).collect();
    assert_eq!(listed, recorded);
}

#[test]
fn stats_and_help_are_printed() {
    let p = Project::new();
    let out = sa(&["--cas", &p.store(), "--stats", "ingest", &p.path("app1")]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("stats: store") && stderr.contains("stats: phase ingest:"), "{stderr}");
    let help = sa_ok(&["--help"]);
    assert!(
        help.contains("Examples:")
            && help.contains("Exit codes: 0 success, 1 failure, 2 usage error.")
    );
    for command in ["generate", "instantiate", "prime", "inspect", "ingest", "subactions"] {
        let help = sa_ok(&[command, "--help"]);
        assert!(help.contains("Example:"), "{command}");
        // The subcommand's own options first, then the shared ones under their headings.
        let own = help.find("\nOptions:\n").expect("an Options section");
        let store = help.find("\nStore:\n").expect("a Store section");
        assert!(own < store && store < help.find("\nLimits:\n").unwrap(), "{command}: {help}");
        assert!(help.find("--cas <DIR>").unwrap() > store, "{command}: {help}");
    }
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let p = Project::new();
    let mut child = Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(["--cas", &p.store(), "inspect", &p.actions1["src/main.c"].to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn prime_local_executes_the_adapted_actions_into_the_local_action_cache() {
    let p = Project::new();
    let store = p.store();
    let (_, out1) = p.generate(&["--cas", &store]);
    let graph2 = p.graph2.display().to_string();
    let prime = || {
        let args = ["--cas", &store, "--json", "prime", "--local", "--graph", &graph2];
        prime_lines(&sa_ok(&[&args[..], &["--previous", &out1, "--jobs", "2"]].concat()))
    };
    let primed = prime();
    assert_eq!(primed.len(), 2);
    for line in &primed {
        assert_eq!(line["status"], "executed", "{line}");
        let action =
            Digest::parse(DigestFunction::Sha256, line["action"].as_str().unwrap()).unwrap();
        assert!(p.actions2.values().any(|d| *d == action), "primed the action build 2 runs");
        let result = p.cas().get_action_result(&action).unwrap().expect("cached locally");
        assert_eq!((result.exit_code, result.output_files.len()), (0, 1));
    }
    assert!(prime().iter().all(|l| l["status"] == "cached"));
    // --local and --remote exclude each other.
    let out = sa(&[
        "--cas",
        &store,
        "--remote",
        "grpc://127.0.0.1:1",
        "prime",
        "--local",
        "--graph",
        &graph2,
        "--previous",
        &out1,
    ]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("takes --local or an execution service"));
}
