//! `sa-proxy-bench --sa PATH [--nginx PATH] [--perf FILE]`: what `sa proxy` costs in front of a real
//! buildbox-casd on loopback. Added latency per unary RPC (FindMissingBlobs of one digest,
//! direct, through `sa proxy` and, with `--nginx`, through nginx's `grpc_pass` (h2c both
//! sides), calls interleaved), the proxy's CPU time per unary call, ByteStream read and write
//! throughput through the proxy against direct, and the proxy process's peak RSS while 64
//! clients upload 100 MiB each at once. Prints one JSON object.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sa_cas::testing::Casd;
use sa_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use sa_proto::google::bytestream::{ReadRequest, WriteRequest};
use sa_proto::reapi::FindMissingBlobsRequest;
use sa_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

const SHA: sa_cas::DigestFunction = sa_cas::DigestFunction::Sha256;

fn arg(args: &[String], name: &str, default: Option<&str>) -> Result<String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).cloned().with_context(|| format!("{name} needs a value")),
        None => default.map(str::to_owned).with_context(|| format!("{name} is required")),
    }
}

/// Deterministic content of `len` bytes for stream `seed`, chunk `index` (1 MiB chunks).
fn chunk(seed: u64, index: usize, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (index as u64).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The digest of the blob of `size` bytes made of `chunk(seed, ..)`.
fn blob_digest(seed: u64, size: usize) -> sa_cas::Digest {
    let mut hasher = SHA.hasher();
    let mut offset = 0;
    let mut index = 0;
    while offset < size {
        let len = (1 << 20).min(size - offset);
        hasher.update(&chunk(seed, index, len));
        offset += len;
        index += 1;
    }
    hasher.finish()
}

async fn upload(channel: Channel, seed: u64, size: usize) -> Result<()> {
    let digest = blob_digest(seed, size);
    let name =
        format!("uploads/00000000-0000-4000-8000-{seed:012}/blobs/{}/{size}", digest.hash_hex());
    let chunks = (0..size.div_ceil(1 << 20)).map(move |index| {
        let offset = index << 20;
        let len = (1 << 20).min(size - offset);
        WriteRequest {
            resource_name: if index == 0 { name.clone() } else { String::new() },
            write_offset: offset as i64,
            finish_write: offset + len == size,
            data: chunk(seed, index, len).into(),
        }
    });
    let written =
        ByteStreamClient::new(channel).write(tokio_stream::iter(chunks)).await?.into_inner();
    if written.committed_size != size as i64 {
        bail!("upload {seed}: committed {} of {size}", written.committed_size);
    }
    Ok(())
}

async fn download(channel: Channel, digest: &sa_cas::Digest) -> Result<usize> {
    let resource_name = format!("blobs/{}/{}", digest.hash_hex(), digest.size());
    let mut stream = ByteStreamClient::new(channel)
        .read(ReadRequest { resource_name, ..Default::default() })
        .await?
        .into_inner();
    let mut total = 0;
    while let Some(part) = stream.message().await? {
        total += part.data.len();
    }
    Ok(total)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

/// CPU time (user + system) a process has used, in microseconds.
fn cpu_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 * 1e6 / 100.0)
}

/// nginx as a plain gRPC proxy (h2c in, h2c out) in front of `upstream_port`, in `dir`: its
/// port and process. One worker, no access log, upstream connections kept alive (as `sa proxy`
/// keeps its one channel), no body size limit in the way of ByteStream.
fn start_nginx(
    nginx: &str,
    dir: &std::path::Path,
    upstream_port: u16,
) -> Result<(u16, std::process::Child)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             client_max_body_size 0;\n\
             upstream casd {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n\
             server {{\n    listen 127.0.0.1:{port} http2;\n\
             location / {{ grpc_pass grpc://casd; }}\n  }}\n}}\n",
            d = dir.display()
        ),
    )?;
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {nginx}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "nginx did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((port, child))
}

/// `calls` FindMissingBlobs on each of `sides`, interleaved, after 100 of each to warm up:
/// each side's latencies, sorted.
async fn unary_latency(sides: &[Option<&Channel>], calls: usize) -> Result<Vec<Vec<Duration>>> {
    let request = FindMissingBlobsRequest {
        blob_digests: vec![SHA.hash_bytes(b"absent").to_proto()],
        ..Default::default()
    };
    let mut times: Vec<Vec<Duration>> = sides.iter().map(|_| Vec::with_capacity(calls)).collect();
    for i in 0..calls + 100 {
        for (side, channel) in sides.iter().enumerate() {
            let Some(channel) = channel else { continue };
            let start = Instant::now();
            ContentAddressableStorageClient::new((*channel).clone())
                .find_missing_blobs(request.clone())
                .await?;
            if i >= 100 {
                times[side].push(start.elapsed());
            }
        }
    }
    for side in &mut times {
        side.sort();
    }
    Ok(times)
}

/// One blob of `size` bytes written each way, then read back each way 3 times: MiB/s of each
/// (write direct, write proxied, read direct, read proxied), sorted.
async fn throughput(
    direct: &Channel,
    proxied: &Channel,
    stream_mib: usize,
    size: usize,
) -> Result<Vec<Vec<f64>>> {
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for (side, channel) in [direct, proxied].into_iter().enumerate() {
        let seed = 1_000 + side as u64;
        let start = Instant::now();
        upload(channel.clone(), seed, size).await?;
        rates[side].push(stream_mib as f64 / start.elapsed().as_secs_f64());
    }
    let digest = blob_digest(1_000, size);
    for _ in 0..3 {
        for (side, channel) in [direct, proxied].into_iter().enumerate() {
            let start = Instant::now();
            let got = download(channel.clone(), &digest).await?;
            if got != size {
                bail!("read {got} of {size} bytes");
            }
            rates[2 + side].push(stream_mib as f64 / start.elapsed().as_secs_f64());
        }
    }
    for r in &mut rates {
        r.sort_by(f64::total_cmp);
    }
    Ok(rates)
}

/// `sa proxy` in front of `upstream`, recording into `record`: the process and its URL.
fn start_proxy(
    sa: &str,
    upstream: &str,
    record: &std::path::Path,
) -> Result<(std::process::Child, String)> {
    let record = record.display().to_string();
    let args = ["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream, "--record", &record];
    start_sa(sa, &args)
}

/// `sa serve` in front of `upstream`, learning builds of an empty workspace: the proxy with
/// its learner and watcher running beside it.
fn start_serve(
    sa: &str,
    upstream: &str,
    dir: &std::path::Path,
) -> Result<(std::process::Child, String)> {
    let workspace = dir.join("serve-ws");
    std::fs::create_dir_all(&workspace)?;
    let workspace = workspace.display().to_string();
    let record = dir.join("serve-rec").display().to_string();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--name",
        "bench",
        "--workspace",
        &workspace,
        "--record",
        &record,
    ];
    start_sa(sa, &args)
}

/// Starts `sa --json ARGS` (a proxy or serve) and returns it with the URL its first line
/// says it listens on.
fn start_sa(sa: &str, args: &[&str]) -> Result<(std::process::Child, String)> {
    let mut child = Command::new(sa)
        .arg("--json")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {sa} {}", args[0]))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let started: Value = serde_json::from_str(&line)
        .with_context(|| format!("the first line of {sa} {}", args[0]))?;
    let url = started["listening"].as_str().context("listening")?.replace("grpc://", "http://");
    Ok((child, url))
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM value")?.parse()?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sa = arg(&args, "--sa", None)?;
    let calls: usize = arg(&args, "--calls", Some("2000"))?.parse()?;
    let stream_mib: usize = arg(&args, "--stream-mib", Some("256"))?.parse()?;
    let clients: usize = arg(&args, "--clients", Some("64"))?.parse()?;
    let upload_mib: usize = arg(&args, "--upload-mib", Some("100"))?.parse()?;
    let nginx_path = arg(&args, "--nginx", Some("")).ok().filter(|p| !p.is_empty());
    let perf_out = arg(&args, "--perf", Some("")).ok().filter(|p| !p.is_empty());
    let dir = tempfile::tempdir()?;
    let casd = Casd::start(&dir.path().join("casd"));
    let mut nginx = match &nginx_path {
        Some(path) => Some(start_nginx(path, &dir.path().join("nginx"), casd.port())?),
        None => None,
    };
    let nginx_url = nginx.as_ref().map(|(port, _)| format!("http://127.0.0.1:{port}"));
    let (mut proxy, proxied_url) = start_proxy(&sa, &casd.endpoint(), &dir.path().join("rec"))?;
    let (mut serve, serve_url) = start_serve(&sa, &casd.endpoint(), dir.path())?;
    let direct_url = casd.endpoint().replace("grpc://", "http://");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let direct = Channel::from_shared(direct_url)?.connect().await?;
        let proxied = Channel::from_shared(proxied_url.clone())?.connect().await?;
        let via_nginx = match &nginx_url {
            Some(url) => Some(Channel::from_shared(url.clone())?.connect().await?),
            None => None,
        };
        let via_serve = Channel::from_shared(serve_url)?.connect().await?;
        // Unary latency, interleaved.
        let sides = [Some(&direct), Some(&proxied), via_nginx.as_ref(), Some(&via_serve)];
        let cpu_before = cpu_us(proxy.id())?;
        let times = unary_latency(&sides, calls).await?;
        let proxy_cpu_us_per_call = (cpu_us(proxy.id())? - cpu_before) / (calls + 100) as f64;
        // ByteStream throughput: write one blob each way, read it back each way (3 runs).
        let size = stream_mib << 20;
        let rates = throughput(&direct, &proxied, stream_mib, size).await?;
        let median = |r: &Vec<f64>| r[r.len() / 2];
        // Many large uploads at once through the proxy, each on its own connection.
        let start = Instant::now();
        let mut tasks = Vec::new();
        for client in 0..clients {
            let url = proxied_url.clone();
            tasks.push(tokio::spawn(async move {
                let channel = Channel::from_shared(url)?.connect().await?;
                upload(channel, 10_000 + client as u64, upload_mib << 20).await
            }));
        }
        for task in tasks {
            task.await??;
        }
        let concurrent_seconds = start.elapsed().as_secs_f64();
        // After every measurement: the proxy profiled by `perf` over proxied unary calls alone.
        if let Some(out) = &perf_out {
            let mut perf = Command::new("perf")
                .args(["record", "-F", "4999", "-g", "-o", out, "-p"])
                .arg(proxy.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting `perf record` (Debian package linux-perf)")?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            unary_latency(&[None, Some(&proxied), None, None], calls).await?;
            Command::new("kill")
                .args(["-INT", &perf.id().to_string()])
                .status()
                .context("stopping perf")?;
            let status = perf.wait()?;
            if !std::path::Path::new(out).exists() {
                bail!("`perf record` wrote no profile ({status})");
            }
        }
        let p50 = [percentile(&times[0], 0.5), percentile(&times[1], 0.5)];
        let p99 = [percentile(&times[0], 0.99), percentile(&times[1], 0.99)];
        let nginx_numbers = (!times[2].is_empty()).then(|| {
            let (n50, n99) = (percentile(&times[2], 0.5), percentile(&times[2], 0.99));
            json!({
                "p50_us": n50,
                "p99_us": n99,
                "added_p50_us": n50 - p50[0],
                "added_p99_us": n99 - p99[0],
            })
        });
        let (s50, s99) = (percentile(&times[3], 0.5), percentile(&times[3], 0.99));
        let serve_numbers = json!({
            "p50_us": s50,
            "p99_us": s99,
            "added_p50_us": s50 - p50[0],
            "added_p99_us": s99 - p99[0],
        });
        Ok::<Value, anyhow::Error>(json!({
            "nginx": nginx_numbers,
            "serve": serve_numbers,
            "proxy_cpu_us_per_call": proxy_cpu_us_per_call,
            "unary_calls": calls,
            "unary_direct_p50_us": p50[0],
            "unary_proxied_p50_us": p50[1],
            "unary_added_p50_us": p50[1] - p50[0],
            "unary_direct_p99_us": p99[0],
            "unary_proxied_p99_us": p99[1],
            "unary_added_p99_us": p99[1] - p99[0],
            "stream_mib": stream_mib,
            "write_direct_mib_s": median(&rates[0]),
            "write_proxied_mib_s": median(&rates[1]),
            "read_direct_mib_s": median(&rates[2]),
            "read_proxied_mib_s": median(&rates[3]),
            "concurrent_clients": clients,
            "concurrent_upload_mib": upload_mib,
            "concurrent_seconds": concurrent_seconds,
        }))
    });
    let rss = peak_rss_kib(proxy.id());
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = serve.kill();
    let _ = serve.wait();
    if let Some((_, child)) = &mut nginx {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut result = result?;
    result["proxy_peak_rss_mib"] = json!(rss? as f64 / 1024.0);
    println!("{result}");
    Ok(())
}
