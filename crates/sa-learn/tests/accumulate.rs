//! The update rule over generated histories: learning from incremental builds (each asks only
//! for the actions whose inputs changed, as Bazel does) accumulates to what a clean build
//! teaches.

#![allow(clippy::unwrap_used)] // tests: a failure is the test failing

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sa_cas::{Digest, DigestFunction};
use sa_learn::{Identity, LearnedState, Observed, Prediction, Priming};

const F: DigestFunction = DigestFunction::Sha256;
const FORGET: u32 = 3;

fn identity(n: usize) -> Identity {
    Identity { working_directory: String::new(), outputs: vec![format!("obj/{n}.o")] }
}

/// A project at one commit: for each compile present, the versions of what it reads (its own
/// source and, for some, a shared header).
#[derive(Clone, Debug)]
struct Commit {
    present: BTreeSet<usize>,
    source: BTreeMap<usize, u32>,
    header: u32,
    reads_header: BTreeSet<usize>,
}

impl Commit {
    /// The action of compile `n` at this commit: a function of its inputs.
    fn action(&self, n: usize) -> Digest {
        let header = if self.reads_header.contains(&n) { self.header } else { 0 };
        F.hash_bytes(format!("{n}:{}:{header}", self.source[&n]).as_bytes())
    }

    fn actions(&self) -> BTreeMap<usize, Digest> {
        self.present.iter().map(|&n| (n, self.action(n))).collect()
    }
}

/// One step of a history.
#[derive(Clone, Debug)]
enum Edit {
    Source(usize),
    Header,
    Remove(usize),
    Add,
    Nothing,
}

fn history() -> impl Strategy<Value = (usize, Vec<usize>, Vec<Vec<Edit>>)> {
    let edit = prop_oneof![
        4 => (0usize..12).prop_map(Edit::Source),
        1 => Just(Edit::Header),
        1 => (0usize..12).prop_map(Edit::Remove),
        1 => Just(Edit::Add),
        1 => Just(Edit::Nothing),
    ];
    (
        3usize..10,
        proptest::collection::vec(0usize..12, 0..6),
        proptest::collection::vec(proptest::collection::vec(edit, 1..4), 1..16),
    )
}

fn commits(files: usize, header_readers: &[usize], edits: &[Vec<Edit>]) -> Vec<Commit> {
    let mut commit = Commit {
        present: (0..files).collect(),
        source: (0..files).map(|n| (n, 1)).collect(),
        header: 1,
        reads_header: header_readers.iter().copied().collect(),
    };
    let mut next = files;
    let mut all = vec![commit.clone()];
    for step in edits {
        for edit in step {
            match edit {
                Edit::Source(n) if commit.present.contains(n) => {
                    *commit.source.get_mut(n).expect("present") += 1
                }
                Edit::Header => commit.header += 1,
                Edit::Remove(n) => {
                    commit.present.remove(n);
                }
                Edit::Add => {
                    commit.present.insert(next);
                    commit.source.insert(next, 1);
                    commit.reads_header.insert(next);
                    next += 1;
                }
                _ => {}
            }
        }
        all.push(commit.clone());
    }
    all
}

fn observed(actions: &BTreeMap<usize, Digest>, cached: &BTreeSet<Digest>) -> Vec<Observed> {
    actions
        .iter()
        .map(|(n, a)| Observed {
            identity: identity(*n),
            action: *a,
            succeeded: true,
            cached: cached.contains(a),
        })
        .collect()
}

/// What priming before `next` predicts from `state`: every entry whose action would change
/// (executed) or whose source is gone (unpredictable, as an overlay that no longer resolves).
fn prime(state: &LearnedState, next: &Commit) -> Priming {
    let mut predictions = Vec::new();
    for (identity, entry) in &state.entries {
        let n: usize = identity.outputs[0]["obj/".len()..identity.outputs[0].len() - 2]
            .parse()
            .expect("our own names");
        if !next.present.contains(&n) {
            predictions.push(Prediction {
                identity: identity.clone(),
                action: entry.action,
                status: "unpredictable".into(),
            });
        } else if next.action(n) != entry.action {
            predictions.push(Prediction {
                identity: identity.clone(),
                action: next.action(n),
                status: "executed".into(),
            });
        }
    }
    Priming { sources: F.hash_bytes(b"sources"), predictions }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn incremental_builds_accumulate_to_what_a_clean_build_teaches(
        (files, readers, edits) in history()
    ) {
        let commits = commits(files, &readers, &edits);
        let mut incremental = LearnedState::new("p");
        let mut previous: BTreeMap<usize, Digest> = BTreeMap::new();
        let mut removed_at: BTreeMap<usize, usize> = BTreeMap::new();
        for (k, commit) in commits.iter().enumerate() {
            // Priming, then the build: it asks only for actions it has not run before.
            if k > 0 {
                incremental.priming = Some(prime(&incremental, commit));
            }
            let primed: BTreeSet<Digest> = incremental
                .priming
                .iter()
                .flat_map(|p| &p.predictions)
                .filter(|p| p.status == "executed")
                .map(|p| p.action)
                .collect();
            let all = commit.actions();
            let rerun: BTreeMap<usize, Digest> = all
                .iter()
                .filter(|(n, a)| previous.get(n) != Some(a))
                .map(|(n, a)| (*n, *a))
                .collect();
            let update = incremental.update(&observed(&rerun, &primed), FORGET);
            // Every re-run action was primed (the model's predictions are exact), and none
            // primed was left unasked unless its identity was gone.
            prop_assert_eq!(update.summary.primed_hits as usize, rerun.values().filter(|a| primed.contains(a)).count());
            for n in previous.keys().filter(|n| !commit.present.contains(n)) {
                removed_at.entry(*n).or_insert(k);
            }
            previous = all.clone();

            // What clean build k alone would teach.
            let mut clean = LearnedState::new("p");
            clean.update(&observed(&all, &BTreeSet::new()), FORGET);
            for (identity, entry) in &clean.entries {
                prop_assert_eq!(
                    incremental.entries.get(identity).map(|e| e.action),
                    Some(entry.action),
                    "build {}: {}", k, identity
                );
            }
            // Anything more is an identity gone for fewer than FORGET builds.
            for identity in incremental.entries.keys().filter(|i| !clean.entries.contains_key(*i)) {
                let n: usize = identity.outputs[0]["obj/".len()..identity.outputs[0].len() - 2].parse().unwrap();
                let gone = removed_at.get(&n).copied();
                prop_assert!(
                    gone.is_some_and(|at| k - at < FORGET as usize),
                    "build {}: {} kept, removed at {:?}", k, identity, gone
                );
            }
        }
    }
}

#[test]
fn failures_and_predictions_never_asked_for_are_forgotten_after_n_builds_in_a_row() {
    let a = identity(1);
    let b = identity(2);
    let act = |n: u8| F.hash_bytes(&[n]);
    let ok = |i: &Identity, d| Observed {
        identity: i.clone(),
        action: d,
        succeeded: true,
        cached: false,
    };
    let failed = |i: &Identity, d| Observed {
        identity: i.clone(),
        action: d,
        succeeded: false,
        cached: false,
    };
    let mut state = LearnedState::new("p");
    state.update(&[ok(&a, act(1)), ok(&b, act(2))], 3);
    // `a` fails twice, then succeeds: its count starts again; it keeps its last good action
    // meanwhile.
    state.update(&[failed(&a, act(3))], 3);
    let update = state.update(&[failed(&a, act(4))], 3);
    assert_eq!(update.failed, std::slice::from_ref(&a));
    assert_eq!(state.entries[&a].action, act(1));
    assert_eq!(state.entries[&a].failures, 2);
    state.update(&[ok(&a, act(5))], 3);
    assert_eq!(state.entries[&a].failures, 0);
    // A failure after a success in the same build is no failure (a retry that worked).
    state.update(&[failed(&a, act(6)), ok(&a, act(7))], 3);
    assert_eq!((state.entries[&a].action, state.entries[&a].failures), (act(7), 0));
    for _ in 0..2 {
        state.update(&[failed(&a, act(8))], 3);
    }
    let update = state.update(&[failed(&a, act(8))], 3);
    assert_eq!(update.dropped, std::slice::from_ref(&a));
    assert!(!state.entries.contains_key(&a));
    // `b` is predicted and executed but never asked for (the build did not need it): kept.
    let executed = |status: &str| Priming {
        sources: act(0),
        predictions: vec![Prediction {
            identity: b.clone(),
            action: act(9),
            status: status.into(),
        }],
    };
    for _ in 0..5 {
        state.priming = Some(executed("executed"));
        assert_eq!(state.update(&[], 3).not_asked, std::slice::from_ref(&b));
    }
    assert_eq!(state.entries[&b].stale, 0);
    // `b` cannot be predicted (its source is gone) and is never asked for, three builds in a
    // row: dropped; a build without a priming counts nothing.
    for round in 0..3 {
        state.priming = Some(executed("unpredictable"));
        let update = state.update(&[], 3);
        assert_eq!(update.not_asked, std::slice::from_ref(&b));
        state.update(&[], 3);
        assert_eq!(state.entries.contains_key(&b), round < 2, "round {round}");
    }
    assert!(state.entries.is_empty());
}

#[test]
fn the_same_state_encodes_to_the_same_bytes_and_decodes_back() {
    let mut state = LearnedState::new("app");
    let act = |n: u8| F.hash_bytes(&[n]);
    let observed: Vec<Observed> = (0..20)
        .rev()
        .map(|n| Observed {
            identity: identity(n),
            action: act(n as u8),
            succeeded: true,
            cached: n % 2 == 0,
        })
        .collect();
    state.update(&observed, 10);
    state.sources = Some(act(100));
    state.priming = Some(Priming {
        sources: act(101),
        predictions: vec![Prediction {
            identity: identity(3),
            action: act(102),
            status: "cached".into(),
        }],
    });
    let bytes = state.encode(F);
    let mut shuffled = LearnedState::new("app");
    shuffled.update(&observed.iter().rev().cloned().collect::<Vec<_>>(), 10);
    shuffled.sources = state.sources;
    shuffled.priming = state.priming.clone();
    assert_eq!(shuffled.encode(F), bytes, "the order actions were observed in does not matter");
    assert_eq!(LearnedState::decode(F, "app", &bytes).unwrap(), state);
}
