//! Running one Action locally: materialize, run, collect, record.

use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use std::os::unix::process::CommandExt;

use sa_cas::merkle::{self, MaterializeOptions, TreeLimits};
use sa_cas::{
    Cas, CasError, ConfinedDir, DecodedAction, Digest, EntryKind, Missing, Store, read_message,
    write_message,
};

use crate::cleanup::{GroupGuard, ScratchGuard};
use crate::sandbox::Sandbox;
use sa_proto::reapi::{
    Action, ActionResult, Command, OutputDirectory, OutputFile, OutputSymlink, Tree,
};

/// How actions are run.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// Where scratch directories are made (default: the system's temp directory).
    pub scratch_dir: Option<PathBuf>,
    /// The deadline of an action that sets no timeout of its own.
    pub default_timeout: Duration,
    /// Bounds on input roots and output directories.
    pub limits: TreeLimits,
    /// The most bytes of files one input root may materialize.
    pub max_materialize_bytes: u64,
    /// Where the command runs.
    pub sandbox: Sandbox,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            scratch_dir: None,
            default_timeout: Duration::from_secs(3600),
            limits: TreeLimits::default(),
            max_materialize_bytes: merkle::DEFAULT_MAX_MATERIALIZE_BYTES,
            sandbox: Sandbox::None,
        }
    }
}

/// A result and whether it came from the ActionCache.
#[derive(Clone, Debug, PartialEq)]
pub struct Execution {
    /// The action's result (a failed command has a non-zero `exit_code`).
    pub result: ActionResult,
    /// Whether the result was found in the ActionCache instead of running the command.
    pub cached: bool,
}

/// Why an action could not be run (a command that runs and fails is not an error: its
/// result carries the exit code).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The store failed, or a blob of the action is missing or invalid.
    #[error("action {action}")]
    Store {
        /// The action.
        action: Digest,
        /// What the store said.
        #[source]
        source: Box<CasError>,
    },
    /// The Action or Command is not runnable as given.
    #[error("action {action}: {reason}")]
    InvalidAction {
        /// The action.
        action: Digest,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The command's program could not be started.
    #[error("action {action}: cannot run {program:?}")]
    Spawn {
        /// The action.
        action: Digest,
        /// `arguments[0]`.
        program: String,
        /// The operating system's complaint.
        #[source]
        source: io::Error,
    },
    /// The command ran past its deadline and was killed.
    #[error("action {action}: timed out after {}s and was killed", timeout.as_secs_f64())]
    Timeout {
        /// The action.
        action: Digest,
        /// The deadline.
        timeout: Duration,
    },
    /// The process was interrupted ([`crate::interrupt`]) before or while the action ran.
    #[error("action {action}: interrupted")]
    Interrupted {
        /// The action.
        action: Digest,
    },
    /// A file operation in the scratch directory failed.
    #[error("action {action}: {}", path.display())]
    Io {
        /// The action.
        action: Digest,
        /// The file.
        path: PathBuf,
        /// The operating system's complaint.
        #[source]
        source: io::Error,
    },
}

/// Splits a relative path of a Command (working directory, output path) into safe segments.
fn relative(text: &str, allow_empty: bool) -> Result<PathBuf, String> {
    if text.is_empty() {
        return if allow_empty { Ok(PathBuf::new()) } else { Err("empty path".into()) };
    }
    if text.starts_with('/') {
        return Err(format!("path {text:?} is absolute; paths of a Command are relative"));
    }
    let mut path = PathBuf::new();
    for segment in text.split('/') {
        merkle::check_name(segment).map_err(|reason| format!("path {text:?}: {reason}"))?;
        path.push(segment);
    }
    Ok(path)
}

/// The output paths a Command asks for: `output_paths`, or the deprecated `output_files` and
/// `output_directories` of older clients.
#[allow(deprecated)] // older clients still send the deprecated fields
fn output_paths(command: &Command) -> Vec<String> {
    let mut paths = if command.output_paths.is_empty() {
        command.output_files.iter().chain(&command.output_directories).cloned().collect()
    } else {
        command.output_paths.clone()
    };
    paths.sort();
    paths.dedup();
    paths
}

/// Runs `action` from `store` in a fresh scratch directory and returns its result; a result
/// with exit code 0 is also written to the ActionCache unless the action is `do_not_cache`.
pub fn execute<S: Store + ?Sized>(
    store: &S,
    action: &Digest,
    config: &ExecConfig,
) -> Result<ActionResult, ExecError> {
    let job = Job::load(store, action, config)?;
    if crate::cleanup::interrupted() {
        return Err(ExecError::Interrupted { action: *action });
    }
    let base = config.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("sa-exec-")
        .tempdir_in(&base)
        .map_err(io_error(*action, &base))?;
    let _registered = ScratchGuard::register(scratch.path());
    let working_dir = job.prepare(store, scratch.path(), config)?;
    let exit_code = job.run(scratch.path(), config)?;
    let result = job.collect(store, scratch.path(), &working_dir, exit_code, config)?;
    if exit_code == 0 && !job.action.do_not_cache {
        store.update_action_result(action, &result).map_err(store_error(*action))?;
    }
    drop(scratch);
    Ok(result)
}

/// An action about to run: its Action and Command, checked.
struct Job {
    id: Digest,
    action: Action,
    command: Command,
    root_digest: Digest,
    /// The working directory, relative to the input root.
    working: PathBuf,
    outputs: Vec<String>,
    timeout: Duration,
}

fn store_error(action: Digest) -> impl Fn(CasError) -> ExecError {
    move |source| ExecError::Store { action, source: Box::new(source) }
}

fn io_error(action: Digest, path: &Path) -> impl FnOnce(io::Error) -> ExecError {
    let path = path.to_path_buf();
    move |source| ExecError::Io { action, path, source }
}

/// A store error on a path of the action's tree, with what was being done.
fn path_error(action: Digest, what: String) -> impl FnOnce(CasError) -> ExecError {
    move |source| ExecError::Store { action, source: Box::new(source.context(what)) }
}

impl Job {
    /// Reads and checks the Action and its Command: a missing blob is a store error, a
    /// malformed Action or Command is an invalid action (naming the field).
    fn load<S: Store + ?Sized>(
        store: &S,
        action: &Digest,
        config: &ExecConfig,
    ) -> Result<Job, ExecError> {
        let id = *action;
        let malformed = move |source: CasError| match source.root_cause() {
            CasError::Decode { .. }
            | CasError::InvalidDigest { .. }
            | CasError::MissingField(_) => {
                ExecError::InvalidAction { action: id, reason: sa_cas::error_chain(&source) }
            }
            _ => store_error(id)(source),
        };
        let invalid = move |reason: String| ExecError::InvalidAction { action: id, reason };
        let read = DecodedAction::read(store, action).map_err(malformed)?;
        let command_digest = read.command().map_err(malformed)?;
        let DecodedAction { action: decoded, input_root: root_digest, .. } = read;
        let command: Command =
            read_message(store, &command_digest, "Command").map_err(malformed)?;
        if command.arguments.is_empty() {
            return Err(invalid("its Command has no arguments".into()));
        }
        let working = relative(&command.working_directory, true)
            .map_err(|reason| invalid(format!("working_directory: {reason}")))?;
        let outputs = output_paths(&command);
        for output in &outputs {
            relative(output, false).map_err(|reason| invalid(format!("output path: {reason}")))?;
        }
        let timeout = decoded
            .timeout
            .as_ref()
            .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.clamp(0, 999_999_999) as u32))
            .filter(|t| !t.is_zero())
            .unwrap_or(config.default_timeout);
        Ok(Job { id, action: decoded, command, root_digest, working, outputs, timeout })
    }

    /// Materializes the input root under `scratch/root` and creates the working directory and
    /// the parents of the outputs, without following any symlink of the input root; returns
    /// the working directory.
    fn prepare<S: Store + ?Sized>(
        &self,
        store: &S,
        scratch: &Path,
        config: &ExecConfig,
    ) -> Result<ConfinedDir, ExecError> {
        let options = MaterializeOptions {
            limits: config.limits,
            max_bytes: config.max_materialize_bytes,
            ..Default::default()
        };
        let root = &self.root_digest;
        let top = merkle::materialize(store, root, &scratch.join("root"), &options)
            .map_err(path_error(self.id, format!("materializing input root {root}")))?;
        let working = &self.command.working_directory;
        let working_dir = top
            .walk(working, Missing::Create)
            .map_err(path_error(self.id, format!("working directory {working:?}")))?
            .expect("walk creates what is missing");
        for output in &self.outputs {
            working_dir
                .parent_of(output, Missing::Create)
                .map_err(path_error(self.id, format!("parent of output path {output:?}")))?;
        }
        Ok(working_dir)
    }

    /// Runs the command in its own process group, stdout and stderr to files in `scratch`,
    /// and returns its exit code (128 + the signal for a command a signal killed, as shells
    /// say it).
    fn run(&self, scratch: &Path, config: &ExecConfig) -> Result<i32, ExecError> {
        let id = self.id;
        let root = scratch.join("root");
        let cwd = root.join(&self.working);
        let program = &self.command.arguments[0];
        // A relative program with a slash is relative to the working directory (REAPI); a
        // bare name is looked up in the command's own PATH.
        let program_path = if program.contains('/') && !program.starts_with('/') {
            cwd.join(program)
        } else {
            PathBuf::from(program)
        };
        let [stdout, stderr] = ["stdout", "stderr"].map(|name| {
            let path = scratch.join(name);
            fs::File::create(&path).map_err(io_error(id, &path))
        });
        let search_path = self
            .command
            .environment_variables
            .iter()
            .find(|e| e.name == "PATH")
            .map(|e| e.value.as_str());
        tracing::debug!(action = %id, ?program, sandbox = ?config.sandbox, "running");
        let mut child = config
            .sandbox
            .command(&program_path, &self.command.arguments[1..], &root, &cwd, search_path)
            .env_clear()
            .envs(self.command.environment_variables.iter().map(|e| (&e.name, &e.value)))
            .stdin(Stdio::null())
            .stdout(stdout?)
            .stderr(stderr?)
            // Its own process group, so a deadline or an interrupt ends everything it started.
            .process_group(0)
            .spawn()
            .map_err(|source| ExecError::Spawn { action: id, program: program.clone(), source })?;
        let group = GroupGuard::register(child.id());
        let status = wait_with_deadline(&mut child, &group, self.timeout)
            .map_err(io_error(id, &program_path))?;
        drop(group);
        if crate::cleanup::interrupted() {
            return Err(ExecError::Interrupted { action: id });
        }
        let Some(status) = status else {
            return Err(ExecError::Timeout { action: id, timeout: self.timeout });
        };
        Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }

    /// The result: exit code, stdout and stderr, and each declared output that exists,
    /// stored (files read through the descriptor opened without following symlinks).
    fn collect<S: Store + ?Sized>(
        &self,
        store: &S,
        scratch: &Path,
        working_dir: &ConfinedDir,
        exit_code: i32,
        config: &ExecConfig,
    ) -> Result<ActionResult, ExecError> {
        let id = self.id;
        let store_file = |path: &Path| -> Result<Digest, ExecError> {
            let digest = store.digest_function().hash_file(path).map_err(store_error(id))?;
            store.write_file(&digest, path).map_err(store_error(id))?;
            Ok(digest)
        };
        let mut result = ActionResult {
            exit_code,
            stdout_digest: Some(store_file(&scratch.join("stdout"))?.to_proto()),
            stderr_digest: Some(store_file(&scratch.join("stderr"))?.to_proto()),
            ..Default::default()
        };
        for output in &self.outputs {
            let unsafe_path = || path_error(id, format!("output {output:?}"));
            let found = working_dir
                .parent_of(output, Missing::Absent)
                .and_then(|parent| match parent {
                    Some((dir, name)) => Ok(dir.kind(name)?.map(|kind| (dir, name, kind))),
                    None => Ok(None),
                })
                .map_err(unsafe_path())?;
            let Some((dir, name, kind)) = found else { continue };
            let path = output.clone();
            match kind {
                EntryKind::Symlink => {
                    let target = dir.read_link(name).map_err(unsafe_path())?;
                    result.output_symlinks.push(OutputSymlink {
                        path,
                        target,
                        ..Default::default()
                    });
                }
                EntryKind::Directory => {
                    let tree_digest = output_tree(store, &dir, name, &config.limits)
                        .map_err(path_error(id, format!("output directory {output:?}")))?;
                    result.output_directories.push(OutputDirectory {
                        path,
                        tree_digest: Some(tree_digest.to_proto()),
                        ..Default::default()
                    });
                }
                EntryKind::File { executable } => {
                    let file = dir.open_file(name).map_err(unsafe_path())?;
                    // The open file itself, whatever its path points to by now.
                    let digest = store_file(&ConfinedDir::fd_path(&file))?;
                    result.output_files.push(OutputFile {
                        path,
                        digest: Some(digest.to_proto()),
                        is_executable: executable,
                        ..Default::default()
                    });
                }
                EntryKind::Other => {
                    return Err(ExecError::InvalidAction {
                        action: id,
                        reason: format!("output {output:?} is not a file, directory or symlink"),
                    });
                }
            }
        }
        Ok(result)
    }
}

/// Waits for `child`; if it outlives `timeout`, kills its process group and returns `None`
/// once it has ended. A blocking wait, with a watchdog thread that sleeps until the deadline
/// unless told the child is done.
fn wait_with_deadline(
    child: &mut Child,
    group: &GroupGuard,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
    let (done, finished) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let watchdog = scope.spawn(move || match finished.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                group.kill();
                true
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => false,
        });
        let status = child.wait();
        drop(done);
        let timed_out = watchdog.join().expect("the watchdog does not panic");
        Ok(if timed_out { None } else { Some(status?) })
    })
}

/// Like `Execute` with `skip_cache_lookup = false`: a successful cached result whose outputs
/// are all in the store is returned as it is; otherwise the action runs.
pub fn execute_cached<S: Store + ?Sized>(
    store: &S,
    action: &Digest,
    config: &ExecConfig,
) -> Result<Execution, ExecError> {
    let store_error =
        |source: CasError| ExecError::Store { action: *action, source: Box::new(source) };
    if let Some(result) = store.get_action_result(action).map_err(store_error)? {
        let outputs = result_blobs(store.digest_function(), &result).map_err(store_error)?;
        if result.exit_code == 0 && store.find_missing(&outputs).map_err(store_error)?.is_empty() {
            return Ok(Execution { result, cached: true });
        }
    }
    Ok(Execution { result: execute(store, action, config)?, cached: false })
}

/// Every blob a result refers to directly: output files, output trees, stdout and stderr
/// (what must be in a store for the result to be usable there).
pub fn result_blobs(
    function: sa_cas::DigestFunction,
    result: &ActionResult,
) -> Result<Vec<Digest>, CasError> {
    let mut digests = Vec::new();
    for file in &result.output_files {
        digests.push(Digest::from_proto_field(
            function,
            file.digest.as_ref(),
            "OutputFile.digest",
        )?);
    }
    for dir in &result.output_directories {
        digests.push(Digest::from_proto_field(
            function,
            dir.tree_digest.as_ref(),
            "OutputDirectory.tree_digest",
        )?);
    }
    for d in [&result.stdout_digest, &result.stderr_digest].into_iter().flatten() {
        digests.push(Digest::from_proto(function, d)?);
    }
    Ok(digests)
}

/// Stores the output directory `name` of `dir` as a Tree (the full Directory protos, root
/// first) and returns the Tree's digest.
fn output_tree<S: Store + ?Sized>(
    store: &S,
    dir: &ConfinedDir,
    name: &str,
    limits: &TreeLimits,
) -> Result<Digest, CasError> {
    let tree_root = merkle::ingest_dir(store, &dir.subdir(name)?, limits)?;
    let forest = merkle::fetch_tree(store, &tree_root, limits)?;
    let mut digests: Vec<Digest> = forest.directories().keys().copied().collect();
    digests.sort();
    let blobs = merkle::read_in_batches(store, &digests)?;
    let mut root = None;
    let mut children = Vec::new();
    for (digest, data) in digests.iter().zip(blobs) {
        let directory = merkle::decode_directory(digest, &data, limits)?;
        if *digest == tree_root {
            root = Some(directory);
        } else {
            children.push(directory);
        }
    }
    write_message(store, &Tree { root, children })
}

/// Writes a result's outputs into `dir` (the command's working directory), replacing what is
/// there: only outputs that `command` declares, each created beside its target under a temp
/// name and renamed into place (a reader never sees half a file), every parent directory
/// opened without following symlinks (a symlink where a directory is needed is an error), and
/// no symlink written whose target is absolute or climbs above `dir`. Made for results that
/// come from a cache: nothing a result says can make this write elsewhere.
pub fn write_outputs<S: Cas + ?Sized>(
    store: &S,
    command: &Command,
    result: &ActionResult,
    dir: &Path,
) -> Result<(), CasError> {
    write_outputs_in(store, command, result, dir, OutputParents::Confined)
}

/// How [`write_outputs_in`] reaches the parent directory of a declared output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputParents {
    /// Below `dir` without following any symlink (a directory `sa` owns, or any directory a
    /// result from a store writes into).
    Confined,
    /// Through the user's own workspace as the compiler would: symlinks the user made on the
    /// way to a declared output's directory (`build -> /scratch/build`) are followed. For
    /// `sa record`, whose declared outputs are the user's own command line; the output names
    /// themselves, and everything a result adds below them, stay confined.
    UserWorkspace,
}

/// [`write_outputs`], reaching each output's parent directory as `parents` says.
#[allow(deprecated)] // results of older servers still carry output_file_symlinks
pub fn write_outputs_in<S: Cas + ?Sized>(
    store: &S,
    command: &Command,
    result: &ActionResult,
    dir: &Path,
    parents: OutputParents,
) -> Result<(), CasError> {
    let function = store.digest_function();
    let declared = output_paths(command);
    let top = ConfinedDir::open(dir)?;
    let undeclared = |path: &str| CasError::UnsafePath {
        path: dir.join(path),
        reason: "the result names an output the Command does not declare".into(),
    };
    let place = |path: &str| -> Result<(ConfinedDir, String, String), CasError> {
        if declared.binary_search_by(|d| d.as_str().cmp(path)).is_err() {
            return Err(undeclared(path));
        }
        let (parent, name) = match parents {
            OutputParents::Confined => {
                top.parent_of(path, Missing::Create)?.expect("parents are created")
            }
            OutputParents::UserWorkspace => {
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
                merkle::check_name(name)
                    .map_err(|reason| CasError::UnsafePath { path: dir.join(path), reason })?;
                relative(parent, true)
                    .map_err(|reason| CasError::UnsafePath { path: dir.join(path), reason })?;
                let full = dir.join(parent);
                let io = |source| CasError::Io { path: full.clone(), source };
                fs::create_dir_all(&full).map_err(io)?;
                let real = fs::canonicalize(&full).map_err(io)?;
                (ConfinedDir::open(&real)?, name)
            }
        };
        let temp = format!(".sa-tmp-{}-{name}", uuid_like());
        Ok((parent, name.to_owned(), temp))
    };
    // Moves `temp` over `name`, removing a directory there first (rename cannot replace one);
    // on failure the temp entry is removed.
    let commit = |parent: &ConfinedDir, temp: &str, name: &str| -> Result<(), CasError> {
        let outcome = match parent.kind(name)? {
            Some(EntryKind::Directory) => parent.remove(name),
            _ => Ok(()),
        }
        .and_then(|()| parent.rename(temp, name));
        if outcome.is_err() {
            let _ = parent.remove(temp);
        }
        outcome
    };
    for file in &result.output_files {
        let (parent, name, temp) = place(&file.path)?;
        let digest = Digest::from_proto_field(function, file.digest.as_ref(), "OutputFile.digest")?;
        let written = parent
            .create_file(&temp, file.is_executable)
            .and_then(|mut out| store.read_blob_to(&digest, &mut out));
        if let Err(err) = written {
            let _ = parent.remove(&temp);
            return Err(err);
        }
        commit(&parent, &temp, &name)?;
    }
    for link in result.output_symlinks.iter().chain(&result.output_file_symlinks) {
        check_output_symlink(&link.path, &link.target)
            .map_err(|reason| CasError::UnsafePath { path: dir.join(&link.path), reason })?;
        let (parent, name, temp) = place(&link.path)?;
        parent.symlink(&temp, &link.target)?;
        commit(&parent, &temp, &name)?;
    }
    for output in &result.output_directories {
        let (parent, name, temp) = place(&output.path)?;
        let tree_digest = Digest::from_proto_field(
            function,
            output.tree_digest.as_ref(),
            "OutputDirectory.tree_digest",
        )?;
        let tree: Tree = read_message(store, &tree_digest, "Tree")?;
        let root = tree.root.ok_or(CasError::MissingField("Tree.root"))?;
        let root = *merkle::directory_blob(function, &root).digest();
        if let Err(err) =
            merkle::materialize_in(store, &root, &parent, &temp, &MaterializeOptions::default())
        {
            let _ = parent.remove(&temp);
            return Err(err);
        }
        commit(&parent, &temp, &name)?;
    }
    Ok(())
}

/// Checks a result an executor (any: a remote service, a worker, a cache) gave for `action`
/// before it is kept: every output path is one its Command declares and a plain relative path
/// (no empty, `.` or `..` segment, not absolute), and no output symlink points outside the
/// working directory. The check [`write_outputs`] applies before it writes, applied before the
/// result enters a store that others will read it from.
#[allow(deprecated)] // results of older servers still carry output_file_symlinks
pub fn check_result<S: Cas + ?Sized>(
    store: &S,
    action: &Digest,
    result: &ActionResult,
) -> Result<(), CasError> {
    let read = DecodedAction::read(store, action)?;
    let command: Command = read_message(store, &read.command()?, "Command")?;
    let declared = output_paths(&command);
    let unsafe_path =
        |path: &str, reason: String| CasError::UnsafePath { path: path.into(), reason };
    let paths = result.output_files.iter().map(|f| f.path.as_str());
    let paths = paths.chain(result.output_directories.iter().map(|d| d.path.as_str()));
    let links = result.output_symlinks.iter().chain(&result.output_file_symlinks);
    for path in paths.chain(links.clone().map(|l| l.path.as_str())) {
        relative(path, false).map_err(|reason| unsafe_path(path, reason))?;
        if declared.binary_search_by(|d| d.as_str().cmp(path)).is_err() {
            let reason =
                format!("the result of {action} names an output its Command does not declare");
            return Err(unsafe_path(path, reason));
        }
    }
    for link in links {
        check_output_symlink(&link.path, &link.target)
            .map_err(|reason| unsafe_path(&link.path, reason))?;
    }
    Ok(())
}

/// A symlink written as an output at `path` (relative to the working directory) may not be
/// absolute nor climb above the working directory, counted from where it stands.
fn check_output_symlink(path: &str, target: &str) -> Result<(), String> {
    if target.is_empty() || target.contains('\0') {
        return Err("output symlink with an empty or NUL target".into());
    }
    if target.starts_with('/') {
        return Err(format!("output symlink target {target:?} is absolute"));
    }
    let mut level = path.split('/').count() as isize - 1;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => level -= 1,
            _ => level += 1,
        }
        if level < 0 {
            return Err(format!(
                "output symlink target {target:?} climbs out of the working directory"
            ));
        }
    }
    Ok(())
}

/// A name part that no two writers share: the process id and a counter.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
