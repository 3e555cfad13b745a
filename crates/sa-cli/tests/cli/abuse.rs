//! `sa proxy` as a service anyone can reach: each attack of the security campaign, built by
//! hand with a raw HTTP/2 client or bare sockets on loopback, against the real binary in front
//! of a real casd. Each asserts the proxy's memory stays under a budget, that it does not spin,
//! and that a well-behaved client is still served within a second. Bounded in count and time.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sa_cas::testing::Casd;
use sa_cas::{Cas, GrpcCas, GrpcConfig};

use super::*;

/// Peak resident memory the proxy may reach under any attack here.
const RSS_BUDGET_KIB: u64 = 256 << 10;

/// `sa proxy` started by a shell line (so a test can lower its file limit first), its stderr
/// kept in a file.
struct Service {
    child: Child,
    endpoint: String,
    stderr: std::path::PathBuf,
}

impl Service {
    fn start(dir: &Path, upstream: &str, shell_prefix: &str, flags: &[&str]) -> Service {
        let record = dir.join("rec");
        let stderr = dir.join("proxy.stderr");
        let command = format!(
            "{shell_prefix} exec {} --json proxy --listen 127.0.0.1:0 --upstream {upstream} \
             --record {} {}",
            env!("CARGO_BIN_EXE_sa"),
            record.display(),
            flags.join(" ")
        );
        let mut child = Process::new("sh")
            .args(["-c", &command])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let started: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("proxy did not start: {line:?} {}", read(&stderr)));
        Service { child, endpoint: started["listening"].as_str().unwrap().to_owned(), stderr }
    }

    fn addr(&self) -> String {
        self.endpoint.trim_start_matches("grpc://").to_owned()
    }

    /// (resident now, peak resident) in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU time the proxy used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    fn stderr_text(&self) -> String {
        read(&self.stderr)
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "proxy died: {}", self.stderr_text());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A new client (a new connection) stores a blob and reads it back through the proxy with one
/// attempt of at most a second per call: the service still serves the well-behaved.
fn assert_served_within_a_second(endpoint: &str) {
    let mut config = GrpcConfig::new(endpoint);
    config.rpc_timeout = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(1);
    config.max_retries = 0;
    let started = Instant::now();
    let client = GrpcCas::connect(config).expect("a well-behaved client connects");
    let digest = client.write_blob(Bytes::from_static(b"well-behaved\n")).unwrap();
    assert_eq!(client.read_blob(&digest).unwrap(), Bytes::from_static(b"well-behaved\n"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "served, but only after {took:?}");
}

const EXECUTE_PATH: &str = "/build.bazel.remote.execution.v2.Execution/Execute";

/// Opens `connections` HTTP/2 connections with `streams` Execute calls each, every call sending
/// `bytes` of request body in 16 KiB pieces as flow control allows and never ending; returns
/// the connections' tasks (dropping the runtime closes everything) and how many calls the
/// proxy answered with RESOURCE_EXHAUSTED.
fn hold_open_execute_streams(
    runtime: &tokio::runtime::Runtime,
    addr: &str,
    connections: usize,
    streams: usize,
    bytes: usize,
) -> usize {
    let addr = addr.to_owned();
    runtime.block_on(async move {
        let chunk = Bytes::from(vec![0u8; 16 << 10]);
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Calls that sent all their bytes (and now hold the stream open) or ended.
        let settled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut calls = Vec::new();
        for _ in 0..connections {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (client, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(async move {
                let _ = connection.await;
            });
            for _ in 0..streams {
                let mut client = match client.clone().ready().await {
                    Ok(client) => client,
                    Err(_) => break,
                };
                let request = http::Request::post(format!("http://{addr}{EXECUTE_PATH}"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
                let Ok((response, mut send)) = client.send_request(request, false) else { break };
                let (chunk, refused, settled) = (chunk.clone(), refused.clone(), settled.clone());
                calls.push(tokio::spawn(async move {
                    let sending = async {
                        let mut sent = 0;
                        while sent < bytes {
                            send.reserve_capacity(chunk.len());
                            match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                                Some(Ok(_)) => {}
                                // Reset by the proxy: its answer says why.
                                _ => return,
                            }
                            if send.send_data(chunk.clone(), false).is_err() {
                                return;
                            }
                            sent += chunk.len();
                        }
                        // Never ends the stream: holds it open.
                        settled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        std::future::pending::<()>().await;
                    };
                    let refused_call = |answer: &http::Response<h2::RecvStream>| {
                        answer.headers().get("grpc-status").is_some_and(|code| code == "8")
                    };
                    let mut response = std::pin::pin!(response);
                    let answer = tokio::select! {
                        () = sending => {
                            tokio::time::timeout(Duration::from_secs(5), response).await.ok()
                        }
                        answered = &mut response => Some(answered),
                    };
                    if let Some(Ok(answer)) = answer
                        && refused_call(&answer)
                    {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    settled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }));
            }
        }
        // Until every call has sent its bytes or been answered (bounded).
        let deadline = Instant::now() + Duration::from_secs(60);
        while settled.load(std::sync::atomic::Ordering::Relaxed) < calls.len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        refused.load(std::sync::atomic::Ordering::Relaxed)
    })
}

#[test]
fn recorded_calls_that_send_much_and_never_end_hold_no_more_than_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("casd"));
    let mut proxy = Service::start(dir.path(), &casd.endpoint(), "", &[]);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // 8 connections x 100 calls x (1 MiB - 64 KiB): 750 MiB if each were buffered.
    let refused =
        hold_open_execute_streams(&runtime, &proxy.addr(), 8, 100, (1 << 20) - (64 << 10));
    proxy.assert_alive();
    let (now, peak) = proxy.rss_kib();
    eprintln!("under attack: RSS {now} KiB, peak {peak} KiB, {refused} of 800 calls refused");
    assert!(peak < RSS_BUDGET_KIB, "peak RSS {peak} KiB under attack (now {now} KiB)");
    assert!(refused >= 700, "only {refused} of 800 calls were refused past the 64 MiB budget");
    // The attack's streams are still open: others are served all the same.
    assert_served_within_a_second(&proxy.endpoint);
    drop(runtime);
    std::thread::sleep(Duration::from_millis(500));
    assert_served_within_a_second(&proxy.endpoint);
    let (_, peak) = proxy.rss_kib();
    assert!(peak < RSS_BUDGET_KIB, "peak RSS {peak} KiB");
}

#[test]
fn idle_sockets_past_the_connection_limit_make_room_for_a_client_that_speaks() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("casd"));
    let mut proxy = Service::start(
        dir.path(),
        &casd.endpoint(),
        "",
        &["--max-connections", "100", "--handshake-timeout", "60"],
    );
    // 300 connections that never send the HTTP/2 preface.
    let idle: Vec<TcpStream> =
        (0..300).map(|_| TcpStream::connect(proxy.addr()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = proxy.cpu();
    std::thread::sleep(Duration::from_secs(2));
    let spent = proxy.cpu() - cpu_before;
    assert!(spent < Duration::from_millis(500), "the proxy used {spent:?} of CPU while idle");
    assert_served_within_a_second(&proxy.endpoint);
    proxy.assert_alive();
    // Most idle sockets were closed by the proxy (evicted to make room): reads see EOF.
    let closed = idle
        .iter()
        .filter(|socket| {
            socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            // The proxy's SETTINGS frame may be there first; a closed socket then reads 0.
            let mut socket: &TcpStream = socket;
            let mut buf = [0u8; 256];
            loop {
                match socket.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(err) => return err.kind() == std::io::ErrorKind::ConnectionReset,
                }
            }
        })
        .count();
    assert!(closed >= 200, "only {closed} of 300 idle sockets were closed");
    assert!(proxy.stderr_text().len() < 64 << 10, "{} bytes of log", proxy.stderr_text().len());
}

#[test]
fn silent_connections_are_closed_at_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("casd"));
    let proxy = Service::start(dir.path(), &casd.endpoint(), "", &["--handshake-timeout", "0.3"]);
    let mut silent = TcpStream::connect(proxy.addr()).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    // The proxy's SETTINGS may come first; then the socket is closed.
    loop {
        match silent.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(err) => panic!("the silent connection was not closed: {err}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_served_within_a_second(&proxy.endpoint);
}

#[test]
fn out_of_file_descriptors_the_proxy_pauses_logs_once_and_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let casd = Casd::start(&dir.path().join("casd"));
    // A file limit the idle sockets exhaust (hard and soft: the proxy cannot raise it).
    let mut proxy = Service::start(
        dir.path(),
        &casd.endpoint(),
        "ulimit -n 64;",
        &["--max-connections", "1000", "--handshake-timeout", "60"],
    );
    let _idle: Vec<TcpStream> =
        (0..100).map(|_| TcpStream::connect(proxy.addr()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let cpu_before = proxy.cpu();
    std::thread::sleep(Duration::from_secs(2));
    let spent = proxy.cpu() - cpu_before;
    assert!(spent < Duration::from_millis(500), "the accept loop spun: {spent:?} of CPU in 2 s");
    proxy.assert_alive();
    let log = proxy.stderr_text();
    assert!(log.len() < 16 << 10, "{} bytes of log in 2.5 s:\n{}", log.len(), &log[..2000]);
    assert!(log.contains("accepting a connection"), "the failure is said: {log}");
    assert_served_within_a_second(&proxy.endpoint);
}
