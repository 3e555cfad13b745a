//! Learning from one build: what it asked for, the sources it saw, the state in the store.

use std::collections::{HashMap, HashSet};

use sa_cas::merkle::TreeLimits;
use sa_cas::{Blob, CasError, Digest, DigestFunction, Entry, EntryKey, Store};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, GenerateStats};
use serde_json::Value;

use crate::identity::Identity;
use crate::order::in_producer_order;
use crate::state::{DEFAULT_FORGET_AFTER, LearnedState, Observed, Update};

/// The name of the state in its ActionCache entry.
const OUTPUT: &str = "learned-state";

/// Options of [`learn`] and [`load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnConfig {
    /// Builds after which a failing or vanished identity is forgotten.
    pub forget_after: u32,
    /// Bounds on every tree walked.
    pub limits: TreeLimits,
    /// The largest state blob read from a store.
    pub max_state_bytes: u64,
}

impl Default for LearnConfig {
    fn default() -> LearnConfig {
        LearnConfig {
            forget_after: DEFAULT_FORGET_AFTER,
            limits: TreeLimits::default(),
            max_state_bytes: 256 << 20,
        }
    }
}

/// Why learning stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LearnError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] CasError),
    /// The state stored for the project cannot be used.
    #[error("{0}")]
    InvalidState(String),
    /// Generating the speculative actions failed.
    #[error("generating the speculative actions of {name:?}")]
    Generate {
        /// The project.
        name: String,
        /// The cause.
        #[source]
        source: Box<sa_generator::GenerateError>,
    },
    /// A recording or log line is not what its writer writes.
    #[error("line {line}: {reason}")]
    Line {
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One action a build asked for, before its identity is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The action.
    pub action: Digest,
    /// Whether it had a successful result.
    pub succeeded: bool,
    /// Whether that result was a cache hit.
    pub cached: bool,
}

/// The actions a recording of `sa proxy` holds (its lines as read), in order: every
/// `execute` (succeeded when its status is OK and its exit code 0) and every
/// `get_action_result` that found a result (a miss says nothing about the action). With
/// `mnemonics`, only lines whose `action_mnemonic` (Bazel's) is one of them.
pub fn recorded_from_proxy(
    function: DigestFunction,
    lines: &[Value],
    mnemonics: &[String],
) -> Result<Vec<Recorded>, LearnError> {
    let mut recorded = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        let wanted = mnemonics.is_empty()
            || line["action_mnemonic"].as_str().is_some_and(|m| mnemonics.iter().any(|w| w == m));
        if !wanted {
            continue;
        }
        let (succeeded, cached) = match line["kind"].as_str() {
            Some("execute") => {
                (line["status"] == 0 && line["exit_code"] == 0, line["cached"] == true)
            }
            Some("get_action_result") if line["status"] == 0 && line["cached"] == true => {
                (true, true)
            }
            _ => continue,
        };
        let bad = |reason: String| LearnError::Line { line: number + 1, reason };
        let text = line["action"].as_str().ok_or_else(|| bad("no \"action\"".into()))?;
        let action = Digest::parse(function, text).map_err(|e| bad(format!("\"action\": {e}")))?;
        recorded.push(Recorded { action, succeeded, cached });
    }
    Ok(recorded)
}

/// The actions a log of `sa record --log` holds: one `ACTION hit|miss` line per successful
/// compile.
pub fn recorded_from_log(
    function: DigestFunction,
    text: &str,
) -> Result<Vec<Recorded>, LearnError> {
    let mut recorded = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let bad = |reason: String| LearnError::Line { line: number + 1, reason };
        if line.trim().is_empty() {
            continue;
        }
        let mut words = line.split_ascii_whitespace();
        let (Some(action), Some(how), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad(format!("{line:?} is not \"ACTION hit|miss\"")));
        };
        let action = Digest::parse(function, action).map_err(|e| bad(e.to_string()))?;
        let cached = match how {
            "hit" => true,
            "miss" => false,
            other => return Err(bad(format!("{other:?} is neither hit nor miss"))),
        };
        recorded.push(Recorded { action, succeeded: true, cached });
    }
    Ok(recorded)
}

fn key(function: DigestFunction, name: &str) -> EntryKey {
    EntryKey::new(function, &["sa-learned-state", "v1", name], &[], OUTPUT)
}

/// The state stored for project `name`: `None` when nothing has been learned of it. A state
/// that the store cannot give back whole and valid is an error naming the entry, never a
/// silent fresh start (which would forget everything at the next save).
pub fn load(
    store: &(impl Store + ?Sized),
    name: &str,
    config: &LearnConfig,
) -> Result<Option<(Digest, LearnedState)>, LearnError> {
    let function = store.digest_function();
    let what = || format!("the learned state of {name:?}");
    match key(function, name).load(store, &what, config.max_state_bytes)? {
        Entry::Missing => Ok(None),
        Entry::Invalid(why) => Err(LearnError::InvalidState(why)),
        Entry::Found(digest, data) => LearnedState::decode(function, name, &data)
            .map(|state| Some((digest, state)))
            .map_err(|why| LearnError::InvalidState(format!("{} {digest}: {why}", what()))),
    }
}

/// Stores `state` as its project's; returns the blob's digest.
pub fn save(store: &(impl Store + ?Sized), state: &LearnedState) -> Result<Digest, CasError> {
    let function = store.digest_function();
    key(function, &state.name).store(store, Blob::new(function, state.encode(function)))
}

/// A recorded action left out: why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    /// The action.
    pub action: Digest,
    /// Why, with its cause chain.
    pub reason: String,
}

/// What [`learn`] did.
#[derive(Clone, Debug)]
pub struct Learned {
    /// The state as stored.
    pub state: LearnedState,
    /// Its blob.
    pub digest: Digest,
    /// What the build changed.
    pub update: Update,
    /// Generation's statistics (over every entry).
    pub generate: GenerateStats,
    /// Recorded actions whose identity could not be read (not learned).
    pub unreadable: Vec<LeftOut>,
    /// Entries forgotten because their action or input tree is gone from the store.
    pub gone: Vec<LeftOut>,
}

/// Learns from one build of project `name` that asked for `recorded` and saw the sources
/// `sources` (a Directory in `store`): loads the state, updates it
/// ([`LearnedState::update`]), generates the speculative actions of every entry against
/// `sources`, and stores the state. `invocation` names the build in its summary.
pub fn learn(
    store: &(impl Store + ?Sized),
    name: &str,
    invocation: &str,
    recorded: &[Recorded],
    sources: Digest,
    config: &LearnConfig,
) -> Result<Learned, LearnError> {
    let mut state = match load(store, name, config)? {
        Some((_, state)) => state,
        None => LearnedState::new(name),
    };
    let mut identities: HashMap<Digest, Identity> = HashMap::new();
    let mut unreadable = Vec::new();
    for r in recorded {
        if identities.contains_key(&r.action)
            || unreadable.iter().any(|u: &LeftOut| u.action == r.action)
        {
            continue;
        }
        match Identity::read(store, &r.action) {
            Ok(identity) => {
                identities.insert(r.action, identity);
            }
            Err(e) => {
                unreadable.push(LeftOut { action: r.action, reason: sa_cas::error_chain(&e) })
            }
        }
    }
    let observed: Vec<Observed> = recorded
        .iter()
        .filter_map(|r| {
            identities.get(&r.action).map(|identity| Observed {
                identity: identity.clone(),
                action: r.action,
                succeeded: r.succeeded,
                cached: r.cached,
            })
        })
        .collect();
    let mut update = state.update(&observed, config.forget_after);
    update.summary.invocation = invocation.to_owned();
    let number = state.builds;
    for entry in state.entries.values_mut().filter(|e| e.learned_in == number) {
        entry.sources = Some(sources);
    }
    let (generated, gone) = generate(store, &mut state, sources, config)?;
    update.summary.dropped += gone.len() as u64;
    state.sources = Some(sources);
    state.speculative_actions = Some(generated.digest);
    state.actions_index = generated.index;
    state.last_build = Some(update.summary.clone());
    let digest = save(store, &state)?;
    Ok(Learned { state, digest, update, generate: generated.stats, unreadable, gone })
}

/// Generates for every entry, producers first; entries whose Action or tree is gone from the
/// store are forgotten (and returned).
fn generate(
    store: &(impl Store + ?Sized),
    state: &mut LearnedState,
    sources: Digest,
    config: &LearnConfig,
) -> Result<(sa_generator::Generated, Vec<LeftOut>), LearnError> {
    let mut gone = Vec::new();
    // An entry whose Action cannot be read cannot be ordered: found first, in batches (one by
    // one only where a batch fails, so each failure names its Action).
    let mut readable = Vec::new();
    let actions = state.actions();
    let blobs = sa_cas::merkle::read_each(store, &actions);
    for (action, blob) in actions.into_iter().zip(blobs) {
        let decoded = blob
            .and_then(|data| sa_cas::DecodedAction::decode(store.digest_function(), &action, data));
        match decoded {
            Ok(_) => readable.push(action),
            Err(e) if matches!(e.root_cause(), CasError::NotFound(_) | CasError::Decode { .. }) => {
                gone.push(LeftOut { action, reason: sa_cas::error_chain(&e) })
            }
            Err(e) => return Err(e.into()),
        }
    }
    let ordered = in_producer_order(store, &readable, &config.limits)?;
    // Entries an incremental build did not re-run were recorded against older sources: a
    // declared input the build did not read (a header its compile does not include) may have
    // changed since, and is found in the snapshot the entry was learned from.
    let earlier: std::collections::BTreeSet<Digest> =
        state.entries.values().filter_map(|e| e.sources).filter(|s| *s != sources).collect();
    let input = GenerateInput {
        element: ElementTrees { name: state.name.clone(), sources: Some(sources), artifact: None },
        dependencies: Vec::new(),
        subactions: ordered.actions,
        earlier_sources: earlier.into_iter().collect(),
    };
    let generate_config =
        GenerateConfig { skip_broken_subactions: true, limits: config.limits, skip_index: false };
    let generated = sa_generator::generate(store, &input, &generate_config).map_err(|source| {
        LearnError::Generate { name: state.name.clone(), source: Box::new(source) }
    })?;
    gone.extend(
        generated
            .stats
            .skipped
            .iter()
            .map(|s| LeftOut { action: s.action, reason: s.reason.clone() }),
    );
    let forget: HashSet<Digest> = gone.iter().map(|g| g.action).collect();
    state.entries.retain(|_, entry| !forget.contains(&entry.action));
    Ok((generated, gone))
}
