//! When and how often calls are retried: one [`Backoff`] schedule and the statuses that are
//! transient.

use std::time::Duration;

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
        Backoff { next: config.retry_delay, retries_left: config.max_retries, attempts: 1 }
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
