//! Flaky servers: a fault-injecting proxy in front of a real buildbox-casd, and casd killed and
//! restarted in the middle of commands. Each command completes, or fails with a clear error
//! within its deadline and completes when run again; the local store holds only whole objects.

use std::time::{Duration, Instant};

use sa_cas::testing::{Casd, Fault, FaultProxy};
use sa_cas::{GrpcCas, GrpcConfig};

use super::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every object of a local store hashes to its name.
fn assert_whole(store: &Path) {
    for prefix in std::fs::read_dir(store.join("cas/objects")).unwrap() {
        for entry in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let name = format!(
                "{}{}",
                path.parent().unwrap().file_name().unwrap().to_str().unwrap(),
                path.file_name().unwrap().to_str().unwrap()
            );
            let data = std::fs::read(&path).unwrap();
            assert_eq!(DigestFunction::Sha256.hash_bytes(&data).hash_hex(), name);
        }
    }
}

fn actions_of(lines: &[Value]) -> Vec<String> {
    let mut actions: Vec<String> =
        lines.iter().map(|l| l["action"].as_str().unwrap().to_owned()).collect();
    actions.sort();
    actions
}

#[test]
fn generate_and_instantiate_survive_refusals_cuts_stalls_and_delays() {
    let p = Project::new();
    let casd_dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&casd_dir.path().join("store"));
    copy_store(&p.cas(), &GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap());
    let (direct, _) = p.generate(&["--remote", &casd.endpoint()]);

    let proxy = FaultProxy::start(
        casd.port(),
        vec![
            Fault::Refuse,
            Fault::CutAfter(300),
            Fault::StallAfter(200, Duration::from_secs(3)),
            Fault::Delay(Duration::from_millis(2)),
        ],
    );
    let remote = proxy.endpoint();
    let (through, out1) = p.generate(&["--remote", &remote, "--rpc-timeout", "1"]);
    assert_eq!(through, direct, "the same SpeculativeActions through the faults");
    let out = p.instantiate(&["--remote", &remote, "--rpc-timeout", "1", "--json"], &out1, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut expected: Vec<String> = p.actions2.values().map(|d| d.to_string()).collect();
    expected.sort();
    assert_eq!(actions_of(&lines(&String::from_utf8(out.stdout).unwrap())), expected);
    assert!(proxy.faults() >= 3, "{} faults injected", proxy.faults());
}

#[test]
fn a_server_that_always_fails_is_a_clear_error_within_the_deadline() {
    let casd_dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&casd_dir.path().join("store"));
    let proxy = FaultProxy::start(casd.port(), vec![Fault::CutAfter(0)]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let start = Instant::now();
    let out = sa(&[
        "--remote",
        &proxy.endpoint(),
        "--rpc-timeout",
        "1",
        "ingest",
        &dir.path().display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(start.elapsed() < Duration::from_secs(40), "{:?}", start.elapsed());
    assert!(
        stderr(&out).contains(&format!("cannot connect to {}", proxy.endpoint())),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("after 6 attempts"), "retried with backoff: {}", stderr(&out));
    // Each retry is said as it happens, not minutes of silence.
    for attempt in 2..=6 {
        let said = format!("retrying (attempt {attempt} of 6, next in");
        assert!(stderr(&out).contains(&said), "{said}: {}", stderr(&out));
    }
}

/// Runs `sa args` while casd is restarted 300 ms in; returns whether it succeeded.
fn across_a_restart(casd: &mut Casd, args: &[&str]) -> bool {
    let child = Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(args)
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    casd.restart();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        // A failure is allowed, but it must say what failed: the endpoint, or for prime, each
        // failed action with the server's status.
        let text = stderr(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("failed across the restart: {text}{stdout}");
        let clear = text.contains("127.0.0.1")
            || (text.contains("actions could not be executed")
                && lines(&stdout)
                    .iter()
                    .any(|l| l["status"] == "error" && l["detail"].is_string()));
        assert!(text.starts_with("error: ") && clear, "{text}\n{stdout}");
    }
    out.status.success()
}

#[test]
fn commands_survive_casd_restarting_in_the_middle_or_fail_clearly_and_complete_again() {
    let p = Project::new();
    let store = p.store();
    let casd_dir = tempfile::tempdir().unwrap();
    let mut casd = Casd::start_executing(&casd_dir.path().join("store"), 2);
    copy_store(&p.cas(), &GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap());
    // Slow every chunk down so the restart lands in the middle of each command.
    let proxy = FaultProxy::start(casd.port(), vec![Fault::Delay(Duration::from_millis(30))]);
    let remote = proxy.endpoint();
    let graph1 = p.graph1.display().to_string();
    let graph2 = p.graph2.display().to_string();
    let out1 = p.path("graph1.out.json");
    let generate = [
        "--remote",
        &remote,
        "--rpc-timeout",
        "2",
        "generate",
        "--graph",
        &graph1,
        "--output",
        &out1,
    ];
    if !across_a_restart(&mut casd, &generate) {
        sa_ok(&generate);
    }
    let instantiate = [
        "--remote",
        &remote,
        "--rpc-timeout",
        "2",
        "instantiate",
        "--graph",
        &graph2,
        "--previous",
        &out1,
    ];
    if !across_a_restart(&mut casd, &instantiate) {
        sa_ok(&instantiate);
    }
    // prime reads the local store, which has build 1's blobs: generate there too.
    let (_, local_out1) = p.generate(&["--cas", &store]);
    let prime = [
        "--cas",
        &store,
        "--remote",
        &remote,
        "--rpc-timeout",
        "5",
        "--json",
        "prime",
        "--graph",
        &graph2,
        "--previous",
        &local_out1,
    ];
    let _ = across_a_restart(&mut casd, &prime);
    let again = sa(&prime);
    assert!(
        again.status.success(),
        "{}\n{}\ncasd log:\n{}",
        String::from_utf8_lossy(&again.stdout),
        stderr(&again),
        casd.log_text()
    );
    let again = prime_lines(&String::from_utf8(again.stdout).unwrap());
    assert_eq!(again.len(), 2);
    assert!(
        again.iter().all(|l| l["status"] == "cached" || l["status"] == "executed"),
        "{again:?}"
    );
    assert_whole(&p.store);
}
