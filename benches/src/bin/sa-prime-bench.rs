//! `sa-prime-bench [--cached N] [--executed N] [--grid N]`: priming throughput of
//! `sa_exec::RemoteExecutor` (what `sa prime` drives) on real services on loopback:
//! (a) N actions whose results are in buildbox-casd's ActionCache already; (b) N trivial
//! actions (`/usr/bin/true`) executed by casd's runner with `--jobs=2`, against a minimal
//! client with two blocking Execute loops (casd alone); (c) N trivial actions through
//! BuildGrid 0.9.1 with two in-process Bots workers. Prints one JSON object: actions per
//! second and the time from submission to result (p50, p99) of each.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sa_cas::testing::{BuildGrid, Casd};
use sa_cas::{ActionCache, Blob, Digest, DigestFunction, GrpcCas, GrpcConfig};
use sa_exec::{
    BotOptions, BotWorker, ExecConfig, Executor, Outcome, RemoteExecutor, RemoteOptions,
};
use sa_proto::reapi::execution_client::ExecutionClient;
use sa_proto::reapi::{Action, ActionResult, Command, ExecuteRequest, command};
use serde_json::{Value, json};

const SHA: DigestFunction = DigestFunction::Sha256;

fn arg(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

/// `count` distinct trivial actions (`/usr/bin/true`, an empty input root), stored in
/// `store`; `tag` keeps sets apart.
fn actions(store: &GrpcCas, tag: &str, count: usize) -> Result<Vec<Digest>> {
    let mut blobs = vec![Blob::new(SHA, bytes::Bytes::new())];
    let mut digests = Vec::with_capacity(count);
    for i in 0..count {
        let command = Command {
            arguments: vec!["/usr/bin/true".into()],
            environment_variables: vec![command::EnvironmentVariable {
                name: "SA_BENCH".into(),
                value: format!("{tag}-{i}"),
            }],
            ..Default::default()
        };
        let command = Blob::from_message(SHA, &command);
        let action = Action {
            command_digest: Some(command.digest().to_proto()),
            input_root_digest: Some(SHA.empty_digest().to_proto()),
            ..Default::default()
        };
        let action = Blob::from_message(SHA, &action);
        digests.push(*action.digest());
        blobs.push(command);
        blobs.push(action);
    }
    sa_cas::merkle::write_in_batches(store, &blobs)?;
    Ok(digests)
}

/// Runs the actions through a remote executor; fails unless every one succeeded as `want`.
fn drive(executor: &dyn Executor, actions: &[Digest], want_cached: bool) -> Result<Value> {
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(actions.len());
    let mut failures = Vec::new();
    executor.execute_all(actions, &mut |finished| {
        latencies.push(finished.latency);
        match finished.outcome {
            Outcome::Cached(r) if want_cached && r.exit_code == 0 => {}
            Outcome::Executed(r) if !want_cached && r.exit_code == 0 => {}
            other => failures.push(format!("{}: {other:?}", finished.action)),
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        bail!("{} actions did not come out as expected, e.g. {}", failures.len(), failures[0]);
    }
    let mut value = summary(actions.len(), seconds, latencies);
    value["retries"] = executor.counters().retries.into();
    Ok(value)
}

fn summary(count: usize, seconds: f64, latencies: Vec<Duration>) -> Value {
    let latency = sa_prime::Latency::of(latencies);
    json!({
        "actions": count,
        "seconds": seconds,
        "per_second": count as f64 / seconds,
        "p50_ms": latency.p50.as_secs_f64() * 1e3,
        "p99_ms": latency.p99.as_secs_f64() * 1e3,
    })
}

/// The minimal client: `jobs` threads, each one blocking Execute at a time.
fn baseline(endpoint: &str, actions: &[Digest], jobs: usize) -> Result<Value> {
    let runtime = tokio::runtime::Runtime::new()?;
    let channel = runtime.block_on(
        tonic::transport::Channel::from_shared(endpoint.replace("grpc://", "http://"))?.connect(),
    )?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let latencies = std::sync::Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(action) = actions.get(i) else { return Ok(()) };
                        let one = Instant::now();
                        let mut client = ExecutionClient::new(channel.clone());
                        runtime.block_on(async {
                            let request = ExecuteRequest {
                                action_digest: Some(action.to_proto()),
                                ..Default::default()
                            };
                            let mut stream = client.execute(request).await?.into_inner();
                            while let Some(op) = stream.message().await? {
                                if op.done {
                                    break;
                                }
                            }
                            Ok::<_, tonic::Status>(())
                        })?;
                        latencies.lock().expect("no panics").push(one.elapsed());
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("no panics")?;
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(summary(actions.len(), seconds, latencies.into_inner().expect("no panics")))
}

fn remote(endpoint: &str, instance: &str) -> Result<(GrpcCas, RemoteExecutor)> {
    let mut config = GrpcConfig::new(endpoint);
    config.instance_name = instance.into();
    let cas = GrpcCas::connect(config)?;
    // SA_BENCH_JOBS: executions in flight (default: RemoteOptions's, what `sa prime` uses).
    let mut options = RemoteOptions::default();
    if let Some(jobs) = std::env::var("SA_BENCH_JOBS").ok().and_then(|j| j.parse().ok()) {
        options.jobs = jobs;
    }
    let executor = RemoteExecutor::new(cas.connection().clone(), options);
    Ok((cas, executor))
}

fn main() -> Result<()> {
    // `SA_LOG=debug` shows the executor's retries.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SA_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cached = arg(&args, "--cached", 6000)?;
    let executed = arg(&args, "--executed", 1000)?;
    let grid = arg(&args, "--grid", 200)?;
    let dir = tempfile::tempdir()?;
    let mut report = serde_json::Map::new();

    let casd = Casd::start_executing_host_tools(&dir.path().join("casd"), 2);
    let (store, executor) = remote(&casd.endpoint(), "")?;
    eprintln!("sa-prime-bench: {cached} actions already in casd's ActionCache");
    let hits = actions(&store, "cached", cached)?;
    for action in &hits {
        let result = ActionResult {
            stdout_digest: Some(SHA.empty_digest().to_proto()),
            stderr_digest: Some(SHA.empty_digest().to_proto()),
            ..Default::default()
        };
        store.update_action_result(action, &result)?;
    }
    if std::env::var_os("SA_BENCH_DEBUG").is_some() {
        eprintln!("{:?}", store.get_action_result(&hits[0])?);
    }
    // The median of three runs: the rate is casd's on cores it shares with this client.
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(drive(&executor, &hits, true)?);
    }
    runs.sort_by(|a, b| {
        a["per_second"].as_f64().partial_cmp(&b["per_second"].as_f64()).expect("rates are numbers")
    });
    report.insert("cached".into(), runs.swap_remove(1));

    eprintln!("sa-prime-bench: {executed} trivial actions executed by casd's runner (--jobs=2)");
    let runs = actions(&store, "executed", executed)?;
    report.insert("executed".into(), drive(&executor, &runs, false)?);
    let alone = actions(&store, "baseline", executed)?;
    report.insert("casd_alone".into(), baseline(&casd.endpoint(), &alone, 2)?);
    drop(casd);

    eprintln!("sa-prime-bench: {grid} trivial actions through BuildGrid with two workers");
    let buildgrid = BuildGrid::start(&dir.path().join("grid"), "main", 30, 128);
    let (store, executor) = remote(&buildgrid.endpoint(), "main")?;
    let stop = Arc::new(AtomicBool::new(false));
    for n in 0..2 {
        let (bot_store, _) = remote(&buildgrid.endpoint(), "main")?;
        let options = BotOptions {
            bot_id: format!("bench-{n}"),
            properties: vec![("OSFamily".into(), "linux".into())],
            exec: ExecConfig::default(),
            poll_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(30),
        };
        let stop = stop.clone();
        std::thread::spawn(move || BotWorker::new(bot_store, options).run(&stop));
    }
    let leased = actions(&store, "grid", grid)?;
    report.insert("buildgrid".into(), drive(&executor, &leased, false)?);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    println!("{}", Value::Object(report));
    Ok(())
}
