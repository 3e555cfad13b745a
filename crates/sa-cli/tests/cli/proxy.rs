//! `sa proxy` and `sa graph from-recording`: the whole loop with the proxy as the only source
//! of what build 1 ran, against a real casd executing the compiles.

use std::io::BufRead;

use sa_cas::testing::Casd;

use super::*;

/// `sa proxy` in the background, killed on drop.
pub(crate) struct ProxyProcess {
    child: std::process::Child,
    pub(crate) endpoint: String,
}

impl ProxyProcess {
    pub(crate) fn start(upstream: &str, record: &Path) -> ProxyProcess {
        let mut child = Process::new(env!("CARGO_BIN_EXE_sa"))
            .args([
                "--json",
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                upstream,
                "--record",
            ])
            .arg(record)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let started: Value = serde_json::from_str(&line).unwrap();
        ProxyProcess { child, endpoint: started["listening"].as_str().unwrap().to_owned() }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sa --remote REMOTE record [--log LOG] -- gcc -c SOURCE -o SOURCE.o` in `ws`, which must
/// succeed.
pub(crate) fn compile(ws: &Path, remote: &str, log: Option<&Path>, source: &str) {
    let object = source.replace(".c", ".o");
    let mut command = Process::new(env!("CARGO_BIN_EXE_sa"));
    command.args(["--remote", remote, "record"]);
    if let Some(log) = log {
        command.arg("--log").arg(log);
    }
    let out = command
        .args(["--", "gcc", "-c", source, "-o", &object])
        .current_dir(ws)
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{source}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn build_2_through_the_proxy_finds_every_changed_compile_primed() {
    let dir = tempfile::tempdir().unwrap();
    let casd_store = dir.path().join("casd");
    let casd = Casd::start_executing_host_tools(&casd_store, 2);
    let upstream = casd.endpoint();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("lib.h"), "#define N 1\n").unwrap();
    std::fs::write(ws.join("a.c"), "#include \"lib.h\"\nint a(void) { return N; }\n").unwrap();
    std::fs::write(ws.join("b.c"), "int b(void) { return 2; }\n").unwrap();
    std::fs::write(ws.join("c.c"), "#include \"lib.h\"\nint c(void) { return N + 1; }\n").unwrap();
    let sources = ["a.c", "b.c", "c.c"];

    // Build 1 through the proxy: its recording is all `sa` learns of it.
    let record1 = dir.path().join("rec1");
    let log1 = dir.path().join("log1");
    {
        let proxy = ProxyProcess::start(&upstream, &record1);
        for source in sources {
            compile(&ws, &proxy.endpoint, Some(&log1), source);
        }
    }
    let recording1 = record1.join("unknown.jsonl");
    let lines1 = sa_proxy::read_recording(&recording1, 1 << 20).unwrap().lines;
    assert_eq!(lines1.len(), 3, "{lines1:?}");
    for line in &lines1 {
        let fresh = line["kind"] == "execute" && line["cached"] == false && line["exit_code"] == 0;
        assert!(fresh, "build 1 executed every compile: {line}");
    }

    let g1 = dir.path().join("g1.json").display().to_string();
    let out1 = dir.path().join("g1.out.json").display().to_string();
    sa_ok(&[
        "--remote",
        &upstream,
        "graph",
        "from-recording",
        "--recording",
        recording1.to_str().unwrap(),
        "--sources",
        ws.to_str().unwrap(),
        "--name",
        "app",
        "--output",
        &g1,
    ]);
    let graph1: Value = serde_json::from_str(&std::fs::read_to_string(&g1).unwrap()).unwrap();
    let subactions: Vec<&str> = graph1["elements"][0]["subactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let recorded: Vec<&str> = lines1.iter().map(|l| l["action"].as_str().unwrap()).collect();
    assert_eq!(subactions, recorded, "independent compiles keep their recorded order");
    sa_ok(&["--remote", &upstream, "generate", "--graph", &g1, "--output", &out1]);

    // The edit, then prime on the upstream before build 2.
    std::fs::write(ws.join("lib.h"), "#define N 2\n").unwrap();
    let sources2 = sa_ok(&["--remote", &upstream, "ingest", ws.to_str().unwrap()]);
    let g2 = dir.path().join("g2.json");
    std::fs::write(
        &g2,
        format!(r#"{{"elements": [{{"name": "app", "sources": "{}"}}]}}"#, sources2.trim()),
    )
    .unwrap();
    let g2 = g2.display().to_string();
    let primed = sa_ok(&[
        "--cas",
        casd_store.to_str().unwrap(),
        "--json",
        "prime",
        "--graph",
        &g2,
        "--previous",
        &out1,
        "--remote",
        &upstream,
    ]);
    let primed: Vec<Value> = prime_lines(&primed);
    let executed: Vec<&str> = primed
        .iter()
        .filter(|l| l["status"] == "executed")
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(executed.len(), 2, "a.c and c.c include the edited header: {primed:?}");

    // Build 2 through a fresh proxy: every compile is a cache hit, the changed ones primed.
    let record2 = dir.path().join("rec2");
    let log2 = dir.path().join("log2");
    {
        let proxy = ProxyProcess::start(&upstream, &record2);
        for source in sources {
            compile(&ws, &proxy.endpoint, Some(&log2), source);
        }
    }
    let lines2 = sa_proxy::read_recording(&record2.join("unknown.jsonl"), 1 << 20).unwrap().lines;
    assert_eq!(lines2.len(), 3);
    for line in &lines2 {
        assert_eq!(line["cached"], true, "build 2 found it cached: {line}");
    }
    let changed: Vec<&str> = lines2
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .filter(|a| !recorded.contains(a))
        .collect();
    assert_eq!(changed.len(), 2);
    for action in changed {
        assert!(executed.contains(&action), "{action} was primed by sa");
    }
}

#[test]
fn a_bad_recording_is_an_error_naming_the_file_and_line_and_a_broken_line_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    LocalCas::open(&store, LocalCasConfig::default()).unwrap();
    let store = store.display().to_string();
    let ws = dir.path().display().to_string();
    let absent = DigestFunction::Sha256.hash_bytes(b"never recorded");
    let good = format!(
        r#"{{"kind":"execute","action":"{absent}","status":0,"exit_code":0,"cached":false}}"#
    );
    let cases = [
        // A broken line (a write that failed part way) is skipped and said; the rest is read.
        (
            format!("{good}\nnot json\n"),
            "skipped 1 broken lines (lines [2]: what a write that failed part way leaves)"
                .to_owned(),
        ),
        (
            "{\"kind\":\"execute\",\"action\":\"xyz/1\",\"status\":0,\"exit_code\":0}\n".to_owned(),
            "line 1: \"action\"".to_owned(),
        ),
        (
            "{\"kind\":\"execute\",\"status\":0,\"exit_code\":0}\n".to_owned(),
            "line 1: no \"action\"".to_owned(),
        ),
        // A failed Execute is read (learning counts failures) but not a subaction; its
        // action must still be a digest.
        (
            format!("{{\"kind\":\"execute\",\"action\":\"{absent}\",\"status\":9}}\n"),
            "has no successful Execute or cache hit".to_owned(),
        ),
        (
            "{\"kind\":\"execute\",\"action\":\"x\",\"status\":9}\n".to_owned(),
            "line 1: \"action\": invalid digest \"x\"".to_owned(),
        ),
        (format!("{good}\n"), format!("recorded action {absent}: missing blob {absent}")),
    ];
    for (text, expected) in cases {
        let recording = dir.path().join("r.jsonl");
        std::fs::write(&recording, &text).unwrap();
        let r = recording.display().to_string();
        let out = sa(&[
            "--cas",
            &store,
            "graph",
            "from-recording",
            "--recording",
            &r,
            "--sources",
            &ws,
            "--name",
            "a",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        assert!(stderr.contains(&expected), "{expected}: {stderr}");
    }
    // A recording larger than --max-graph-bytes is refused as it is read (a pipe too).
    let recording = dir.path().join("r.jsonl");
    std::fs::write(&recording, format!("{good}\n").repeat(10)).unwrap();
    let r = recording.display().to_string();
    let out = sa(&[
        "--cas",
        &store,
        "--max-graph-bytes",
        "100",
        "graph",
        "from-recording",
        "--recording",
        &r,
        "--sources",
        &ws,
        "--name",
        "a",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!("recording {r}: more than --max-graph-bytes 100");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&expected));
    let out = sa(&[
        "--cas",
        &store,
        "--max-graph-bytes",
        "1000",
        "graph",
        "from-recording",
        "--recording",
        "/dev/zero",
        "--sources",
        &ws,
        "--name",
        "a",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let expected = "recording /dev/zero: more than --max-graph-bytes 1000";
    assert!(String::from_utf8_lossy(&out.stderr).contains(expected));
}
