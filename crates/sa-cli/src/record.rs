//! `record`: a compiler wrapper for build scripts (`make CC="sa record -- gcc"`).
//!
//! A single-source compile (`-c`, one source file) becomes an Action the way recc builds one:
//! the compiler's own dependency output (`-M`) lists the files it reads; those under the root
//! (default: the working directory) form the input root, at their paths relative to it; the
//! Command holds the arguments (absolute paths under the root made relative), a sorted,
//! allow-listed environment, the output paths and the working directory. The Action is looked
//! up in the ActionCache: a hit writes the outputs from the store and skips the compiler; a
//! miss runs it (locally with sa-exec, or with `Execute` on `--remote`). Either way the Action
//! digest is appended to the log, the element's subactions. Anything else runs unchanged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use sa_cas::{Cas, Digest, merkle, write_message};
use sa_proto::reapi::{Action, ActionResult, Command, command::EnvironmentVariable};

use sa_compile::{Compile, normalize, parse_compile, parse_make_deps, relativize_args, under};

use crate::args::StoreArgs;
use crate::store;

/// The environment every recorded Command carries, whatever the host's: the same compile has
/// the same Action digest on every machine with the same toolchain, so caches are shared.
/// `--pass-env NAME` adds a variable with the host's value (its choice, its digests).
const FIXED_ENV: &[(&str, &str)] = &[("LC_ALL", "C"), ("PATH", "/usr/local/bin:/usr/bin:/bin")];

#[derive(Debug, Args)]
pub(crate) struct RecordArgs {
    /// Append `HASH/SIZE hit|miss` here for each recorded compile (the element's subactions).
    #[arg(long, env = "SA_RECORD_LOG", value_name = "FILE")]
    log: Option<PathBuf>,
    /// The directory that becomes the input root; the working directory must be inside it
    /// [default: the working directory].
    #[arg(long, env = "SA_RECORD_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    /// Also put the files the compiler reads outside the root (system headers) into the input
    /// root, at their absolute paths (for execution services that run in a chroot).
    #[arg(long)]
    include_system_headers: bool,
    /// Pass this environment variable with its value here to the compiler too (repeatable;
    /// it becomes part of the Action, so other machines match only with the same value).
    /// Without it a compile sees exactly PATH=/usr/local/bin:/usr/bin:/bin and LC_ALL=C,
    /// whatever this machine has, so Action digests are the same across machines.
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
    /// Where a compile that misses the cache runs: in a bubblewrap sandbox (only its input
    /// root writable, /usr read-only, no network), on the host unsandboxed (none), or bwrap
    /// where installed (auto). Outputs of cached results are only ever written to the
    /// declared output paths.
    #[arg(long, value_enum, default_value = "auto")]
    sandbox: crate::args::SandboxChoice,
    /// Deadline of one compile, in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    timeout: u64,
    /// The compiler and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMPILER ARGS")]
    command: Vec<String>,
}

fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

/// Runs the command unchanged, with this process's standard streams.
fn passthrough(argv: &[String]) -> Result<u8> {
    let status = Process::new(&argv[0])
        .args(&argv[1..])
        .status()
        .with_context(|| format!("running {:?}", argv[0]))?;
    Ok(status_code(status))
}

/// A process's exit code as `sa record` exits with it: a signal is 128 + it, as shells say.
fn status_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(code) => exit_code(code),
        None => exit_code(128 + status.signal().unwrap_or(0)),
    }
}

pub(crate) fn record(args: &StoreArgs, cmd: &RecordArgs) -> Result<u8> {
    let argv = &cmd.command;
    let Some(compile) = parse_compile(argv) else {
        tracing::info!("not a single-source compile: running it unchanged");
        return passthrough(argv);
    };
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let cwd = cwd.canonicalize().with_context(|| format!("resolving {}", cwd.display()))?;
    let root = match &cmd.root {
        Some(root) => root.canonicalize().with_context(|| format!("--root {}", root.display()))?,
        None => cwd.clone(),
    };
    let Some(working_directory) = under(&cwd, &root) else {
        bail!("the working directory {} is not inside --root {}", cwd.display(), root.display());
    };
    let deps = match list_dependencies(argv, &compile)? {
        Ok(deps) => deps,
        // The compiler has reported the problem on our stderr already: running it again
        // would print every diagnostic twice. Its exit code is the compile's.
        Err(code) => return Ok(code),
    };
    let Some(output_paths) = output_paths(&compile, &cwd) else {
        return passthrough(argv);
    };
    let opened = store::open(args)?;
    let cas = &opened.store;
    let recorded = Recorded { cmd, cwd: &cwd, root: &root };
    let input_root = recorded.store_input_root(cas, &deps)?;
    let command = Command {
        arguments: relativize_args(argv, &root, &cwd),
        environment_variables: recorded.environment(),
        output_paths,
        working_directory,
        ..Default::default()
    };
    let command_digest = write_message(cas, &command)?;
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(input_root.to_proto()),
        ..Default::default()
    };
    let action = write_message(cas, &action)?;
    let (result, cached) = recorded.run(args, &opened, &action, &command)?;
    // A hit has written its outputs already (a remote one too, to check it is usable).
    if !cached {
        write_outputs(cas, &command, &result, &cwd)
            .with_context(|| format!("writing the outputs of {action}"))?;
    }
    for (digest, mut out) in [
        (&result.stdout_digest, Box::new(std::io::stdout()) as Box<dyn Write>),
        (&result.stderr_digest, Box::new(std::io::stderr())),
    ] {
        if let Some(digest) = digest {
            let digest = Digest::from_proto(cas.digest_function(), digest)?;
            cas.read_blob_to(&digest, &mut out)?;
        }
    }
    tracing::info!(%action, cached, "recorded {}", compile.output());
    if result.exit_code == 0
        && let Some(log) = &cmd.log
    {
        let line = format!("{action} {}\n", if cached { "hit" } else { "miss" });
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .with_context(|| format!("appending to {}", log.display()))?;
    }
    Ok(exit_code(result.exit_code))
}

/// The compiler's own account of what the compile reads (`-M` and friends), or, where the
/// compiler fails, its exit code (its diagnostics already on our stderr).
fn list_dependencies(argv: &[String], compile: &Compile) -> Result<Result<Vec<String>, u8>> {
    let listed = Process::new(&argv[0])
        .args(&compile.deps_args()[1..])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {:?} to list dependencies", argv[0]))?;
    if !listed.status.success() {
        return Ok(Err(status_code(listed.status)));
    }
    let deps = parse_make_deps(&String::from_utf8_lossy(&listed.stdout))
        .with_context(|| format!("dependencies of {:?}", argv.join(" ")))?;
    Ok(Ok(deps))
}

/// The compile's outputs (object and dependency file) relative to the working directory,
/// sorted; `None` (and a message) where one is outside it, which is not recorded.
fn output_paths(compile: &Compile, cwd: &Path) -> Option<Vec<String>> {
    let mut outputs = Vec::new();
    for output in std::iter::once(compile.output()).chain(compile.dep_file()) {
        let full = normalize(&cwd.join(output));
        match under(&full, cwd) {
            Some(relative) if !relative.is_empty() => outputs.push(relative),
            _ => {
                eprintln!(
                    "sa record: not recorded: output {output:?} is outside the working directory"
                );
                return None;
            }
        }
    }
    outputs.sort();
    Some(outputs)
}

/// One compile being recorded: the options, and where it runs.
struct Recorded<'a> {
    cmd: &'a RecordArgs,
    cwd: &'a Path,
    root: &'a Path,
}

impl Recorded<'_> {
    /// Stores the input root: every dependency under `--root` (and the system headers with
    /// `--include-system-headers`), at its path relative to the root.
    fn store_input_root(&self, cas: &dyn sa_cas::Store, deps: &[String]) -> Result<Digest> {
        use std::os::unix::fs::PermissionsExt;
        let function = cas.digest_function();
        let mut inputs: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dep in deps {
            let full = normalize(&self.cwd.join(dep));
            let relative = match under(&full, self.root) {
                Some(relative) => relative,
                None if self.cmd.include_system_headers => under(&full, Path::new("/"))
                    .with_context(|| format!("dependency {dep:?} is not a UTF-8 path"))?,
                None => continue,
            };
            inputs.insert(relative, full);
        }
        let mut entries = Vec::with_capacity(inputs.len());
        for (relative, full) in &inputs {
            let digest = function.hash_file(full)?;
            let meta =
                std::fs::metadata(full).with_context(|| format!("reading {}", full.display()))?;
            let executable = meta.permissions().mode() & 0o111 != 0;
            entries.push(merkle::TreeFile::new(relative.clone(), digest, executable));
        }
        let digests: Vec<Digest> = entries.iter().map(|file| file.digest).collect();
        for missing in cas.find_missing(&digests)? {
            let file = entries.iter().find(|file| file.digest == missing).expect("asked");
            cas.write_file(&missing, &inputs[&file.path])?;
        }
        merkle::build_tree(cas, &entries).context("building the input root")
    }

    /// The fixed environment, with the `--pass-env` variables set here (or removed, where
    /// unset here: the compile runs without them, as it would have).
    fn environment(&self) -> Vec<EnvironmentVariable> {
        let mut environment: BTreeMap<String, String> =
            FIXED_ENV.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        for name in &self.cmd.pass_env {
            match std::env::var(name) {
                Ok(value) => environment.insert(name.clone(), value),
                Err(_) => environment.remove(name),
            };
        }
        environment.into_iter().map(|(name, value)| EnvironmentVariable { name, value }).collect()
    }

    /// Runs the action (or finds it cached): here, or on the remote execution service.
    fn run(
        &self,
        args: &StoreArgs,
        opened: &store::Opened,
        action: &Digest,
        command: &Command,
    ) -> Result<(ActionResult, bool)> {
        let cas = &opened.store;
        let Some(grpc) = &opened.grpc else {
            let timeout = Duration::from_secs(self.cmd.timeout);
            let config = crate::args::exec_config(args, self.cmd.sandbox, timeout)?;
            let executed = sa_exec::execute_cached(cas, action, &config)?;
            if executed.cached
                && let Err(err) = write_outputs(cas, command, &executed.result, self.cwd)
            {
                // A cache entry whose outputs cannot be written safely (corrupt blobs, or a
                // result naming paths it may not) is a miss: run the compile, which replaces
                // the entry and any corrupt object.
                tracing::warn!(
                    "action {action}: the cached result is unusable, compiling instead: {}",
                    sa_cas::error_chain(&err)
                );
                return Ok((sa_exec::execute(cas, action, &config)?, false));
            }
            return Ok((executed.result, executed.cached));
        };
        let remote = |skip_cache_lookup: bool| {
            let options = sa_exec::RemoteOptions {
                jobs: 1,
                timeout: Duration::from_secs(self.cmd.timeout),
                skip_cache_lookup,
                ..Default::default()
            };
            let executor = sa_exec::RemoteExecutor::new(grpc.connection().clone(), options);
            match sa_exec::Executor::execute_one(&executor, action) {
                sa_exec::Outcome::Cached(result) => Ok((result, true)),
                sa_exec::Outcome::Executed(result) => Ok((result, false)),
                sa_exec::Outcome::Failed(why) => bail!("{why}"),
                sa_exec::Outcome::Accepted { operation } => {
                    bail!("Execute {action}: accepted as {operation} but not waited for")
                }
            }
        };
        let (result, cached) = remote(false)?;
        if cached && let Err(err) = write_outputs(cas, command, &result, self.cwd) {
            // A shared cache entry whose outputs cannot be written safely is a miss, as it
            // is locally: compile (on the service, without its cache), replacing the entry.
            tracing::warn!(
                "action {action}: the cached result is unusable, compiling instead: {}",
                sa_cas::error_chain(&err)
            );
            return Ok((remote(true)?.0, false));
        }
        Ok((result, cached))
    }
}

/// Writes a result's outputs into the user's working directory: the outputs the user's own
/// command line declares, reached through the symlinks the user made (`build -> /scratch`),
/// everything below them confined.
fn write_outputs(
    cas: &dyn sa_cas::Store,
    command: &Command,
    result: &ActionResult,
    cwd: &Path,
) -> Result<(), sa_cas::CasError> {
    sa_exec::write_outputs_in(cas, command, result, cwd, sa_exec::OutputParents::UserWorkspace)
}
