//! `worker`: a Bots API worker for execution services that have none of their own
//! (BuildGrid): it runs leased actions here with sa-exec.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sa_cas::GrpcCas;
use sa_exec::{BotOptions, BotWorker};

use crate::args::StoreArgs;
use crate::store;

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The bot's id in the farm [default: HOSTNAME-PID].
    #[arg(long, value_name = "ID")]
    bot_id: Option<String>,
    /// A property of this worker, matched against actions' platforms (repeatable).
    #[arg(long, value_name = "KEY=VALUE", default_value = "OSFamily=linux")]
    property: Vec<String>,
    /// Run each command in a bubblewrap sandbox (only its input root writable, /usr read-only,
    /// no network), on the host unsandboxed (none), or bwrap where installed (auto).
    #[arg(long, value_enum, default_value = "auto")]
    sandbox: crate::args::SandboxChoice,
    /// Deadline of an action that sets none, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

pub(crate) fn worker(args: &StoreArgs, cmd: &WorkerArgs) -> Result<()> {
    let Some(endpoint) = &args.remote else {
        crate::exit::usage!(
            "sa worker needs --remote URL: the execution service whose leases it runs"
        );
    };
    let mut properties = Vec::new();
    for property in &cmd.property {
        let Some((key, value)) = property.split_once('=') else {
            crate::exit::usage!("--property {property:?}: expected KEY=VALUE");
        };
        properties.push((key.to_owned(), value.to_owned()));
    }
    let bot_id = match &cmd.bot_id {
        Some(id) => id.clone(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "sa-worker".into());
            format!("{host}-{}", std::process::id())
        }
    };
    let timeout = Duration::from_secs(cmd.timeout);
    let exec = crate::args::exec_config(args, cmd.sandbox, timeout)?;
    let mut config = store::grpc_config(args, endpoint)?;
    // A long poll waits for work: give it longer than one RPC.
    config.rpc_timeout = config.rpc_timeout.max(Duration::from_secs(60));
    // A worker is a long-lived service: ride out an overloaded or restarting server (about a
    // minute and a half of backoff) rather than fail the lease.
    config.max_retries = config.max_retries.max(20);
    let cas = GrpcCas::connect(config)?;
    let options = BotOptions {
        bot_id: bot_id.clone(),
        properties,
        exec,
        poll_timeout: Duration::from_secs(30),
    };
    tracing::info!(%bot_id, %endpoint, "serving leases");
    BotWorker::new(cas, options)
        .run(&AtomicBool::new(false))
        .with_context(|| format!("worker {bot_id} on {endpoint}"))
}
