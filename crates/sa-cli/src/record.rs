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
use std::path::{Component, Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use sa_cas::{Cas, Digest, merkle, write_message};
use sa_proto::reapi::{Action, ActionResult, Command, command::EnvironmentVariable};

use crate::args::StoreArgs;
use crate::store;

/// The environment every recorded Command carries, whatever the host's: the same compile has
/// the same Action digest on every machine with the same toolchain, so caches are shared.
/// `--pass-env NAME` adds a variable with the host's value (its choice, its digests).
const FIXED_ENV: &[(&str, &str)] = &[("LC_ALL", "C"), ("PATH", "/usr/local/bin:/usr/bin:/bin")];

/// Options that take their value as the next argument.
const VALUE_OPTIONS: &[&str] = &[
    "-o",
    "-I",
    "-D",
    "-U",
    "-include",
    "-imacros",
    "-isystem",
    "-iquote",
    "-idirafter",
    "-iprefix",
    "-iwithprefix",
    "-iwithprefixbefore",
    "-isysroot",
    "-MF",
    "-MT",
    "-MQ",
    "-x",
    "-Xpreprocessor",
    "-Xassembler",
    "-Xclang",
    "-aux-info",
    "-arch",
    "-target",
    "--param",
];

/// Options whose value (joined or separate) is a path that may be made relative.
const PATH_OPTIONS: &[&str] =
    &["-I", "-isystem", "-iquote", "-idirafter", "-include", "-imacros", "-o", "-MF"];

const SOURCE_EXTENSIONS: &[&str] =
    &["c", "cc", "cp", "cpp", "cxx", "c++", "C", "CPP", "i", "ii", "m", "mm", "s", "S"];

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

/// A single-source compile found in a command line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Compile {
    /// The arguments that list the dependencies (`-M`) instead of compiling.
    deps_args: Vec<String>,
    /// The output file as given.
    output: String,
    /// The dependency file `-MD`/`-MMD` writes, if any.
    dep_file: Option<String>,
}

fn value_of(arg: &str, option: &str) -> Option<String> {
    arg.strip_prefix(option).filter(|v| !v.is_empty()).map(str::to_owned)
}

/// Recognizes a single-source compile; `None` for anything else (links, preprocessing,
/// several sources, response files, standard input).
pub(crate) fn parse_compile(argv: &[String]) -> Option<Compile> {
    let mut compile_only = false;
    let mut language_given = false;
    let mut output = None;
    let mut dep_file = None;
    let mut writes_deps = false;
    let mut sources = Vec::new();
    let mut deps_args = vec![argv.first()?.clone()];
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].as_str();
        let next = argv.get(i + 1).cloned();
        match arg {
            "-c" => compile_only = true,
            "-E" | "-S" | "-M" | "-MM" | "-" => return None,
            "-MD" | "-MMD" => {
                writes_deps = true;
                i += 1;
                continue;
            }
            "-MP" => {
                i += 1;
                continue;
            }
            _ if arg.starts_with('@') => return None,
            _ => {}
        }
        if VALUE_OPTIONS.contains(&arg) {
            let value = next?;
            match arg {
                "-o" => output = Some(value.clone()),
                "-MF" => dep_file = Some(value.clone()),
                "-x" => language_given = true,
                _ => {}
            }
            if !matches!(arg, "-o" | "-MF" | "-MT" | "-MQ") {
                deps_args.extend([arg.to_owned(), value]);
            }
            i += 2;
            continue;
        }
        if let Some(value) = value_of(arg, "-o") {
            output = Some(value);
        } else if let Some(value) = value_of(arg, "-MF") {
            dep_file = Some(value);
        } else if arg.starts_with("-MT") || arg.starts_with("-MQ") {
        } else {
            if !arg.starts_with('-') {
                sources.push(arg.to_owned());
            }
            deps_args.push(arg.to_owned());
        }
        i += 1;
    }
    let [source] = sources.as_slice() else { return None };
    let extension = Path::new(source).extension().and_then(|e| e.to_str()).unwrap_or("");
    if !compile_only || !(language_given || SOURCE_EXTENSIONS.contains(&extension)) {
        return None;
    }
    let output = output.unwrap_or_else(|| {
        let stem = Path::new(source).file_stem().and_then(|s| s.to_str()).unwrap_or("a");
        format!("{stem}.o")
    });
    let dep_file = match (writes_deps, dep_file) {
        (false, _) => None,
        (true, Some(file)) => Some(file),
        (true, None) => Some(match output.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() && !stem.ends_with('/') => format!("{stem}.d"),
            _ => format!("{output}.d"),
        }),
    };
    deps_args.extend(["-M".into(), "-MT".into(), "sa-record-deps".into()]);
    Some(Compile { deps_args, output, dep_file })
}

/// The files of a make rule `sa-record-deps: a.c b.h …` as the compiler printed them.
pub(crate) fn parse_make_deps(text: &str) -> Result<Vec<String>> {
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    let Some(rest) = joined.trim_start().strip_prefix("sa-record-deps:") else {
        bail!("the compiler's dependency output does not start with the rule asked for");
    };
    let mut files = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|n| *n == ' ' || *n == '#') => {
                current.push(chars.next().expect("peeked"));
            }
            '$' if chars.peek() == Some(&'$') => {
                chars.next();
                current.push('$');
            }
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    files.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        files.push(current);
    }
    Ok(files)
}

/// `path` with `.` and `..` resolved lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `target` relative to `base`, both absolute and normalized (with `..` where needed).
fn relative_to(target: &Path, base: &Path) -> String {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".into(); b.len() - common];
    parts.extend(t[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    if parts.is_empty() { ".".into() } else { parts.join("/") }
}

/// A path under `root` as a slash-separated relative string.
fn under(path: &Path, root: &Path) -> Option<String> {
    let rest = path.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rest.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
    Some(parts.join("/"))
}

/// The arguments with absolute paths under `root` made relative to `cwd` (recc does the same),
/// so the Action does not depend on where the tree is checked out.
fn relativize_args(argv: &[String], root: &Path, cwd: &Path) -> Vec<String> {
    let rewrite = |text: &str| -> Option<String> {
        let path = Path::new(text);
        (path.is_absolute() && normalize(path).starts_with(root))
            .then(|| relative_to(&normalize(path), cwd))
    };
    let mut out = vec![argv[0].clone()];
    for arg in &argv[1..] {
        let joined = PATH_OPTIONS.iter().find_map(|option| {
            let value = arg.strip_prefix(option).filter(|v| v.starts_with('/'))?;
            Some(format!("{option}{}", rewrite(value)?))
        });
        out.push(joined.or_else(|| rewrite(arg)).unwrap_or_else(|| arg.clone()));
    }
    out
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
    tracing::info!(%action, cached, "recorded {}", compile.output);
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
        .args(&compile.deps_args[1..])
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
    for output in std::iter::once(&compile.output).chain(&compile.dep_file) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn recognizes_single_source_compiles_only() {
        let compile = parse_compile(&argv("gcc -O2 -Iinc -c src/a.c -o obj/a.o -MD")).unwrap();
        assert_eq!(compile.output, "obj/a.o");
        assert_eq!(compile.dep_file.as_deref(), Some("obj/a.d"));
        assert_eq!(compile.deps_args, argv("gcc -O2 -Iinc -c src/a.c -M -MT sa-record-deps"));
        let compile = parse_compile(&argv("cc -c x.cpp -MMD -MF deps/x.dep -I inc")).unwrap();
        assert_eq!(
            (compile.output.as_str(), compile.dep_file.as_deref()),
            ("x.o", Some("deps/x.dep"))
        );
        for not_a_compile in [
            "gcc a.o b.o -o app",
            "gcc -c a.c b.c",
            "gcc -E a.c",
            "gcc -c -",
            "gcc @args.rsp",
            "gcc -c notes.txt",
            "gcc -c a.c -o",
            "ar rcs lib.a a.o",
        ] {
            assert_eq!(parse_compile(&argv(not_a_compile)), None, "{not_a_compile}");
        }
        assert!(parse_compile(&argv("gcc -x c -c notes.txt")).is_some());
    }

    #[test]
    fn parses_make_rules_with_escapes_and_continuations() {
        let text = "sa-record-deps: a.c /usr/include/stdio.h \\\n  my\\ dir/b.h c$$.h\n";
        assert_eq!(
            parse_make_deps(text).unwrap(),
            ["a.c", "/usr/include/stdio.h", "my dir/b.h", "c$.h"]
        );
        assert!(parse_make_deps("other: a.c").is_err());
    }

    #[test]
    fn absolute_paths_under_the_root_become_relative() {
        let root = Path::new("/w/root");
        let cwd = Path::new("/w/root/app");
        let args = argv(
            "gcc -I/w/root/sysroot/include -c /w/root/app/main.c -o /w/root/app/m.o -I/usr/include",
        );
        assert_eq!(
            relativize_args(&args, root, cwd),
            argv("gcc -I../sysroot/include -c main.c -o m.o -I/usr/include")
        );
    }
}
