//! A plan from the build system: the compiles of the next build (a compilation database),
//! matched to the recorded actions, so a changed command line, a moved output and a new
//! source file are predicted too.
//!
//! An entry matches the recorded compile with the same working directory and outputs, or else
//! the same working directory and source file. A match whose arguments differ (or whose
//! overlays could not all resolve) is rebuilt with the entry's arguments and outputs and an
//! input root by dependency scan; the recorded Command's environment and platform stay. An
//! entry no recorded compile matches is a new compile: the environment, platform and Action
//! fields of a recorded compile in the same working directory (else any), its input root by
//! scan over the next sources. A recorded compile no entry matches is not run: the build does
//! not ask for it.

use std::collections::{BTreeMap, HashMap};

use sa_cas::{Digest, Store, write_message};
use sa_compile::{below, parse_compile};
use sa_instantiator::InstantiatedAction;
use sa_proto::reapi::Command;

use crate::rescan::{Request, Scanned, read_actions, read_commands};
use crate::{PrimeError, store_error};

/// A compile the next build runs, from its compilation database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedCompile {
    /// The element (workspace) whose sources it reads.
    pub element: String,
    /// Its working directory below the input root (`""`: the root).
    pub working_directory: String,
    /// Its arguments as `sa record` records them (absolute paths under the root relative).
    pub arguments: Vec<String>,
}

/// What the plan makes of one build's outcomes.
#[derive(Debug, Default)]
pub(crate) struct Matched {
    /// Compiles to scan with the entry's command (keyed by their instantiated action, or by
    /// a new compile's Command digest).
    pub requests: Vec<Request>,
    /// Recorded compiles the build does not run, and entries that cannot be planned.
    pub not_run: HashMap<Digest, Scanned>,
    /// New compiles: element and key.
    pub new: Vec<(String, Digest)>,
}

struct Recorded<'o> {
    element: &'o str,
    outcome: &'o InstantiatedAction,
    command: Command,
    outputs: Vec<String>,
    source: Option<String>,
}

/// Matches `planned` against the recorded compiles among `outcomes`.
pub(crate) fn match_plan<S: Store + ?Sized>(
    store: &S,
    outcomes: &[(String, InstantiatedAction)],
    planned: &[PlannedCompile],
) -> Result<Matched, PrimeError> {
    let mut matched = Matched::default();
    let mut recorded = Vec::new();
    let planned_for = |element: &String| planned.iter().any(|p| &p.element == element);
    let bases: Vec<Digest> =
        outcomes.iter().filter(|(e, _)| planned_for(e)).map(|(_, o)| o.base).collect();
    let actions = read_actions(store, &bases)?;
    let mut command_of = HashMap::with_capacity(actions.len());
    for (base, decoded) in &actions {
        let digest = decoded.command().map_err(store_error(format!("reading action {base}")))?;
        command_of.insert(*base, digest);
    }
    let commands = read_commands(store, &command_of.values().copied().collect::<Vec<_>>())?;
    for (element, outcome) in outcomes {
        if !planned_for(element) {
            continue;
        }
        let command = commands[&command_of[&outcome.base]].clone();
        let Some(compile) = parse_compile(&command.arguments) else { continue };
        let mut outputs = command.output_paths.clone();
        outputs.sort();
        let source = below(&command.working_directory, compile.source());
        recorded.push(Recorded { element, outcome, command, outputs, source });
    }
    let mut used = vec![false; recorded.len()];
    let mut unmatched = Vec::new();
    for entry in planned {
        let Some(compile) = parse_compile(&entry.arguments) else { continue };
        let Some(outputs) = compile.output_paths() else { continue };
        let source = below(&entry.working_directory, compile.source());
        let same_place = |r: &Recorded<'_>| {
            r.element == entry.element && r.command.working_directory == entry.working_directory
        };
        let found =
            recorded.iter().position(|r| same_place(r) && r.outputs == outputs).or_else(|| {
                recorded
                    .iter()
                    .position(|r| same_place(r) && source.is_some() && r.source == source)
            });
        let Some(i) = found else {
            unmatched.push((entry, outputs));
            continue;
        };
        if std::mem::replace(&mut used[i], true) {
            continue; // Two entries for one compile: the first stands.
        }
        let r = &recorded[i];
        if r.outcome.complete && r.command.arguments == entry.arguments && r.outputs == outputs {
            continue; // The recorded command: overlays and the re-scan predict it.
        }
        let command = Command {
            arguments: entry.arguments.clone(),
            output_paths: outputs,
            ..r.command.clone()
        };
        matched.requests.push(Request {
            element: entry.element.clone(),
            key: r.outcome.action,
            // An incomplete action may not be stored: its recorded one is.
            template: if r.outcome.complete { r.outcome.action } else { r.outcome.base },
            command: Some(command),
            keep_inputs: r.outcome.complete,
            recorded: None,
            drop: Vec::new(),
        });
    }
    for (r, used) in recorded.iter().zip(&used) {
        if !used && r.outcome.complete {
            matched.not_run.insert(
                r.outcome.action,
                Scanned::Unpredictable(
                    "no compile of the compilation database has its outputs or source: the \
                     build does not run it"
                        .into(),
                ),
            );
        }
    }
    // New compiles take what a recorded compile of the same element has beside its arguments,
    // one in the same working directory first.
    let mut templates: BTreeMap<(&str, &str), &Recorded<'_>> = BTreeMap::new();
    for r in recorded.iter().filter(|r| r.outcome.complete) {
        templates.entry((r.element, r.command.working_directory.as_str())).or_insert(r);
        templates.entry((r.element, "\0any")).or_insert(r);
    }
    for (entry, outputs) in unmatched {
        let template = templates
            .get(&(entry.element.as_str(), entry.working_directory.as_str()))
            .or_else(|| templates.get(&(entry.element.as_str(), "\0any")));
        let command = Command {
            arguments: entry.arguments.clone(),
            output_paths: outputs,
            working_directory: entry.working_directory.clone(),
            ..template.map(|t| t.command.clone()).unwrap_or_default()
        };
        let key = write_message(store, &command)
            .map_err(store_error("storing a new compile's command"))?;
        matched.new.push((entry.element.clone(), key));
        match template {
            Some(t) => matched.requests.push(Request {
                element: entry.element.clone(),
                key,
                template: t.outcome.action,
                command: Some(command),
                keep_inputs: false,
                recorded: None,
                drop: Vec::new(),
            }),
            None => {
                matched.not_run.insert(
                    key,
                    Scanned::Unpredictable(format!(
                        "a new compile ({}) in an element with no complete recorded compile to \
                         take its environment from",
                        entry.arguments.join(" ")
                    )),
                );
            }
        }
    }
    Ok(matched)
}
