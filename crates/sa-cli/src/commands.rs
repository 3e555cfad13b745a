//! `generate`, `instantiate`, `ingest`, `subactions`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use sa_cas::merkle;
use sa_cas::{ActionCache, Digest};
use sa_generator::{GenerateConfig, GenerateInput};
use sa_instantiator::{ElementState, InstantiateConfig, InstantiatedAction, Instantiator};
use serde_json::json;

use crate::args::StoreArgs;
use crate::graph::{self, Element};
use crate::store;
use crate::ui::Ui;

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// The build graph (JSON) of the build that just ran.
    #[arg(long, value_name = "G.json")]
    graph: PathBuf,
    /// Only these elements (repeatable); default: every element with subactions or an
    /// artifact (an artifact alone still needs `artifact_overlays`, which let dependents be
    /// primed before it is rebuilt).
    #[arg(long, value_name = "NAME")]
    element: Vec<String>,
    /// Write the graph with `speculative_actions` filled in here.
    #[arg(long, value_name = "OUT.json")]
    output: Option<PathBuf>,
    /// Leave out (and report) subactions whose Action or input tree is missing or invalid.
    #[arg(long)]
    skip_broken_subactions: bool,
    /// Do not store each output's actions index (`sa instantiate` then builds it on first use).
    #[arg(long)]
    no_index: bool,
}

/// A library's progress reports, moving `bar` (its length grows as work is announced).
fn progress_of(bar: &indicatif::ProgressBar) -> impl Fn(sa_generator::Progress) + Sync + use<> {
    let bar = bar.clone();
    move |progress| match progress {
        sa_generator::Progress::Planned(n) => bar.inc_length(n as u64),
        sa_generator::Progress::Done(n) => bar.inc(n as u64),
    }
}

pub(crate) fn generate(args: &StoreArgs, cmd: &GenerateArgs, ui: &mut Ui) -> Result<()> {
    let opened = store::open(args)?;
    ui.watch("store", &opened);
    let mut graph = graph::load(&cmd.graph, args)?;
    let selected: Vec<Element> = graph
        .select(&cmd.element, |e| !e.subactions.is_empty() || e.artifact.is_some())?
        .into_iter()
        .cloned()
        .collect();
    let mut config = GenerateConfig {
        skip_broken_subactions: cmd.skip_broken_subactions,
        limits: args.limits.tree(),
        skip_index: cmd.no_index,
    };
    if selected.is_empty() {
        eprintln!(
            "sa generate: no element of {} ({} elements) has subactions or an artifact: nothing to generate",
            cmd.graph.display(),
            graph.elements.len()
        );
    }
    // Advanced per subaction attributed, not per element: one large element is most of a run.
    let bar = ui.progress(0, "generate");
    let advance = progress_of(&bar);
    let mut lines = Vec::new();
    for element in &selected {
        let input =
            GenerateInput::from_graph(&graph, &element.name).expect("selected from the graph");
        let generated = ui
            .phase("generate", || {
                sa_generator::generate_observed(&opened.store, &input, &config, &advance)
            })
            .with_context(|| format!("generating for element {:?}", element.name))?;
        let stats = &generated.stats;
        // The expansion limit holds for the whole run: later elements get what is left.
        config.limits.max_expanded_entries =
            config.limits.max_expanded_entries.saturating_sub(stats.expanded_entries).max(1);
        for skipped in &stats.skipped {
            eprintln!("warning: {:?}: skipped {}", element.name, skipped.reason);
        }
        if ui.json() {
            lines.push(
                json!({
                    "element": element.name,
                    "speculative_actions": generated.digest.to_string(),
                    "actions": stats.actions,
                    "overlays": stats.overlays(),
                    "subactions": stats.subactions,
                    "skipped": stats.skipped.len(),
                    "unattributed_inputs": stats.unattributed_inputs,
                    "unattributed_artifact_files": stats.unattributed_artifact_files,
                })
                .to_string(),
            );
        } else {
            lines.push(format!(
                "{}: {} of {} subactions with overlays, {} overlays ({} source, {} action, {} artifact), {} artifact overlays, {} inputs unattributed, {} skipped -> {}",
                element.name, stats.actions, stats.subactions, stats.overlays(), stats.source_overlays, stats.action_overlays,
                stats.artifact_overlays, stats.artifact_file_overlays, stats.unattributed_inputs, stats.skipped.len(), generated.digest
            ));
        }
        let out = graph.get_mut(&element.name).expect("selected from the graph");
        out.speculative_actions = Some(generated.digest);
        // The user's graph binds the index to the blob (the trust root, not the ActionCache).
        out.actions_index = generated.index;
    }
    bar.finish_and_clear();
    if let Some(output) = &cmd.output {
        std::fs::write(output, graph.to_json())
            .with_context(|| format!("writing {}", output.display()))?;
    }
    for line in lines {
        ui.line(line)?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct InstantiateArgs {
    /// The build graph (JSON) of the build about to run.
    #[arg(long, value_name = "NEXT.json", required_unless_present = "workspace")]
    pub(crate) graph: Option<PathBuf>,
    /// The graph written by `sa generate` for the previous build.
    #[arg(long, value_name = "PREV.json", required_unless_present = "workspace")]
    pub(crate) previous: Option<PathBuf>,
    /// Instead of graphs: the project's learned state (what `sa serve` or `sa learn` learned
    /// from the builds of this workspace), against the workspace as it is now.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["graph", "previous", "element"])]
    pub(crate) workspace: Option<PathBuf>,
    /// With --workspace: the project's name [default: the workspace's absolute path].
    #[arg(long, value_name = "NAME", requires = "workspace")]
    pub(crate) name: Option<String>,
    /// Only these elements (repeatable); default: every element with speculative actions.
    #[arg(long, value_name = "NAME")]
    pub(crate) element: Vec<String>,
    /// Decode each SpeculativeActions blob itself: neither read nor store its actions index
    /// (a cache in the store, keyed by the blob, that makes an instantiation cost what the
    /// edit costs).
    #[arg(long)]
    pub(crate) no_index: bool,
}

impl InstantiateArgs {
    /// The instantiator's options these arguments and the store's limits give.
    pub(crate) fn config(&self, args: &StoreArgs) -> InstantiateConfig {
        InstantiateConfig {
            limits: args.limits.tree(),
            index: !self.no_index,
            ..Default::default()
        }
    }
}

/// What `instantiate` and `prime` work on: the element states of NEXT (with the previous
/// build's keys and SpeculativeActions), and the elements to instantiate, in topological order,
/// with their previous SpeculativeActions; with `--workspace`, the learned project.
pub(crate) struct Plan {
    pub(crate) states: Vec<ElementState>,
    pub(crate) targets: Vec<(String, Digest)>,
    pub(crate) learned: Option<LearnedPlan>,
}

/// A plan from a learned state: the project as one element, its sources as they are now.
pub(crate) struct LearnedPlan {
    pub(crate) state: sa_learn::LearnedState,
    pub(crate) sources: Digest,
}

pub(crate) fn plan(
    args: &StoreArgs,
    cmd: &InstantiateArgs,
    opened: &store::Opened,
) -> Result<Plan> {
    if let Some(workspace) = &cmd.workspace {
        let project = crate::learned::ProjectArgs { name: cmd.name.clone() };
        let name = project.name_for(Some(workspace))?;
        return learned_plan(args, opened, &name, workspace, None);
    }
    let (Some(graph), Some(previous_path)) = (&cmd.graph, &cmd.previous) else {
        unreachable!("clap requires --graph and --previous without --workspace")
    };
    let next = graph::load(graph, args)?;
    let previous = graph::load(previous_path, args)?;
    let states = ElementState::from_graphs(&next, &previous);
    let with_spec: HashMap<&str, Digest> = previous
        .elements
        .iter()
        .filter_map(|e| e.speculative_actions.map(|d| (e.name.as_str(), d)))
        .collect();
    let mut targets = Vec::new();
    for element in next.select(&cmd.element, |e| with_spec.contains_key(e.name.as_str()))? {
        match with_spec.get(element.name.as_str()) {
            Some(digest) => targets.push((element.name.clone(), *digest)),
            None => bail!(
                "element {:?} has no speculative_actions in {}",
                element.name,
                previous_path.display()
            ),
        }
    }
    if targets.is_empty() {
        // Nothing to adapt is almost always the wrong graph given: say what was seen.
        bail!(
            "nothing to instantiate: {} ({} elements) and {} ({} elements, {} with \
             speculative_actions) share no element with speculative_actions; --previous takes the \
             graph `sa generate --output` wrote",
            graph.display(),
            next.elements.len(),
            previous_path.display(),
            previous.elements.len(),
            with_spec.len()
        );
    }
    Ok(Plan { states, targets, learned: None })
}

/// The learned project `name` as one element whose sources are `workspace` now (`sources`
/// when the caller has just ingested it). The state's actions index is not trusted as a
/// graph's would be: one found in the store is checked against the blob before use.
pub(crate) fn learned_plan(
    args: &StoreArgs,
    opened: &store::Opened,
    name: &str,
    workspace: &std::path::Path,
    sources: Option<Digest>,
) -> Result<Plan> {
    let config = sa_learn::LearnConfig {
        max_state_bytes: args.limits.max_graph_bytes,
        ..Default::default()
    };
    let (_, state) = crate::learned::load_state(opened, name, &config)?;
    let Some(speculative_actions) = state.speculative_actions else {
        bail!("the learned state of {name:?} has no speculative actions yet");
    };
    let sources = match sources {
        Some(sources) => sources,
        None => crate::learned::ingest_workspace(&opened.store, workspace, args)?,
    };
    let states = vec![ElementState {
        name: name.to_owned(),
        sources: Some(sources),
        previous_speculative_actions: Some(speculative_actions),
        ..Default::default()
    }];
    Ok(Plan {
        states,
        targets: vec![(name.to_owned(), speculative_actions)],
        learned: Some(LearnedPlan { state, sources }),
    })
}

pub(crate) fn outcome_json(element: &str, o: &InstantiatedAction) -> serde_json::Value {
    json!({
        "element": element,
        "base_action": o.base.to_string(),
        "action": o.action.to_string(),
        "complete": o.complete,
        "applied": o.applied,
        "skipped": o.skipped,
        "unresolved": o.unresolved,
    })
}

pub(crate) fn instantiate(args: &StoreArgs, cmd: &InstantiateArgs, ui: &mut Ui) -> Result<()> {
    let opened = store::open(args)?;
    ui.watch("store", &opened);
    let Plan { states, targets, .. } = plan(args, cmd, &opened)?;
    let instantiator = Instantiator::new(&opened.store, states, cmd.config(args))?;
    // Advanced per action: the count of each element's actions is known once it is decoded.
    let bar = ui.progress(0, "instantiate");
    let advance = progress_of(&bar);
    let mut lines = Vec::new();
    for (element, digest) in &targets {
        let outcomes = ui
            .phase("instantiate", || {
                instantiator.instantiate_element_observed(element, digest, &advance)
            })
            .with_context(|| format!("instantiating element {element:?}"))?;
        if ui.json() {
            lines.extend(outcomes.iter().map(|o| outcome_json(element, o).to_string()));
        } else {
            let complete = outcomes.iter().filter(|o| o.complete).count();
            let changed = outcomes.iter().filter(|o| o.action != o.base).count();
            lines.push(format!(
                "{element}: {} actions, {complete} complete, {changed} changed, {} incomplete",
                outcomes.len(),
                outcomes.len() - complete
            ));
            for o in outcomes.iter().filter(|o| !o.complete) {
                lines.push(format!("  incomplete {}: {}", o.base, o.unresolved_reasons.join("; ")));
            }
        }
    }
    bar.finish_and_clear();
    let index = instantiator.index_stats();
    ui.count(
        "actions index",
        format!("{} loaded, {} built, {} rebuilt", index.loaded, index.built, index.rebuilt),
    );
    for line in lines {
        ui.line(line)?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// The directory to store.
    path: PathBuf,
}

pub(crate) fn ingest(args: &StoreArgs, cmd: &IngestArgs, ui: &mut Ui) -> Result<()> {
    let opened = store::open(args)?;
    ui.watch("store", &opened);
    let root = ui
        .phase("ingest", || merkle::ingest(&opened.store, &cmd.path, &args.limits.tree()))
        .with_context(|| format!("ingesting {}", cmd.path.display()))?;
    if ui.json() {
        ui.line(json!({"path": cmd.path.display().to_string(), "root": root.to_string()}))?;
    } else {
        ui.line(root)?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct SubactionsArgs {
    /// The Action digest (HASH/SIZE) whose ActionResult to read.
    action: String,
}

pub(crate) fn subactions(args: &StoreArgs, cmd: &SubactionsArgs, ui: &mut Ui) -> Result<()> {
    let opened = store::open_existing(args)?;
    ui.watch("store", &opened);
    let action = Digest::parse(args.digest_function, &cmd.action)?;
    let result = opened
        .store
        .get_action_result(&action)?
        .ok_or_else(|| anyhow!("no ActionResult for action {action} in {}", opened.description))?;
    if result.subactions.is_empty() {
        eprintln!(
            "sa subactions: the ActionResult of {action} records no subactions (exit code {}, {} output files)",
            result.exit_code,
            result.output_files.len()
        );
    }
    for (i, proto) in result.subactions.iter().enumerate() {
        let digest = Digest::from_proto(args.digest_function, proto)
            .with_context(|| format!("subaction {i} of the result of {action}"))?;
        if ui.json() {
            ui.line(json!({"action": action.to_string(), "subaction": digest.to_string()}))?;
        } else {
            ui.line(digest)?;
        }
    }
    Ok(())
}
