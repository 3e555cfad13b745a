//! `serve`: the recording proxy, a learner and a primer in one process, so every build
//! teaches and the next one is primed with no person in the loop.
//!
//! Four threads beside the proxy's: the *learner* polls the recording directory; a new
//! invocation's file gets a snapshot of the workspace (the newest one if the workspace has not
//! changed since it was taken, else a fresh ingest), and once its last call is `--quiet-after`
//! seconds old it is learned against that snapshot (`sa_learn::learn`). The *watcher* (inotify
//! through `notify`) marks the workspace changed and, once it has been quiet for `--debounce`,
//! asks for a priming; so does every learned build. The *primer* runs one priming at a time
//! (`sa_prime::prime_until` from the learned state against the workspace as it is); a newer
//! request cancels what the running one has not yet submitted. The main thread prints the
//! events the others send.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use sa_cas::Digest;
use sa_exec::{RemoteExecutor, RemoteOptions};
use sa_instantiator::{InstantiateConfig, Instantiator};
use sa_prime::{StatusKind, Stores};
use serde_json::{Value, json};

use crate::args::StoreArgs;
use crate::commands::LearnedPlan;
use crate::learned::{LearningArgs, ProjectArgs};
use crate::proxy::ServiceArgs;
use crate::store;
use crate::ui::Ui;

/// Invocations followed at once; more are learned once these end.
const MAX_INVOCATIONS: usize = 256;

/// Actions a `primed` event lists at most.
const MAX_LISTED: usize = 10_000;

/// How often the learner looks at the recordings.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    serving: ServingArgs,
}

/// What `serve` adds to the proxy: the workspace, learning and priming.
#[derive(Debug, Args)]
#[command(next_help_heading = "Learning and priming")]
pub(crate) struct ServingArgs {
    /// The directory the builds read their sources from.
    #[arg(long, value_name = "DIR")]
    workspace: PathBuf,
    #[command(flatten)]
    project: ProjectArgs,
    /// Keep each invocation's recording here [default: a temporary directory; each recording
    /// is removed once learned].
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// An invocation has ended when its last call is this many seconds old.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    quiet_after: f64,
    /// Do not watch the workspace: prime only after each learned build.
    #[arg(long)]
    no_watch: bool,
    /// Prime once the workspace has had no change for this many milliseconds.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    debounce: u64,
    #[command(flatten)]
    learning: LearningArgs,
    /// Actions priming submits at once.
    #[arg(long, default_value_t = sa_exec::DEFAULT_REMOTE_JOBS as u32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    jobs: u32,
    /// Deadline of one primed execution, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    execute_timeout: u64,
}

/// What the threads share.
struct Service<'a> {
    args: &'a StoreArgs,
    cmd: &'a ServeArgs,
    name: String,
    workspace: PathBuf,
    store: store::Opened,
    events: Mutex<Sender<(Value, String)>>,
    snapshots: Mutex<Snapshots>,
    /// Each ingest of the workspace reads only what changed since the last.
    ingest_cache: sa_cas::merkle::IngestCache,
    primer: Primer,
}

/// The newest snapshot of the workspace, and when it last changed.
struct Snapshots {
    latest: Option<(Digest, Instant)>,
    changed: Instant,
}

/// Priming requests: a generation counter (the newest request wins) and the running priming's
/// cancel flag.
#[derive(Default)]
struct Primer {
    requested: Mutex<u64>,
    wake: Condvar,
    cancel: Mutex<Arc<AtomicBool>>,
    /// The sources the running priming predicts for.
    priming: Mutex<Option<Digest>>,
}

impl Primer {
    /// Asks for a priming after the workspace changed: it now has `sources` (`None`: unknown).
    /// The running priming is cancelled only if it predicts for other sources: a change that
    /// leaves the snapshot as it was (an editor's save of the same bytes, a build writing
    /// outputs the snapshot ignores) does not throw its work away.
    fn sources_changed(&self, sources: Option<Digest>) {
        let running = *self.priming.lock().unwrap_or_else(|e| e.into_inner());
        self.request(running.is_none() || running != sources);
    }

    /// Marks the sources the running priming predicts for (`None`: none runs).
    fn running(&self, sources: Option<Digest>) {
        *self.priming.lock().unwrap_or_else(|e| e.into_inner()) = sources;
    }

    /// Asks for a priming; `sources_changed` (the watcher's requests) also cancels the running
    /// one's unsubmitted waves, which the change made pointless.
    fn request(&self, sources_changed: bool) {
        let mut requested = self.requested.lock().unwrap_or_else(|e| e.into_inner());
        *requested += 1;
        if sources_changed {
            self.cancel.lock().unwrap_or_else(|e| e.into_inner()).store(true, Ordering::Relaxed);
        }
        self.wake.notify_all();
    }

    /// Waits for a request newer than `done`; returns its generation and a fresh cancel flag.
    fn next(&self, done: u64) -> (u64, Arc<AtomicBool>) {
        let mut requested = self.requested.lock().unwrap_or_else(|e| e.into_inner());
        while *requested <= done {
            requested = self.wake.wait(requested).unwrap_or_else(|e| e.into_inner());
        }
        let cancel = Arc::new(AtomicBool::new(false));
        *self.cancel.lock().unwrap_or_else(|e| e.into_inner()) = cancel.clone();
        (*requested, cancel)
    }
}

impl Service<'_> {
    fn say(&self, event: Value, human: String) {
        let _ = self.events.lock().unwrap_or_else(|e| e.into_inner()).send((event, human));
    }

    fn error(&self, what: &str, err: &anyhow::Error) {
        let text = format!("{err:#}");
        self.say(
            json!({"event": "error", "what": what, "error": text}),
            format!("error: {what}: {text}"),
        );
    }

    /// The workspace's sources now: the newest snapshot if nothing changed since it was
    /// taken, else a new one.
    fn snapshot(&self) -> Result<Digest> {
        {
            let snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((digest, taken)) = snapshots.latest
                && taken > snapshots.changed
            {
                return Ok(digest);
            }
        }
        let taken = Instant::now();
        let digest = crate::learned::ingest_workspace_cached(
            &self.store.store,
            &self.workspace,
            self.args,
            &self.ingest_cache,
        )?;
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        if snapshots.latest.is_none_or(|(_, t)| t < taken) {
            snapshots.latest = Some((digest, taken));
        }
        Ok(digest)
    }

    fn changed(&self) {
        self.snapshots.lock().unwrap_or_else(|e| e.into_inner()).changed = Instant::now();
    }
}

pub(crate) fn serve(args: &StoreArgs, cmd: &ServeArgs, ui: &mut Ui) -> Result<()> {
    let workspace = std::fs::canonicalize(&cmd.serving.workspace)
        .with_context(|| format!("--workspace {}", cmd.serving.workspace.display()))?;
    let name = cmd.serving.project.name_for(Some(&workspace))?;
    let quiet = Duration::try_from_secs_f64(cmd.serving.quiet_after)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| {
            format!(
                "--quiet-after {}: expected a positive number of seconds",
                cmd.serving.quiet_after
            )
        })?;
    // Default: a temporary directory, removed when serve ends (on a signal too).
    let (_temporary, _removed_on_signal);
    let record = match &cmd.serving.record {
        Some(dir) => dir.clone(),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("sa-serve-")
                .tempdir()
                .context("making a recording directory")?;
            _removed_on_signal = sa_exec::ScratchGuard::register(dir.path());
            let path = dir.path().to_owned();
            _temporary = dir;
            path
        }
    };
    let proxy = cmd.service.start(args, &record)?;
    let remote = args.remote.clone().unwrap_or_else(|| cmd.service.upstream.clone());
    let opened = store::open_remote(args, &remote)?;
    let (sender, events) = mpsc::channel();
    let service = Service {
        args,
        cmd,
        name,
        workspace,
        store: opened,
        events: Mutex::new(sender),
        snapshots: Mutex::new(Snapshots { latest: None, changed: Instant::now() }),
        ingest_cache: sa_cas::merkle::IngestCache::default(),
        primer: Primer::default(),
    };
    let listening = json!({
        "event": "listening", "listening": proxy.endpoint(), "upstream": cmd.service.upstream,
        "project": service.name, "workspace": service.workspace, "record": record,
    });
    ui.line(if ui.json() {
        listening.to_string()
    } else {
        format!(
            "sa serve: {} -> {}, learning {:?} from builds of {}",
            proxy.endpoint(),
            cmd.service.upstream,
            service.name,
            service.workspace.display()
        )
    })?;
    ui.flush()?;
    std::thread::scope(|scope| -> Result<()> {
        let service = &service;
        let activity = proxy.activity();
        scope.spawn(move || {
            learner(service, &record, &activity, quiet, cmd.serving.record.is_none())
        });
        scope.spawn(move || primer(service));
        let _watcher = if cmd.serving.no_watch { None } else { Some(watch(scope, service)?) };
        // What a previous run learned may be stale against the workspace: prime once now.
        service.primer.request(false);
        print_events(ui, events)
    })?;
    drop(proxy);
    Ok(())
}

fn print_events(ui: &mut Ui, events: Receiver<(Value, String)>) -> Result<()> {
    for (event, human) in events {
        ui.line(if ui.json() { event.to_string() } else { human })?;
        ui.flush()?;
    }
    Ok(())
}

/// Follows the recordings; learns each invocation once it has been quiet for `quiet`: no
/// recorded call open (a long Execute writes nothing until it ends) and its recording
/// unchanged.
fn learner(
    service: &Service<'_>,
    record: &Path,
    activity: &sa_proxy::Activity,
    quiet: Duration,
    remove: bool,
) {
    struct Followed {
        snapshot: Digest,
        len: u64,
        changed: Instant,
        learned: u64,
    }
    let mut followed: HashMap<PathBuf, Followed> = HashMap::new();
    loop {
        std::thread::sleep(POLL);
        let Ok(entries) = std::fs::read_dir(record) else { continue };
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            let Ok(metadata) = entry.metadata() else { continue };
            present.push(path.clone());
            if !followed.contains_key(&path) {
                if followed.len() >= MAX_INVOCATIONS {
                    continue;
                }
                match service.snapshot() {
                    Ok(snapshot) => {
                        followed.insert(
                            path.clone(),
                            Followed { snapshot, len: 0, changed: Instant::now(), learned: 0 },
                        );
                    }
                    Err(err) => {
                        service.error("taking a snapshot of the workspace", &err);
                        continue;
                    }
                }
            }
            let f = followed.get_mut(&path).expect("inserted above");
            if metadata.len() != f.len {
                f.len = metadata.len();
                f.changed = Instant::now();
            }
            let stem =
                path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let ended = match activity.of(&stem) {
                sa_proxy::InvocationState::Busy => false,
                sa_proxy::InvocationState::Quiet(since) => since >= quiet,
                sa_proxy::InvocationState::Unknown => true,
            };
            if f.len > f.learned && ended && f.changed.elapsed() >= quiet {
                f.learned = f.len;
                let snapshot = f.snapshot;
                learn_invocation(service, &path, snapshot);
                if remove && std::fs::remove_file(&path).is_ok() {
                    followed.remove(&path);
                }
                service.primer.request(false);
            }
        }
        followed.retain(|path, _| present.contains(path));
    }
}

fn learn_invocation(service: &Service<'_>, path: &Path, snapshot: Digest) {
    let invocation =
        path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let result = (|| -> Result<sa_learn::Learned> {
        let recorded = crate::learned::read_proxy_recording(service.args, path)?;
        let config = service.cmd.serving.learning.config(service.args);
        Ok(sa_learn::learn(
            &service.store.store,
            &service.name,
            &invocation,
            &recorded,
            snapshot,
            &config,
        )?)
    })();
    match result {
        Ok(learned) => {
            for left in learned.unreadable.iter().chain(&learned.gone) {
                service.say(
                    json!({"event": "warning", "action": left.action.to_string(), "warning": left.reason}),
                    format!("warning: action {} not learned: {}", left.action, left.reason),
                );
            }
            let s = learned.state.last_build.as_ref().expect("learn sets it");
            service.say(
                json!({
                    "event": "build", "invocation": s.invocation, "actions": s.actions,
                    "hits": s.hits, "primed_hits": s.primed_hits, "learned": s.learned,
                    "failed": s.failed, "dropped": s.dropped,
                    "identities": learned.state.entries.len(),
                    "unattributed_inputs": learned.generate.unattributed_inputs,
                }),
                format!(
                    "{} ({} identities known)",
                    crate::learned::build_line(s),
                    learned.state.entries.len()
                ),
            );
        }
        Err(err) => service.error(&format!("learning invocation {invocation}"), &err),
    }
}

/// Primes, one request at a time.
fn primer(service: &Service<'_>) {
    let mut done = 0;
    loop {
        let (generation, cancel) = service.primer.next(done);
        done = generation;
        let primed = prime_once(service, &cancel);
        service.primer.running(None);
        if let Err(err) = primed {
            service.error("priming", &err);
        }
    }
}

fn prime_once(service: &Service<'_>, cancel: &AtomicBool) -> Result<()> {
    let config = sa_learn::LearnConfig {
        max_state_bytes: service.args.limits.max_graph_bytes,
        ..Default::default()
    };
    if sa_learn::load(&service.store.store, &service.name, &config)?.is_none() {
        return Ok(()); // Nothing learned yet: the first build teaches.
    }
    let sources = service.snapshot()?;
    service.primer.running(Some(sources));
    let plan = crate::commands::learned_plan(
        service.args,
        &service.store,
        &service.name,
        &service.workspace,
        Some(sources),
    )?;
    let learned: &LearnedPlan = plan.learned.as_ref().expect("a learned plan");
    if learned.state.priming.as_ref().is_some_and(|p| p.sources == sources)
        || learned.state.sources == Some(sources)
    {
        return Ok(()); // Primed for these sources already, or they are the build's own.
    }
    let instantiate =
        InstantiateConfig { limits: service.args.limits.tree(), ..Default::default() };
    let instantiator = Instantiator::new(&service.store.store, plan.states, instantiate)?;
    let executor = upstream_executor(service)?;
    let report = sa_prime::prime_until(
        Stores { build: &service.store.store, executor_cas: None },
        &executor,
        &instantiator,
        &plan.targets,
        &sa_prime::PrimeOptions { limits: service.args.limits.tree(), ..Default::default() },
        cancel,
        &mut |_| {},
    )?;
    if !report.cancelled {
        // A cancelled priming is redone for the newest sources; what it executed is then found
        // cached and kept as that priming's.
        crate::learned::keep_priming(&service.store.store, learned, &report, &config)?;
    }
    say_primed(service, sources, &report);
    Ok(())
}

/// The executor priming submits to: the upstream, on the store's connection when the store
/// is the upstream.
fn upstream_executor(service: &Service<'_>) -> Result<RemoteExecutor> {
    let upstream = &service.cmd.service.upstream;
    let connection = if service.args.remote.as_ref().is_some_and(|r| r != upstream) {
        sa_cas::GrpcConnection::open(store::grpc_config(service.args, upstream)?)?
    } else {
        service.store.grpc.as_ref().expect("serve's store is remote").connection().clone()
    };
    Ok(RemoteExecutor::new(
        connection,
        RemoteOptions {
            jobs: service.cmd.serving.jobs as usize,
            timeout: Duration::from_secs(service.cmd.serving.execute_timeout),
            ..Default::default()
        },
    ))
}

/// The `primed` event (and line) of one priming, and a warning per action that failed.
fn say_primed(service: &Service<'_>, sources: Digest, report: &sa_prime::PrimeReport) {
    let count = |kind| report.count(kind);
    let changed = report.actions.iter().filter(|a| a.base != Some(a.action)).count();
    let mut event = json!({
        "event": "primed", "sources": sources.to_string(), "actions": report.actions.len(),
        "changed": changed, "cancelled": report.cancelled, "seconds": report.elapsed.as_secs_f64(),
    });
    // The adapted actions now in the cache, for scripts that check them against the build.
    let primed: Vec<String> = report
        .actions
        .iter()
        .filter(|a| a.base != Some(a.action))
        .filter(|a| matches!(a.status.kind(), StatusKind::Executed | StatusKind::Cached))
        .map(|a| a.action.to_string())
        .collect();
    event["primed_truncated"] = (primed.len() > MAX_LISTED).into();
    event["primed"] = primed.into_iter().take(MAX_LISTED).collect::<Vec<_>>().into();
    let mut said = Vec::new();
    for kind in StatusKind::ALL {
        event[kind.name()] = count(kind).into();
        if count(kind) > 0 && (kind != StatusKind::Cached || changed > 0) {
            said.push(format!("{} {}", count(kind), kind.name()));
        }
    }
    let wrong = |a: &&sa_prime::PrimedAction| {
        matches!(a.status.kind(), StatusKind::Failed | StatusKind::Error)
    };
    for failed in report.actions.iter().filter(wrong) {
        service.say(
            json!({"event": "warning", "action": failed.action.to_string(), "warning": failed.status.detail()}),
            format!("warning: primed action {} failed: {}", failed.action, failed.status.detail()),
        );
    }
    service.say(
        event,
        format!(
            "primed sources {sources}: {changed} of {} actions changed{}{} in {:.1} s",
            report.actions.len(),
            if said.is_empty() { String::new() } else { format!(", {}", said.join(", ")) },
            if report.cancelled { " (cancelled by a newer change)" } else { "" },
            report.elapsed.as_secs_f64()
        ),
    );
}

/// Watches the workspace: each relevant change marks it changed; once quiet for `--debounce`,
/// a priming is requested.
fn watch<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    service: &'scope Service<'_>,
) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let (sender, changes) = mpsc::channel::<()>();
    let workspace = service.workspace.clone();
    let record = service.cmd.serving.record.as_ref().and_then(|r| std::fs::canonicalize(r).ok());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => {
                !event.kind.is_access()
                    && event.paths.iter().any(|p| relevant(p, &workspace, record.as_deref()))
            }
            Err(_) => true, // Events were lost (a queue overflow): look again.
        };
        if relevant {
            let _ = sender.send(());
        }
    })
    .context("watching the workspace")?;
    watcher
        .watch(&service.workspace, notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", service.workspace.display()))?;
    let debounce = Duration::from_millis(service.cmd.serving.debounce);
    scope.spawn(move || {
        while changes.recv().is_ok() {
            service.changed();
            loop {
                match changes.recv_timeout(debounce) {
                    Ok(()) => service.changed(),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            let sources = service.snapshot().ok();
            service.primer.sources_changed(sources);
        }
    });
    Ok(watcher)
}

/// Whether a change at `path` can change the sources: not under `.git`, Bazel's convenience
/// symlinks (`bazel-*`) or the recording directory.
fn relevant(path: &Path, workspace: &Path, record: Option<&Path>) -> bool {
    if record.is_some_and(|r| path.starts_with(r)) {
        return false;
    }
    let Ok(inside) = path.strip_prefix(workspace) else { return false };
    match inside.components().next() {
        Some(std::path::Component::Normal(first)) => {
            let first = first.to_string_lossy();
            first != ".git" && !first.starts_with("bazel-")
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_under_git_bazel_links_and_recordings_are_not_source_changes() {
        let ws = Path::new("/ws");
        let record = Path::new("/ws/rec");
        assert!(relevant(Path::new("/ws/lib/lib.h"), ws, Some(record)));
        assert!(relevant(Path::new("/ws"), ws, Some(record)));
        assert!(!relevant(Path::new("/ws/.git/index"), ws, Some(record)));
        assert!(!relevant(Path::new("/ws/bazel-out"), ws, Some(record)));
        assert!(!relevant(Path::new("/ws/rec/x.jsonl"), ws, Some(record)));
        assert!(!relevant(Path::new("/elsewhere/a.c"), ws, Some(record)));
    }
}
