//! Where actions run: the [`Executor`] trait, with [`LocalExecutor`] (this machine, a local
//! store) and [`RemoteExecutor`] (a REAPI execution service).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prost::Message;
use sa_cas::{Digest, GrpcConnection, Retry, RetryLimit, RetryPolicy, Store};
use sa_proto::google::longrunning::{Operation, operation};
use sa_proto::reapi::execution_client::ExecutionClient;
use sa_proto::reapi::{ActionResult, ExecuteRequest, ExecuteResponse, WaitExecutionRequest};
use tonic::{Code, Status};

use crate::run::{ExecConfig, Execution, execute_cached};

/// What became of one action.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A result was in the ActionCache already (the command did not run).
    Cached(ActionResult),
    /// The command ran; its result (a non-zero `exit_code` is a command that failed).
    Executed(ActionResult),
    /// Submitted and accepted by the service, not waited for (`wait: false`).
    Accepted {
        /// The operation's name on the service.
        operation: String,
    },
    /// The action could not be executed: what went wrong, naming the action and what the
    /// service or the system said, with the service's status code where there was one.
    Failed(Failure),
}

/// Why an action could not be executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, naming the action (`Execute 3fa9…/120: Unavailable: …`).
    pub message: String,
    /// The gRPC code the service answered with, where it answered with one.
    pub code: Option<Code>,
}

impl Failure {
    /// A failure with no status code (a local error, a malformed answer).
    pub fn new(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), code: None }
    }

    /// A failure the service reported with `code`.
    pub fn status(code: Code, message: impl Into<String>) -> Failure {
        Failure { message: message.into(), code: Some(code) }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One action's outcome, and how long it took from submission to outcome.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The action.
    pub action: Digest,
    /// What became of it.
    pub outcome: Outcome,
    /// From submission (a slot among the executions in flight was free) to the outcome,
    /// retries included.
    pub latency: Duration,
}

/// Something that executes Actions (with a cache lookup first, as REAPI's `Execute` with
/// `skip_cache_lookup = false`). Every blob an action needs must be where the executor reads
/// blobs from before it is called.
pub trait Executor: Send + Sync + fmt::Debug {
    /// Executes `actions`, several at once as configured, and calls `done` on the calling
    /// thread with each action's outcome as it finishes (in no particular order). Returns once
    /// every action has its outcome.
    fn execute_all(&self, actions: &[Digest], done: &mut dyn FnMut(Finished));

    /// Executes one action and returns its outcome (an executor that broke its contract and
    /// delivered none is `Failed`, naming the action).
    fn execute_one(&self, action: &Digest) -> Outcome {
        let mut outcome = None;
        self.execute_all(std::slice::from_ref(action), &mut |f| outcome = Some(f.outcome));
        outcome.unwrap_or_else(|| {
            Outcome::Failed(Failure::new(format!("Execute {action}: no outcome")))
        })
    }

    /// Counters of the work done so far (retries, resumed streams).
    fn counters(&self) -> ExecutorCounters {
        ExecutorCounters::default()
    }
}

/// What an executor had to do beyond one call per action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecutorCounters {
    /// Calls made again after a transient failure (UNAVAILABLE, RESOURCE_EXHAUSTED, a broken
    /// connection).
    pub retries: u64,
    /// Broken streams picked up again with `WaitExecution` on the operation's name.
    pub resumed: u64,
    /// Operations the service no longer knew (it restarted) and that were submitted again.
    pub resubmitted: u64,
    /// Accepted streams closed while the service was exhausted, their operations followed
    /// again with `WaitExecution` once there was room.
    pub parked: u64,
}

/// Runs actions on this machine with [`execute_cached`], against one store: its blobs are the
/// inputs, its ActionCache takes the results. Runs store commands on the host: the store must
/// be trusted, or `config.sandbox` a real sandbox.
pub struct LocalExecutor<'s> {
    store: &'s dyn Store,
    config: ExecConfig,
    jobs: usize,
}

impl fmt::Debug for LocalExecutor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalExecutor")
            .field("store", &self.store)
            .field("config", &self.config)
            .field("jobs", &self.jobs)
            .finish()
    }
}

impl<'s> LocalExecutor<'s> {
    /// An executor running at most `jobs` actions at once (at least one).
    pub fn new(store: &'s dyn Store, config: ExecConfig, jobs: usize) -> LocalExecutor<'s> {
        LocalExecutor { store, config, jobs: jobs.max(1) }
    }
}

impl Executor for LocalExecutor<'_> {
    fn execute_all(&self, actions: &[Digest], done: &mut dyn FnMut(Finished)) {
        let next = AtomicUsize::new(0);
        let (sender, receiver) = mpsc::channel();
        std::thread::scope(|scope| {
            for _ in 0..self.jobs.min(actions.len()) {
                let sender = sender.clone();
                let next = &next;
                scope.spawn(move || {
                    while let Some(action) = actions.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let started = Instant::now();
                        let outcome = match execute_cached(self.store, action, &self.config) {
                            Ok(Execution { result, cached: true }) => Outcome::Cached(result),
                            Ok(Execution { result, cached: false }) => Outcome::Executed(result),
                            Err(err) => Outcome::Failed(Failure::new(sa_cas::error_chain(&err))),
                        };
                        let finished =
                            Finished { action: *action, outcome, latency: started.elapsed() };
                        if sender.send(finished).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(sender);
            for finished in receiver {
                done(finished);
            }
        });
    }
}

/// How [`RemoteExecutor`] drives the service.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Executions in flight at once.
    pub jobs: usize,
    /// The deadline of one action, from submission to result, retries included.
    pub timeout: Duration,
    /// Wait for each result (`true`), or stop once the service has accepted the action.
    pub wait: bool,
    /// How long transient failures are retried without progress before an action fails.
    pub retry_window: Duration,
    /// Execute without looking in the service's ActionCache first (an entry found unusable).
    pub skip_cache_lookup: bool,
}

/// Executions in flight at once on a service, unless told otherwise (one fewer each time it
/// answers RESOURCE_EXHAUSTED).
pub const DEFAULT_REMOTE_JOBS: usize = 64;

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            jobs: DEFAULT_REMOTE_JOBS,
            timeout: Duration::from_secs(600),
            wait: true,
            retry_window: Duration::from_secs(60),
            skip_cache_lookup: false,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    retries: AtomicU64,
    resumed: AtomicU64,
    resubmitted: AtomicU64,
    parked: AtomicU64,
    warned: AtomicBool,
}

/// Executes actions on a REAPI execution service: `Execute` streams, at most `jobs` in
/// flight, each followed to its result. A broken stream is picked up with `WaitExecution` on
/// the operation's name; an operation the service no longer knows (it restarted) is submitted
/// again (`Execute` with cache lookup is idempotent); UNAVAILABLE, RESOURCE_EXHAUSTED and
/// broken connections are retried with backoff until `retry_window` passes without progress.
/// The blobs each action needs must be in the CAS the service reads.
pub struct RemoteExecutor {
    connection: GrpcConnection,
    options: RemoteOptions,
    counters: Arc<Counters>,
}

impl fmt::Debug for RemoteExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteExecutor")
            .field("connection", &self.connection)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RemoteExecutor {
    /// An executor on `connection`'s service and instance name.
    pub fn new(connection: GrpcConnection, options: RemoteOptions) -> RemoteExecutor {
        RemoteExecutor { connection, options, counters: Arc::default() }
    }
}

impl Executor for RemoteExecutor {
    fn execute_all(&self, actions: &[Digest], done: &mut dyn FnMut(Finished)) {
        let (sender, receiver) = mpsc::channel();
        let jobs = self.options.jobs.max(1);
        let limit = Limit::new(jobs);
        let runtime = self.connection.runtime();
        for action in actions {
            let sender = sender.clone();
            let call = Call {
                connection: self.connection.clone(),
                options: self.options.clone(),
                counters: self.counters.clone(),
                limit: limit.clone(),
                action: *action,
            };
            runtime.spawn(async move {
                let finished = call.run().await;
                let _ = sender.send(finished);
            });
        }
        drop(sender);
        for finished in receiver {
            done(finished);
        }
    }

    fn counters(&self) -> ExecutorCounters {
        ExecutorCounters {
            retries: self.counters.retries.load(Ordering::Relaxed),
            resumed: self.counters.resumed.load(Ordering::Relaxed),
            resubmitted: self.counters.resubmitted.load(Ordering::Relaxed),
            parked: self.counters.parked.load(Ordering::Relaxed),
        }
    }
}

/// The executions allowed in flight: `jobs` at first; when the service answers
/// RESOURCE_EXHAUSTED to an Execute, at most half the streams it has accepted and not yet
/// finished (never below one), and accepted streams over that are *parked*: closed, their
/// operations followed again with `WaitExecution` once there is room. An Execute stream holds
/// a server thread for its whole life in servers such as BuildGrid, and the service's workers
/// need threads of the same pool to upload results and take leases: a client holding all the
/// service can hold would starve them, and every stream would wait for results no worker can
/// report (seen: BuildGrid with 8 threads, 7 streams open, a worker's upload refused for 600 s).
struct Limit {
    semaphore: Arc<tokio::sync::Semaphore>,
    /// Woken when the limit comes down, for streams to park.
    lowered: tokio::sync::Notify,
    /// Streams the service accepted (answered with an operation) that are still open.
    accepted: AtomicUsize,
    permits: std::sync::Mutex<Permits>,
}

/// How many permits exist (held or free), and how many there should be.
#[derive(Debug)]
struct Permits {
    total: usize,
    target: usize,
}

/// One execution's place under the [`Limit`]; given back on drop, or forgotten while the
/// limit is coming down.
struct Permit {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    limit: Arc<Limit>,
}

impl Limit {
    fn new(jobs: usize) -> Arc<Limit> {
        Arc::new(Limit {
            semaphore: Arc::new(tokio::sync::Semaphore::new(jobs)),
            accepted: AtomicUsize::new(0),
            lowered: tokio::sync::Notify::new(),
            permits: std::sync::Mutex::new(Permits { total: jobs, target: jobs }),
        })
    }

    async fn acquire(self: &Arc<Self>) -> Permit {
        let permit = self.semaphore.clone().acquire_owned().await.expect("never closed");
        Permit { permit: Some(permit), limit: self.clone() }
    }

    /// The service answered RESOURCE_EXHAUSTED: at most half the accepted streams from now on.
    fn exhausted(&self) {
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        let half = (self.accepted.load(Ordering::Relaxed) / 2).max(1);
        if half < permits.target {
            permits.target = half;
            tracing::debug!(limit = half, "RESOURCE_EXHAUSTED: fewer executions at once");
        }
        let excess = permits.total - permits.target;
        permits.total -= self.semaphore.forget_permits(excess);
        if permits.total > permits.target {
            self.lowered.notify_waiters();
        }
    }

    /// Returns once `permit` should be given up for the limit to come down (and has been).
    async fn parked(&self, permit: &mut Permit) {
        loop {
            let lowered = self.lowered.notified();
            if permit.park() {
                return;
            }
            lowered.await;
        }
    }

    /// Permits that exist now (held or free).
    #[cfg(test)]
    fn total(&self) -> usize {
        self.permits.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Permit {
    /// Gives this permit up for good if the limit is over its target.
    fn park(&mut self) -> bool {
        let mut permits = self.limit.permits.lock().unwrap_or_else(|e| e.into_inner());
        if permits.total <= permits.target {
            return false;
        }
        let Some(permit) = self.permit.take() else { return false };
        permits.total -= 1;
        permit.forget();
        true
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        let mut permits = self.limit.permits.lock().unwrap_or_else(|e| e.into_inner());
        if permits.total > permits.target {
            permits.total -= 1;
            permit.forget();
        }
    }
}

/// Counts a stream the service accepted for as long as it stays open.
struct Accepted<'a>(&'a AtomicUsize);

impl<'a> Accepted<'a> {
    fn new(count: &'a AtomicUsize) -> Accepted<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Accepted(count)
    }
}

impl Drop for Accepted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One action followed from submission to result.
struct Call {
    connection: GrpcConnection,
    options: RemoteOptions,
    counters: Arc<Counters>,
    limit: Arc<Limit>,
    action: Digest,
}

/// How one attempt (an Execute or WaitExecution stream) ended without an outcome.
enum Broken {
    /// The stream failed with this status.
    Status(Status),
    /// The stream ended before the operation was done.
    Ended,
    /// The stream was closed to bring the limit down; the operation goes on.
    Parked,
}

impl Call {
    async fn run(&self) -> Finished {
        let permit = self.limit.acquire().await;
        let started = Instant::now();
        let outcome = self.follow(permit, started).await;
        Finished { action: self.action, outcome, latency: started.elapsed() }
    }

    async fn follow(&self, permit: Permit, started: Instant) -> Outcome {
        let action = self.action;
        let deadline = started + self.options.timeout;
        let mut operation_name: Option<String> = None;
        let mut retry = Retry::new(RetryPolicy {
            limit: RetryLimit::QuietFor(self.options.retry_window),
            // DEADLINE_EXCEEDED is the execution's own deadline here: final.
            retry_deadline_exceeded: false,
            ..RetryPolicy::calls(self.connection.config())
        });
        let mut permit = Some(permit);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Outcome::Failed(Failure::status(
                    Code::DeadlineExceeded,
                    format!(
                        "Execute {action}: no result within {}s",
                        self.options.timeout.as_secs_f64()
                    ),
                ));
            }
            let before = operation_name.clone();
            let held = permit.as_mut().expect("held while a stream is open");
            let broken = match self.attempt(&mut operation_name, held, deadline - now).await {
                Ok(outcome) => return outcome,
                Err(broken) => broken,
            };
            if operation_name != before {
                // The service answered (named the operation): that is progress.
                retry.progressed();
            }
            let status = match broken {
                Broken::Ended => Status::unavailable("the stream ended before the result"),
                Broken::Status(status) => status,
                Broken::Parked => {
                    // Followed again with WaitExecution once the limit has room.
                    tracing::debug!(%action, "stream parked while the service is exhausted");
                    self.counters.parked.fetch_add(1, Ordering::Relaxed);
                    drop(permit.take());
                    permit = Some(self.limit.acquire().await);
                    continue;
                }
            };
            if before.is_some() && status.code() == Code::NotFound {
                // WaitExecution on an operation the service no longer knows: submit again.
                tracing::debug!(%action, "operation unknown to the service; submitting again");
                self.counters.resubmitted.fetch_add(1, Ordering::Relaxed);
                operation_name = None;
                continue;
            }
            if !retry.policy().is_retryable(&status) {
                let verb = if before.is_some() { "WaitExecution" } else { "Execute" };
                return Outcome::Failed(Failure::status(
                    status.code(),
                    format!("{verb} {action}: {:?}: {}", status.code(), status.message()),
                ));
            }
            let Some(delay) = retry.after(&status) else {
                return Outcome::Failed(Failure::status(
                    status.code(),
                    format!(
                        "Execute {action}: {:?}: {} (retried for {:.0?} without progress)",
                        status.code(),
                        status.message(),
                        retry.quiet_for()
                    ),
                ));
            };
            if operation_name.is_some() {
                self.counters.resumed.fetch_add(1, Ordering::Relaxed);
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            if !self.counters.warned.swap(true, Ordering::Relaxed) {
                // Once per executor: one line says the service is struggling, not thousands.
                tracing::warn!(
                    "execution service {}: {:?}: {}; retrying (each action for up to {:.0?} \
                     without progress)",
                    self.connection.config().endpoint,
                    status.code(),
                    status.message(),
                    self.options.retry_window
                );
            }
            tracing::debug!(%action, code = ?status.code(), ?delay, "retrying");
            if status.code() == Code::ResourceExhausted {
                // Wait outside the limit, which comes down first.
                self.limit.exhausted();
                drop(permit.take());
                tokio::time::sleep(delay).await;
                permit = Some(self.limit.acquire().await);
            } else {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// One Execute (no operation yet) or WaitExecution (resuming `operation`) stream, read
    /// until the operation is done, or accepted when not waiting.
    async fn attempt(
        &self,
        operation_name: &mut Option<String>,
        permit: &mut Permit,
        remaining: Duration,
    ) -> Result<Outcome, Broken> {
        let mut client =
            ExecutionClient::new(self.connection.channel()).max_decoding_message_size(64 << 20);
        let response = match operation_name.clone() {
            None => {
                let mut request = self.connection.request(ExecuteRequest {
                    instance_name: self.connection.config().instance_name.clone(),
                    action_digest: Some(self.action.to_proto()),
                    skip_cache_lookup: self.options.skip_cache_lookup,
                    execution_policy: None,
                    results_cache_policy: None,
                    digest_function: self.connection.function_field(),
                    ..Default::default()
                });
                request.set_timeout(remaining);
                client.execute(request).await
            }
            Some(name) => {
                let mut request = self.connection.request(WaitExecutionRequest { name });
                request.set_timeout(remaining);
                client.wait_execution(request).await
            }
        };
        let mut stream = response.map_err(Broken::Status)?.into_inner();
        let mut accepted = None;
        loop {
            let message = if accepted.is_some() {
                // An accepted stream parks when the limit comes down; the operation goes on.
                tokio::select! {
                    message = stream.message() => message,
                    () = self.limit.parked(permit) => return Err(Broken::Parked),
                }
            } else {
                stream.message().await
            };
            let operation = match message {
                Ok(Some(operation)) => operation,
                Ok(None) => return Err(Broken::Ended),
                Err(status) => return Err(Broken::Status(status)),
            };
            if !operation.name.is_empty() {
                *operation_name = Some(operation.name.clone());
            }
            accepted.get_or_insert_with(|| Accepted::new(&self.limit.accepted));
            if operation.done {
                // Read the stream to its end (the trailers) rather than drop it: a dropped
                // stream is a RST_STREAM, and servers guarding against rapid resets (gRPC C++,
                // as in buildbox-casd) answer a run of them with ENHANCE_YOUR_CALM for every
                // stream on the connection. A server that keeps it open gets a second.
                let drain = async { while let Ok(Some(_)) = stream.message().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                return Ok(self.finished(operation));
            }
            if !self.options.wait {
                return Ok(Outcome::Accepted { operation: operation.name });
            }
        }
    }

    /// The outcome of a done operation.
    fn finished(&self, operation: Operation) -> Outcome {
        let action = self.action;
        match operation.result {
            Some(operation::Result::Response(any)) => {
                let response = match ExecuteResponse::decode(any.value.as_slice()) {
                    Ok(response) => response,
                    Err(err) => {
                        return Outcome::Failed(Failure::new(format!(
                            "Execute {action}: the response is not an ExecuteResponse ({err})"
                        )));
                    }
                };
                let status = response.status.unwrap_or_default();
                if status.code != 0 {
                    let code = Code::from(status.code);
                    return Outcome::Failed(Failure::status(
                        code,
                        format!("Execute {action}: {code:?}: {}", status.message),
                    ));
                }
                let Some(result) = response.result else {
                    return Outcome::Failed(Failure::new(format!(
                        "Execute {action}: the response has no result"
                    )));
                };
                if response.cached_result {
                    Outcome::Cached(result)
                } else {
                    Outcome::Executed(result)
                }
            }
            Some(operation::Result::Error(status)) => {
                let code = Code::from(status.code);
                Outcome::Failed(Failure::status(
                    code,
                    format!("Execute {action}: {code:?}: {}", status.message),
                ))
            }
            None => Outcome::Failed(Failure::new(format!(
                "Execute {action}: the operation finished without a result"
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants
mod tests {
    use super::*;

    #[test]
    fn resource_exhausted_leaves_half_the_accepted_streams_and_room_for_the_services_workers() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let limit = Limit::new(64);
            // Six streams accepted by the service, a seventh answered RESOURCE_EXHAUSTED.
            let held = acquire(&limit, 7).await;
            let accepted: Vec<Accepted<'_>> =
                (0..6).map(|_| Accepted::new(&limit.accepted)).collect();
            limit.exhausted();
            // The 57 free permits are gone at once; the held ones go as they are given back.
            assert_eq!(limit.total(), 7);
            assert_eq!(limit.semaphore.available_permits(), 0);
            drop(accepted);
            drop(held);
            assert_eq!(limit.total(), 3);
            assert_eq!(limit.semaphore.available_permits(), 3);
            // A later burst with fewer streams open brings it lower; never below one.
            limit.exhausted();
            assert_eq!(limit.total(), 1);
            let one = limit.acquire().await;
            assert!(limit.semaphore.clone().try_acquire_owned().is_err());
            drop(one);
            assert_eq!(limit.semaphore.available_permits(), 1);
        });
    }

    async fn acquire(limit: &Arc<Limit>, n: usize) -> Vec<Permit> {
        let mut permits = Vec::new();
        for _ in 0..n {
            permits.push(limit.acquire().await);
        }
        permits
    }
}
