//! `prime`: the arguments and the report of [`sa_prime::prime`]; the loop is the library's.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use sa_cas::Store;
use sa_exec::{Executor, LocalExecutor, RemoteExecutor, RemoteOptions};
use sa_instantiator::Instantiator;
use sa_prime::{Event, PrimeReport, Status, StatusKind, Stores};
use serde_json::json;

use crate::args::StoreArgs;
use crate::commands::{InstantiateArgs, Plan, plan};
use crate::store;
use crate::ui::Ui;

#[derive(Debug, Args)]
pub(crate) struct PrimeArgs {
    #[command(flatten)]
    instantiate: InstantiateArgs,
    /// Execute here, with no server (sa-exec), against the local store (--cas); results go to
    /// its ActionCache, where `sa record` finds them. This runs commands taken from the store
    /// on this host: the store must be trusted, or the commands sandboxed (--sandbox).
    #[arg(long, conflicts_with = "executor")]
    local: bool,
    /// The execution service, when it is not --remote (as Bazel's --remote_executor beside
    /// --remote_cache): with --remote, it executes against that CAS and ActionCache (shared
    /// storage); with a local store (--cas), what it lacks is uploaded to it first.
    #[arg(long, value_name = "URL")]
    executor: Option<String>,
    /// With --local: run each command in a bubblewrap sandbox (only its input root writable,
    /// /usr read-only, no network), on the host unsandboxed (none), or bwrap where installed
    /// (auto).
    #[arg(long, value_enum, default_value = "auto")]
    sandbox: crate::args::SandboxChoice,
    /// Actions executing at once [default: 64 on an execution service, the number of CPUs
    /// with --local].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Deadline of one execution, in seconds, from submission to result (retries included).
    #[arg(long, default_value_t = 600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    execute_timeout: u64,
    /// Submit each action and move on once the service has accepted it, without waiting for
    /// results (actions that need another's output then stay unpredictable, and changed
    /// compiles are not re-scanned: a scan is waited for).
    #[arg(long)]
    no_wait: bool,
    /// Do not re-scan the dependencies of changed compiles: run each with the input files its
    /// recording had, overlays applied (a new include is then a failed prediction, a removed
    /// one an extra input).
    #[arg(long)]
    no_rescan: bool,
    /// The next build's compiles, from its JSON compilation database (`compiledb` over `make
    /// -n`, `ninja -t compdb`, CMake, Bear; `sa record … -- CC ARGS` entries are read as `CC
    /// ARGS`). With --workspace: each entry is matched to a recorded compile by working
    /// directory and outputs (or source): changed flags and moved outputs are predicted with
    /// the entry's arguments, an entry with no recorded compile is a new compile, a recorded
    /// compile no entry names is not run. Input roots come from dependency scans.
    #[arg(long, value_name = "FILE", requires = "workspace", conflicts_with_all = ["no_rescan", "no_wait"])]
    compile_commands: Option<std::path::PathBuf>,
    /// Exit 1 when a speculative action ran and failed, too (by default that is a wrong
    /// prediction, reported as `failed`, and the exit code says only whether priming could be
    /// done: 1 when an action could not be executed, status `error`).
    #[arg(long)]
    strict: bool,
}

/// Where actions run: here (the executor borrows the build's store, made in `prime`), or on
/// a service.
enum Choice {
    Local(sa_exec::ExecConfig, usize),
    Remote(Box<dyn Executor>),
}

/// The stores and the executor a combination of --cas, --remote, --executor and --local
/// chooses.
struct Setup {
    /// Where the build's blobs are (the graph's digests, the adapted actions).
    build: store::Opened,
    /// The executor's own CAS, when it is not `build`'s.
    executor_cas: Option<store::Opened>,
    executor: Choice,
    /// For the report: where actions run.
    executor_description: String,
}

pub(crate) fn prime(args: &StoreArgs, cmd: &PrimeArgs, ui: &mut Ui) -> Result<()> {
    let timeout = Duration::from_secs(cmd.execute_timeout);
    let setup = setup(args, cmd, timeout)?;
    ui.watch("store", &setup.build);
    if let Some(executor_cas) = &setup.executor_cas {
        ui.watch("execution service", executor_cas);
    }
    let Plan { states, targets, learned } = plan(args, &cmd.instantiate, &setup.build)?;
    let compile_commands =
        match (&cmd.compile_commands, &cmd.instantiate.workspace, targets.first()) {
            (Some(file), Some(workspace), Some((element, _))) => {
                planned_compiles(file, workspace, element, args.limits.max_graph_bytes)?
            }
            _ => Vec::new(),
        };
    let instantiator = Instantiator::new(&setup.build.store, states, cmd.instantiate.config(args))?;
    tracing::info!(executor = %setup.executor_description, "priming");
    let progress = ui.progress(0, "prime");
    progress.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let local_executor;
    let executor: &dyn Executor = match &setup.executor {
        Choice::Local(config, jobs) => {
            local_executor = LocalExecutor::new(&setup.build.store, config.clone(), *jobs);
            &local_executor
        }
        Choice::Remote(executor) => executor.as_ref(),
    };
    let stores = Stores {
        build: &setup.build.store,
        executor_cas: setup.executor_cas.as_ref().map(|o| &o.store as &dyn Store),
    };
    let report = sa_prime::prime(
        stores,
        executor,
        &instantiator,
        &targets,
        &sa_prime::PrimeOptions {
            limits: args.limits.tree(),
            rescan: !cmd.no_rescan && !cmd.no_wait,
            compile_commands,
        },
        &mut |event| match event {
            Event::Scan { actions } => {
                progress.set_message(format!("scan {actions} changed compiles"));
            }
            Event::Wave { number, actions } => {
                progress.set_message(format!("prime wave {number}"));
                progress.inc_length(actions as u64);
            }
            Event::Done { .. } => progress.inc(1),
        },
    );
    progress.finish_and_clear();
    let report = report?;
    if let Some(learned) = &learned {
        let config = sa_learn::LearnConfig {
            max_state_bytes: args.limits.max_graph_bytes,
            ..Default::default()
        };
        crate::learned::keep_priming(&setup.build.store, learned, &report, &config)
            .context("keeping what the priming did in the learned state")?;
    }
    for (phase, elapsed) in &report.phases {
        ui.record_phase(phase.name(), *elapsed);
    }
    print_report(ui, &report, &setup.executor_description)?;
    let errors = report.count(StatusKind::Error);
    if errors > 0 {
        bail!(
            "{errors} actions could not be executed (status error): priming was not done for them"
        );
    }
    let failed = report.count(StatusKind::Failed);
    if failed > 0 {
        let wrong = format!(
            "{failed} speculative actions ran and failed (status failed): those predictions did \
             not come true"
        );
        if cmd.strict {
            bail!("{wrong} (--strict)");
        }
        eprintln!("warning: {wrong}");
    }
    Ok(())
}

fn setup(args: &StoreArgs, cmd: &PrimeArgs, timeout: Duration) -> Result<Setup> {
    let remote_options = |jobs: Option<u32>| RemoteOptions {
        jobs: jobs.map_or(sa_exec::DEFAULT_REMOTE_JOBS, |j| j as usize),
        timeout,
        wait: !cmd.no_wait,
        ..Default::default()
    };
    // The executor on the same connection as an opened remote store.
    let remote_executor = |opened: &store::Opened| -> Choice {
        let grpc = opened.grpc.as_ref().expect("a remote store has its client");
        Choice::Remote(Box::new(RemoteExecutor::new(
            grpc.connection().clone(),
            remote_options(cmd.jobs),
        )))
    };
    let separate_executor = |url: &String| -> Result<Choice> {
        let connection = sa_cas::GrpcConnection::open(store::grpc_config(args, url)?)?;
        Ok(Choice::Remote(Box::new(RemoteExecutor::new(connection, remote_options(cmd.jobs)))))
    };
    if cmd.local {
        if args.remote.is_some() {
            crate::exit::usage!(
                "sa prime takes --local or an execution service (--remote, --executor)"
            );
        }
        if cmd.no_wait {
            crate::exit::usage!(
                "--no-wait needs an execution service: --local runs every action here"
            );
        }
        let build = store::open_local_store(args)?;
        let config = crate::args::exec_config(args, cmd.sandbox, timeout)?;
        let jobs = cmd.jobs.map_or_else(
            || std::thread::available_parallelism().map_or(2, |n| n.get()),
            |j| j as usize,
        );
        return Ok(Setup {
            build,
            executor_cas: None,
            executor: Choice::Local(config, jobs),
            executor_description: "this machine".into(),
        });
    }
    match (&args.cas, &args.remote, &cmd.executor) {
        (_, None, None) => crate::exit::usage!(
            "sa prime needs an execution service (--remote URL, --executor URL) or --local"
        ),
        // A remote store only: read and write it, execute on it or on --executor.
        (None, Some(remote), executor) => {
            let build = store::open_remote(args, remote)?;
            let (executor, description) = match executor {
                None => (remote_executor(&build), remote.clone()),
                Some(url) => (separate_executor(url)?, url.clone()),
            };
            Ok(Setup { build, executor_cas: None, executor, executor_description: description })
        }
        // A local store: upload to the service's CAS (--remote, else the executor's own).
        (_, remote, executor) => {
            let build = store::open_local_store(args)?;
            let cas_url = remote.as_ref().or(executor.as_ref()).expect("one is given");
            let executor_cas = store::open_remote(args, cas_url)?;
            let (executor, description) = match executor {
                Some(url) if url != cas_url => (separate_executor(url)?, url.clone()),
                _ => (remote_executor(&executor_cas), cas_url.clone()),
            };
            Ok(Setup {
                build,
                executor_cas: Some(executor_cas),
                executor,
                executor_description: description,
            })
        }
    }
}

fn print_report(ui: &mut Ui, report: &PrimeReport, executor: &str) -> Result<()> {
    for primed in &report.actions {
        let kind = primed.status.kind();
        if ui.json() {
            let mut line = json!({
                "element": primed.element,
                "base_action": primed.base.map(|b| b.to_string()),
                "action": primed.action.to_string(),
                "status": kind.name(),
            });
            if !primed.status.detail().is_empty() {
                line["detail"] = primed.status.detail().into();
            }
            ui.line(line)?;
        } else if matches!(
            primed.status,
            Status::Failed(_) | Status::Error(_) | Status::Unpredictable(_)
        ) {
            ui.line(format!(
                "{}: {} {}: {}",
                primed.element,
                kind.name(),
                primed.action,
                primed.status.detail()
            ))?;
        }
    }
    let seconds = report.elapsed.as_secs_f64();
    let per_second = if seconds > 0.0 { report.submitted as f64 / seconds } else { 0.0 };
    if ui.json() {
        let counts: serde_json::Map<String, serde_json::Value> = StatusKind::ALL
            .iter()
            .map(|k| (k.name().to_owned(), report.count(*k).into()))
            .collect();
        let phases: serde_json::Map<String, serde_json::Value> = report
            .phases
            .iter()
            .map(|(p, d)| (p.name().to_owned(), d.as_secs_f64().into()))
            .collect();
        ui.line(json!({
            "summary": {
                "executor": executor,
                "actions": report.actions.len(),
                "submitted": report.submitted,
                "waves": report.waves,
                "counts": counts,
                "phases_seconds": phases,
                "seconds": seconds,
                "actions_per_second": per_second,
                "latency_ms": {
                    "p50": report.latency.p50.as_secs_f64() * 1e3,
                    "p99": report.latency.p99.as_secs_f64() * 1e3,
                    "max": report.latency.max.as_secs_f64() * 1e3,
                },
                "retries": report.counters.retries,
                "resumed_streams": report.counters.resumed,
                "parked_streams": report.counters.parked,
                "resubmitted": report.counters.resubmitted,
            }
        }))?;
    } else {
        let counts: Vec<String> = StatusKind::ALL
            .iter()
            .filter(|k| **k != StatusKind::Accepted || report.count(**k) > 0)
            .map(|k| {
                let label = match k {
                    StatusKind::Cached => "already cached",
                    other => other.name(),
                };
                format!("{} {label}", report.count(*k))
            })
            .collect();
        ui.line(format!(
            "primed {} actions on {executor}: {} ({} submitted in {} waves, {:.1}s, {:.0} actions/s)",
            report.actions.len(),
            counts.join(", "),
            report.submitted,
            report.waves,
            seconds,
            per_second
        ))?;
    }
    Ok(())
}

/// The compiles of the compilation database `file` as priming plans them: working directories
/// below the workspace, arguments as `sa record` records them. Entries that are not
/// single-source compiles (links, preprocessing) are left out.
fn planned_compiles(
    file: &std::path::Path,
    workspace: &std::path::Path,
    element: &str,
    max_bytes: u64,
) -> Result<Vec<sa_prime::PlannedCompile>> {
    let text = sa_cas::read_bounded_text(file, max_bytes)
        .with_context(|| format!("reading the compilation database {}", file.display()))?;
    let entries = sa_compile::parse_compile_commands(&text)
        .with_context(|| format!("compilation database {}", file.display()))?;
    let root = workspace
        .canonicalize()
        .with_context(|| format!("resolving the workspace {}", workspace.display()))?;
    let base = file.parent().unwrap_or(std::path::Path::new("."));
    let mut planned = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        if sa_compile::parse_compile(&entry.arguments).is_none() {
            continue;
        }
        let directory = sa_compile::normalize(&base.join(&entry.directory));
        let directory = directory.canonicalize().unwrap_or(directory);
        let Some(working_directory) = sa_compile::under(&directory, &root) else {
            bail!(
                "compilation database {}: entry {index}: its directory {} is not inside the \
                 workspace {}",
                file.display(),
                entry.directory,
                root.display()
            );
        };
        planned.push(sa_prime::PlannedCompile {
            element: element.to_owned(),
            working_directory,
            arguments: sa_compile::relativize_args(&entry.arguments, &root, &directory),
        });
    }
    Ok(planned)
}
