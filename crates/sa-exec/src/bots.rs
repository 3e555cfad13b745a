//! A worker for execution services that hand out work over the remote-workers Bots API
//! (`google.devtools.remoteworkers.v1test2`), as BuildGrid does: it joins the farm with
//! `CreateBotSession`, long-polls `UpdateBotSession` for leases, runs each lease's Action with
//! [`crate::execute`] against the service's own CAS, and answers with the `ActionResult`.
//!
//! One lease at a time (capacity 1): run several workers for parallelism. Made for tests and
//! small farms; it runs store commands on this host, so give it a sandbox
//! ([`crate::Sandbox::Bwrap`]) unless the service's clients are trusted.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message;
use sa_cas::{
    Cas, CasError, Digest, Exhausted, GrpcCas, GrpcConnection, RetryLimit, RetryPolicy, retry_call,
};
use sa_proto::google::devtools::remoteworkers::v1test2::bots_client::BotsClient;
use sa_proto::google::devtools::remoteworkers::v1test2::{
    BotSession, BotStatus, CreateBotSessionRequest, Device, Lease, LeaseState,
    UpdateBotSessionRequest, Worker, worker,
};
use sa_proto::google::rpc;
use sa_proto::reapi::ActionResult;
use tonic::{Code, Status};

use crate::run::{ExecConfig, execute};

const ACTION_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.Action";
const DIGEST_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.Digest";
const RESULT_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult";

/// How a [`BotWorker`] presents itself and runs leases.
#[derive(Clone, Debug)]
pub struct BotOptions {
    /// The bot's id in the farm (unique per worker).
    pub bot_id: String,
    /// Properties of the primary device, matched against Actions' platforms
    /// (e.g. `OSFamily=linux`).
    pub properties: Vec<(String, String)>,
    /// How actions run.
    pub exec: ExecConfig,
    /// The deadline the bot gives a long poll (the server answers before it).
    pub poll_timeout: Duration,
    /// While an action runs, the session is updated this often (the lease reported ACTIVE),
    /// so a service that expires silent bots (BuildGrid: `bot-session-keepalive-timeout`,
    /// 600 s by default) keeps the lease with the bot however long the action takes.
    pub keepalive: Duration,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// A Bots call failed for good.
    #[error("{call}: {code:?}: {message}")]
    Rpc {
        /// The call.
        call: &'static str,
        /// The status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The service's CAS could not be reached.
    #[error("the service's CAS")]
    Cas(#[from] CasError),
}

/// A worker; see the module documentation.
pub struct BotWorker {
    cas: GrpcCas,
    connection: GrpcConnection,
    options: BotOptions,
}

impl fmt::Debug for BotWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotWorker")
            .field("connection", &self.connection)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl BotWorker {
    /// A worker for the service behind `cas` (its Bots service and CAS share the endpoint and
    /// the instance name).
    pub fn new(cas: GrpcCas, options: BotOptions) -> BotWorker {
        let connection = cas.connection().clone();
        BotWorker { cas, connection, options }
    }

    /// Serves leases until `stop` is set (checked between polls) or the service fails for
    /// good. Transient failures (the service restarting) are retried; a session the service
    /// no longer knows is created again.
    pub fn run(&self, stop: &AtomicBool) -> Result<(), BotError> {
        let mut session = self.create_session()?;
        // Leases this bot finished, by id, until the server stops listing them (it may list
        // one again before it has taken the result in: answer COMPLETED again, never rerun).
        let mut finished: HashMap<String, Lease> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            finished.retain(|id, _| session.leases.iter().any(|l| l.id == *id));
            // What the service knows of the session while a lease runs (kept alive with it).
            let known = session.clone();
            for lease in &mut session.leases {
                if let Some(done) = finished.get(&lease.id) {
                    *lease = done.clone();
                    continue;
                }
                // BuildGrid hands leases out ACTIVE already; the API says PENDING.
                let runnable = lease.state == LeaseState::Pending as i32
                    || lease.state == LeaseState::Active as i32;
                if runnable {
                    lease.state = LeaseState::Active as i32;
                    self.run_lease_keeping(&known, lease);
                    finished.insert(lease.id.clone(), lease.clone());
                }
            }
            session = match self.update_session(&session) {
                Ok(next) => next,
                Err(BotError::Rpc {
                    code: Code::NotFound | Code::InvalidArgument,
                    message,
                    ..
                }) => {
                    tracing::warn!("the session was dropped ({message}); joining again");
                    finished.clear();
                    self.create_session()?
                }
                // A worker is a service: an overloaded or restarting server, past the call's own
                // retries, is ridden out, not a reason to leave the farm (the leases it finished
                // are reported on the next update that goes through).
                Err(BotError::Rpc {
                    code:
                        code @ (Code::Unavailable
                        | Code::ResourceExhausted
                        | Code::DeadlineExceeded
                        | Code::Cancelled),
                    message,
                    ..
                }) => {
                    tracing::warn!("UpdateBotSession: {code:?}: {message}; trying again");
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    continue;
                }
                Err(err) => return Err(err),
            };
        }
        Ok(())
    }

    fn worker(&self) -> Worker {
        let properties = self
            .options
            .properties
            .iter()
            .map(|(key, value)| worker::Property { key: key.clone(), value: value.clone() })
            .collect();
        Worker {
            devices: vec![Device { handle: self.options.bot_id.clone(), properties }],
            properties: Vec::new(),
            configs: vec![worker::Config { key: "capacity".into(), value: "1".into() }],
        }
    }

    fn create_session(&self) -> Result<BotSession, BotError> {
        let request = CreateBotSessionRequest {
            parent: self.connection.config().instance_name.clone(),
            bot_session: Some(BotSession {
                bot_id: self.options.bot_id.clone(),
                status: BotStatus::Ok as i32,
                worker: Some(self.worker()),
                ..Default::default()
            }),
        };
        self.call("CreateBotSession", |mut client, timeout| {
            let mut request = self.connection.request(request.clone());
            request.set_timeout(timeout);
            async move { client.create_bot_session(request).await }
        })
    }

    fn update_session(&self, session: &BotSession) -> Result<BotSession, BotError> {
        let request = UpdateBotSessionRequest {
            name: session.name.clone(),
            bot_session: Some(BotSession {
                status: BotStatus::Ok as i32,
                worker: Some(self.worker()),
                ..session.clone()
            }),
            update_mask: None,
        };
        self.call("UpdateBotSession", |mut client, timeout| {
            let mut request = self.connection.request(request.clone());
            request.set_timeout(timeout);
            async move { client.update_bot_session(request).await }
        })
    }

    /// One Bots call, retried while the service is unavailable (up to about a minute: 20
    /// retries of the one policy).
    fn call<F, Fut>(&self, call: &'static str, make: F) -> Result<BotSession, BotError>
    where
        F: Fn(BotsClient<tonic::transport::Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<BotSession>, Status>>,
    {
        let policy = RetryPolicy {
            limit: RetryLimit::Retries(20),
            ..RetryPolicy::calls(self.connection.config())
        };
        let attempt =
            || make(BotsClient::new(self.connection.channel()), self.options.poll_timeout);
        self.connection
            .runtime()
            .block_on(retry_call(policy, call, attempt))
            .map(tonic::Response::into_inner)
            .map_err(|Exhausted { status, attempts_note }| BotError::Rpc {
                call,
                code: status.code(),
                message: format!("{}{attempts_note}", status.message()),
            })
    }

    /// [`BotWorker::run_lease`], with the session updated every `keepalive` from a second
    /// thread while the action runs (the lease ACTIVE in it), so the service does not take
    /// the lease back from a bot that is working on it. A failed update is logged: the next
    /// update after the action says what became of the session.
    fn run_lease_keeping(&self, session: &BotSession, lease: &mut Lease) {
        let (done, stopped) = std::sync::mpsc::channel::<()>();
        let id = lease.id.clone();
        let mut alive = session.clone();
        if let Some(held) = alive.leases.iter_mut().find(|l| l.id == id) {
            held.state = LeaseState::Active as i32;
        }
        std::thread::scope(|scope| {
            scope.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(self.options.keepalive)
                {
                    match self.update_session(&alive) {
                        Ok(_) => tracing::debug!(lease = %id, "session kept alive"),
                        Err(err) => tracing::warn!(lease = %id, "keeping the session: {err}"),
                    }
                }
            });
            self.run_lease(lease);
            drop(done);
        });
    }

    /// Runs a lease and marks it COMPLETED: status OK with the `ActionResult` in `result`, or
    /// the reason it could not run (INVALID_ARGUMENT for a payload that is not an Action or its
    /// digest, FAILED_PRECONDITION for missing blobs, UNAVAILABLE for an overloaded CAS, …),
    /// naming the lease. A command that fails is OK with its exit code in the result.
    pub fn run_lease(&self, lease: &mut Lease) {
        let (status, result) = match self.execute_lease(lease) {
            Ok(result) => (rpc::Status { code: 0, ..Default::default() }, Some(result)),
            Err((code, message)) => {
                tracing::warn!(lease = %lease.id, "{message}");
                (rpc::Status { code: code as i32, message, details: Vec::new() }, None)
            }
        };
        lease.state = LeaseState::Completed as i32;
        lease.status = Some(status);
        lease.result = result
            .map(|r| prost_types::Any { type_url: RESULT_TYPE.into(), value: r.encode_to_vec() });
    }

    fn execute_lease(&self, lease: &Lease) -> Result<ActionResult, (Code, String)> {
        let payload = lease
            .payload
            .as_ref()
            .ok_or((Code::InvalidArgument, format!("lease {} has no payload", lease.id)))?;
        let function = self.cas.digest_function();
        let bad = |reason: String| (Code::InvalidArgument, format!("lease {}: {reason}", lease.id));
        // BuildGrid inlines the Action; the API's other servers send its digest.
        let action = match payload.type_url.as_str() {
            ACTION_TYPE => {
                // The client stored the Action before it asked to execute it.
                sa_proto::reapi::Action::decode(payload.value.as_slice())
                    .map_err(|err| bad(format!("the payload is not an Action ({err})")))?;
                function.hash_bytes(&payload.value)
            }
            DIGEST_TYPE => {
                let proto = sa_proto::reapi::Digest::decode(payload.value.as_slice())
                    .map_err(|err| bad(format!("the payload is not a Digest ({err})")))?;
                Digest::from_proto(function, &proto).map_err(|err| bad(err.to_string()))?
            }
            other => {
                return Err(bad(format!("payload {other:?} is neither an Action nor its digest")));
            }
        };
        tracing::info!(%action, "executing");
        execute(&self.cas, &action, &self.options.exec).map_err(|err| {
            let code = match &err {
                // A blob the client should have uploaded: REAPI's FAILED_PRECONDITION.
                crate::ExecError::Store { source, .. }
                    if matches!(**source, CasError::NotFound(_)) =>
                {
                    Code::FailedPrecondition
                }
                // The service's CAS is overloaded or restarting: UNAVAILABLE, which the
                // scheduler retries (BuildGrid retries INTERNAL and UNAVAILABLE).
                crate::ExecError::Store { source, .. }
                    if matches!(
                        **source,
                        CasError::Rpc { code: Code::Unavailable | Code::ResourceExhausted, .. }
                    ) =>
                {
                    Code::Unavailable
                }
                crate::ExecError::InvalidAction { .. } => Code::InvalidArgument,
                crate::ExecError::Timeout { .. } => Code::DeadlineExceeded,
                _ => Code::Internal,
            };
            (code, sa_cas::error_chain(&err))
        })
    }
}
