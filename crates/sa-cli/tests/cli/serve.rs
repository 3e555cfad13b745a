//! `sa serve` against a real casd executing the compiles: builds through it (`sa record
//! --remote`, one compile per changed source, as an incremental `make` runs them) teach it, and
//! every edit is primed with no `sa` command between builds.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use sa_cas::testing::Casd;

use crate::proxy::compile;

use super::*;

/// `sa serve` in the background, its JSON events on a channel, killed on drop.
pub(crate) struct ServeProcess {
    child: std::process::Child,
    pub(crate) endpoint: String,
    pub(crate) record: PathBuf,
    pub(crate) events: Receiver<Value>,
}

impl ServeProcess {
    pub(crate) fn start(
        global: &[&str],
        upstream: &str,
        workspace: &Path,
        extra: &[&str],
    ) -> ServeProcess {
        let mut child = Process::new(env!("CARGO_BIN_EXE_sa"))
            .args(global)
            .args(["--json", "serve", "--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(["--quiet-after", "1", "--debounce", "200", "--workspace"])
            .arg(workspace)
            .args(extra)
            .env_remove("SA_CAS")
            .env_remove("SA_REMOTE")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, events) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event: Value = serde_json::from_str(&line).expect("serve prints JSON lines");
                if sender.send(event).is_err() {
                    break;
                }
            }
        });
        let started = events.recv_timeout(Duration::from_secs(30)).expect("serve starts");
        assert_eq!(started["event"], "listening", "{started}");
        let endpoint = started["listening"].as_str().unwrap().to_owned();
        let record = PathBuf::from(started["record"].as_str().unwrap());
        ServeProcess { child, endpoint, record, events }
    }

    /// The next event of `kind` that `accept` accepts, within `seconds`; errors fail the test.
    pub(crate) fn wait_for(
        &self,
        kind: &str,
        seconds: u64,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let event = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {kind} event within {seconds} s"));
            eprintln!("sa serve: {event}");
            assert_ne!(event["event"], "error", "{event}");
            if event["event"] == kind && accept(&event) {
                return event;
            }
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_learns_every_build_and_primes_every_edit_with_no_command_between() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start_executing_host_tools(&dir.path().join("casd"), 2);
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("lib.h"), "#define N 1\n").unwrap();
    std::fs::write(ws.join("a.c"), "#include \"lib.h\"\nint a(void) { return N; }\n").unwrap();
    std::fs::write(ws.join("b.c"), "int b(void) { return 2; }\n").unwrap();
    std::fs::write(ws.join("c.c"), "#include \"lib.h\"\nint c(void) { return N + 1; }\n").unwrap();
    let serve = ServeProcess::start(&[], &casd.endpoint(), &ws, &["--name", "app"]);

    // Build 1, clean: three compiles, learned once the invocation is quiet.
    for source in ["a.c", "b.c", "c.c"] {
        compile(&ws, &serve.endpoint, None, source);
    }
    let build = serve.wait_for("build", 60, |_| true);
    assert_eq!(
        (build["actions"].as_u64(), build["learned"].as_u64()),
        (Some(3), Some(3)),
        "{build}"
    );

    // The header two compiles read changes: serve primes both by itself.
    std::fs::write(ws.join("lib.h"), "#define N 2\n").unwrap();
    // A priming that started on a half-written lib.h is cancelled by the rest of the write
    // (another snapshot) and redone: the one that counts is the one that was not cancelled.
    let primed = serve.wait_for("primed", 120, |e| e["changed"] == 2 && e["cancelled"] == false);
    assert_eq!(
        (primed["executed"].as_u64(), primed["failed"].as_u64(), primed["error"].as_u64()),
        (Some(2), Some(0), Some(0)),
        "{primed}"
    );

    // Build 2, incremental (what make re-runs): both are hits sa primed.
    for source in ["a.c", "c.c"] {
        compile(&ws, &serve.endpoint, None, source);
    }
    let build = serve.wait_for("build", 60, |_| true);
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

    // b.c, untouched by builds 1 and 2 but for build 1, is still known: its edit is primed.
    std::fs::write(ws.join("b.c"), "int b(void) { return 3; }\n").unwrap();
    serve.wait_for("primed", 120, |e| {
        e["changed"] == 1 && e["executed"] == 1 && e["cancelled"] == false
    });
    compile(&ws, &serve.endpoint, None, "b.c");
    let build = serve.wait_for("build", 60, |_| true);
    assert_eq!(
        (build["hits"].as_u64(), build["primed_hits"].as_u64()),
        (Some(1), Some(1)),
        "{build}"
    );

    // `sa status` reads the same state from the store.
    let status = sa_ok(&["--remote", &casd.endpoint(), "--json", "status", "--name", "app"]);
    let status = lines(&status).pop().unwrap();
    assert_eq!(
        (status["builds"].as_u64(), status["identities"].as_u64()),
        (Some(3), Some(3)),
        "{status}"
    );
}

#[test]
fn serve_stopped_by_a_signal_removes_its_temporary_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("casd"));
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let serve = ServeProcess::start(&[], &casd.endpoint(), &ws, &["--name", "app"]);
    assert!(serve.record.is_dir() && !serve.record.starts_with(&ws), "{}", serve.record.display());
    let status =
        Process::new("kill").args(["-TERM", &serve.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let mut serve = serve;
    let code = serve.child.wait().unwrap().code();
    assert_eq!(code, Some(128 + 15));
    assert!(!serve.record.exists(), "{} left behind", serve.record.display());
}
