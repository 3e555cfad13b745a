//! `sa`: the speculative-actions command-line tool that build scripts call between builds.
//!
//! Exit codes: 0 success, 1 failure (the error and its causes go to stderr), 2 usage error;
//! `sa record` exits with the compiler's code.
//! A closed stdout (a broken pipe) ends the command quietly with 0.

mod commands;
mod demo;
mod graph;
mod inspect;
mod prime;
mod proxy;
mod record;
mod store;
mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use sa_cas::DigestFunction;

const EXAMPLES: &str = "\
Examples:
  sa demo                                           the whole loop on a bundled C project
  sa ingest ./src                                   store a directory, print its root digest
  sa generate --graph build1.json --output build1.out.json
  sa instantiate --graph build2.json --previous build1.out.json --json
  sa prime --graph build2.json --previous build1.out.json --remote grpc://127.0.0.1:50051
  sa inspect 3fa9…/120 --as directory

Exit codes: 0 success, 1 failure, 2 usage error.";

/// Speculative actions: prime a remote-execution action cache before the build asks for it.
///
/// After a build, `sa generate` records where every input of every compile step came from;
/// before the next build, `sa instantiate` adapts those steps to the changed sources and
/// `sa prime` executes them, so the build finds them cached.
#[derive(Debug, Parser)]
#[command(name = "sa", version, about, long_about, after_help = EXAMPLES)]
pub(crate) struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    /// Print one JSON object per line (for scripts) instead of a human summary.
    #[arg(long, global = true, help_heading = "Output")]
    json: bool,
    /// Print store traffic (blobs, bytes, calls, RPCs) and time per phase to stderr.
    #[arg(long, global = true, help_heading = "Output")]
    stats: bool,
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Output")]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Where blobs and action results live. Listed after each subcommand's own options.
#[derive(Debug, Args)]
#[command(next_help_heading = "Store")]
pub(crate) struct StoreArgs {
    /// Local store directory, laid out like buildbox-casd's
    /// [default: ${XDG_CACHE_HOME:-~/.cache}/speculative-actions]
    #[arg(long, env = "SA_CAS", global = true, value_name = "DIR")]
    cas: Option<PathBuf>,
    /// Use a REAPI server instead of the local store: grpc://HOST:PORT, grpcs://HOST:PORT or
    /// unix:/PATH (for `prime`: the execution service).
    #[arg(long, env = "SA_REMOTE", global = true, value_name = "URL")]
    remote: Option<String>,
    /// REAPI instance name.
    #[arg(long, default_value = "", global = true, value_name = "NAME")]
    instance_name: String,
    /// Extra request header for the remote, e.g. authorization=Bearer… (repeatable; values are
    /// never printed).
    #[arg(long, global = true, value_name = "KEY=VALUE")]
    remote_header: Vec<String>,
    /// PEM file of a CA certificate to trust for grpcs://.
    #[arg(long, global = true, value_name = "PEM")]
    tls_ca_cert: Option<PathBuf>,
    /// PEM file of a client certificate for grpcs:// (with --tls-client-key).
    #[arg(long, global = true, value_name = "PEM")]
    tls_client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    #[arg(long, global = true, value_name = "PEM")]
    tls_client_key: Option<PathBuf>,
    /// Deadline of one attempt of one RPC to --remote, in seconds (failed attempts are retried
    /// with backoff on UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and broken
    /// connections).
    #[arg(long, default_value_t = 60, global = true, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    rpc_timeout: u64,
    /// Digest function of the store and the graph: sha256 or blake3.
    #[arg(long, default_value = "sha256", value_parser = store::parse_function, global = true)]
    digest_function: DigestFunction,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Bounds on what `sa` accepts from outside; exceeding one is an error naming what and where,
/// never an out-of-memory kill.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub(crate) struct LimitArgs {
    /// Deepest directory nesting accepted in a tree.
    #[arg(long, default_value_t = 256, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_tree_depth: u32,
    /// Most entries (files, directories, symlinks) accepted in one Directory.
    #[arg(long, default_value_t = 1 << 20, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_directory_entries: u32,
    /// Most distinct directories one command fetches.
    #[arg(long, default_value_t = 50_000_000, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_directories: u32,
    /// Largest blob read into memory, in bytes (default 4 GiB).
    #[arg(long, default_value_t = 4 << 30, global = true, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_blob_bytes: u64,
    /// Largest build graph file, in bytes (default 256 MiB).
    #[arg(long, default_value_t = 256 << 20, global = true, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_graph_bytes: u64,
    /// Most entries (files, directories, symlinks) the trees of one command expand to, counting
    /// every path a walk lists (a tree of few distinct directories can name 2^40 paths).
    #[arg(long, default_value_t = sa_cas::merkle::DEFAULT_MAX_EXPANDED_ENTRIES, global = true,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_expanded_entries: u64,
    /// Most bytes of files one input root may materialize on this machine (prime --local,
    /// record; default 64 GiB).
    #[arg(long, default_value_t = sa_cas::merkle::DEFAULT_MAX_MATERIALIZE_BYTES, global = true,
          value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    max_materialize_bytes: u64,
    /// Most RPCs in flight at once to --remote.
    #[arg(long, default_value_t = 16, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_in_flight_rpcs: u32,
}

impl LimitArgs {
    /// The tree bounds.
    pub(crate) fn tree(&self) -> sa_cas::merkle::TreeLimits {
        sa_cas::merkle::TreeLimits {
            max_depth: self.max_tree_depth as usize,
            max_entries: self.max_directory_entries as usize,
            max_directories: self.max_directories as usize,
            max_expanded_entries: self.max_expanded_entries,
        }
    }
}

/// Where `prime --local` and `record` run the commands they take from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SandboxChoice {
    /// bwrap when it is on PATH, else none.
    Auto,
    /// bubblewrap: only the input root writable, /usr read-only, no network.
    Bwrap,
    /// On the host, unsandboxed: only for a trusted store.
    None,
}

/// The execution options of `prime --local` and `record`.
pub(crate) fn exec_config(
    args: &StoreArgs,
    sandbox: SandboxChoice,
    timeout: std::time::Duration,
) -> anyhow::Result<sa_exec::ExecConfig> {
    let sandbox = match sandbox {
        SandboxChoice::Auto => sa_exec::Sandbox::detect(),
        SandboxChoice::None => sa_exec::Sandbox::None,
        SandboxChoice::Bwrap => {
            sa_exec::Sandbox::find_bwrap().map(sa_exec::Sandbox::Bwrap).ok_or_else(|| {
                anyhow::anyhow!(
                    "--sandbox bwrap: no bwrap on PATH (Debian: apt-get install bubblewrap)"
                )
            })?
        }
    };
    tracing::debug!(?sandbox, "executing");
    Ok(sa_exec::ExecConfig {
        default_timeout: timeout,
        limits: args.limits.tree(),
        max_materialize_bytes: args.limits.max_materialize_bytes,
        sandbox,
        ..Default::default()
    })
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate and store SpeculativeActions for the elements of a build graph.
    #[command(
        after_help = "Example:\n  sa generate --graph build1.json --output build1.out.json --json"
    )]
    Generate(commands::GenerateArgs),
    /// Adapt the previous build's speculative actions to the next build.
    #[command(
        after_help = "Example:\n  sa instantiate --graph build2.json --previous build1.out.json --json"
    )]
    Instantiate(commands::InstantiateArgs),
    /// Instantiate, upload what the execution service lacks, and execute the adapted actions.
    #[command(
        after_help = "Example:\n  sa prime --graph build2.json --previous build1.out.json --remote grpc://127.0.0.1:50051 --jobs 8"
    )]
    Prime(prime::PrimeArgs),
    /// Run the whole loop on a bundled C project: build, generate, edit, prime, build again.
    #[command(
        after_help = "Example:\n  sa demo --workdir /tmp/sa-demo --jobs 2\n\nNeeds gcc and make. Exits 1 unless build 2 finds every compile step primed."
    )]
    Demo(demo::DemoArgs),
    /// Decode a blob and print it as JSON.
    #[command(after_help = "Example:\n  sa inspect 3fa9…/120 --as tree")]
    Inspect(inspect::InspectArgs),
    /// Store a directory as a Merkle tree and print its root digest.
    #[command(after_help = "Example:\n  sa ingest ./src")]
    Ingest(commands::IngestArgs),
    /// Compiler wrapper: record a single-source compile as an Action, serve it from the
    /// ActionCache or run it, and log its digest (other commands run unchanged).
    #[command(
        after_help = "Example:\n  make CC=\"sa --cas /tmp/store record --log subactions.log -- gcc\"\n\nThe exit code is the compiler's."
    )]
    Record(record::RecordArgs),
    /// Forward every REAPI call to an upstream server and record each Execute and
    /// GetActionResult (any client: Bazel, Buck2, Pants, recc, BuildStream).
    #[command(
        after_help = "Example:\n  sa proxy --listen 127.0.0.1:8980 --upstream grpc://127.0.0.1:50051 --record recordings/\n  bazel build --remote_executor=grpc://127.0.0.1:8980 //...\n\nRuns until interrupted."
    )]
    Proxy(proxy::ProxyArgs),
    /// Build graphs from other sources (a proxy's recording).
    #[command(
        after_help = "Example:\n  sa --remote grpc://127.0.0.1:50051 graph from-recording --recording recordings/ID.jsonl --sources . --name app --output build1.json"
    )]
    Graph(proxy::GraphArgs),
    /// Serve an execution service's leases (the remote-workers Bots API, as BuildGrid hands
    /// them out): run each leased action here and answer with its result.
    #[command(
        after_help = "Example:\n  sa --remote grpc://127.0.0.1:50051 --instance-name main worker --bot-id w1\n\nRuns until interrupted. One action at a time: start several for parallelism."
    )]
    Worker(worker::WorkerArgs),
    /// Print the subactions recorded in an action's ActionResult.
    #[command(after_help = "Example:\n  sa subactions 77be…/142")]
    Subactions(commands::SubactionsArgs),
}

/// Output to stdout and the time per phase, shared by the commands.
pub(crate) struct Ui {
    json: bool,
    stats: bool,
    phases: Vec<(&'static str, std::time::Duration)>,
    /// Other `--stats` lines, by name.
    counts: Vec<(&'static str, String)>,
    /// The stores whose traffic `--stats` reports, by role.
    watched: Vec<Watched>,
    stdout: std::io::StdoutLock<'static>,
}

impl Ui {
    /// Prints a line; a closed stdout becomes a `BrokenPipe` error that ends quietly.
    pub(crate) fn line(&mut self, text: impl std::fmt::Display) -> anyhow::Result<()> {
        writeln!(self.stdout, "{text}").map_err(anyhow::Error::from)
    }

    /// Flushes stdout (before a long-running command blocks).
    pub(crate) fn flush(&mut self) -> anyhow::Result<()> {
        self.stdout.flush().map_err(anyhow::Error::from)
    }

    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// Runs `work` as a named phase (timed for `--stats`).
    pub(crate) fn phase<T>(&mut self, name: &'static str, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = work();
        let elapsed = start.elapsed();
        tracing::info!("phase {name}: {:.3}s", elapsed.as_secs_f64());
        self.phases.push((name, elapsed));
        result
    }

    /// Records a line for `--stats` (`stats: NAME: TEXT`).
    pub(crate) fn count(&mut self, name: &'static str, text: String) {
        self.counts.push((name, text));
    }

    /// Records a phase timed elsewhere (for `--stats`).
    pub(crate) fn record_phase(&mut self, name: &'static str, elapsed: std::time::Duration) {
        self.phases.push((name, elapsed));
    }

    /// A progress bar on stderr (hidden when stderr is not a terminal).
    pub(crate) fn progress(&self, len: usize, what: &str) -> indicatif::ProgressBar {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(len as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar
    }

    /// Reports `opened`'s traffic under `role` ("store", "execution service") with `--stats`,
    /// at the end of the command, however it ends.
    pub(crate) fn watch(&mut self, role: &'static str, opened: &store::Opened) {
        self.watched.push(Watched {
            role,
            description: opened.description.clone(),
            meter: opened.store.meter(),
            grpc: opened.grpc.clone(),
        });
    }

    /// With `--stats`, prints each watched store's traffic and the time of each phase.
    pub(crate) fn report_stats(&self) {
        if !self.stats {
            return;
        }
        for watched in &self.watched {
            let t = watched.meter.stats();
            let rpcs = watched
                .grpc
                .as_ref()
                .map(|g| format!(", {} RPCs", g.rpc_count()))
                .unwrap_or_default();
            eprintln!(
                "stats: {} {}: read {} blobs ({} bytes), wrote {} blobs ({} bytes), {} presence checks, {} action-cache reads, {} writes, {} calls{rpcs}",
                watched.role,
                watched.description,
                t.blobs_read,
                t.bytes_read,
                t.blobs_written,
                t.bytes_written,
                t.presence_checks,
                t.action_cache_reads,
                t.action_cache_writes,
                t.calls
            );
        }
        for (name, text) in &self.counts {
            eprintln!("stats: {name}: {text}");
        }
        self.report_phases();
    }

    /// With `--stats`, prints the time of each phase to stderr.
    fn report_phases(&self) {
        for (name, duration) in &self.phases {
            eprintln!("stats: phase {name}: {:.3}s", duration.as_secs_f64());
        }
    }
}

/// A store `--stats` reports on.
struct Watched {
    role: &'static str,
    description: String,
    meter: sa_cas::Meter,
    grpc: Option<std::sync::Arc<sa_cas::GrpcCas>>,
}

/// On SIGINT, SIGTERM or SIGHUP: end every running action's process group, remove every
/// scratch directory, and exit with 128 + the signal, as shells report it.
fn install_signal_handlers() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let (groups, dirs) = sa_exec::interrupt();
            eprintln!(
                "sa: interrupted by signal {signal}: ended {groups} running actions, removed {dirs} scratch directories"
            );
            std::process::exit(128 + signal);
        }
    })?;
    Ok(())
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (mut cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    // An empty SA_REMOTE= or SA_CAS= (or an empty flag) means unset, as shells expect.
    cli.store.remote = cli.store.remote.take().filter(|r| !r.is_empty());
    cli.store.cas = cli.store.cas.take().filter(|c| !c.as_os_str().is_empty());
    if let Err(message) = settle_stores(&mut cli, &matches) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SA_LOG").unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into logs and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(err) = install_signal_handlers() {
        eprintln!("error: installing signal handlers: {err}");
        return ExitCode::FAILURE;
    }
    let mut ui = Ui {
        json: cli.json,
        stats: cli.stats,
        phases: Vec::new(),
        counts: Vec::new(),
        watched: Vec::new(),
        stdout: std::io::stdout().lock(),
    };
    let ok = |result: anyhow::Result<()>| result.map(|()| 0u8);
    let result = match &cli.command {
        Command::Generate(args) => ok(commands::generate(&cli.store, args, &mut ui)),
        Command::Instantiate(args) => ok(commands::instantiate(&cli.store, args, &mut ui)),
        Command::Prime(args) => ok(prime::prime(&cli.store, args, &mut ui)),
        Command::Inspect(args) => ok(inspect::inspect(&cli.store, args, &mut ui)),
        Command::Demo(args) => ok(demo::demo(&cli.store, args, &mut ui)),
        Command::Ingest(args) => ok(commands::ingest(&cli.store, args, &mut ui)),
        Command::Record(args) => record::record(&cli.store, args),
        Command::Subactions(args) => ok(commands::subactions(&cli.store, args, &mut ui)),
        Command::Proxy(args) => ok(proxy::proxy(&cli.store, args, &mut ui)),
        Command::Graph(args) => ok(proxy::graph(&cli.store, args, &mut ui)),
        Command::Worker(args) => ok(worker::worker(&cli.store, args)),
    };
    let result =
        result.and_then(|code| ui.stdout.flush().map(|()| code).map_err(anyhow::Error::from));
    // Also after a failure: what the command did before it failed.
    ui.report_stats();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", sa_generator::error_chain(err.as_ref()));
            if err.chain().any(|cause| cause.is::<UsageError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Where a global option's value came from: the command line (at any subcommand level), or
/// somewhere else (the environment, a default).
fn on_command_line(matches: &clap::ArgMatches, id: &str) -> bool {
    let mut level = Some(matches);
    while let Some(m) = level {
        if m.try_get_raw(id).ok().flatten().is_some()
            && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        {
            return true;
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    false
}

/// `--cas` and `--remote` are never silently ignored: `prime` uses both (blobs here, execution
/// there); `demo` makes its own store; every other command uses one store, so naming both on
/// the command line is a usage error, and one named on the command line overrides the other
/// from the environment.
fn settle_stores(cli: &mut Cli, matches: &clap::ArgMatches) -> Result<(), String> {
    let cas_flag = cli.store.cas.is_some() && on_command_line(matches, "cas");
    let remote_flag = cli.store.remote.is_some() && on_command_line(matches, "remote");
    match &cli.command {
        Command::Prime(_) => Ok(()),
        Command::Demo(_) if cas_flag => Err(
            "sa demo makes its own store in its work directory (--workdir to keep it): drop --cas"
                .into(),
        ),
        _ if cas_flag && remote_flag => {
            Err("--cas and --remote both name the store, and this command uses one: drop one"
                .into())
        }
        _ => {
            if cas_flag {
                // An explicit local store overrides SA_REMOTE.
                cli.store.remote = None;
            }
            Ok(())
        }
    }
}

/// A combination of options that cannot work together: exit 2, like clap's own usage errors.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Fails with a [`UsageError`].
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage;

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
