//! `learn` (one build's recording or log into the project's learned state), `status` (what is
//! learned), and what `prime --workspace` and `serve` share with them: the project's name, the
//! build line, the warnings.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use sa_cas::{Digest, Store, merkle};
use sa_learn::{LearnConfig, Learned, LearnedState, Recorded};
use serde_json::json;

use crate::args::StoreArgs;
use crate::store;
use crate::ui::Ui;

/// Which project's learned state: a name, or the workspace's (its absolute path).
#[derive(Clone, Debug, Args)]
pub(crate) struct ProjectArgs {
    /// The project's name [default: the workspace's absolute path].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
}

impl ProjectArgs {
    /// The name of the project built in `workspace`.
    pub(crate) fn name_for(&self, workspace: Option<&Path>) -> Result<String> {
        if let Some(name) = &self.name {
            if name.is_empty() {
                crate::exit::usage!("--name must not be empty");
            }
            return Ok(name.clone());
        }
        let Some(workspace) = workspace else {
            crate::exit::usage!("name the project: --name NAME or --workspace DIR");
        };
        let path = std::fs::canonicalize(workspace)
            .with_context(|| format!("--workspace {}", workspace.display()))?;
        Ok(path.to_string_lossy().into_owned())
    }
}

#[derive(Debug, Args)]
pub(crate) struct LearnArgs {
    /// The directory the build read its sources from (it is stored as the build's sources).
    #[arg(long, value_name = "DIR")]
    workspace: PathBuf,
    #[command(flatten)]
    project: ProjectArgs,
    /// A recording of `sa proxy` (one invocation's .jsonl).
    #[arg(long, value_name = "FILE", required_unless_present = "log", conflicts_with = "log")]
    recording: Option<PathBuf>,
    /// The log of `sa record --log`.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    #[command(flatten)]
    learning: LearningArgs,
}

/// How learning forgets.
#[derive(Clone, Debug, Args)]
pub(crate) struct LearningArgs {
    /// Forget an action identity that fails, or that cannot be predicted (its source is gone)
    /// and is not asked for, this many builds in a row.
    #[arg(long, default_value_t = sa_learn::DEFAULT_FORGET_AFTER, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) forget_after: u32,
}

impl LearningArgs {
    pub(crate) fn config(&self, args: &StoreArgs) -> LearnConfig {
        LearnConfig {
            forget_after: self.forget_after,
            limits: args.limits.tree(),
            max_state_bytes: args.limits.max_graph_bytes,
        }
    }
}

/// What one recording of `sa proxy` asked for, with the warnings reading it gave.
pub(crate) fn read_proxy_recording(args: &StoreArgs, path: &Path) -> Result<Vec<Recorded>> {
    let limit = args.limits.max_graph_bytes;
    let recording = sa_proxy::read_recording(path, limit).map_err(|err| match err {
        sa_cas::BoundedReadError::TooLarge { .. } => {
            anyhow::anyhow!("recording {}: more than --max-graph-bytes {limit}", path.display())
        }
        err => anyhow::anyhow!("reading the recording {}: {err}", path.display()),
    })?;
    if !recording.skipped.is_empty() {
        eprintln!(
            "warning: recording {}: skipped {} broken lines (lines {:?}: what a write that \
             failed part way leaves; the invocation may have been cut off)",
            path.display(),
            recording.skipped.len(),
            recording.skipped
        );
    }
    let cancelled = recording.lines.iter().filter(|l| l["status"] == 1).count();
    if cancelled > 0 {
        eprintln!(
            "warning: recording {}: {cancelled} calls were cancelled (the build was interrupted, \
             or its client went away): what they would have run is not learned",
            path.display()
        );
    }
    sa_learn::recorded_from_proxy(args.digest_function, &recording.lines, &[])
        .with_context(|| format!("recording {}", path.display()))
}

pub(crate) fn learn(args: &StoreArgs, cmd: &LearnArgs, ui: &mut Ui) -> Result<()> {
    let name = cmd.project.name_for(Some(&cmd.workspace))?;
    let (recorded, from) = match (&cmd.recording, &cmd.log) {
        (Some(recording), _) => (read_proxy_recording(args, recording)?, recording),
        (None, Some(log)) => {
            let text = sa_cas::read_bounded_text(log, args.limits.max_graph_bytes)
                .with_context(|| format!("reading the log {}", log.display()))?;
            let recorded = sa_learn::recorded_from_log(args.digest_function, &text)
                .with_context(|| format!("log {}", log.display()))?;
            (recorded, log)
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let opened = store::open(args)?;
    ui.watch("store", &opened);
    let sources = ingest_workspace(&opened.store, &cmd.workspace, args)?;
    let invocation = from.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into());
    let learned = ui
        .phase("learn", || {
            sa_learn::learn(
                &opened.store,
                &name,
                &invocation,
                &recorded,
                sources,
                &cmd.learning.config(args),
            )
        })
        .with_context(|| format!("learning {name:?} from {}", from.display()))?;
    report_learned(ui, &learned, &cmd.workspace)
}

/// Stores the workspace as the build's sources.
pub(crate) fn ingest_workspace(
    store: &(impl Store + ?Sized),
    workspace: &Path,
    args: &StoreArgs,
) -> Result<Digest> {
    ingest_workspace_cached(store, workspace, args, &merkle::IngestCache::default())
}

/// [`ingest_workspace`], hashing only files `cache` does not know unchanged.
pub(crate) fn ingest_workspace_cached(
    store: &(impl Store + ?Sized),
    workspace: &Path,
    args: &StoreArgs,
    cache: &merkle::IngestCache,
) -> Result<Digest> {
    sa_cas::ConfinedDir::open(workspace)
        .and_then(|top| merkle::ingest_cached(store, &top, &args.limits.tree(), cache))
        .with_context(|| format!("ingesting --workspace {}", workspace.display()))
}

/// The build line (and JSON event) and the warnings of one learned build.
pub(crate) fn report_learned(ui: &mut Ui, learned: &Learned, workspace: &Path) -> Result<()> {
    for left in &learned.unreadable {
        eprintln!("warning: recorded action {} not learned: {}", left.action, left.reason);
    }
    for gone in &learned.gone {
        eprintln!("warning: forgot action {}: {}", gone.action, gone.reason);
    }
    let stats = &learned.generate;
    let attributed = stats.source_overlays + stats.action_overlays;
    if stats.unattributed_inputs > 0 && attributed == 0 && !learned.state.entries.is_empty() {
        eprintln!(
            "warning: none of the {} input files of the learned actions comes from {} or from \
             another action: is it the directory the build reads? Nothing can be predicted",
            stats.unattributed_inputs,
            workspace.display()
        );
    }
    let s = learned.state.last_build.as_ref().expect("learn sets it");
    let identities = learned.state.entries.len();
    if ui.json() {
        ui.line(json!({
            "event": "build",
            "invocation": s.invocation,
            "actions": s.actions,
            "hits": s.hits,
            "primed_hits": s.primed_hits,
            "learned": s.learned,
            "failed": s.failed,
            "dropped": s.dropped,
            "identities": identities,
            "unattributed_inputs": stats.unattributed_inputs,
            "state": learned.digest.to_string(),
            "speculative_actions": learned.state.speculative_actions.map(|d| d.to_string()),
        }))
    } else {
        ui.line(format!("{} ({identities} identities known)", build_line(s)))
    }
}

/// `build <invocation>: N actions, M remote cache hits, K of them primed by sa, L learned`.
pub(crate) fn build_line(s: &sa_learn::BuildSummary) -> String {
    format!(
        "build {}: {} actions, {} remote cache hits, {} of them primed by sa, {} learned",
        s.invocation, s.actions, s.hits, s.primed_hits, s.learned
    )
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The workspace whose project to show (its absolute path is the default name).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    #[command(flatten)]
    project: ProjectArgs,
}

/// The project's learned state, or an error saying nothing is learned.
pub(crate) fn load_state(
    store: &store::Opened,
    name: &str,
    config: &LearnConfig,
) -> Result<(Digest, LearnedState)> {
    match sa_learn::load(&store.store, name, config)? {
        Some(found) => Ok(found),
        None => bail!(
            "nothing learned for project {name:?} in {}: build through `sa serve`, or run \
             `sa learn` after a build",
            store.description
        ),
    }
}

pub(crate) fn status(args: &StoreArgs, cmd: &StatusArgs, ui: &mut Ui) -> Result<()> {
    let name = cmd.project.name_for(cmd.workspace.as_deref())?;
    let opened = store::open_existing(args)?;
    ui.watch("store", &opened);
    let config = LearnConfig { max_state_bytes: args.limits.max_graph_bytes, ..Default::default() };
    let (digest, state) = load_state(&opened, &name, &config)?;
    let text = |d: Option<Digest>| d.map_or_else(|| "none".into(), |d| d.to_string());
    let priming = state.priming.as_ref().map(|p| {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for prediction in &p.predictions {
            *counts.entry(prediction.status.as_str()).or_default() += 1;
        }
        (p.sources, counts)
    });
    if ui.json() {
        return ui.line(json!({
            "name": state.name,
            "state": digest.to_string(),
            "builds": state.builds,
            "identities": state.entries.len(),
            "sources": text(state.sources),
            "speculative_actions": text(state.speculative_actions),
            "last_build": state.last_build,
            "priming": priming.as_ref().map(|(sources, counts)| json!({
                "sources": sources.to_string(),
                "predictions": counts,
            })),
        }));
    }
    ui.line(format!(
        "project {:?}: {} builds learned, {} identities",
        state.name,
        state.builds,
        state.entries.len()
    ))?;
    ui.line(format!(
        "  sources {}, speculative actions {}",
        text(state.sources),
        text(state.speculative_actions)
    ))?;
    if let Some(build) = &state.last_build {
        ui.line(format!("  last {}", build_line(build)))?;
    }
    match priming {
        Some((sources, counts)) => {
            let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let said = if counts.is_empty() { "nothing changed".into() } else { counts.join(", ") };
            ui.line(format!("  primed for sources {sources}: {said}"))
        }
        None => ui.line("  not primed since the last build"),
    }
}

/// Keeps what a priming from the learned state did (in the state: the next build's line says
/// which of its hits were primed, and predictions it never asks for are counted).
pub(crate) fn keep_priming(
    store: &(impl Store + ?Sized),
    plan: &crate::commands::LearnedPlan,
    report: &sa_prime::PrimeReport,
    config: &LearnConfig,
) -> Result<()> {
    let identities: std::collections::HashMap<Digest, &sa_learn::Identity> =
        plan.state.entries.iter().map(|(identity, e)| (e.action, identity)).collect();
    let mut predictions: Vec<sa_learn::Prediction> = report
        .actions
        .iter()
        .filter(|a| {
            a.base != Some(a.action) || a.status.kind() == sa_prime::StatusKind::Unpredictable
        })
        // A new compile (only the compilation database names it) has no identity learned yet.
        .filter_map(|a| {
            a.base.and_then(|base| identities.get(&base)).map(|identity| sa_learn::Prediction {
                identity: (*identity).clone(),
                action: a.action,
                status: a.status.kind().name().into(),
            })
        })
        .collect();
    predictions.sort_by(|a, b| a.identity.cmp(&b.identity).then(a.action.cmp(&b.action)));
    // The newest state (a build may have been learned meanwhile), with this priming.
    let mut state = match sa_learn::load(store, &plan.state.name, config)? {
        Some((_, state)) => state,
        None => plan.state.clone(),
    };
    state.priming = Some(sa_learn::Priming { sources: plan.sources, predictions });
    sa_learn::save(store, &state)?;
    Ok(())
}
