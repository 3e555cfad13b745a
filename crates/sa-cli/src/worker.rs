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
    /// Leases run at once: this many bots (ID-1 … ID-N) share the process.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// While an action runs, the bot's session is updated this often, in seconds, so the
    /// service keeps the lease with it (below the service's own keepalive; BuildGrid's is
    /// 600 s by default).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    keepalive: f64,
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
    let keepalive =
        Duration::try_from_secs_f64(cmd.keepalive).ok().filter(|d| !d.is_zero()).with_context(
            || format!("--keepalive {}: expected a positive number of seconds", cmd.keepalive),
        )?;
    let options = |bot_id: String| BotOptions {
        bot_id,
        properties: properties.clone(),
        exec: exec.clone(),
        poll_timeout: Duration::from_secs(30),
        keepalive,
    };
    let stop = AtomicBool::new(false);
    if cmd.concurrency == 1 {
        tracing::info!(%bot_id, %endpoint, "serving leases");
        return BotWorker::new(GrpcCas::connect(config)?, options(bot_id.clone()))
            .run(&stop)
            .with_context(|| format!("worker {bot_id} on {endpoint}"));
    }
    // One bot session per slot, each on a connection of its own: a service hands each bot
    // one lease at a time.
    let workers = (1..=cmd.concurrency)
        .map(|n| {
            let id = format!("{bot_id}-{n}");
            Ok((id.clone(), BotWorker::new(GrpcCas::connect(config.clone())?, options(id))))
        })
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|scope| {
        let bots: Vec<_> = workers
            .into_iter()
            .map(|(id, worker)| {
                let stop = &stop;
                scope.spawn(move || {
                    tracing::info!(bot_id = %id, %endpoint, "serving leases");
                    worker.run(stop).with_context(|| format!("worker {id} on {endpoint}"))
                })
            })
            .collect();
        let mut first_error = None;
        for bot in bots {
            let outcome = bot.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a bot panicked")));
            if let Err(err) = outcome {
                // One bot failing for good stops the others.
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}
