//! Priming an action cache from speculative actions, as a library: the loop `sa prime` runs,
//! for a build tool that primes from Rust.
//!
//! [`prime`] works in waves. Each wave instantiates every target element's speculative
//! actions against the current build ([`Instantiator`]), takes the complete actions not
//! executed yet, makes sure the executor can read every blob they need (one
//! `FindMissingBlobs` for the whole wave, then uploads of what is missing), executes them
//! ([`Executor`]), and keeps their results where the instantiator looks them up, so ACTION
//! overlays (inputs made by an earlier action) resolve in the next wave. It ends when a wave
//! finds nothing new to execute.
//!
//! Three arrangements of stores, all the same loop:
//! - one store that the executor also reads: a local store with [`sa_exec::LocalExecutor`],
//!   or a remote CAS/ActionCache with a [`sa_exec::RemoteExecutor`] on the same service (or on
//!   one that shares its storage);
//! - a local store and an execution service with its own CAS ([`Stores::executor_cas`]):
//!   blobs the service lacks are uploaded, results and their outputs copied back.
//!
//! The library never prints: [`Event`]s report progress to the caller.

#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{Blob, CasError, Digest, Store, read_message};
use sa_exec::{Executor, ExecutorCounters, Outcome};
use sa_generator::model::OriginKind;
use sa_instantiator::{InstantiateError, InstantiatedAction, Instantiator};
use sa_proto::reapi::{Action, ActionResult};

mod database;
mod rescan;
pub use database::PlannedCompile;
use rescan::Scanned;
pub use rescan::{MAX_SCAN_BYTES, SCAN_FILE};

/// How [`prime`] works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimeOptions {
    /// Bounds on the input trees walked (uploads, re-scans).
    pub limits: TreeLimits,
    /// Re-scan the dependencies of compiles whose inputs changed (an overlay replaced one),
    /// and run them with the input root their scan lists (see the crate documentation).
    /// Scans are waited for: off with an executor that does not wait.
    pub rescan: bool,
    /// The compiles of the next build, from its compilation database (empty: none given).
    /// Given, they are matched to the recorded compiles of their elements: a changed command
    /// line is predicted with its new arguments, an unmatched entry is a new compile, a
    /// recorded compile no entry matches is not run (see [`PlannedCompile`]). Needs `rescan`.
    pub compile_commands: Vec<PlannedCompile>,
}

impl Default for PrimeOptions {
    fn default() -> Self {
        PrimeOptions { limits: TreeLimits::default(), rescan: true, compile_commands: Vec::new() }
    }
}

/// Where blobs live.
#[derive(Clone, Copy, Debug)]
pub struct Stores<'a, S: Store + ?Sized> {
    /// The store of the build: speculative actions, sources and artifacts are read here,
    /// adapted actions written here, and ACTION overlays resolved against its ActionCache.
    pub build: &'a S,
    /// The CAS and ActionCache the executor reads, when they are not `build`'s: what the
    /// actions need is uploaded there, and results (with their outputs) copied back.
    pub executor_cas: Option<&'a dyn Store>,
}

/// What became of one adapted action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// The executor had a result already.
    Cached,
    /// The executor ran it, successfully.
    Executed,
    /// Submitted and accepted, not waited for.
    Accepted,
    /// It ran and its command failed (a speculation that did not come true): the exit code
    /// and the start of its stderr.
    Failed(String),
    /// It could not be executed, or its result not kept (the executor's or a store's error):
    /// priming could not be done for it.
    Error(String),
    /// Its inputs cannot be known, so it was not executed: why (an input's origin is unknown,
    /// its producer has no result, its dependency scan failed or listed a file the sources
    /// lack; or the priming was cancelled before it was submitted).
    Unpredictable(String),
}

/// The kinds of [`Status`], for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusKind {
    /// [`Status::Cached`].
    Cached,
    /// [`Status::Executed`].
    Executed,
    /// [`Status::Accepted`].
    Accepted,
    /// [`Status::Failed`].
    Failed,
    /// [`Status::Error`].
    Error,
    /// [`Status::Unpredictable`].
    Unpredictable,
}

impl StatusKind {
    /// Every kind, in report order.
    pub const ALL: [StatusKind; 6] = [
        StatusKind::Cached,
        StatusKind::Executed,
        StatusKind::Accepted,
        StatusKind::Failed,
        StatusKind::Error,
        StatusKind::Unpredictable,
    ];

    /// The kind's name in reports (`cached`, `executed`, …).
    pub fn name(self) -> &'static str {
        match self {
            StatusKind::Cached => "cached",
            StatusKind::Executed => "executed",
            StatusKind::Accepted => "accepted",
            StatusKind::Failed => "failed",
            StatusKind::Error => "error",
            StatusKind::Unpredictable => "unpredictable",
        }
    }
}

impl Status {
    /// The status's kind.
    pub fn kind(&self) -> StatusKind {
        match self {
            Status::Cached => StatusKind::Cached,
            Status::Executed => StatusKind::Executed,
            Status::Accepted => StatusKind::Accepted,
            Status::Failed(_) => StatusKind::Failed,
            Status::Error(_) => StatusKind::Error,
            Status::Unpredictable(_) => StatusKind::Unpredictable,
        }
    }

    /// The reason of a failed, erroneous or unpredictable action ("" otherwise).
    pub fn detail(&self) -> &str {
        match self {
            Status::Failed(why) | Status::Error(why) | Status::Unpredictable(why) => why,
            _ => "",
        }
    }
}

/// One speculative action, as the last wave left it.
#[derive(Clone, Debug)]
pub struct PrimedAction {
    /// The element it belongs to.
    pub element: String,
    /// The recorded action (`None`: a new compile only the compilation database names).
    pub base: Option<Digest>,
    /// The adapted action.
    pub action: Digest,
    /// What became of it.
    pub status: Status,
}

/// The phases of a wave, timed in [`PrimeReport::phases`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Instantiating the targets' speculative actions.
    Instantiate,
    /// Finding and uploading what the executor lacks.
    Upload,
    /// Executing.
    Execute,
    /// Copying results and outputs back to the build's store.
    Download,
    /// Re-scanning the dependencies of changed compiles.
    Scan,
}

impl Phase {
    /// The phase's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Instantiate => "instantiate",
            Phase::Upload => "upload",
            Phase::Execute => "execute",
            Phase::Download => "download",
            Phase::Scan => "scan",
        }
    }
}

/// Progress, reported as it happens.
#[derive(Debug)]
pub enum Event<'e> {
    /// The dependency scans of `actions` changed compiles start.
    Scan {
        /// Compiles re-scanned.
        actions: usize,
    },
    /// A wave of `actions` new complete actions starts executing.
    Wave {
        /// 1 for the first wave.
        number: usize,
        /// Actions it executes.
        actions: usize,
    },
    /// An action of the current wave has its outcome.
    Done {
        /// The adapted action.
        action: Digest,
        /// What became of it.
        status: &'e Status,
    },
}

/// What a run of [`prime`] did.
#[derive(Clone, Debug)]
pub struct PrimeReport {
    /// Every speculative action of the targets, in target order then blob order.
    pub actions: Vec<PrimedAction>,
    /// Whether it was cancelled ([`prime_until`]) before every wave ran.
    pub cancelled: bool,
    /// Waves that executed something.
    pub waves: usize,
    /// Distinct adapted actions handed to the executor.
    pub submitted: usize,
    /// Time spent per phase, summed over the waves, in first-use order.
    pub phases: Vec<(Phase, Duration)>,
    /// The executor's retries and resumed streams.
    pub counters: ExecutorCounters,
    /// Time from submission to outcome of the actions executed.
    pub latency: Latency,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// Percentiles of the time from submission to outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The slowest.
    pub max: Duration,
}

impl Latency {
    /// The percentiles of `samples` (all zero when there are none).
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Latency { p50: at(0.5), p99: at(0.99), max: samples[samples.len() - 1] }
    }
}

impl PrimeReport {
    /// How many actions have each status kind.
    pub fn count(&self, kind: StatusKind) -> usize {
        self.actions.iter().filter(|a| a.status.kind() == kind).count()
    }
}

/// Why priming stopped (an action that fails is not an error: its status says so).
#[derive(Debug, thiserror::Error)]
pub enum PrimeError {
    /// An element could not be instantiated.
    #[error("instantiating element {element:?}")]
    Instantiate {
        /// The element.
        element: String,
        /// The cause.
        #[source]
        source: Box<InstantiateError>,
    },
    /// A store failed while preparing or keeping the wave's actions.
    #[error("{what}")]
    Store {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
}

fn store_error(what: impl fmt::Display) -> impl FnOnce(CasError) -> PrimeError {
    let what = what.to_string();
    move |source| PrimeError::Store { what, source: Box::new(source) }
}

/// Primes `targets` (element name, digest of its previous `SpeculativeActions`); see the
/// crate documentation.
pub fn prime<S: Store + ?Sized>(
    stores: Stores<'_, S>,
    executor: &dyn Executor,
    instantiator: &Instantiator<'_, S>,
    targets: &[(String, Digest)],
    options: &PrimeOptions,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<PrimeReport, PrimeError> {
    let never = AtomicBool::new(false);
    prime_until(stores, executor, instantiator, targets, options, &never, events)
}

/// [`prime`], stopped before the next wave once `cancel` is set (a newer change to the
/// sources makes this priming's unsubmitted actions pointless): the actions not yet handed to
/// the executor are [`Status::Unpredictable`] ("cancelled"), [`PrimeReport::cancelled`] is set.
/// What was submitted runs to its end.
pub fn prime_until<S: Store + ?Sized>(
    stores: Stores<'_, S>,
    executor: &dyn Executor,
    instantiator: &Instantiator<'_, S>,
    targets: &[(String, Digest)],
    options: &PrimeOptions,
    cancel: &AtomicBool,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<PrimeReport, PrimeError> {
    let limits = &options.limits;
    let started = Instant::now();
    let mut cancelled = false;
    let mut timer = Timer::default();
    let mut statuses: HashMap<Digest, Status> = HashMap::new();
    let mut scans: HashMap<Digest, Scanned> = HashMap::new();
    let mut waves = 0;
    let mut latencies = Vec::new();
    let mut new_compiles = Vec::new();
    let mut planned = false;
    let outcomes = loop {
        let outcomes = timer.time(Phase::Instantiate, || instantiate(instantiator, targets))?;
        if options.rescan {
            let mut changed = Vec::new();
            if !planned && !options.compile_commands.is_empty() {
                planned = true;
                let matched =
                    database::match_plan(stores.build, &outcomes, &options.compile_commands)?;
                scans.extend(matched.not_run);
                changed = matched.requests;
                new_compiles = matched.new;
            }
            let mut seen: HashSet<Digest> = changed.iter().map(|r| r.key).collect();
            changed.extend(
                outcomes
                    .iter()
                    .filter(|(_, o)| {
                        o.complete && o.action != o.base && !scans.contains_key(&o.action)
                    })
                    .filter(|(_, o)| seen.insert(o.action))
                    .map(|(element, o)| rescan::Request::changed(element, o.base, o.action)),
            );
            // Actions whose only unknown inputs are sources gone from the next sources (a
            // header renamed or removed): their scan says what they read now.
            changed.extend(
                outcomes
                    .iter()
                    .filter(|(_, o)| {
                        !o.complete
                            && !o.unresolved_targets.is_empty()
                            && o.unresolved_targets
                                .iter()
                                .all(|(kind, _)| *kind == OriginKind::Source)
                            && !scans.contains_key(&o.action)
                    })
                    .filter(|(_, o)| seen.insert(o.action))
                    .map(|(element, o)| {
                        let gone = o.unresolved_targets.iter().map(|(_, d)| *d).collect();
                        rescan::Request::gone(element, o.base, o.action, gone)
                    }),
            );
            if !changed.is_empty() && !cancel.load(Ordering::Relaxed) {
                events(Event::Scan { actions: changed.len() });
                let scanned = timer.time(Phase::Scan, || {
                    rescan::rescan(&stores, executor, instantiator, &changed, limits)
                })?;
                scans.extend(scanned);
            }
        }
        let mut seen = HashSet::new();
        let wave: Vec<Digest> = outcomes
            .iter()
            .map(|(_, o)| (o.action, o.complete))
            .chain(new_compiles.iter().map(|(_, key)| (*key, false)))
            .filter_map(|(action, complete)| match scans.get(&action) {
                None | Some(Scanned::Stands) => complete.then_some(action),
                Some(Scanned::Replaced(replacement)) => Some(*replacement),
                Some(Scanned::Unpredictable(_) | Scanned::Error(_)) => None,
            })
            .filter(|d| !statuses.contains_key(d))
            .filter(|d| seen.insert(*d))
            .collect();
        if wave.is_empty() {
            break outcomes;
        }
        if cancel.load(Ordering::Relaxed) {
            cancelled = true;
            break outcomes;
        }
        waves += 1;
        events(Event::Wave { number: waves, actions: wave.len() });
        if let Some(remote) = stores.executor_cas {
            timer.time(Phase::Upload, || upload(stores.build, remote, &wave, limits))?;
        }
        let mut results = Vec::new();
        timer.time(Phase::Execute, || {
            executor.execute_all(&wave, &mut |finished| {
                let (status, result) = status_of(&stores, finished.outcome);
                events(Event::Done { action: finished.action, status: &status });
                latencies.push(finished.latency);
                results.push((finished.action, status, result));
            });
        });
        timer.time(Phase::Download, || {
            for (action, status, result) in results {
                statuses.insert(action, bring_back(&stores, &action, status, result));
            }
        });
    };
    Ok(PrimeReport {
        actions: primed_actions(outcomes, &new_compiles, &statuses, &scans, cancelled),
        cancelled,
        waves,
        submitted: statuses.len(),
        phases: timer.phases,
        counters: executor.counters(),
        latency: Latency::of(latencies),
        elapsed: started.elapsed(),
    })
}

/// An executed action's status once its result (and outputs) are back in the build's store,
/// when the executor has a CAS of its own.
fn bring_back<S: Store + ?Sized>(
    stores: &Stores<'_, S>,
    action: &Digest,
    status: Status,
    result: Option<ActionResult>,
) -> Status {
    let (Some(remote), Some(result)) = (stores.executor_cas, result) else {
        return status;
    };
    match keep_result(stores.build, remote, action, &result) {
        Ok(()) => status,
        // The action ran but its outputs cannot be brought back: ACTION overlays on it cannot
        // resolve, so say so for this action.
        Err(err) => Status::Error(format!(
            "copying the result of {action} back: {}",
            sa_cas::error_chain(&err)
        )),
    }
}

/// Every instantiated action (then every new compile) with its status: the executor's word
/// on what ran, why for what did not.
fn primed_actions(
    outcomes: Vec<(String, InstantiatedAction)>,
    new_compiles: &[(String, Digest)],
    statuses: &HashMap<Digest, Status>,
    scans: &HashMap<Digest, Scanned>,
    cancelled: bool,
) -> Vec<PrimedAction> {
    let unsubmitted = if cancelled { "cancelled before it was submitted" } else { "not executed" };
    let status_of = |key: &Digest, unresolved: Option<String>| -> (Digest, Status) {
        let ran = |action: &Digest| {
            statuses
                .get(action)
                .cloned()
                .unwrap_or_else(|| Status::Unpredictable(unsubmitted.into()))
        };
        match (scans.get(key), unresolved) {
            (Some(Scanned::Unpredictable(why)), _) => (*key, Status::Unpredictable(why.clone())),
            (Some(Scanned::Error(why)), _) => (*key, Status::Error(why.clone())),
            (Some(Scanned::Replaced(replacement)), _) => (*replacement, ran(replacement)),
            (None | Some(Scanned::Stands), Some(why)) => (*key, Status::Unpredictable(why)),
            (None | Some(Scanned::Stands), None) => (*key, ran(key)),
        }
    };
    let mut primed: Vec<PrimedAction> = outcomes
        .into_iter()
        .map(|(element, o)| {
            let unresolved = (!o.complete).then(|| o.unresolved_reasons.join("; "));
            let (action, status) = status_of(&o.action, unresolved);
            PrimedAction { element, base: Some(o.base), action, status }
        })
        .collect();
    for (element, key) in new_compiles {
        let (action, status) = status_of(key, None);
        primed.push(PrimedAction { element: element.clone(), base: None, action, status });
    }
    primed
}

#[derive(Default)]
struct Timer {
    phases: Vec<(Phase, Duration)>,
}

impl Timer {
    fn time<T>(&mut self, phase: Phase, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = work();
        let elapsed = start.elapsed();
        tracing::info!("phase {}: {:.3}s", phase.name(), elapsed.as_secs_f64());
        match self.phases.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, total)) => *total += elapsed,
            None => self.phases.push((phase, elapsed)),
        }
        result
    }
}

fn instantiate<S: Store + ?Sized>(
    instantiator: &Instantiator<'_, S>,
    targets: &[(String, Digest)],
) -> Result<Vec<(String, InstantiatedAction)>, PrimeError> {
    let mut outcomes = Vec::new();
    for (element, digest) in targets {
        let element_outcomes =
            instantiator.instantiate_element(element, digest).map_err(|source| {
                PrimeError::Instantiate { element: element.clone(), source: Box::new(source) }
            })?;
        outcomes.extend(element_outcomes.into_iter().map(|o| (element.clone(), o)));
    }
    Ok(outcomes)
}

/// The status of an outcome, and the result to keep when it succeeded.
fn status_of<S: Store + ?Sized>(
    stores: &Stores<'_, S>,
    outcome: Outcome,
) -> (Status, Option<ActionResult>) {
    let (result, cached) = match outcome {
        Outcome::Cached(result) => (result, true),
        Outcome::Executed(result) => (result, false),
        Outcome::Accepted { .. } => return (Status::Accepted, None),
        Outcome::Failed(why) => return (Status::Error(why.message), None),
    };
    if result.exit_code != 0 {
        let stderr = match stores.executor_cas {
            Some(remote) => stderr_excerpt(remote, &result),
            None => stderr_excerpt(stores.build, &result),
        };
        return (Status::Failed(format!("exit code {}{stderr}", result.exit_code)), None);
    }
    (if cached { Status::Cached } else { Status::Executed }, Some(result))
}

/// The start of a failed action's stderr, for the report (empty when unavailable).
fn stderr_excerpt<S: Store + ?Sized>(store: &S, result: &ActionResult) -> String {
    let data = match &result.stderr_digest {
        Some(d) => Digest::from_proto(store.digest_function(), d)
            .ok()
            .and_then(|d| store.read_blob(&d).ok())
            .unwrap_or_default(),
        None => result.stderr_raw.clone(),
    };
    let text = String::from_utf8_lossy(&data);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let excerpt: String = text.chars().take(300).collect();
    format!(", stderr: {excerpt}")
}

/// Uploads every blob the actions need (Action, Command, input tree) that `remote` lacks,
/// found with one presence check for the whole wave.
fn upload<S: Store + ?Sized>(
    local: &S,
    remote: &dyn Store,
    actions: &[Digest],
    limits: &TreeLimits,
) -> Result<(), PrimeError> {
    let function = local.digest_function();
    let mut needed: Vec<Digest> = actions.to_vec();
    let mut roots = Vec::new();
    for action in actions {
        let decoded: Action = read_message(local, action, "Action")
            .map_err(store_error(format!("reading action {action}")))?;
        let command = Digest::from_proto_field(
            function,
            decoded.command_digest.as_ref(),
            "Action.command_digest",
        );
        needed.push(command.map_err(store_error(format!("action {action}")))?);
        let root = Digest::from_proto_field(
            function,
            decoded.input_root_digest.as_ref(),
            "Action.input_root_digest",
        );
        roots.push(root.map_err(store_error(format!("action {action}")))?);
    }
    let forest = merkle::fetch_forest(local, &roots, limits)
        .map_err(store_error("reading the wave's input trees"))?;
    needed.extend(forest.directories().keys().copied());
    for root in &roots {
        let files = forest.files(root).map_err(store_error(format!("input root {root}")))?;
        needed.extend(files.into_iter().map(|file| file.digest));
    }
    needed.sort_unstable();
    needed.dedup();
    let missing = remote
        .find_missing(&needed)
        .map_err(store_error("asking the execution service's CAS what it lacks"))?;
    copy(local, remote, &missing).map_err(store_error("uploading to the execution service"))
}

/// Copies blobs between stores in batches both accept.
fn copy<A: Store + ?Sized, B: Store + ?Sized>(
    from: &A,
    to: &B,
    digests: &[Digest],
) -> Result<(), CasError> {
    for range in merkle::batch_ranges(
        digests.iter().map(Digest::size),
        from.max_batch_bytes().min(to.max_batch_bytes()),
    ) {
        let part = &digests[range];
        let blobs = from.read_blobs(part)?;
        let blobs: Vec<Blob> =
            part.iter().zip(blobs).map(|(d, data)| Blob::from_verified(*d, data)).collect();
        to.write_blobs(&blobs)?;
    }
    Ok(())
}

/// Keeps an executed action's result (and its outputs) in the build's store, where the
/// instantiator resolves ACTION overlays.
fn keep_result<S: Store + ?Sized>(
    build: &S,
    remote: &dyn Store,
    action: &Digest,
    result: &ActionResult,
) -> Result<(), CasError> {
    // An executor's word is checked before it enters the build's ActionCache, where `sa
    // record` and the build read it: outputs the Command declares, inside its directory.
    sa_exec::check_result(build, action, result)?;
    let outputs = sa_exec::result_blobs(build.digest_function(), result)?;
    let missing = build.find_missing(&outputs)?;
    copy(remote, build, &missing)?;
    build.update_action_result(action, result)
}
