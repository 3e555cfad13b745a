//! `cargo xtask replay`: a real project's history, commit after commit, built with
//! `make CC="sa record … -- gcc"` and primed with `sa prime --local --workspace` between
//! commits; per commit, how many compile steps changed and how many `sa` primed exactly.
//!
//! Each commit is checked out into one workspace (the same path for every commit; the git
//! directory is outside it) and its library's objects built from clean, so the build asks for
//! every compile step; `sa learn --log` learns it. Before the next commit's build, the
//! workspace holds that commit and `sa prime --local --workspace` predicts. A changed step is
//! one the previous commit's build did not run; primed exactly, one of those `sa` executed (or
//! found cached) before the build asked; wrong, a prediction executed that the build did not
//! ask for; unpredictable, a prediction that could not be completed; failed, one that ran and
//! failed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// A project whose history can be replayed: how its library's objects are built.
struct Project {
    name: &'static str,
    /// The directory the compiles run in, relative to the workspace.
    dir: &'static str,
    /// Run (with the plain compiler) before each build, when the project configures itself.
    configure: &'static [&'static str],
    /// The make target that builds the library from its objects, one compile per object;
    /// `None`: the objects of the directory's `.c` files, by make's implicit rule.
    target: Option<&'static str>,
}

const PROJECTS: &[Project] = &[
    // `make -C lib liblz4.a` compiles every source in one gcc call: the objects one by one.
    Project { name: "lz4", dir: "lib", configure: &[], target: None },
    Project {
        name: "zlib",
        dir: ".",
        configure: &["./configure", "--static"],
        target: Some("libz.a"),
    },
];

/// One commit's numbers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CommitReport {
    /// The commit (abbreviated).
    pub commit: String,
    /// Compile steps its build ran.
    pub steps: usize,
    /// Of them, steps the previous commit's build ran too (same Action).
    pub unchanged: usize,
    /// Steps the previous build did not run.
    pub changed: usize,
    /// Changed steps `sa` had primed before the build asked.
    pub primed: usize,
    /// Predictions executed that the build did not ask for.
    pub wrong: usize,
    /// Predictions that could not be completed.
    pub unpredictable: usize,
    /// Predictions that ran and failed.
    pub failed: usize,
    /// Why each unpredictable prediction was (the start of `sa prime`'s detail).
    pub unpredictable_reasons: Vec<String>,
    /// Why each changed step `sa` did not prime was missed, counted: `new` (no earlier
    /// build ran a step with its outputs: a new source file), `flags` (its command line
    /// changed), `inputs` (same command, other input files: an include added or removed).
    pub missed: std::collections::BTreeMap<&'static str, usize>,
    /// Wall time of the build (every object from clean, through `sa record`).
    pub build_seconds: f64,
    /// Wall time of `sa prime` before it: from "sources changed" to every prediction done.
    pub prime_seconds: f64,
}

impl CommitReport {
    /// One line: `COMMIT: N steps, U unchanged, C changed, P primed exactly, …`.
    pub fn line(&self) -> String {
        let missed: Vec<String> = self.missed.iter().map(|(why, n)| format!("{n} {why}")).collect();
        format!(
            "{}: {} compile steps, {} unchanged, {} changed, {} primed exactly{}, {} unpredictable, {} wrong, {} failed; build {:.1} s, prime {:.1} s",
            self.commit,
            self.steps,
            self.unchanged,
            self.changed,
            self.primed,
            if missed.is_empty() {
                String::new()
            } else {
                format!(" (missed: {})", missed.join(", "))
            },
            self.unpredictable,
            self.wrong,
            self.failed,
            self.build_seconds,
            self.prime_seconds
        )
    }
}

fn run(command: &mut Command) -> Result<String> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Replays `commits` (oldest first) of the project in `bundle` with the `sa` binary `sa`,
/// everything under `dir`; returns a report per commit after the first (which only teaches).
pub fn replay(
    sa: &Path,
    bundle: &Path,
    project: &str,
    commits: &[String],
    dir: &Path,
) -> Result<Vec<CommitReport>> {
    replay_with(sa, bundle, project, commits, dir, Mode::Primed)
}

/// How a replay primes between commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No priming: the builds alone.
    Plain,
    /// `sa prime --local --workspace`: overlays and dependency re-scans.
    Primed,
    /// The same with `--compile-commands`, the next build's compilation database written by
    /// `compiledb -n` over the same make command (see [`compiledb`]).
    Database,
}

/// The `compiledb` of this checkout (`SA_COMPILEDB`, else the venv
/// `scripts/provision.sh` makes under `target/`).
pub fn compiledb() -> PathBuf {
    match std::env::var_os("SA_COMPILEDB") {
        Some(path) => PathBuf::from(path),
        None => crate::project_root().join("target/compiledb-venv/bin/compiledb"),
    }
}

/// [`replay`], priming between commits as `mode` says.
pub fn replay_with(
    sa: &Path,
    bundle: &Path,
    project: &str,
    commits: &[String],
    dir: &Path,
    mode: Mode,
) -> Result<Vec<CommitReport>> {
    let project = PROJECTS
        .iter()
        .find(|p| p.name == project)
        .with_context(|| format!("no replay recipe for {project:?} (known: lz4, zlib)"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ws = dir.join("ws");
    let store = dir.join("store");
    if !ws.exists() {
        run(Command::new("git")
            .args(["clone", "-q", "--no-checkout", "--separate-git-dir"])
            .arg(dir.join("repo.git"))
            .arg(bundle)
            .arg(&ws))?;
    }
    let sa_store = |args: &[&str]| -> Command {
        let mut command = Command::new(sa);
        command.arg("--cas").arg(&store).args(args).env_remove("SA_CAS").env_remove("SA_REMOTE");
        command
    };
    let ws_text = ws.display().to_string();
    let mut previous: Option<BTreeSet<String>> = None;
    let mut reports = Vec::new();
    for (n, commit) in commits.iter().enumerate() {
        run(Command::new("git")
            .arg("-C")
            .arg(&ws)
            .args(["checkout", "-q", "-f", "--detach", commit]))?;
        let mut report =
            CommitReport { commit: commit.chars().take(8).collect(), ..Default::default() }; // Configuring is part of the sources the build sees (generated headers): before
        // priming, as a developer's tree is configured before it is built.
        if !project.configure.is_empty() {
            run(Command::new(project.configure[0])
                .args(&project.configure[1..])
                .current_dir(ws.join(project.dir)))?;
        }

        let mut predicted = BTreeSet::new();
        if previous.is_some() && mode != Mode::Plain {
            let started = std::time::Instant::now();
            let mut prime = vec!["--json", "prime", "--local", "--workspace", &ws_text];
            let database = dir.join(format!("compile_commands{n}.json"));
            let database_text = database.display().to_string();
            if mode == Mode::Database {
                let log = dir.join("dry-run.log");
                let mut dry_run = Command::new(compiledb());
                dry_run.arg("-n").arg("-o").arg(&database).arg("make");
                dry_run.args(make_args(sa, &store, &ws, project, &log)?);
                dry_run.current_dir(ws.join(project.dir));
                run(dry_run.env_remove("SA_CAS").env_remove("SA_REMOTE"))?;
                prime.extend(["--compile-commands", &database_text]);
            }
            let out = run(&mut sa_store(&prime))?;
            report.prime_seconds = started.elapsed().as_secs_f64();
            for line in json_lines(&out).iter().filter(|l| l["action"].is_string()) {
                // A new compile (base_action null) is a change too.
                let changed = line["action"] != line["base_action"];
                match line["status"].as_str() {
                    Some("executed" | "cached") if changed => {
                        predicted.insert(line["action"].as_str().unwrap_or_default().to_owned());
                    }
                    Some("unpredictable") => {
                        report.unpredictable += 1;
                        let detail = line["detail"].as_str().unwrap_or_default();
                        report.unpredictable_reasons.push(detail.chars().take(160).collect());
                    }
                    Some("failed" | "error") => report.failed += 1,
                    _ => {}
                }
            }
        }
        let log = dir.join(format!("build{n}.log"));
        let started = std::time::Instant::now();
        build(sa, &store, &ws, project, &log)?;
        report.build_seconds = started.elapsed().as_secs_f64();
        let asked: BTreeSet<String> = std::fs::read_to_string(&log)
            .with_context(|| format!("reading {}", log.display()))?
            .lines()
            .filter_map(|l| l.split(' ').next().map(str::to_owned))
            .collect();
        run(&mut sa_store(&[
            "--json",
            "learn",
            "--log",
            &log.display().to_string(),
            "--workspace",
            &ws_text,
        ]))?;
        if let Some(previous) = &previous {
            report.steps = asked.len();
            report.unchanged = asked.intersection(previous).count();
            report.changed = report.steps - report.unchanged;
            report.primed = asked.difference(previous).filter(|a| predicted.contains(*a)).count();
            report.wrong = predicted.difference(&asked).count();
            let missed: Vec<&String> =
                asked.difference(previous).filter(|a| !predicted.contains(*a)).collect();
            for action in missed {
                *report.missed.entry(why_missed(&store, action, previous)?).or_default() += 1;
            }
            reports.push(report);
        }
        previous = Some(asked);
    }
    Ok(reports)
}

/// The Command of the recorded action `text` (`HASH/SIZE`) in the local store.
fn command_of(store: &Path, text: &str) -> Result<sa_proto::reapi::Command> {
    let cas = sa_cas::LocalCas::open(store, sa_cas::LocalCasConfig::default())?;
    let function = sa_cas::DigestFunction::Sha256;
    let action = sa_cas::Digest::parse(function, text)?;
    let decoded = sa_cas::DecodedAction::read(&cas, &action)?;
    Ok(sa_cas::read_message(&cas, &decoded.command()?, "Command")?)
}

/// Why a changed step was not primed: an earlier step had its outputs with other arguments
/// (`flags`) or the same (`inputs`), or its source with other outputs (`outputs`: a moved
/// output directory), or none had either (`new`: a new source file).
fn why_missed(store: &Path, action: &str, previous: &BTreeSet<String>) -> Result<&'static str> {
    #[allow(deprecated)] // sa record writes output_paths; the older lists count too
    let outputs = |c: &sa_proto::reapi::Command| {
        let mut o: Vec<String> = c.output_paths.iter().chain(&c.output_files).cloned().collect();
        o.sort();
        (c.working_directory.clone(), o)
    };
    let source = |c: &sa_proto::reapi::Command| {
        let compile = sa_compile::parse_compile(&c.arguments)?;
        sa_compile::below(&c.working_directory, compile.source())
    };
    let command = command_of(store, action)?;
    let mut why = "new";
    for earlier in previous {
        let before = command_of(store, earlier)?;
        if outputs(&before) == outputs(&command) {
            return Ok(if before.arguments == command.arguments { "inputs" } else { "flags" });
        }
        if source(&before).is_some() && source(&before) == source(&command) {
            why = "outputs";
        }
    }
    Ok(why)
}

/// Builds every object of the project's library from clean, each compile through `sa record`.
fn build(sa: &Path, store: &Path, ws: &Path, project: &Project, log: &Path) -> Result<()> {
    let dir = ws.join(project.dir);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        if name.to_string_lossy().ends_with(".o") {
            std::fs::remove_file(dir.join(&name))?;
        }
    }
    run(Command::new("make")
        .args(make_args(sa, store, ws, project, log)?)
        .current_dir(&dir)
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE"))?;
    Ok(())
}

/// The arguments of the make command (run in the project's directory) that builds the
/// library's objects, each compile through `sa record` (the same for the build and its dry
/// run).
fn make_args(
    sa: &Path,
    store: &Path,
    ws: &Path,
    project: &Project,
    log: &Path,
) -> Result<Vec<String>> {
    let dir = ws.join(project.dir);
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".c") {
            objects.push(format!("{stem}.o"));
        }
    }
    objects.sort();
    if let Some(target) = project.target {
        objects = vec![target.to_owned()];
    }
    let cc = format!(
        "{} --cas {} record --root {} --log {} -- gcc",
        sa.display(),
        store.display(),
        ws.display(),
        log.display()
    );
    // Run in the project's directory (`compiledb` follows no `-C`).
    let mut args = vec![format!("CC={cc}")];
    args.extend(objects);
    Ok(args)
}

/// The `n` first-parent commits of `bundle` ending at `end`, oldest first.
pub fn first_parent(bundle: &Path, end: &str, n: usize) -> Result<Vec<String>> {
    let dir = tempfile::tempdir()?;
    let git = |args: &[&str]| run(Command::new("git").arg("-C").arg(dir.path()).args(args));
    git(&["init", "-q", "--bare"])?;
    git(&["fetch", "-q", &bundle.display().to_string(), "HEAD:refs/heads/main"])?;
    let end = if end == "HEAD" { "main" } else { end };
    let text = git(&["rev-list", "--first-parent", "--reverse", "-n", &n.to_string(), end])?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// The `sa` binary of this checkout, built (debug) if it is not up to date.
pub fn sa_binary(root: &Path) -> Result<PathBuf> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--locked", "-p", "sa-cli"])
        .current_dir(root))?;
    Ok(root.join("target/debug/sa"))
}

/// `cargo xtask replay --bundle B [--project lz4|zlib] (--last N [--end C] | --commits A,B,…)
/// [--dir D] [--database]` (`--database`: prime with the next build's compilation database).
pub fn command(root: &Path, args: &[String]) -> Result<()> {
    let mut bundle = None;
    let mut project = "lz4".to_owned();
    let mut last = None;
    let mut end = "HEAD".to_owned();
    let mut listed: Vec<String> = Vec::new();
    let mut dir = None;
    let mut database = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--database" {
            database = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bundle" => bundle = Some(PathBuf::from(value)),
            "--project" => project = value.clone(),
            "--last" => last = Some(value.parse::<usize>().context("--last")?),
            "--end" => end = value.clone(),
            "--commits" => listed = value.split(',').map(str::to_owned).collect(),
            "--dir" => dir = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other}"),
        }
    }
    let bundle = bundle.context("--bundle is required")?;
    let scratch;
    let dir = match dir {
        Some(dir) => dir,
        None => {
            scratch = tempfile::tempdir()?;
            scratch.path().to_owned()
        }
    };
    let commits = match last {
        Some(n) => first_parent(&bundle, &end, n)?,
        None => listed,
    };
    let sa = sa_binary(root)?;
    let mode = if database { Mode::Database } else { Mode::Primed };
    let reports = replay_with(&sa, &bundle, &project, &commits, &dir.join("primed"), mode)?;
    // The same builds with no priming (a store of their own), for the time saved.
    let plain = replay_with(&sa, &bundle, &project, &commits, &dir.join("plain"), Mode::Plain)?;
    for report in &reports {
        println!("replay {project} {}", report.line());
        for why in &report.unpredictable_reasons {
            println!("  unpredictable: {why}");
        }
    }
    let changed: usize = reports.iter().map(|r| r.changed).sum();
    let primed: usize = reports.iter().map(|r| r.primed).sum();
    let wrong: usize = reports.iter().map(|r| r.wrong).sum();
    let failed: usize = reports.iter().map(|r| r.failed).sum();
    println!(
        "replay {project}: {} commits, {changed} changed compile steps, {primed} primed exactly ({:.0}%), {wrong} wrong, {failed} failed",
        reports.len(),
        if changed == 0 { 100.0 } else { 100.0 * primed as f64 / changed as f64 }
    );
    let seconds = |r: &[CommitReport], f: fn(&CommitReport) -> f64| r.iter().map(f).sum::<f64>();
    println!(
        "replay {project}: builds took {:.1} s primed (after {:.1} s of priming), {:.1} s without",
        seconds(&reports, |r| r.build_seconds),
        seconds(&reports, |r| r.prime_seconds),
        seconds(&plain, |r| r.build_seconds)
    );
    Ok(())
}
