//! Against a real buildbox-casd: as a store, and as an execution service for `sa prime`.

use sa_cas::testing::Casd;
use sa_cas::{GrpcCas, GrpcConfig};

use super::*;

#[test]
fn generate_and_instantiate_against_casd() {
    let p = Project::new();
    let casd_dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&casd_dir.path().join("store"));
    let grpc = GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap();
    copy_store(&p.cas(), &grpc);
    let remote = casd.endpoint();
    let (generated, out1) = p.generate(&["--remote", &remote]);
    assert_eq!(generated[1]["actions"], 2);
    let out = p.instantiate(&["--remote", &remote, "--json"], &out1, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let instantiated = lines(&String::from_utf8(out.stdout).unwrap());
    let actions: Vec<&str> = instantiated.iter().map(|l| l["action"].as_str().unwrap()).collect();
    let expected: Vec<String> = p.actions2.values().map(|d| d.to_string()).collect();
    let mut actions = actions;
    actions.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(actions, expected);
    // The adapted actions were stored on the server.
    for action in &expected {
        let digest = Digest::parse(DigestFunction::Sha256, action).unwrap();
        assert!(sa_cas::Cas::find_missing(&grpc, &[digest]).unwrap().is_empty());
    }
    // Stats report RPCs for remote stores.
    let out = sa(&["--remote", &remote, "--stats", "ingest", &p.path("app1")]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(" RPCs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prime_executes_the_adapted_actions_on_casd_with_buildbox_run() {
    let p = Project::new();
    let store = p.store();
    let (_, out1) = p.generate(&["--cas", &store]);
    let casd_dir = tempfile::tempdir().unwrap();
    let casd = Casd::start_executing(&casd_dir.path().join("store"), 2);
    let remote = casd.endpoint();
    let graph2 = p.graph2.display().to_string();
    let prime = |extra: &[&str]| {
        let args = [&["--cas", &store, "--json", "prime", "--graph", &graph2][..], extra];
        sa(&args.concat())
    };
    let primed = prime(&["--previous", &out1, "--remote", &remote, "--jobs", "2"]);
    assert!(
        primed.status.success(),
        "{}\n{}\ncasd log:\n{}",
        String::from_utf8_lossy(&primed.stdout),
        String::from_utf8_lossy(&primed.stderr),
        casd.log_text()
    );
    let primed = prime_lines(&String::from_utf8(primed.stdout).unwrap());
    assert_eq!(primed.len(), 2);
    let grpc = GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap();
    for line in &primed {
        assert_eq!(line["status"], "executed", "{line}");
        let action =
            Digest::parse(DigestFunction::Sha256, line["action"].as_str().unwrap()).unwrap();
        assert!(p.actions2.values().any(|d| *d == action), "primed the action build 2 runs");
        let result = grpc.get_action_result(&action).unwrap().expect("the primed action is cached");
        assert_eq!(result.exit_code, 0);
        assert_eq!(result.output_files.len(), 1);
    }
    // Priming again finds everything cached.
    let again = prime(&["--previous", &out1, "--remote", &remote]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let again = prime_lines(&String::from_utf8(again.stdout).unwrap());
    assert!(again.iter().all(|l| l["status"] == "cached"), "{again:?}");
}

#[test]
fn a_digest_function_the_server_lacks_is_named_with_what_it_has() {
    let casd_dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&casd_dir.path().join("store"));
    let out = sa(&["--remote", &casd.endpoint(), "--digest-function", "blake3", "ingest", "."]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("blake3 (server {} supports SHA256)", casd.endpoint())),
        "{stderr}"
    );
    // grpcs:// to a plaintext server says so, not just "corrupt message".
    let tls = casd.endpoint().replace("grpc://", "grpcs://");
    let out = sa(&["--remote", &tls, "--rpc-timeout", "2", "ingest", "."]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not speak TLS (a plaintext server? then use grpc://)"),
        "{stderr}"
    );
}
