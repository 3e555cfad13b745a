//! When and how often calls are retried: the one policy ([`RetryPolicy`], [`Retry`] and
//! [`retry_call`]) every retry loop of the workspace follows (store calls, connections,
//! `Execute` streams, Bots calls), one [`Backoff`] schedule and the statuses that are
//! transient.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use super::GrpcConfig;

/// Exponential backoff between attempts of a call: `retry_delay`, doubling, capped at 5 s, at
/// most `max_retries` retries, each pause drawn between half of that and all of it ("equal
/// jitter"), so the clients of a server that restarted do not all come back at the same moment.
/// The one schedule for store calls, connections, executions and Bots calls.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    retries_left: u32,
    attempts: u32,
}

impl Backoff {
    /// A schedule from a config's `retry_delay` and `max_retries`.
    pub fn new(config: &GrpcConfig) -> Backoff {
        Retry::schedule(&RetryPolicy::calls(config))
    }

    /// The pause before another attempt, or `None` when no retry is left.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.retries_left = self.retries_left.checked_sub(1)?;
        self.attempts += 1;
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        Some(delay.mul_f64(0.5 + 0.5 * unit_random()))
    }

    /// `attempt N of M` for the attempt about to be made (after [`Backoff::next_delay`]).
    pub fn progress(&self) -> String {
        format!("attempt {} of {}", self.attempts, self.attempts + self.retries_left)
    }

    /// ` (after N attempts)` once a call was retried, for the final error; empty otherwise.
    pub fn attempts_note(&self) -> String {
        if self.attempts > 1 {
            format!(" (after {} attempts)", self.attempts)
        } else {
            String::new()
        }
    }
}

/// How long a caller keeps trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryLimit {
    /// At most this many retries after the first attempt.
    Retries(u32),
    /// Until this long passes without progress (see [`Retry::progressed`]).
    QuietFor(Duration),
}

/// Which failures are retried, how soon and for how long: the one retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first pause (then doubling, capped at 5 s, with jitter: [`Backoff`]).
    pub first_delay: Duration,
    /// When to give up.
    pub limit: RetryLimit,
    /// Whether DEADLINE_EXCEEDED is retried: yes for a call's own per-attempt deadline (store
    /// and Bots calls), no where it is the work's own deadline (an execution's).
    pub retry_deadline_exceeded: bool,
}

impl RetryPolicy {
    /// Store calls and connections: `config.max_retries` retries from `config.retry_delay`,
    /// DEADLINE_EXCEEDED retried.
    pub fn calls(config: &GrpcConfig) -> RetryPolicy {
        RetryPolicy {
            first_delay: config.retry_delay,
            limit: RetryLimit::Retries(config.max_retries),
            retry_deadline_exceeded: true,
        }
    }

    /// Whether a failed attempt that ended with `status` may be made again.
    pub fn is_retryable(&self, status: &Status) -> bool {
        is_transient(status)
            || (self.retry_deadline_exceeded && status.code() == Code::DeadlineExceeded)
    }
}

/// One call's retries under a [`RetryPolicy`]: ask [`Retry::after`] when an attempt fails.
#[derive(Debug)]
pub struct Retry {
    policy: RetryPolicy,
    backoff: Backoff,
    last_progress: Instant,
}

impl Retry {
    /// The retries of a call about to make its first attempt.
    pub fn new(policy: RetryPolicy) -> Retry {
        Retry { policy, backoff: Retry::schedule(&policy), last_progress: Instant::now() }
    }

    fn schedule(policy: &RetryPolicy) -> Backoff {
        let retries = match policy.limit {
            RetryLimit::Retries(n) => n,
            RetryLimit::QuietFor(_) => u32::MAX,
        };
        Backoff { next: policy.first_delay, retries_left: retries, attempts: 1 }
    }

    /// The policy followed.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The work moved on (a service answered): the schedule and the quiet time start again.
    pub fn progressed(&mut self) {
        self.backoff = Retry::schedule(&self.policy);
        self.last_progress = Instant::now();
    }

    /// The pause before the next attempt after one that failed with `status`, or `None` when
    /// the failure is final (not retryable, or the limit is reached).
    pub fn after(&mut self, status: &Status) -> Option<Duration> {
        self.after_failure(self.policy.is_retryable(status))
    }

    /// [`Retry::after`] for failures that are not statuses (a connection that could not be
    /// made): `transient` says whether another attempt may meet it.
    pub fn after_failure(&mut self, transient: bool) -> Option<Duration> {
        if !transient {
            return None;
        }
        let delay = self.backoff.next_delay()?;
        match self.policy.limit {
            RetryLimit::QuietFor(window) if self.quiet_for() + delay > window => None,
            _ => Some(delay),
        }
    }

    /// How long since the call last made progress (or started).
    pub fn quiet_for(&self) -> Duration {
        self.last_progress.elapsed()
    }

    /// `attempt N of M` for the attempt about to be made.
    pub fn progress(&self) -> String {
        self.backoff.progress()
    }

    /// ` (after N attempts)` once a call was retried; empty otherwise.
    pub fn attempts_note(&self) -> String {
        self.backoff.attempts_note()
    }
}

/// A call that failed for good: its last status, and how many attempts it took.
#[derive(Debug)]
pub struct Exhausted {
    /// The last attempt's status.
    pub status: Status,
    /// ` (after N attempts)`, or empty when there was one.
    pub attempts_note: String,
}

/// Makes `attempt` until it succeeds or `policy` gives up, pausing between attempts; each
/// retry is logged (at warn: minutes of silence look like a hang) with `what`.
pub async fn retry_call<T, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    mut attempt: F,
) -> Result<T, Exhausted>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut retry = Retry::new(policy);
    loop {
        let status = match attempt().await {
            Ok(value) => return Ok(value),
            Err(status) => status,
        };
        let Some(delay) = retry.after(&status) else {
            return Err(Exhausted { status, attempts_note: retry.attempts_note() });
        };
        tracing::warn!(
            "{what}: {:?}: {}; retrying ({}, next in {delay:.1?})",
            status.code(),
            status.message(),
            retry.progress()
        );
        tokio::time::sleep(delay).await;
    }
}

/// A number in [0, 1) that differs from call to call (std's hasher keys are random per
/// process and per `RandomState`): enough for jitter, no dependency.
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a failed call may succeed if made again as it was: UNAVAILABLE,
/// RESOURCE_EXHAUSTED, CANCELLED (calls here are never cancelled by their caller, so it is
/// tonic's own deadline, "Timeout expired", or a connection torn down under the call), and a
/// broken connection. DEADLINE_EXCEEDED is left to the caller: for a long execution it is the
/// execution's own deadline.
pub fn is_transient(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::ResourceExhausted | Code::Cancelled)
        || is_transport_failure(status)
}

/// Whether a status is tonic's report of a connection that failed under the call (`Unknown`
/// caused by a transport, hyper or h2 error: reset, closed early, a body cut off, refused by a
/// server still starting),
/// not an answer of the server's. Every call made through `call_async` is idempotent, so such
/// a failure is retried like `UNAVAILABLE`.
fn is_transport_failure(status: &Status) -> bool {
    if status.code() != Code::Unknown {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause.is::<tonic::transport::Error>()
            || cause.is::<hyper::Error>()
            || cause.is::<h2::Error>()
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether a failure to establish a connection is one a later attempt may not meet.
pub(super) fn is_transient_connect(err: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::NotConnected
            );
        }
        source = cause.source();
    }
    false
}
