//! `prime`: instantiate, upload what the execution service lacks, execute, in waves.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use prost::Message;
use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{Digest, GrpcCas, Store, read_message};
use sa_exec::{ExecConfig, Execution};
use sa_instantiator::{InstantiateConfig, InstantiatedAction, Instantiator};
use sa_proto::google::longrunning::operation;
use sa_proto::reapi::execution_client::ExecutionClient;
use sa_proto::reapi::{Action, ActionResult, ExecuteRequest, ExecuteResponse};
use serde_json::json;

use crate::commands::{InstantiateArgs, Plan, plan};
use crate::{StoreArgs, Ui, store};

#[derive(Debug, Args)]
pub(crate) struct PrimeArgs {
    #[command(flatten)]
    instantiate: InstantiateArgs,
    /// Execute here, with no server (sa-exec), against the local store (--cas); results go to
    /// its ActionCache, where `sa record` finds them. This runs commands taken from the store
    /// on this host: the store must be trusted, or the commands sandboxed (--sandbox).
    #[arg(long)]
    local: bool,
    /// With --local: run each command in a bubblewrap sandbox (only its input root writable,
    /// /usr read-only, no network), on the host unsandboxed (none), or bwrap where installed
    /// (auto).
    #[arg(long, value_enum, default_value = "auto")]
    sandbox: crate::SandboxChoice,
    /// Actions executed at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    jobs: usize,
    /// Deadline of one execution, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    execute_timeout: u64,
}

/// An execution's response and whether it came from the cache.
type Executed = Result<(ExecuteResponse, bool)>;

#[derive(Clone, Debug)]
enum Status {
    Cached,
    Executed,
    Failed(String),
}

/// Where the adapted actions run.
enum Executor {
    /// `Execute` on a REAPI execution service, after uploading what it lacks.
    Remote { grpc: Arc<GrpcCas>, opened: store::Opened },
    /// sa-exec on this machine, against the local store.
    Local(ExecConfig),
}

pub(crate) fn prime(args: &StoreArgs, cmd: &PrimeArgs, ui: &mut Ui) -> Result<()> {
    if cmd.jobs == 0 {
        crate::usage!("--jobs must be at least 1");
    }
    let local = store::open_local(args)?;
    let local_desc = local.root().display().to_string();
    let opened = store::Opened::new(args, local, None, local_desc);
    let executor = match (&args.remote, cmd.local) {
        (Some(_), true) => crate::usage!("sa prime takes --local or --remote URL, not both"),
        (None, false) => crate::usage!(
            "sa prime needs --remote URL (an execution service) or --local; blobs are read from --cas"
        ),
        (None, true) => Executor::Local(crate::exec_config(
            args,
            cmd.sandbox,
            Duration::from_secs(cmd.execute_timeout),
        )?),
        (Some(endpoint), false) => {
            let grpc = store::connect(args, endpoint)?;
            let remote_store: Arc<dyn Store> = grpc.clone();
            let opened =
                store::Opened::new(args, remote_store, Some(grpc.clone()), endpoint.clone());
            Executor::Remote { grpc, opened }
        }
    };

    let Plan { states, targets } = plan(args, &cmd.instantiate)?;
    let instantiator = Instantiator::new(
        &opened.store,
        states,
        InstantiateConfig { limits: args.limits.tree(), ..Default::default() },
    )?;
    let mut status: HashMap<Digest, Status> = HashMap::new();
    let mut last: Vec<(String, InstantiatedAction)>;
    // Waves: each round instantiates again, so ACTION overlays resolve once their producers
    // have results; it ends when a round finds nothing new to execute.
    loop {
        let mut outcomes = Vec::new();
        for (element, digest) in &targets {
            let result =
                ui.phase("instantiate", || instantiator.instantiate_element(element, digest));
            let element_outcomes =
                result.with_context(|| format!("instantiating element {element:?}"))?;
            outcomes.extend(element_outcomes.into_iter().map(|o| (element.clone(), o)));
        }
        let mut seen = HashSet::new();
        let wave: Vec<Digest> = outcomes
            .iter()
            .filter(|(_, o)| o.complete && !status.contains_key(&o.action))
            .map(|(_, o)| o.action)
            .filter(|d| seen.insert(*d))
            .collect();
        last = outcomes;
        if wave.is_empty() {
            break;
        }
        let statuses = match &executor {
            Executor::Remote { grpc, opened: remote } => {
                ui.phase("upload", || {
                    upload(&opened.store, &remote.store, &wave, &args.limits.tree())
                })?;
                let executed = ui.phase("execute", || {
                    run_parallel(cmd.jobs, &wave, |action| {
                        execute(grpc, args, action, Duration::from_secs(cmd.execute_timeout))
                    })
                });
                ui.phase("download", || {
                    wave.iter()
                        .zip(executed)
                        .map(|(action, executed)| {
                            remote_status(&opened.store, &remote.store, action, executed)
                        })
                        .collect::<Result<Vec<_>>>()
                })?
            }
            Executor::Local(config) => ui.phase("execute", || {
                run_parallel(cmd.jobs, &wave, |action| local_status(&opened.store, action, config))
            }),
        };
        status.extend(wave.iter().copied().zip(statuses));
    }

    let mut counts = [0usize; 4];
    for (element, o) in &last {
        let (name, detail) = if !o.complete {
            ("incomplete", o.unresolved_reasons.join("; "))
        } else {
            match status.get(&o.action) {
                Some(Status::Cached) => ("cached", String::new()),
                Some(Status::Executed) => ("executed", String::new()),
                Some(Status::Failed(why)) => ("failed", why.clone()),
                None => ("incomplete", "not executed".into()),
            }
        };
        let index = ["cached", "executed", "failed", "incomplete"]
            .iter()
            .position(|n| *n == name)
            .expect("known status");
        counts[index] += 1;
        if ui.json() {
            let mut line = json!({
                "element": element,
                "base_action": o.base.to_string(),
                "action": o.action.to_string(),
                "status": name,
            });
            if !detail.is_empty() {
                line["detail"] = detail.into();
            }
            ui.line(line)?;
        } else if name == "failed" || name == "incomplete" {
            ui.line(format!("{element}: {name} {}: {detail}", o.action))?;
        }
    }
    if !ui.json() {
        ui.line(format!(
            "primed {} actions: {} already cached, {} executed, {} failed, {} incomplete",
            last.len(),
            counts[0],
            counts[1],
            counts[2],
            counts[3]
        ))?;
    }
    let remote = match &executor {
        Executor::Remote { opened, .. } => Some(opened),
        Executor::Local(_) => None,
    };
    ui.report_stats(&opened, remote);
    if counts[2] > 0 {
        bail!("{} actions failed to execute", counts[2]);
    }
    Ok(())
}

/// The start of a failed action's stderr, for the report (empty when unavailable).
fn stderr_excerpt(remote: &dyn Store, result: &ActionResult) -> String {
    let data = match &result.stderr_digest {
        Some(d) => Digest::from_proto(remote.digest_function(), d)
            .ok()
            .and_then(|d| remote.read_blob(&d).ok())
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

/// Uploads every blob the actions need (Action, Command, input tree) that the remote lacks.
fn upload(
    local: &dyn Store,
    remote: &dyn Store,
    actions: &[Digest],
    limits: &TreeLimits,
) -> Result<()> {
    let mut needed: Vec<Digest> = actions.to_vec();
    let mut roots = Vec::new();
    for action in actions {
        let decoded: Action = read_message(local, action, "Action")?;
        let function = local.digest_function();
        needed.push(Digest::from_proto_field(
            function,
            decoded.command_digest.as_ref(),
            "Action.command_digest",
        )?);
        roots.push(Digest::from_proto_field(
            function,
            decoded.input_root_digest.as_ref(),
            "Action.input_root_digest",
        )?);
    }
    let forest = merkle::fetch_forest(local, &roots, limits)?;
    needed.extend(forest.directories().keys().copied());
    for root in &roots {
        needed.extend(forest.files(root)?.into_iter().map(|(_, d, _)| d));
    }
    needed.sort_unstable();
    needed.dedup();
    let missing = remote.find_missing(&needed)?;
    copy(local, remote, &missing).context("uploading to the execution service")
}

fn copy(from: &dyn Store, to: &dyn Store, digests: &[Digest]) -> Result<()> {
    for range in merkle::batch_ranges(
        digests.iter().map(Digest::size),
        from.max_batch_bytes().min(to.max_batch_bytes()),
    ) {
        let part = &digests[range];
        let blobs = from.read_blobs(part)?;
        let blobs: Vec<sa_cas::Blob> =
            part.iter().zip(blobs).map(|(d, data)| sa_cas::Blob::from_verified(*d, data)).collect();
        to.write_blobs(&blobs)?;
    }
    Ok(())
}

/// Keeps an executed action's result (and its outputs) in the local store, where the
/// instantiator resolves ACTION overlays.
fn keep_result(
    local: &dyn Store,
    remote: &dyn Store,
    action: &Digest,
    result: &ActionResult,
) -> Result<()> {
    let outputs = sa_exec::result_blobs(local.digest_function(), result)?;
    let missing = local.find_missing(&outputs)?;
    copy(remote, local, &missing)
        .with_context(|| format!("downloading the outputs of {action}"))?;
    local.update_action_result(action, result)?;
    Ok(())
}

/// What a remote execution came to; a successful result is kept in the local store (outputs
/// included) so ACTION overlays resolve in the next wave.
fn remote_status(
    local: &dyn Store,
    remote: &dyn Store,
    action: &Digest,
    executed: Executed,
) -> Result<Status> {
    let (response, cached) = match executed {
        Ok(executed) => executed,
        Err(err) => return Ok(Status::Failed(sa_generator::error_chain(err.as_ref()))),
    };
    let result = response.result.unwrap_or_default();
    let rpc_status = response.status.unwrap_or_default();
    if rpc_status.code != 0 {
        return Ok(Status::Failed(format!(
            "execution status {}: {}",
            rpc_status.code, rpc_status.message
        )));
    }
    if result.exit_code != 0 {
        let stderr = stderr_excerpt(remote, &result);
        return Ok(Status::Failed(format!("exit code {}{stderr}", result.exit_code)));
    }
    keep_result(local, remote, action, &result)?;
    Ok(if cached { Status::Cached } else { Status::Executed })
}

/// What a local execution came to (its result is in the local ActionCache already).
fn local_status(local: &dyn Store, action: &Digest, config: &ExecConfig) -> Status {
    match sa_exec::execute_cached(local, action, config) {
        Ok(Execution { cached: true, .. }) => Status::Cached,
        Ok(Execution { result, .. }) if result.exit_code == 0 => Status::Executed,
        Ok(Execution { result, .. }) => {
            let stderr = stderr_excerpt(local, &result);
            Status::Failed(format!("exit code {}{stderr}", result.exit_code))
        }
        Err(err) => Status::Failed(sa_generator::error_chain(&err)),
    }
}

/// `work` over `items` with at most `jobs` in flight; results in the order of `items`.
pub(crate) fn run_parallel<I: Sync, T: Send>(
    jobs: usize,
    items: &[I],
    work: impl Fn(&I) -> T + Sync,
) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = work(item);
                    results.lock().expect("no panics while holding the lock")[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("no panics while holding the lock")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

pub(crate) fn execute(
    grpc: &GrpcCas,
    args: &StoreArgs,
    action: &Digest,
    timeout: Duration,
) -> Result<(ExecuteResponse, bool)> {
    let mut request = grpc.request(ExecuteRequest {
        instance_name: args.instance_name.clone(),
        action_digest: Some(action.to_proto()),
        skip_cache_lookup: false,
        execution_policy: None,
        results_cache_policy: None,
        inline_stdout: false,
        inline_stderr: false,
        inline_output_files: Vec::new(),
        digest_function: match args.digest_function {
            sa_cas::DigestFunction::Sha256 => 0,
            other => other.to_proto() as i32,
        },
    });
    request.set_timeout(timeout);
    // Execute with cache lookup is safe to submit again: retry transient failures (a server
    // restarting, a connection torn down) with backoff, as for every other call; the
    // execution's own deadline is final.
    let mut backoff = sa_cas::Backoff::new(grpc.config());
    let operation = loop {
        let mut attempt_request = tonic::Request::new(request.get_ref().clone());
        *attempt_request.metadata_mut() = request.metadata().clone();
        attempt_request.set_timeout(timeout);
        let channel = grpc.channel();
        let result = grpc.block_on(async move {
            let mut stream =
                ExecutionClient::new(channel).execute(attempt_request).await?.into_inner();
            let mut last = None;
            while let Some(op) = stream.message().await? {
                let done = op.done;
                last = Some(op);
                if done {
                    break;
                }
            }
            Ok::<_, tonic::Status>(last)
        });
        let status = match result {
            Ok(operation) => break operation,
            Err(status) => status,
        };
        let Some(delay) = sa_cas::is_transient(&status).then(|| backoff.next_delay()).flatten()
        else {
            let attempts = backoff.attempts_note();
            bail!("Execute {action}: {:?}: {}{attempts}", status.code(), status.message());
        };
        tracing::debug!(%action, code = ?status.code(), ?delay, "retrying Execute");
        std::thread::sleep(delay);
    };
    let operation = operation
        .ok_or_else(|| anyhow!("Execute {action}: the stream ended without an operation"))?;
    match operation.result {
        Some(operation::Result::Response(any)) => {
            let response = ExecuteResponse::decode(any.value.as_slice()).with_context(|| {
                format!("Execute {action}: the response is not an ExecuteResponse")
            })?;
            let cached = response.cached_result;
            Ok((response, cached))
        }
        Some(operation::Result::Error(status)) => {
            bail!("Execute {action}: status {}: {}", status.code, status.message)
        }
        None => bail!("Execute {action}: the operation finished without a result"),
    }
}
