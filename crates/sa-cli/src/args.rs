//! The command line: global options (store, limits, output), the subcommands, and the rules
//! that settle which store a command uses.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sa_cas::DigestFunction;

use crate::ui::Ui;
use crate::{commands, demo, inspect, learned, prime, proxy, record, serve, store, worker};

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
    pub(crate) store: StoreArgs,
    /// Print one JSON object per line (for scripts) instead of a human summary.
    #[arg(long, global = true, help_heading = "Output")]
    pub(crate) json: bool,
    /// Print store traffic (blobs, bytes, calls, RPCs) and time per phase to stderr.
    #[arg(long, global = true, help_heading = "Output")]
    pub(crate) stats: bool,
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Output")]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where blobs and action results live. Listed after each subcommand's own options.
#[derive(Debug, Args)]
#[command(next_help_heading = "Store")]
pub(crate) struct StoreArgs {
    /// Local store directory, laid out like buildbox-casd's
    /// [default: ${XDG_CACHE_HOME:-~/.cache}/speculative-actions]
    #[arg(long, env = "SA_CAS", global = true, value_name = "DIR",
          value_parser = any_path)]
    pub(crate) cas: Option<PathBuf>,
    /// Use a REAPI server instead of the local store: grpc://HOST:PORT, grpcs://HOST:PORT or
    /// unix:/PATH (for `prime`: the execution service).
    #[arg(long, env = "SA_REMOTE", global = true, value_name = "URL")]
    pub(crate) remote: Option<String>,
    /// REAPI instance name.
    #[arg(long, default_value = "", global = true, value_name = "NAME")]
    pub(crate) instance_name: String,
    /// Extra request header for the remote, e.g. authorization=Bearer… (repeatable; values are
    /// never printed).
    #[arg(long, global = true, value_name = "KEY=VALUE")]
    pub(crate) remote_header: Vec<String>,
    /// PEM file of a CA certificate to trust for grpcs://.
    #[arg(long, global = true, value_name = "PEM")]
    pub(crate) tls_ca_cert: Option<PathBuf>,
    /// PEM file of a client certificate for grpcs:// (with --tls-client-key).
    #[arg(long, global = true, value_name = "PEM")]
    pub(crate) tls_client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    #[arg(long, global = true, value_name = "PEM")]
    pub(crate) tls_client_key: Option<PathBuf>,
    /// Deadline of one attempt of one RPC to --remote, in seconds (failed attempts are retried
    /// with backoff on UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and broken
    /// connections).
    #[arg(long, default_value_t = 60, global = true, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rpc_timeout: u64,
    /// Digest function of the store and the graph: sha256 or blake3.
    #[arg(long, default_value = "sha256", value_parser = store::parse_function, global = true)]
    pub(crate) digest_function: DigestFunction,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

/// Bounds on what `sa` accepts from outside; exceeding one is an error naming what and where,
/// never an out-of-memory kill.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub(crate) struct LimitArgs {
    /// Deepest directory nesting accepted in a tree.
    #[arg(long, default_value_t = 256, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_tree_depth: u32,
    /// Most entries (files, directories, symlinks) accepted in one Directory.
    #[arg(long, default_value_t = 1 << 20, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_directory_entries: u32,
    /// Most distinct directories one command fetches.
    #[arg(long, default_value_t = 50_000_000, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_directories: u32,
    /// Largest blob read into memory, in bytes (default 4 GiB).
    #[arg(long, default_value_t = 4 << 30, global = true, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_blob_bytes: u64,
    /// Largest build graph file, in bytes (default 256 MiB).
    #[arg(long, default_value_t = 256 << 20, global = true, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_graph_bytes: u64,
    /// Most entries (files, directories, symlinks) the trees of one command expand to, counting
    /// every path a walk lists (a tree of few distinct directories can name 2^40 paths).
    #[arg(long, default_value_t = sa_cas::merkle::DEFAULT_MAX_EXPANDED_ENTRIES, global = true,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_expanded_entries: u64,
    /// Most bytes of files one input root may materialize on this machine (prime --local,
    /// record; default 64 GiB).
    #[arg(long, default_value_t = sa_cas::merkle::DEFAULT_MAX_MATERIALIZE_BYTES, global = true,
          value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_materialize_bytes: u64,
    /// Most resident memory the command may grow to, in bytes [default: half the machine's
    /// memory]: past it the command stops with an error (a watchdog measures it).
    #[arg(long, global = true, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_memory: Option<u64>,
    /// Most RPCs in flight at once to --remote.
    #[arg(long, default_value_t = 16, global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) max_in_flight_rpcs: u32,
}

/// A path, the empty one included (clap's own path parser refuses it): an empty `SA_CAS=` or
/// `--cas ""` means unset, as shells expect, and `main` treats it so.
fn any_path(text: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(text))
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
pub(crate) enum Command {
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
    /// The proxy, learning from every build that goes through it and priming the next one
    /// whenever the workspace changes: no `sa` command between builds.
    #[command(
        after_help = "Example:\n  sa serve --upstream grpc://127.0.0.1:50051 --workspace . --listen 127.0.0.1:8980\n  bazel build --remote_executor=grpc://127.0.0.1:8980 //...\n\nRuns until interrupted; one line per build learned and per priming (--json: events)."
    )]
    Serve(serve::ServeArgs),
    /// Build graphs from other sources (a proxy's recording).
    #[command(
        after_help = "Example:\n  sa --remote grpc://127.0.0.1:50051 graph from-recording --recording recordings/ID.jsonl --sources . --name app --output build1.json"
    )]
    Graph(proxy::GraphArgs),
    /// Serve an execution service's leases (the remote-workers Bots API, as BuildGrid hands
    /// them out): run each leased action here and answer with its result.
    #[command(
        after_help = "Example:\n  sa --remote grpc://127.0.0.1:50051 --instance-name main worker --bot-id w1\n\nRuns until interrupted. --concurrency N runs N leases at once."
    )]
    Worker(worker::WorkerArgs),
    /// Learn from one build (a recording of `sa proxy`, or the log of `sa record`): update the
    /// project's learned state and generate its speculative actions against the workspace.
    #[command(
        after_help = "Examples:\n  sa --remote grpc://127.0.0.1:50051 learn --recording recordings/ID.jsonl --workspace .\n  sa learn --log subactions.log --workspace .\n\nThen, after an edit: sa prime --workspace ."
    )]
    Learn(learned::LearnArgs),
    /// Print a project's learned state: identities, the newest build, the last priming.
    #[command(after_help = "Example:\n  sa status --workspace .")]
    Status(learned::StatusArgs),
    /// Print the subactions recorded in an action's ActionResult.
    #[command(after_help = "Example:\n  sa subactions 77be…/142")]
    Subactions(commands::SubactionsArgs),
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
pub(crate) fn settle_stores(cli: &mut Cli, matches: &clap::ArgMatches) -> Result<(), String> {
    let cas_flag = cli.store.cas.is_some() && on_command_line(matches, "cas");
    let remote_flag = cli.store.remote.is_some() && on_command_line(matches, "remote");
    match &cli.command {
        Command::Prime(_) => Ok(()),
        Command::Serve(_) if cas_flag => Err(
            "sa serve keeps what it learns in the store of the builds it serves (--upstream, or \
             --remote): drop --cas"
                .into(),
        ),
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

impl Command {
    /// Runs the command; its exit code on success (the compiler's for `record`, else 0).
    pub(crate) fn run(&self, store: &StoreArgs, ui: &mut Ui) -> anyhow::Result<u8> {
        let ok = |result: anyhow::Result<()>| result.map(|()| 0u8);
        match self {
            Command::Generate(args) => ok(commands::generate(store, args, ui)),
            Command::Instantiate(args) => ok(commands::instantiate(store, args, ui)),
            Command::Prime(args) => ok(prime::prime(store, args, ui)),
            Command::Inspect(args) => ok(inspect::inspect(store, args, ui)),
            Command::Demo(args) => ok(demo::demo(store, args, ui)),
            Command::Ingest(args) => ok(commands::ingest(store, args, ui)),
            Command::Record(args) => record::record(store, args),
            Command::Subactions(args) => ok(commands::subactions(store, args, ui)),
            Command::Learn(args) => ok(learned::learn(store, args, ui)),
            Command::Status(args) => ok(learned::status(store, args, ui)),
            Command::Proxy(args) => ok(proxy::proxy(store, args, ui)),
            Command::Serve(args) => ok(serve::serve(store, args, ui)),
            Command::Graph(args) => ok(proxy::graph(store, args, ui)),
            Command::Worker(args) => ok(worker::worker(store, args)),
        }
    }
}
