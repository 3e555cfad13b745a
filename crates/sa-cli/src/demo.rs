//! `demo`: the whole loop on one machine with nothing but a local store. Build the bundled C
//! project with make through `sa record`, generate, apply a scripted edit, instantiate, prime
//! with local execution, build again, and check that build 2 found every compile step primed
//! and that every primed action is one build 2 really ran.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{Context, Result, bail};
use clap::Args;
use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{Digest, DigestFunction, LocalCas, LocalCasConfig};
use serde_json::{Value, json};

use crate::args::StoreArgs;
use crate::graph::{Element, Graph};
use crate::ui::Ui;

macro_rules! example_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../demo/", $path)))),*]
    };
}

/// The bundled example project (`crates/sa-cli/demo`), embedded so the binary runs it anywhere.
pub(crate) const FILES: &[(&str, &str)] = example_files![
    "README.md",
    "app/Makefile",
    "app/src/args.c",
    "app/src/args.h",
    "app/src/banner.c",
    "app/src/banner.h",
    "app/src/main.c",
    "app/src/report.c",
    "app/src/report.h",
    "app/src/table.c",
    "app/src/table.h",
    "app/src/util.c",
    "app/src/util.h",
    "lib/Makefile",
    "lib/include/greet/greet.h",
    "lib/include/greet/style.h",
    "lib/include/greet/version.h",
    "lib/src/buffer.c",
    "lib/src/buffer.h",
    "lib/src/greet.c",
    "lib/src/internal.h",
    "lib/src/padding.c",
    "lib/src/style.c",
    "lib/src/version.c",
];

/// An element of the example: its name, its source directory, its build dependencies.
struct ElementSpec {
    name: &'static str,
    dir: &'static str,
    deps: &'static [&'static str],
}

/// In dependency order.
const ELEMENTS: &[ElementSpec] = &[
    ElementSpec { name: "lib.bst", dir: "lib", deps: &[] },
    ElementSpec { name: "app.bst", dir: "app", deps: &["lib.bst"] },
];

/// The scripted edit between the builds: a library header and an application source.
const EDITS: &[(&str, &str, &str)] = &[
    ("lib/include/greet/greet.h", "#define GREET_MAX 64", "#define GREET_MAX 96"),
    ("app/src/main.c", "[-w WIDTH] NAME", "[-w COLUMNS] NAME"),
];

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Work in this directory (absent or empty) and keep it; default: a temporary directory,
    /// removed at the end.
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Compile steps run at once (make -j) and actions primed at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    jobs: usize,
}

/// An element's state before its build: sources and cache key.
struct Planned {
    sources: Digest,
    key: String,
}

/// What an element's build produced.
struct Built {
    artifact: Digest,
    subactions: Vec<Digest>,
    hits: usize,
}

struct Demo {
    work: PathBuf,
    store_dir: PathBuf,
    cas: LocalCas,
    sa: PathBuf,
    jobs: usize,
}

/// `path` as one shell word.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Copies a directory tree of regular files.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

impl Demo {
    /// Runs `sa --cas STORE --json ARGS…` and returns its JSON lines.
    fn sa_json(&self, args: &[&str]) -> Result<Vec<Value>> {
        let output = Process::new(&self.sa)
            .arg("--cas")
            .arg(&self.store_dir)
            .arg("--json")
            .args(args)
            .env_remove("SA_REMOTE")
            .output()
            .with_context(|| format!("running {}", self.sa.display()))?;
        if !output.status.success() {
            bail!(
                "sa {} failed ({}):\n{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("sa printed {line:?}")))
            .collect()
    }

    /// Runs make with its output in `log`; on failure the error holds the log's end.
    fn make(&self, dir: &Path, args: &[String], log: &Path) -> Result<()> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let status = Process::new("make")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env_remove("SA_REMOTE")
            .env_remove("SA_CAS")
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .context("running make (is it installed?)")?;
        if !status.success() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "make {} in {} failed ({status}):\n{}",
                args.join(" "),
                dir.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    fn sources(&self, element: &ElementSpec) -> PathBuf {
        self.work.join("sources").join(element.dir)
    }

    fn install_dir(&self, build: u32, element: &str) -> PathBuf {
        self.work.join(format!("build{build}")).join(element).join("install")
    }

    /// Every element's sources and cache key (sources plus the dependencies' keys, as
    /// BuildStream derives them).
    fn plan(&self) -> Result<BTreeMap<&'static str, Planned>> {
        let mut planned: BTreeMap<&'static str, Planned> = BTreeMap::new();
        for element in ELEMENTS {
            let sources =
                merkle::ingest(&self.cas, &self.sources(element), &TreeLimits::default())?;
            let mut text = sources.to_string();
            for dep in element.deps {
                text.push(' ');
                text.push_str(&planned[dep].key);
            }
            let key = DigestFunction::Sha256.hash_bytes(text.as_bytes()).hash_hex();
            planned.insert(element.name, Planned { sources, key });
        }
        Ok(planned)
    }

    /// Builds every element in order: dependencies' artifacts staged at the root, the
    /// sources at `build/`, make with `CC="sa record … -- gcc"`, then `make install`.
    fn build(&self, number: u32) -> Result<BTreeMap<&'static str, Built>> {
        let mut built = BTreeMap::new();
        for element in ELEMENTS {
            let dir = self.work.join(format!("build{number}")).join(element.name);
            let root = dir.join("root");
            copy_tree(&self.sources(element), &root.join("build"))?;
            for dep in element.deps {
                copy_tree(&self.install_dir(number, dep), &root)?;
            }
            let log = dir.join("subactions.log");
            // make hands CC to the shell: each path quoted, so a work directory with a space
            // in its name works.
            let compiler = format!(
                "{} --cas {} record --log {} --root {} -- gcc",
                shell_quote(&self.sa),
                shell_quote(&self.store_dir),
                shell_quote(&log),
                shell_quote(&root)
            );
            let build_dir = root.join("build");
            let make_log = dir.join("make.log");
            self.make(
                &build_dir,
                &[format!("-j{}", self.jobs), format!("CC={compiler}")],
                &make_log,
            )?;
            let install = self.install_dir(number, element.name);
            // Relative to the build directory: the Makefiles do not quote $(DESTDIR).
            let destdir = "DESTDIR=../../install".to_owned();
            self.make(&build_dir, &["install".into(), destdir], &dir.join("install.log"))?;
            let text = std::fs::read_to_string(&log).with_context(|| {
                format!("{} recorded no compile step ({})", element.name, log.display())
            })?;
            let mut subactions = Vec::new();
            let mut hits = 0;
            for (i, line) in text.lines().enumerate() {
                let (digest, status) = line
                    .split_once(' ')
                    .with_context(|| format!("{} line {}: {line:?}", log.display(), i + 1))?;
                subactions.push(Digest::parse(DigestFunction::Sha256, digest)?);
                hits += usize::from(status == "hit");
            }
            // make -j finishes compiles in any order; they are independent (no step consumes
            // another's output), so sorting makes the graph, and every blob generated from it,
            // the same from run to run.
            subactions.sort_unstable();
            let artifact = merkle::ingest(&self.cas, &install, &TreeLimits::default())?;
            built.insert(element.name, Built { artifact, subactions, hits });
        }
        Ok(built)
    }

    fn write_graph(
        &self,
        name: &str,
        planned: &BTreeMap<&str, Planned>,
        built: Option<&BTreeMap<&str, Built>>,
    ) -> Result<String> {
        let elements: Vec<Element> = ELEMENTS
            .iter()
            .map(|e| Element {
                name: e.name.into(),
                cache_key: Some(planned[e.name].key.clone()),
                sources: Some(planned[e.name].sources),
                build_deps: e.deps.iter().map(|d| (*d).to_owned()).collect(),
                artifact: built.map(|b| b[e.name].artifact),
                subactions: built.map(|b| b[e.name].subactions.clone()).unwrap_or_default(),
                ..Default::default()
            })
            .collect();
        let path = self.work.join(name);
        let graph = Graph::new(DigestFunction::Sha256, elements)?;
        std::fs::write(&path, graph.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path.display().to_string())
    }
}

pub(crate) fn demo(args: &StoreArgs, cmd: &DemoArgs, ui: &mut Ui) -> Result<()> {
    if args.remote.is_some() {
        crate::exit::usage!(
            "sa demo runs on a local store of its own: drop --remote (or SA_REMOTE)"
        );
    }
    if cmd.jobs == 0 {
        crate::exit::usage!("--jobs must be at least 1");
    }
    let work = WorkDir::new(cmd.workdir.as_deref())?;
    let store_dir = work.path.join("store");
    let demo = Demo {
        cas: LocalCas::open(&store_dir, LocalCasConfig::default())?,
        store_dir,
        sa: std::env::current_exe().context("locating the sa binary")?,
        jobs: cmd.jobs,
        work: work.path.clone(),
    };
    let run = demo.run(ui)?;
    let summary = Summary::of(&run);
    summary.report(ui, &run, cmd.workdir.as_deref())?;
    summary.check()?;
    work.keep();
    Ok(())
}

/// The demo's work directory: `--workdir` (absent or empty) or a temporary one. Unless kept,
/// it is removed when dropped: a failed demo leaves no half-built directory behind.
struct WorkDir {
    path: PathBuf,
    /// Whether the directory was made here (and so is removed, not just emptied).
    made: bool,
    kept: bool,
    _temp: Option<tempfile::TempDir>,
}

impl WorkDir {
    fn new(workdir: Option<&Path>) -> Result<WorkDir> {
        let Some(dir) = workdir else {
            let temp = tempfile::Builder::new().prefix("sa-demo-").tempdir()?;
            return Ok(WorkDir {
                path: temp.path().into(),
                made: false,
                kept: true,
                _temp: Some(temp),
            });
        };
        let made = !dir.exists();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if std::fs::read_dir(dir)?.next().is_some() {
            bail!("--workdir {} is not empty", dir.display());
        }
        Ok(WorkDir { path: dir.canonicalize()?, made, kept: false, _temp: None })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let removed = if self.made {
            std::fs::remove_dir_all(&self.path)
        } else {
            std::fs::read_dir(&self.path).and_then(|entries| {
                entries.into_iter().try_for_each(|entry| {
                    let path = entry?.path();
                    if path.is_dir() && !path.is_symlink() {
                        std::fs::remove_dir_all(path)
                    } else {
                        std::fs::remove_file(path)
                    }
                })
            })
        };
        if let Err(err) = removed {
            tracing::warn!("removing the failed demo's {}: {err}", self.path.display());
        }
    }
}

/// What the demo's loop produced, step by step.
struct Run {
    built1: BTreeMap<&'static str, Built>,
    generated: Vec<Value>,
    instantiated: Vec<Value>,
    primed: Vec<Value>,
    built2: BTreeMap<&'static str, Built>,
}

impl Demo {
    /// The loop: build 1 recorded, generate, the edit, instantiate and prime, build 2.
    fn run(&self, ui: &mut Ui) -> Result<Run> {
        self.write_sources()?;
        let planned1 = ui.phase("plan", || self.plan())?;
        let built1 = ui.phase("build 1", || self.build(1))?;
        let graph1 = self.write_graph("build1.json", &planned1, Some(&built1))?;
        let out1 = self.work.join("build1.out.json").display().to_string();
        let generated = ui.phase("generate", || {
            self.sa_json(&["generate", "--graph", &graph1, "--output", &out1])
        })?;
        self.edit()?;
        let planned2 = ui.phase("plan", || self.plan())?;
        let graph2 = self.write_graph("build2.json", &planned2, None)?;
        let instantiated = ui.phase("instantiate", || {
            self.sa_json(&["instantiate", "--graph", &graph2, "--previous", &out1])
        })?;
        let jobs = self.jobs.to_string();
        let primed = ui.phase("prime", || {
            let args = ["prime", "--local", "--jobs", &jobs, "--graph", &graph2, "--previous"];
            self.sa_json(&[&args[..], &[&out1]].concat())
        })?;
        let built2 = ui.phase("build 2", || self.build(2))?;
        Ok(Run { built1, generated, instantiated, primed, built2 })
    }

    fn write_sources(&self) -> Result<()> {
        for (path, content) in FILES {
            let target = self.work.join("sources").join(path);
            std::fs::create_dir_all(target.parent().expect("a file under sources/"))?;
            std::fs::write(&target, content)
                .with_context(|| format!("writing {}", target.display()))?;
        }
        Ok(())
    }

    /// The scripted edit between the builds.
    fn edit(&self) -> Result<()> {
        for (path, from, to) in EDITS {
            let file = self.work.join("sources").join(path);
            let text = std::fs::read_to_string(&file)?;
            if !text.contains(from) {
                bail!("the scripted edit of {path} does not apply: {from:?} is not there");
            }
            std::fs::write(&file, text.replacen(from, to, 1))?;
        }
        Ok(())
    }
}

/// What the run tells: how build 2 fared, and whether every prediction was right.
struct Summary {
    steps1: usize,
    hits1: usize,
    steps2: usize,
    hits2: usize,
    /// Build 2's hits had nothing been primed: the actions build 1 already ran.
    without: usize,
    complete: usize,
    changed: usize,
    predicted: usize,
    mispredicted: Vec<String>,
    unprimed: Vec<String>,
    executed: usize,
    cached: usize,
    failed: usize,
}

fn actions(built: &BTreeMap<&str, Built>) -> BTreeSet<String> {
    built.values().flat_map(|e| e.subactions.iter().map(|d| d.to_string())).collect()
}

fn steps(built: &BTreeMap<&str, Built>) -> usize {
    built.values().map(|e| e.subactions.len()).sum()
}

fn per_element(built: &BTreeMap<&str, Built>) -> String {
    let counts: Vec<String> =
        ELEMENTS.iter().map(|e| format!("{} {}", e.name, built[e.name].subactions.len())).collect();
    counts.join(", ")
}

impl Summary {
    fn of(run: &Run) -> Summary {
        let (actions1, actions2) = (actions(&run.built1), actions(&run.built2));
        let count = |lines: &[Value], key: &str, value: Value| {
            lines.iter().filter(|l| l[key] == value).count()
        };
        let predicted: BTreeSet<String> = run
            .instantiated
            .iter()
            .filter(|l| l["complete"] == true)
            .filter_map(|l| l["action"].as_str().map(str::to_owned))
            .collect();
        Summary {
            steps1: steps(&run.built1),
            hits1: run.built1.values().map(|e| e.hits).sum(),
            steps2: steps(&run.built2),
            hits2: run.built2.values().map(|e| e.hits).sum(),
            without: actions2.intersection(&actions1).count(),
            complete: count(&run.instantiated, "complete", true.into()),
            changed: run.instantiated.iter().filter(|l| l["action"] != l["base_action"]).count(),
            predicted: predicted.len(),
            mispredicted: predicted.difference(&actions2).cloned().collect(),
            unprimed: actions2.difference(&predicted).cloned().collect(),
            executed: count(&run.primed, "status", "executed".into()),
            cached: count(&run.primed, "status", "cached".into()),
            failed: count(&run.primed, "status", "failed".into())
                + count(&run.primed, "status", "error".into()),
        }
    }

    fn report(&self, ui: &mut Ui, run: &Run, workdir: Option<&Path>) -> Result<()> {
        let edited: Vec<&str> = EDITS.iter().map(|(p, _, _)| *p).collect();
        if ui.json() {
            return ui.line(json!({
                "workdir": workdir.map(|d| d.display().to_string()),
                "build1_steps": self.steps1,
                "generated": run.generated,
                "edited": edited,
                "instantiated": run.instantiated.len(),
                "complete": self.complete,
                "changed": self.changed,
                "primed_executed": self.executed,
                "primed_cached": self.cached,
                "primed_failed": self.failed,
                "build2_steps": self.steps2,
                "build2_hits": self.hits2,
                "build2_hits_without_priming": self.without,
                "mispredicted": self.mispredicted,
                "unprimed": self.unprimed,
            }));
        }
        ui.line(format!(
            "build 1: {} compile steps recorded ({}), {} executed",
            self.steps1,
            per_element(&run.built1),
            self.steps1 - self.hits1
        ))?;
        for line in &run.generated {
            ui.line(format!(
                "generate: {} {} actions, {} overlays -> {}",
                line["element"].as_str().unwrap_or_default(),
                line["actions"],
                line["overlays"],
                line["speculative_actions"].as_str().unwrap_or_default()
            ))?;
        }
        ui.line(format!("edit: {}", edited.join(", ")))?;
        ui.line(format!(
            "instantiate: {} actions, {} complete, {} changed",
            run.instantiated.len(),
            self.complete,
            self.changed
        ))?;
        ui.line(format!(
            "prime --local: {} executed, {} already cached, {} failed",
            self.executed, self.cached, self.failed
        ))?;
        ui.line(format!(
            "build 2: {} compile steps ({}), {} cache hits with priming, {} without it",
            self.steps2,
            per_element(&run.built2),
            self.hits2,
            self.without
        ))?;
        if self.mispredicted.is_empty() {
            ui.line(format!(
                "check: every primed action ({}) is an action build 2 ran, byte for byte",
                self.predicted
            ))?;
        }
        if let Some(dir) = workdir {
            ui.line(format!("work directory kept: {}", dir.display()))?;
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        if self.failed > 0 {
            bail!("{} primed actions failed", self.failed);
        }
        if !self.mispredicted.is_empty() {
            bail!(
                "{} primed actions were not run by build 2: {:?}",
                self.mispredicted.len(),
                self.mispredicted
            );
        }
        if self.hits2 != self.steps2 {
            bail!(
                "build 2 missed the cache on {} of {} compile steps (not primed: {:?})",
                self.steps2 - self.hits2,
                self.steps2,
                self.unprimed
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_files_are_exactly_the_example_directory() {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("crates/sa-cli/demo exists") {
                let entry = entry.expect("a readable entry");
                let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
                if entry.file_type().expect("a file type").is_dir() {
                    walk(&entry.path(), &format!("{name}/"), out);
                } else {
                    out.push(name);
                }
            }
        }
        let mut on_disk = Vec::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("demo"), "", &mut on_disk);
        on_disk.sort();
        let embedded: Vec<String> = FILES.iter().map(|(p, _)| (*p).to_owned()).collect();
        assert_eq!(embedded, on_disk, "update FILES in demo.rs to match crates/sa-cli/demo");
    }

    #[test]
    fn the_scripted_edits_apply_to_the_embedded_files() {
        for (path, from, _) in EDITS {
            let (_, text) = FILES.iter().find(|(p, _)| p == path).expect("an embedded file");
            assert_eq!(text.matches(from).count(), 1, "{path}");
        }
    }
}
