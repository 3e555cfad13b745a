//! The priming loop over in-memory stores and a deterministic executor: waves, ACTION overlays
//! resolved through results kept in the build's store, uploads to an executor's own CAS.

// Test helpers unwrap: a failure is a panic naming the line, which is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{ActionCache, Cas, Digest, DigestFunction, MemoryCas, Store, write_message};
use sa_exec::{Executor, Finished, Outcome};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, generate};
use sa_instantiator::{ElementState, InstantiateConfig, Instantiator};
use sa_prime::{Event, PrimeOptions, Status, StatusKind, Stores, prime};
use sa_proto::reapi::{Action, ActionResult, Command, OutputFile};

const SHA: DigestFunction = DigestFunction::Sha256;

fn tree(cas: &dyn Store, files: &[(&str, &str)]) -> Digest {
    let entries: Vec<merkle::TreeFile> = files
        .iter()
        .map(|(p, c)| {
            merkle::TreeFile::new(*p, cas.write_blob(c.to_string().into()).unwrap(), false)
        })
        .collect();
    merkle::build_tree(cas, &entries).unwrap()
}

/// An Action of `command` (its one output `out`) over `root`.
fn action(cas: &dyn Store, command: &str, root: Digest) -> Digest {
    let command = Command {
        arguments: command.split_whitespace().map(str::to_owned).collect(),
        output_paths: vec!["out".into()],
        ..Default::default()
    };
    let command = write_message(cas, &command).unwrap();
    let action = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    write_message(cas, &action).unwrap()
}

/// "Runs" an action: its one output `name` derives from the action digest, as an object file
/// derives from its inputs; the result goes to `cas`'s ActionCache.
fn run(cas: &dyn Store, action: &Digest, name: &str) -> String {
    let content = format!("output of {action}");
    let digest = cas.write_blob(content.clone().into()).unwrap();
    let file =
        OutputFile { path: name.into(), digest: Some(digest.to_proto()), ..Default::default() };
    cas.update_action_result(
        action,
        &ActionResult { output_files: vec![file], ..Default::default() },
    )
    .unwrap();
    content
}

/// An executor over one store that runs each action with [`run`] (output `out`), and records
/// what it was given; every action's blobs must be in its store.
#[derive(Debug)]
struct Fake<'s> {
    store: &'s dyn Store,
    given: Mutex<Vec<Digest>>,
}

impl Executor for Fake<'_> {
    fn execute_all(&self, actions: &[Digest], done: &mut dyn FnMut(Finished)) {
        for action in actions {
            self.given.lock().unwrap().push(*action);
            let decoded: Action = sa_cas::read_message(self.store, action, "Action").unwrap();
            let root =
                Digest::from_proto(SHA, decoded.input_root_digest.as_ref().unwrap()).unwrap();
            // The executor reads the input tree: it must be there.
            merkle::fetch_tree(self.store, &root, &TreeLimits::default()).unwrap();
            run(self.store, action, "out");
            let result = self.store.get_action_result(action).unwrap().unwrap();
            done(Finished {
                action: *action,
                outcome: Outcome::Executed(result),
                latency: Duration::ZERO,
            });
        }
    }
}

/// Build 1: compile `a.c` (output `out`), then link the compile's output; generate. Build 2
/// edits `a.c`. Returns the SpeculativeActions, build 2's sources and the actions build 2 runs.
fn two_builds(cas: &dyn Store) -> (Digest, Digest, [Digest; 2]) {
    let build = |source: &str| {
        let compile = action(cas, "cc -c a.c", tree(cas, &[("a.c", source)]));
        let object = run(cas, &compile, "out");
        let link = action(cas, "cc -o app out", tree(cas, &[("out", &object)]));
        run(cas, &link, "out");
        (compile, link)
    };
    let (compile1, link1) = build("int a = 1;");
    let sources1 = tree(cas, &[("a.c", "int a = 1;")]);
    let generated = generate(
        cas,
        &GenerateInput {
            element: ElementTrees { name: "app".into(), sources: Some(sources1), artifact: None },
            dependencies: vec![],
            subactions: vec![compile1, link1],
            earlier_sources: Vec::new(),
        },
        &GenerateConfig::default(),
    )
    .unwrap();
    // What build 2 runs, computed in a store of its own so nothing leaks into `cas`.
    let truth = MemoryCas::new(SHA);
    let compile2 = action(&truth, "cc -c a.c", tree(&truth, &[("a.c", "int a = 2;")]));
    let object2 = run(&truth, &compile2, "out");
    let link2 = action(&truth, "cc -o app out", tree(&truth, &[("out", &object2)]));
    let sources2 = tree(cas, &[("a.c", "int a = 2;")]);
    (generated.digest, sources2, [compile2, link2])
}

/// The fake commands here are not compilers: priming without dependency scans.
fn without_rescan() -> PrimeOptions {
    PrimeOptions { rescan: false, ..Default::default() }
}

fn states(sources2: Digest, spec: Digest) -> Vec<ElementState> {
    vec![ElementState {
        name: "app".into(),
        sources: Some(sources2),
        previous_key: Some("1".into()),
        current_key: Some("2".into()),
        previous_speculative_actions: Some(spec),
        ..Default::default()
    }]
}

#[test]
fn waves_resolve_action_overlays_and_each_action_is_executed_once() {
    let cas = MemoryCas::new(SHA);
    let (spec, sources2, truth) = two_builds(&cas);
    let instantiator =
        Instantiator::new(&cas, states(sources2, spec), InstantiateConfig::default()).unwrap();
    let executor = Fake { store: &cas, given: Mutex::new(Vec::new()) };
    let mut events = Vec::new();
    let report = prime(
        Stores { build: &cas, executor_cas: None },
        &executor,
        &instantiator,
        &[("app".into(), spec)],
        &without_rescan(),
        &mut |event| {
            events.push(match event {
                Event::Scan { actions } => format!("scan {actions}"),
                Event::Wave { number, actions } => format!("wave {number}: {actions}"),
                Event::Done { status, .. } => format!("done {:?}", status.kind()),
            })
        },
    )
    .unwrap();
    // The compile in wave 1; the link only once the compile's result resolves its input.
    assert_eq!(events, ["wave 1: 1", "done Executed", "wave 2: 1", "done Executed"]);
    assert_eq!(report.waves, 2);
    assert_eq!(report.submitted, 2);
    assert_eq!(*executor.given.lock().unwrap(), truth, "build 2's actions, byte for byte");
    let statuses: Vec<(Digest, Status)> =
        report.actions.iter().map(|a| (a.action, a.status.clone())).collect();
    assert_eq!(statuses, [(truth[0], Status::Executed), (truth[1], Status::Executed)]);
    assert_eq!(report.count(StatusKind::Executed), 2);
    let phases: BTreeMap<&str, Duration> =
        report.phases.iter().map(|(p, d)| (p.name(), *d)).collect();
    assert!(phases.contains_key("instantiate") && phases.contains_key("execute"), "{phases:?}");
    assert!(!phases.contains_key("upload"), "one store: nothing to upload");
}

#[test]
fn a_cancelled_priming_submits_no_further_wave() {
    let cas = MemoryCas::new(SHA);
    let (spec, sources2, truth) = two_builds(&cas);
    let instantiator =
        Instantiator::new(&cas, states(sources2, spec), InstantiateConfig::default()).unwrap();
    let executor = Fake { store: &cas, given: Mutex::new(Vec::new()) };
    // A newer change arrives while wave 1 runs: the link (wave 2) is never submitted.
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let report = sa_prime::prime_until(
        Stores { build: &cas, executor_cas: None },
        &executor,
        &instantiator,
        &[("app".into(), spec)],
        &without_rescan(),
        &cancel,
        &mut |event| {
            if matches!(event, Event::Done { .. }) {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        },
    )
    .unwrap();
    assert!(report.cancelled);
    assert_eq!(*executor.given.lock().unwrap(), [truth[0]], "wave 1 only");
    assert_eq!(report.actions[0].status, Status::Executed);
    assert_eq!(
        report.actions[1].status,
        Status::Unpredictable("cancelled before it was submitted".into())
    );
}

#[test]
fn an_executor_with_its_own_cas_gets_what_it_lacks_and_results_come_back() {
    let build = MemoryCas::new(SHA);
    let remote = MemoryCas::new(SHA);
    let (spec, sources2, truth) = two_builds(&build);
    let instantiator =
        Instantiator::new(&build, states(sources2, spec), InstantiateConfig::default()).unwrap();
    // The fake reads only its own store: without the upload it would fail to find the trees.
    let executor = Fake { store: &remote, given: Mutex::new(Vec::new()) };
    let report = prime(
        Stores { build: &build, executor_cas: Some(&remote) },
        &executor,
        &instantiator,
        &[("app".into(), spec)],
        &without_rescan(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(report.count(StatusKind::Executed), 2, "{:?}", report.actions);
    assert_eq!(*executor.given.lock().unwrap(), truth);
    // Results and their outputs were copied back to the build's store.
    for action in truth {
        let result = build.get_action_result(&action).unwrap().expect("kept in the build's store");
        let output =
            Digest::from_proto(SHA, result.output_files[0].digest.as_ref().unwrap()).unwrap();
        assert!(build.find_missing(&[output]).unwrap().is_empty());
    }
}

/// An executor with its own store that answers every action with `result`: a hostile or broken
/// service.
#[derive(Debug)]
struct Lying {
    result: ActionResult,
}

impl Executor for Lying {
    fn execute_all(&self, actions: &[Digest], done: &mut dyn FnMut(Finished)) {
        for action in actions {
            done(Finished {
                action: *action,
                outcome: Outcome::Executed(self.result.clone()),
                latency: Duration::ZERO,
            });
        }
    }
}

#[test]
fn a_result_naming_outputs_outside_the_working_directory_is_never_kept() {
    use sa_proto::reapi::OutputSymlink;
    let build = MemoryCas::new(SHA);
    let remote = MemoryCas::new(SHA);
    let (spec, sources2, truth) = two_builds(&build);
    let blob = remote.write_blob("evil".into()).unwrap();
    let file = |path: &str| OutputFile {
        path: path.into(),
        digest: Some(blob.to_proto()),
        ..Default::default()
    };
    let link = |path: &str, target: &str| OutputSymlink {
        path: path.into(),
        target: target.into(),
        ..Default::default()
    };
    let results = [
        (
            "an escaping path",
            ActionResult { output_files: vec![file("../../x")], ..Default::default() },
        ),
        (
            "an absolute path",
            ActionResult { output_files: vec![file("/etc/x")], ..Default::default() },
        ),
        (
            "an undeclared output",
            ActionResult { output_files: vec![file("other")], ..Default::default() },
        ),
        (
            "a symlink to /etc",
            ActionResult { output_symlinks: vec![link("out", "/etc")], ..Default::default() },
        ),
        (
            "a symlink climbing out",
            ActionResult { output_symlinks: vec![link("out", "../../..")], ..Default::default() },
        ),
    ];
    for (what, result) in results {
        let instantiator =
            Instantiator::new(&build, states(sources2, spec), InstantiateConfig::default())
                .unwrap();
        let report = prime(
            Stores { build: &build, executor_cas: Some(&remote) },
            &Lying { result },
            &instantiator,
            &[("app".into(), spec)],
            &without_rescan(),
            &mut |_| {},
        )
        .unwrap();
        let first = &report.actions[0];
        assert_eq!(first.action, truth[0], "{what}");
        assert!(
            matches!(&first.status, Status::Error(why) if why.contains("copying the result")),
            "{what}: {:?}",
            first.status
        );
        assert!(build.get_action_result(&truth[0]).unwrap().is_none(), "{what}: not kept");
    }
}
