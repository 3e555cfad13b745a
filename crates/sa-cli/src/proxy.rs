//! `proxy` (record any REAPI client's actions) and `graph from-recording` (a recording to a
//! build-graph element for `sa generate`).

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sa_cas::{Digest, merkle};
use serde_json::json;

use crate::args::StoreArgs;
use crate::graph::{Element, Graph};
use crate::store;
use crate::ui::Ui;

#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// Directory of the recordings: one DIR/<tool_invocation_id>.jsonl per client invocation.
    #[arg(long, value_name = "DIR")]
    record: PathBuf,
}

/// Where the proxy listens, what it forwards to, and what clients may make it hold (`proxy`
/// and `serve`).
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// Where clients connect: IP:PORT (loopback unless you name another address) or unix:/PATH.
    #[arg(long, default_value = "127.0.0.1:8980", value_name = "ADDR")]
    listen: String,
    /// The REAPI server to forward to: grpc://HOST:PORT, grpcs://HOST:PORT or unix:/PATH
    /// (with --remote-header, --tls-ca-cert, --tls-client-cert/--tls-client-key for it).
    #[arg(long, value_name = "URL")]
    pub(crate) upstream: String,
    /// PEM certificate (chain) to serve TLS with: clients connect with grpcs:// (with
    /// --listen-tls-key).
    #[arg(long, value_name = "PEM", requires = "listen_tls_key")]
    listen_tls_cert: Option<PathBuf>,
    /// PEM private key of --listen-tls-cert.
    #[arg(long, value_name = "PEM", requires = "listen_tls_cert")]
    listen_tls_key: Option<PathBuf>,
    #[command(flatten)]
    limits: ServiceLimitArgs,
}

impl ServiceArgs {
    /// Starts the recording proxy into `record`.
    pub(crate) fn start(
        &self,
        args: &StoreArgs,
        record: &std::path::Path,
    ) -> Result<sa_proxy::Proxy> {
        let upstream = store::grpc_config(args, &self.upstream)?;
        let listen = sa_proxy::Listen::parse(&self.listen)?;
        let mut config = sa_proxy::ProxyConfig::new(upstream, record.to_owned());
        config.listen_tls = self.listen_tls_cert.clone().zip(self.listen_tls_key.clone());
        config.limits = self.limits.limits()?;
        raise_file_limit();
        sa_proxy::Proxy::start(&listen, config)
            .with_context(|| format!("starting the proxy to {}", self.upstream))
    }
}

/// What clients may make the proxy hold (anyone who can connect is a client).
#[derive(Debug, Args)]
#[command(next_help_heading = "Service limits")]
pub(crate) struct ServiceLimitArgs {
    /// Connections served at once; past it the longest-idle connection is closed, or the new
    /// one when every connection has calls open.
    #[arg(long, default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Calls open at once on one connection.
    #[arg(long, default_value_t = 128, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// Bytes of recorded requests (Execute, GetActionResult) buffered at once over all calls
    /// (default 64 MiB); a call past it is answered RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_recorded_bytes: u64,
    /// A connection that opens no call within this many seconds is closed.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    handshake_timeout: f64,
    /// A connection with no call open for this many seconds is closed (clients reconnect).
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    idle_timeout: f64,
}

impl ServiceLimitArgs {
    pub(crate) fn limits(&self) -> Result<sa_proxy::ProxyLimits> {
        let seconds = |value: f64, flag: &str| {
            std::time::Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("{flag} {value}: expected a positive number of seconds"))
        };
        Ok(sa_proxy::ProxyLimits {
            max_connections: self.max_connections as usize,
            max_streams_per_connection: self.max_streams_per_connection,
            recorded_budget_bytes: usize::try_from(self.max_recorded_bytes).unwrap_or(usize::MAX),
            handshake_timeout: seconds(self.handshake_timeout, "--handshake-timeout")?,
            idle_timeout: seconds(self.idle_timeout, "--idle-timeout")?,
            ..sa_proxy::ProxyLimits::default()
        })
    }
}

/// Raises this process's soft limit of open files to its hard limit: a service holds a
/// descriptor per connection, and the usual soft limit of 1024 is a few hundred idle clients.
pub(crate) fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("raising the open-file limit: {err}");
        }
    }
}

pub(crate) fn proxy(args: &StoreArgs, cmd: &ProxyArgs, ui: &mut Ui) -> Result<()> {
    let proxy = cmd.service.start(args, &cmd.record)?;
    let line = if ui.json() {
        json!({"listening": proxy.endpoint(), "upstream": cmd.service.upstream, "record": cmd.record})
            .to_string()
    } else {
        format!(
            "sa proxy: {} -> {}, recording into {}",
            proxy.endpoint(),
            cmd.service.upstream,
            cmd.record.display()
        )
    };
    ui.line(line)?;
    ui.flush()?;
    proxy.wait();
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct GraphArgs {
    #[command(subcommand)]
    command: GraphCommand,
}

#[derive(Debug, Subcommand)]
enum GraphCommand {
    /// Turn one invocation's recording (from `sa proxy`) into a build-graph element whose
    /// subactions are the recorded actions, producers before their consumers.
    FromRecording(FromRecordingArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FromRecordingArgs {
    /// The recording: DIR/<tool_invocation_id>.jsonl as `sa proxy` wrote it.
    #[arg(long, value_name = "FILE")]
    recording: PathBuf,
    /// The workspace the build read, ingested as the element's sources.
    #[arg(long, value_name = "DIR")]
    sources: PathBuf,
    /// The element's name.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Only actions with these mnemonics (comma-separated, e.g. CppCompile,CppLink).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    mnemonic: Vec<String>,
    /// Write the graph here instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub(crate) fn graph(args: &StoreArgs, cmd: &GraphArgs, ui: &mut Ui) -> Result<()> {
    match &cmd.command {
        GraphCommand::FromRecording(from) => from_recording(args, from, ui),
    }
}

fn from_recording(args: &StoreArgs, cmd: &FromRecordingArgs, ui: &mut Ui) -> Result<()> {
    // A recording is read into memory: bounded like a graph, counted as it is read.
    let limit = args.limits.max_graph_bytes;
    let recording = sa_proxy::read_recording(&cmd.recording, limit).map_err(|err| match err {
        sa_cas::BoundedReadError::TooLarge { .. } => anyhow::anyhow!(
            "recording {}: more than --max-graph-bytes {limit}",
            cmd.recording.display()
        ),
        err => anyhow::anyhow!("reading the recording: {err}"),
    })?;
    if !recording.skipped.is_empty() {
        eprintln!(
            "warning: recording {}: skipped {} broken lines (lines {:?}: what a write that \
             failed part way leaves)",
            cmd.recording.display(),
            recording.skipped.len(),
            recording.skipped
        );
    }
    let function = args.digest_function;
    let mut seen = HashSet::new();
    let actions: Vec<Digest> =
        sa_learn::recorded_from_proxy(function, &recording.lines, &cmd.mnemonic)
            .with_context(|| format!("recording {}", cmd.recording.display()))?
            .into_iter()
            .filter(|r| r.succeeded && seen.insert(r.action))
            .map(|r| r.action)
            .collect();
    if actions.is_empty() {
        bail!(
            "recording {} has no successful Execute or cache hit{}",
            cmd.recording.display(),
            if cmd.mnemonic.is_empty() {
                String::new()
            } else {
                format!(" with mnemonic {:?}", cmd.mnemonic)
            }
        );
    }
    let opened = store::open(args)?;
    ui.watch("store", &opened);
    let store = &opened.store;
    let limits = args.limits.tree();
    let ordered = sa_learn::in_producer_order(store, &actions, &limits)?;
    if let Some(action) = ordered.without_result.first() {
        bail!("recorded action {action} has no ActionResult in {}", opened.description);
    }
    let sources = merkle::ingest(store, &cmd.sources, &limits)
        .with_context(|| format!("ingesting --sources {}", cmd.sources.display()))?;
    let element = Element {
        name: cmd.name.clone(),
        sources: Some(sources),
        subactions: ordered.actions,
        ..Default::default()
    };
    let text = Graph::new(function, vec![element])?.to_json();
    match &cmd.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            ui.line(format!(
                "{}: {} subactions, sources {sources} -> {}",
                cmd.name,
                actions.len(),
                path.display()
            ))?;
        }
        None => ui.line(text.trim_end())?,
    }
    Ok(())
}
