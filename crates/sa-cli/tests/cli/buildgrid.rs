//! Priming on a real distributed engine: BuildGrid 0.9.1 on PostgreSQL, with `sa worker`
//! processes as its bots, instance name `main`, no local store on the priming side.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sa_cas::testing::{BuildGrid, Fault, FaultProxy};
use sa_cas::{ActionCache, GrpcCas, GrpcConfig};

use super::*;

pub(crate) const INSTANCE: &str = "main";

/// `sa worker` processes serving a BuildGrid; killed when dropped.
pub(crate) struct Workers {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Workers {
    pub(crate) fn start(grid: &BuildGrid, dir: &Path, count: usize) -> Workers {
        let mut workers = Workers { children: Vec::new(), logs: Vec::new() };
        for _ in 0..count {
            workers.add(grid, dir);
        }
        workers
    }

    fn add(&mut self, grid: &BuildGrid, dir: &Path) {
        let n = self.children.len();
        let log = dir.join(format!("worker{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Process::new(env!("CARGO_BIN_EXE_sa"))
            .args(["-v", "--remote", &grid.endpoint(), "--instance-name", INSTANCE, "worker"])
            .args(["--bot-id", &format!("w{n}"), "--sandbox", "none"])
            .env_remove("SA_CAS")
            .env_remove("SA_REMOTE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.children.push(child);
        self.logs.push(log);
    }

    /// Actions each worker started, from its log.
    fn executed(&self) -> Vec<usize> {
        self.logs
            .iter()
            .map(|log| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                text.lines().filter(|l| l.contains("executing action=")).count()
            })
            .collect()
    }

    pub(crate) fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|log| std::fs::read_to_string(log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// SIGKILL: the worker dies holding whatever lease it has.
    fn kill(&mut self, n: usize) {
        let _ = self.children[n].kill();
        let _ = self.children[n].wait();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for n in 0..self.children.len() {
            self.kill(n);
        }
    }
}

/// The remote store of a BuildGrid, instance `main`.
pub(crate) fn grid_store(endpoint: &str) -> GrpcCas {
    let mut config = GrpcConfig::new(endpoint);
    config.instance_name = INSTANCE.into();
    GrpcCas::connect(config).unwrap()
}

/// Generates build 1's speculative actions in the project's local store and copies every
/// blob to BuildGrid's CAS, where a team's blobs live; returns the output graph.
fn generate_into(p: &Project, grid: &BuildGrid) -> String {
    let (_, out1) = p.generate(&["--cas", &p.store()]);
    copy_store(&p.cas(), &grid_store(&grid.endpoint()));
    out1
}

/// `sa --remote ENDPOINT --instance-name main --json prime …` with no local store anywhere:
/// HOME and XDG_CACHE_HOME point into `home`, which must stay empty.
fn prime_remote(p: &Project, endpoint: &str, out1: &str, home: &Path, extra: &[&str]) -> Output {
    let graph2 = p.graph2.display().to_string();
    let out = Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(["--remote", endpoint, "--instance-name", INSTANCE, "--json", "prime"])
        .args(["--graph", &graph2, "--previous", out1])
        .args(extra)
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE")
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .output()
        .unwrap();
    assert!(
        std::fs::read_dir(home).map(|d| d.count()).unwrap_or(0) == 0,
        "remote-only priming made a local store under {}",
        home.display()
    );
    out
}

/// Asserts a prime succeeded and every adapted action is the one build 2 runs, executed or
/// cached, and now a hit in BuildGrid's ActionCache; returns the summary.
fn assert_primed(p: &Project, grid: &BuildGrid, out: &Output, workers: &Workers) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nworkers:\n{}\nbgd:\n{}",
        String::from_utf8_lossy(&out.stderr),
        workers.logs(),
        grid.log_text()
    );
    let all = lines(&stdout);
    let summary = all.last().unwrap()["summary"].clone();
    let primed = prime_lines(&stdout);
    assert_eq!(primed.len(), p.actions2.len(), "{summary}");
    let store = grid_store(&grid.endpoint());
    let expected: std::collections::BTreeSet<String> =
        p.actions2.values().map(|d| d.to_string()).collect();
    for line in &primed {
        assert!(line["status"] == "executed" || line["status"] == "cached", "{line}");
        let action = line["action"].as_str().unwrap();
        assert!(expected.contains(action), "primed the action build 2 runs: {line}");
        let digest = Digest::parse(DigestFunction::Sha256, action).unwrap();
        let result = store.get_action_result(&digest).unwrap();
        let result = result.unwrap_or_else(|| panic!("{action} is not in the ActionCache"));
        assert_eq!((result.exit_code, result.output_files.len()), (0, 1), "{action}");
    }
    summary
}

#[test]
fn remote_only_prime_spreads_200_actions_over_two_workers_and_every_result_hits() {
    let dir = tempfile::tempdir().unwrap();
    let p = Project::with_extra_sources(198);
    let grid = BuildGrid::start(&dir.path().join("grid"), INSTANCE, 30, 128);
    let workers = Workers::start(&grid, dir.path(), 2);
    let out1 = generate_into(&p, &grid);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let out = prime_remote(&p, &grid.endpoint(), &out1, &home, &[]);
    let summary = assert_primed(&p, &grid, &out, &workers);
    assert_eq!(summary["counts"]["executed"], 200, "{summary}");
    assert_eq!(summary["submitted"], 200, "{summary}");
    assert!(summary["actions_per_second"].as_f64().unwrap() > 0.0, "{summary}");
    let executed = workers.executed();
    assert_eq!(executed.iter().sum::<usize>(), 200, "{executed:?}");
    assert!(executed.iter().all(|n| *n > 0), "both workers took leases: {executed:?}");

    // Again: every action is in the ActionCache, nothing runs.
    let again = prime_remote(&p, &grid.endpoint(), &out1, &home, &[]);
    let summary = assert_primed(&p, &grid, &again, &workers);
    assert_eq!(summary["counts"]["cached"], 200, "{summary}");
    assert_eq!(workers.executed().iter().sum::<usize>(), 200, "nothing ran again");
}

#[test]
fn a_worker_killed_mid_lease_costs_time_not_results() {
    let dir = tempfile::tempdir().unwrap();
    // Six two-second actions on two workers; a bot session not updated for 6 s expires.
    let p = Project::build(4, 2.0);
    let grid = BuildGrid::start(&dir.path().join("grid"), INSTANCE, 6, 128);
    let mut workers = Workers::start(&grid, dir.path(), 2);
    let out1 = generate_into(&p, &grid);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let killer = std::thread::scope(|scope| {
        let prime = scope.spawn(|| prime_remote(&p, &grid.endpoint(), &out1, &home, &[]));
        // Kill worker 0 once it is running an action.
        let deadline = Instant::now() + Duration::from_secs(60);
        while workers.executed()[0] == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let held = workers.executed()[0];
        workers.kill(0);
        (prime.join().unwrap(), held)
    });
    let (out, held) = killer;
    assert!(held > 0, "worker 0 took a lease before it was killed");
    let summary = assert_primed(&p, &grid, &out, &workers);
    assert_eq!(summary["counts"]["executed"], 6, "{summary}");
}

#[test]
fn buildgrid_restarted_mid_prime_and_a_cut_stream_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let p = Project::build(18, 0.5);
    let mut grid = BuildGrid::start(&dir.path().join("grid"), INSTANCE, 30, 128);
    let workers = Workers::start(&grid, dir.path(), 2);
    let out1 = generate_into(&p, &grid);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    // A connection through the proxy is cut 3 s after it opens: the Execute streams in
    // flight break and are resumed with WaitExecution on a new connection.
    let proxy = FaultProxy::start(grid.port(), vec![Fault::CutAt(Duration::from_secs(3))]);
    let out = prime_remote(&p, &proxy.endpoint(), &out1, &home, &[]);
    let summary = assert_primed(&p, &grid, &out, &workers);
    assert!(summary["resumed_streams"].as_u64().unwrap() > 0, "{summary}");
    assert!(proxy.faults() > 0);

    // Fresh actions (another pause makes other commands), BuildGrid restarted mid-prime.
    let p2 = Project::build(18, 0.6);
    let out2 = generate_into(&p2, &grid);
    let endpoint = grid.endpoint();
    let out = std::thread::scope(|scope| {
        let prime = scope.spawn(|| prime_remote(&p2, &endpoint, &out2, &home, &[]));
        std::thread::sleep(Duration::from_secs(2));
        grid.restart();
        prime.join().unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary = lines(&stdout).last().unwrap()["summary"].clone();
    assert!(summary["retries"].as_u64().unwrap() > 0, "the restart was noticed: {summary}");
    assert_eq!(summary["counts"]["failed"], 0, "{summary}");
    assert_eq!(summary["counts"]["error"], 0, "{summary}");
    // BuildGrid's ActionCache (an LRU in memory) forgets what finished before the restart: a
    // second prime executes that again, and then every action hits.
    let again = prime_remote(&p2, &grid.endpoint(), &out2, &home, &[]);
    assert_primed(&p2, &grid, &again, &workers);
}

#[test]
fn resource_exhausted_under_load_is_retried_and_no_wait_returns_once_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let p = Project::build(18, 0.2);
    // 8 threads: the workers' calls and some Execute streams; 64 streams at once are
    // answered RESOURCE_EXHAUSTED, and the executor settles at fewer.
    let grid = BuildGrid::start(&dir.path().join("grid"), INSTANCE, 30, 8);
    let workers = Workers::start(&grid, dir.path(), 2);
    let out1 = generate_into(&p, &grid);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let out = prime_remote(&p, &grid.endpoint(), &out1, &home, &["--jobs", "64"]);
    let summary = assert_primed(&p, &grid, &out, &workers);
    assert!(summary["retries"].as_u64().unwrap() > 0, "RESOURCE_EXHAUSTED was retried: {summary}");

    // --no-wait: returns once every operation is accepted; the workers finish later.
    let p2 = Project::build(4, 1.0);
    let out2 = generate_into(&p2, &grid);
    let started = Instant::now();
    let out = prime_remote(&p2, &grid.endpoint(), &out2, &home, &["--no-wait"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let primed = prime_lines(&String::from_utf8_lossy(&out.stdout));
    assert!(primed.iter().all(|l| l["status"] == "accepted"), "{primed:?}");
    let store = grid_store(&grid.endpoint());
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in &primed {
        let digest =
            Digest::parse(DigestFunction::Sha256, line["action"].as_str().unwrap()).unwrap();
        while store.get_action_result(&digest).unwrap().is_none() {
            assert!(Instant::now() < deadline, "{digest} never finished:\n{}", workers.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!("--no-wait returned after {took:?}");
}

#[test]
fn leases_longer_than_the_keepalive_complete_and_concurrency_runs_leases_at_once() {
    use sa_exec::{Executor, Outcome, RemoteExecutor, RemoteOptions};
    let dir = tempfile::tempdir().unwrap();
    // BuildGrid takes a lease back from a bot silent for 3 s; each action takes 7 s.
    let grid = BuildGrid::start(&dir.path().join("grid"), INSTANCE, 3, 128);
    let log = dir.path().join("worker.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut worker = Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(["--remote", &grid.endpoint(), "--instance-name", INSTANCE, "worker"])
        .args(["--bot-id", "long", "--sandbox", "none", "--keepalive", "1", "--concurrency", "2"])
        .env("SA_LOG", "sa=debug,sa_exec=debug,sa_cas=info")
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let store = grid_store(&grid.endpoint());
    let markers = ["sleep 7.125", "sleep 7.25"];
    let actions: Vec<Digest> = markers
        .iter()
        .map(|marker| {
            let root = merkle::build_tree(&store, &[]).unwrap();
            let command = Command {
                arguments: vec!["sh".into(), "-c".into(), format!("{marker}; echo done > out")],
                output_paths: vec!["out".into()],
                environment_variables: vec![EnvironmentVariable {
                    name: "PATH".into(),
                    value: "/usr/bin:/bin".into(),
                }],
                ..Default::default()
            };
            let command = write_message(&store, &command).unwrap();
            let action = Action {
                command_digest: Some(command.to_proto()),
                input_root_digest: Some(root.to_proto()),
                platform: Some(sa_proto::reapi::Platform {
                    properties: vec![sa_proto::reapi::platform::Property {
                        name: "OSFamily".into(),
                        value: "linux".into(),
                    }],
                }),
                ..Default::default()
            };
            write_message(&store, &action).unwrap()
        })
        .collect();
    // Both actions running at the same time, on the one worker process.
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if markers.iter().all(|m| sa_cas::testing::processes_with(m) >= 1) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let options =
        RemoteOptions { jobs: 2, timeout: Duration::from_secs(120), ..Default::default() };
    let executor = RemoteExecutor::new(store.connection().clone(), options);
    let mut outcomes = Vec::new();
    executor.execute_all(&actions, &mut |finished| outcomes.push(finished));
    let worker_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(outcomes.len(), 2);
    for finished in &outcomes {
        match &finished.outcome {
            Outcome::Executed(result) => assert_eq!(result.exit_code, 0, "{worker_log}"),
            other => panic!("{}: {other:?}\n{worker_log}", finished.action),
        }
    }
    assert!(watcher.join().unwrap(), "both leases ran at once:\n{worker_log}");
    assert!(worker_log.contains("session kept alive"), "{worker_log}");
    // Each action ran once: a lease taken back would have run again on the other bot.
    let executing = worker_log.lines().filter(|l| l.contains("executing action=")).count();
    assert_eq!(executing, 2, "{worker_log}");
    let _ = worker.kill();
    let _ = worker.wait();
}

/// A build that asks for an action while `sa` is priming it: what BuildGrid 0.9.1 does with
/// the second Execute of an action whose job is still running. It merges them (its scheduler's
/// `create_operation_for_existing_job`): one execution, both callers get its result.
#[test]
fn buildgrid_merges_a_builds_execute_with_the_same_action_being_primed() {
    use sa_cas::{Cas, write_message};
    use sa_exec::{Executor, Outcome, RemoteExecutor, RemoteOptions};
    use sa_proto::reapi::{Action, Command, command::EnvironmentVariable};

    let dir = tempfile::tempdir().unwrap();
    let grid = BuildGrid::start(&dir.path().join("grid"), INSTANCE, 30, 128);
    let workers = Workers::start(&grid, dir.path(), 2);
    let store = grid_store(&grid.endpoint());
    let root = store
        .write_blob(
            sa_cas::merkle::directory_blob(store.digest_function(), &Default::default())
                .into_data(),
        )
        .unwrap();
    // Two runs would give two different outputs (the time in nanoseconds).
    let command = Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), "sleep 3; date +%s%N > out".into()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: vec!["out".into()],
        ..Default::default()
    };
    let action = Action {
        command_digest: Some(write_message(&store, &command).unwrap().to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    let action = write_message(&store, &action).unwrap();
    let execute = |delay: u64| {
        let endpoint = grid.endpoint();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            let mut config = GrpcConfig::new(endpoint);
            config.instance_name = INSTANCE.into();
            let executor = RemoteExecutor::new(
                sa_cas::GrpcConnection::open(config).unwrap(),
                RemoteOptions::default(),
            );
            match executor.execute_one(&action) {
                Outcome::Executed(result) => result.output_files[0].digest.clone().unwrap(),
                other => panic!("{other:?}"),
            }
        })
    };
    // The priming submits; the build asks for the same action a second later, while it runs.
    let primed = execute(0);
    let asked = execute(1000);
    let (primed, asked) = (primed.join().unwrap(), asked.join().unwrap());
    assert_eq!(primed, asked, "one result for both");
    assert_eq!(workers.executed().iter().sum::<usize>(), 1, "executed once: {}", workers.logs());
}
