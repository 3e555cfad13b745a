//! Running one Action locally: materialize, run, collect, record.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use sa_cas::merkle::{self, MaterializeOptions, TreeLimits};
use sa_cas::{Cas, CasError, Digest, Store, read_message, write_message};
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
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            scratch_dir: None,
            default_timeout: Duration::from_secs(3600),
            limits: TreeLimits::default(),
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
    let id = *action;
    let store_error =
        move |source: CasError| ExecError::Store { action: id, source: Box::new(source) };
    let invalid = move |reason: String| ExecError::InvalidAction { action: id, reason };
    let io_error = move |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExecError::Io { action: id, path, source }
    };
    let function = store.digest_function();

    let decoded: Action = read_message(store, action, "Action").map_err(store_error)?;
    let command_digest = Digest::from_proto_field(
        function,
        decoded.command_digest.as_ref(),
        "Action.command_digest",
    )
    .map_err(store_error)?;
    let root_digest = Digest::from_proto_field(
        function,
        decoded.input_root_digest.as_ref(),
        "Action.input_root_digest",
    )
    .map_err(store_error)?;
    let command: Command = read_message(store, &command_digest, "Command").map_err(store_error)?;
    let Some(program) = command.arguments.first() else {
        return Err(invalid("its Command has no arguments".into()));
    };
    let working = relative(&command.working_directory, true)
        .map_err(|reason| invalid(format!("working_directory: {reason}")))?;
    let outputs = output_paths(&command);
    let output_dirs = outputs
        .iter()
        .map(|o| relative(o, false).map_err(|reason| invalid(format!("output path: {reason}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = decoded
        .timeout
        .as_ref()
        .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.clamp(0, 999_999_999) as u32))
        .filter(|t| !t.is_zero())
        .unwrap_or(config.default_timeout);

    let base = config.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch =
        tempfile::Builder::new().prefix("sa-exec-").tempdir_in(&base).map_err(io_error(&base))?;
    let root = scratch.path().join("root");
    let options = MaterializeOptions { limits: config.limits, ..Default::default() };
    merkle::materialize(store, &root_digest, &root, &options)
        .map_err(|e| store_error(e.context(format!("materializing input root {root_digest}"))))?;
    let cwd = root.join(&working);
    fs::create_dir_all(&cwd).map_err(io_error(&cwd))?;
    for output in &output_dirs {
        if let Some(parent) = cwd.join(output).parent() {
            fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
    }

    // A relative program with a slash is relative to the working directory (REAPI); a bare
    // name is looked up in the command's own PATH.
    let program_path = if program.contains('/') && !program.starts_with('/') {
        cwd.join(program)
    } else {
        PathBuf::from(program)
    };
    let stdout_path = scratch.path().join("stdout");
    let stderr_path = scratch.path().join("stderr");
    let stdout = fs::File::create(&stdout_path).map_err(io_error(&stdout_path))?;
    let stderr = fs::File::create(&stderr_path).map_err(io_error(&stderr_path))?;
    tracing::debug!(%action, ?program, "running");
    let mut child = Process::new(&program_path)
        .args(&command.arguments[1..])
        .env_clear()
        .envs(command.environment_variables.iter().map(|e| (&e.name, &e.value)))
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|source| ExecError::Spawn { action: id, program: program.clone(), source })?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_error(&program_path))? {
            break status;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ExecError::Timeout { action: id, timeout });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    // A command killed by a signal reports 128 + the signal, as shells do.
    let exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));

    let store_file = |path: &Path| -> Result<Digest, ExecError> {
        let digest = function.hash_file(path).map_err(store_error)?;
        store.write_file(&digest, path).map_err(store_error)?;
        Ok(digest)
    };
    let mut result = ActionResult {
        exit_code,
        stdout_digest: Some(store_file(&stdout_path)?.to_proto()),
        stderr_digest: Some(store_file(&stderr_path)?.to_proto()),
        ..Default::default()
    };
    for (output, relative) in outputs.iter().zip(&output_dirs) {
        let path = cwd.join(relative);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_error(&path)(err)),
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(io_error(&path))?;
            let target = target.to_str().ok_or_else(|| {
                invalid(format!("output {output:?} is a symlink to a non-UTF-8 path"))
            })?;
            result.output_symlinks.push(OutputSymlink {
                path: output.clone(),
                target: target.to_owned(),
                ..Default::default()
            });
        } else if meta.is_dir() {
            let tree_root = merkle::ingest(store, &path, &config.limits).map_err(store_error)?;
            // A Tree holds the full Directory protos: read the blobs the walk found.
            let forest =
                merkle::fetch_tree(store, &tree_root, &config.limits).map_err(store_error)?;
            let mut digests: Vec<Digest> = forest.directories().keys().copied().collect();
            digests.sort();
            let blobs = merkle::read_in_batches(store, &digests).map_err(store_error)?;
            let mut root = None;
            let mut children = Vec::new();
            for (digest, data) in digests.iter().zip(blobs) {
                let directory =
                    merkle::decode_directory(digest, &data, &config.limits).map_err(store_error)?;
                if *digest == tree_root {
                    root = Some(directory);
                } else {
                    children.push(directory);
                }
            }
            let tree = Tree { root, children };
            let tree_digest = write_message(store, &tree).map_err(store_error)?;
            result.output_directories.push(OutputDirectory {
                path: output.clone(),
                tree_digest: Some(tree_digest.to_proto()),
                ..Default::default()
            });
        } else if meta.is_file() {
            result.output_files.push(OutputFile {
                path: output.clone(),
                digest: Some(store_file(&path)?.to_proto()),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                ..Default::default()
            });
        } else {
            return Err(invalid(format!("output {output:?} is not a file, directory or symlink")));
        }
    }
    if exit_code == 0 && !decoded.do_not_cache {
        store.update_action_result(action, &result).map_err(store_error)?;
    }
    drop(scratch);
    Ok(result)
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

/// Writes a result's output files, symlinks and directories under `dir` (the command's
/// working directory), replacing what is there; files are written to a temp file beside them
/// and renamed, so a reader never sees half a file.
#[allow(deprecated)] // results of older servers still carry output_file_symlinks
pub fn write_outputs<S: Cas + ?Sized>(
    store: &S,
    result: &ActionResult,
    dir: &Path,
) -> Result<(), CasError> {
    let function = store.digest_function();
    let target = |path: &str| -> Result<PathBuf, CasError> {
        let relative = relative(path, false)
            .map_err(|reason| CasError::UnsafePath { path: path.into(), reason })?;
        let full = dir.join(relative);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent)
                .map_err(|source| CasError::Io { path: parent.into(), source })?;
        }
        Ok(full)
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CasError::Io { path, source }
    };
    for file in &result.output_files {
        let path = target(&file.path)?;
        let digest = Digest::from_proto_field(function, file.digest.as_ref(), "OutputFile.digest")?;
        let parent = path.parent().expect("an output path has a parent under dir");
        let mut temp = tempfile::NamedTempFile::new_in(parent).map_err(io(parent))?;
        store.read_blob_to(&digest, temp.as_file_mut())?;
        let mode = if file.is_executable { 0o755 } else { 0o644 };
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(mode)).map_err(io(&path))?;
        temp.persist(&path).map_err(|e| CasError::Io { path: path.clone(), source: e.error })?;
    }
    for link in result.output_symlinks.iter().chain(&result.output_file_symlinks) {
        let path = target(&link.path)?;
        remove_existing(&path)?;
        std::os::unix::fs::symlink(&link.target, &path).map_err(io(&path))?;
    }
    for output in &result.output_directories {
        let path = target(&output.path)?;
        let tree_digest = Digest::from_proto_field(
            function,
            output.tree_digest.as_ref(),
            "OutputDirectory.tree_digest",
        )?;
        let tree: Tree = read_message(store, &tree_digest, "Tree")?;
        let root = tree.root.ok_or(CasError::MissingField("Tree.root"))?;
        let root = *merkle::directory_blob(function, &root).digest();
        remove_existing(&path)?;
        merkle::materialize(store, &root, &path, &MaterializeOptions::default())?;
    }
    Ok(())
}

fn remove_existing(path: &Path) -> Result<(), CasError> {
    let outcome = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    };
    outcome.map_err(|source| CasError::Io { path: path.into(), source })
}
