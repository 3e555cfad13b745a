//! The learned state and its update rule, pure: no store, no clock.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sa_cas::{Digest, DigestFunction};
use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// The format name every encoded state carries.
pub const FORMAT: &str = "sa-learned-state v1";

/// Builds after which an identity that keeps failing, or keeps being predicted and not asked
/// for, is forgotten.
pub const DEFAULT_FORGET_AFTER: u32 = 10;

/// What is known of one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The newest action recorded with a successful result.
    pub action: Digest,
    /// The build (1 for the first learned) that recorded it last.
    pub learned_in: u64,
    /// The sources that build saw (set by [`crate::learn`]): the action's inputs are found
    /// there even after newer builds have moved past them without re-running it.
    pub sources: Option<Digest>,
    /// Builds in a row in which it ran and failed (reset by a success).
    pub failures: u32,
    /// Builds in a row in which `sa` could not predict it (an input's origin is gone) or its
    /// prediction failed, and the build did not ask for it: gone from the build.
    pub stale: u32,
}

/// One action the last priming adapted: its identity's recorded action changed (or could not
/// be resolved) under the sources it primed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// The identity.
    pub identity: Identity,
    /// The adapted action (the recorded one when it could not be completed).
    pub action: Digest,
    /// What became of it (`executed`, `cached`, `failed`, `unpredictable`, …).
    pub status: String,
}

/// What the last priming did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Priming {
    /// The sources it primed for.
    pub sources: Digest,
    /// Its predictions, in identity order.
    pub predictions: Vec<Prediction>,
}

/// What one learned build was, as `sa status` and `sa serve` say it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSummary {
    /// The build's invocation id (or the recording or log it was learned from).
    pub invocation: String,
    /// Distinct actions it asked for.
    pub actions: u64,
    /// Of them, remote cache hits.
    pub hits: u64,
    /// Of the hits, actions the last priming had made.
    pub primed_hits: u64,
    /// Identities whose newest action it changed or added.
    pub learned: u64,
    /// Identities it ran that failed.
    pub failed: u64,
    /// Identities forgotten after it.
    pub dropped: u64,
}

/// A project's learned state: for every action identity, the newest recorded action; the
/// speculative actions generated for all of them against the newest sources; what the last
/// build and the last priming did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnedState {
    /// The project's name (the key it is stored under).
    pub name: String,
    /// Builds learned so far.
    pub builds: u64,
    /// The sources the newest learned build saw.
    pub sources: Option<Digest>,
    /// Every identity known.
    pub entries: BTreeMap<Identity, Entry>,
    /// The `SpeculativeActions` of every entry's action, against `sources`.
    pub speculative_actions: Option<Digest>,
    /// Its actions index.
    pub actions_index: Option<Digest>,
    /// The newest learned build.
    pub last_build: Option<BuildSummary>,
    /// The newest priming since then.
    pub priming: Option<Priming>,
}

/// One action a build asked for, with its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The action's identity.
    pub identity: Identity,
    /// The action.
    pub action: Digest,
    /// Whether it had a successful result (a cache hit, or executed with exit code 0).
    pub succeeded: bool,
    /// Whether that result came from the cache.
    pub cached: bool,
}

/// What [`LearnedState::update`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// The build's summary (as stored in `last_build`).
    pub summary: BuildSummary,
    /// Identities added or given a newer action.
    pub learned: Vec<Identity>,
    /// Identities that ran and failed.
    pub failed: Vec<Identity>,
    /// Identities predicted by the last priming that the build did not ask for (counted
    /// stale unless the prediction was complete and ran).
    pub not_asked: Vec<Identity>,
    /// Identities forgotten.
    pub dropped: Vec<Identity>,
}

impl LearnedState {
    /// The state of a project nothing has been learned of.
    pub fn new(name: &str) -> LearnedState {
        LearnedState {
            name: name.to_owned(),
            builds: 0,
            sources: None,
            entries: BTreeMap::new(),
            speculative_actions: None,
            actions_index: None,
            last_build: None,
            priming: None,
        }
    }

    /// Learns from one build, given what it asked for in the order asked. An identity that
    /// succeeded takes its (last successful) action; one that failed keeps its action and
    /// counts a failure; one the last priming could not complete (or whose priming failed)
    /// that the build did not ask for counts a stale build; the others (not re-run, so their inputs did not change) stay as they
    /// are. An identity is forgotten once it has `forget_after` failures or stale builds in a
    /// row. The priming is consumed: it was for this build.
    pub fn update(&mut self, build: &[Observed], forget_after: u32) -> Update {
        self.builds += 1;
        let number = self.builds;
        let mut succeeded: BTreeMap<&Identity, Digest> = BTreeMap::new();
        let mut failed: BTreeSet<&Identity> = BTreeSet::new();
        let mut asked: HashSet<&Digest> = HashSet::new();
        let mut hit: HashSet<&Digest> = HashSet::new();
        for observed in build {
            asked.insert(&observed.action);
            if observed.succeeded {
                succeeded.insert(&observed.identity, observed.action);
                failed.remove(&observed.identity);
                if observed.cached {
                    hit.insert(&observed.action);
                }
            } else if !succeeded.contains_key(&observed.identity) {
                failed.insert(&observed.identity);
            }
        }
        let priming = self.priming.take();
        let predicted: Vec<&Prediction> = priming.iter().flat_map(|p| &p.predictions).collect();
        let primed: HashSet<&Digest> = predicted
            .iter()
            .filter(|p| p.status == "executed" || p.status == "cached")
            .map(|p| &p.action)
            .collect();
        let mut update = Update::default();
        for (identity, action) in &succeeded {
            let entry =
                Entry { action: *action, learned_in: number, sources: None, failures: 0, stale: 0 };
            if self.entries.get(*identity).is_none_or(|e| e.action != *action) {
                update.learned.push((*identity).clone());
            }
            self.entries.insert((*identity).clone(), entry);
        }
        for identity in &failed {
            if let Some(entry) = self.entries.get_mut(*identity) {
                entry.failures += 1;
            }
            update.failed.push((*identity).clone());
        }
        for prediction in predicted {
            let identity = &prediction.identity;
            if succeeded.contains_key(identity) || failed.contains(identity) {
                continue;
            }
            update.not_asked.push(identity.clone());
            // A prediction that was complete and ran is a true action the build did not need
            // (Bazel and make re-run a compile only when an input it read changed, not when a
            // header it could read did): nothing says the identity is gone. One that could not
            // be completed (its source is gone) or failed is a sign that it is.
            if matches!(prediction.status.as_str(), "executed" | "cached" | "accepted") {
                continue;
            }
            if let Some(entry) = self.entries.get_mut(identity) {
                entry.stale += 1;
            }
        }
        self.entries.retain(|identity, entry| {
            let keep = entry.failures < forget_after && entry.stale < forget_after;
            if !keep {
                update.dropped.push(identity.clone());
            }
            keep
        });
        update.summary = BuildSummary {
            invocation: String::new(),
            actions: asked.len() as u64,
            hits: hit.len() as u64,
            primed_hits: hit.iter().filter(|a| primed.contains(**a)).count() as u64,
            learned: update.learned.len() as u64,
            failed: update.failed.len() as u64,
            dropped: update.dropped.len() as u64,
        };
        update
    }

    /// Every entry's action, in identity order.
    pub fn actions(&self) -> Vec<Digest> {
        self.entries.values().map(|e| e.action).collect()
    }

    /// Encodes the state (JSON, keys and entries in a fixed order: the same state gives the
    /// same bytes).
    pub fn encode(&self, function: DigestFunction) -> Vec<u8> {
        let text = |d: &Option<Digest>| d.map(|d| d.to_string());
        let wire = Wire {
            format: FORMAT.into(),
            digest_function: function.name().into(),
            name: self.name.clone(),
            builds: self.builds,
            sources: text(&self.sources),
            speculative_actions: text(&self.speculative_actions),
            actions_index: text(&self.actions_index),
            entries: self
                .entries
                .iter()
                .map(|(identity, e)| WireEntry {
                    working_directory: identity.working_directory.clone(),
                    outputs: identity.outputs.clone(),
                    action: e.action.to_string(),
                    learned_in: e.learned_in,
                    sources: e.sources.map(|d| d.to_string()),
                    failures: e.failures,
                    stale: e.stale,
                })
                .collect(),
            last_build: self.last_build.clone(),
            priming: self.priming.as_ref().map(|p| WirePriming {
                sources: p.sources.to_string(),
                predictions: p
                    .predictions
                    .iter()
                    .map(|p| WirePrediction {
                        working_directory: p.identity.working_directory.clone(),
                        outputs: p.identity.outputs.clone(),
                        action: p.action.to_string(),
                        status: p.status.clone(),
                    })
                    .collect(),
            }),
        };
        let mut bytes = serde_json::to_vec(&wire).expect("a state always serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Decodes a state that claims to be `name`'s, checking everything: the format, the digest
    /// function, the name, every digest, identities in strictly increasing order (each once).
    pub fn decode(
        function: DigestFunction,
        name: &str,
        data: &[u8],
    ) -> Result<LearnedState, String> {
        let wire: Wire =
            serde_json::from_slice(data).map_err(|e| format!("not a learned state: {e}"))?;
        if wire.format != FORMAT {
            return Err(format!("format {:?}, not {FORMAT:?}", wire.format));
        }
        if wire.digest_function != function.name() {
            return Err(format!(
                "digest function {}, the store's is {function}",
                wire.digest_function
            ));
        }
        if wire.name != name {
            return Err(format!("the state of {:?}, not of {name:?}", wire.name));
        }
        let digest = |what: &str, text: &str| {
            Digest::parse(function, text).map_err(|e| format!("{what} {text:?}: {e}"))
        };
        let optional = |what: &str, text: &Option<String>| {
            text.as_deref().map(|t| digest(what, t)).transpose()
        };
        let mut entries = BTreeMap::new();
        let mut previous: Option<Identity> = None;
        for (position, e) in wire.entries.into_iter().enumerate() {
            let identity = Identity { working_directory: e.working_directory, outputs: e.outputs };
            if previous.as_ref().is_some_and(|p| *p >= identity) {
                return Err(format!("entry {position} ({identity}) is out of order or repeated"));
            }
            let action = digest(&format!("entry {position} ({identity}): action"), &e.action)?;
            let sources = e
                .sources
                .as_deref()
                .map(|t| digest(&format!("entry {position} ({identity}): sources"), t))
                .transpose()?;
            previous = Some(identity.clone());
            entries.insert(
                identity,
                Entry {
                    action,
                    learned_in: e.learned_in,
                    sources,
                    failures: e.failures,
                    stale: e.stale,
                },
            );
        }
        let priming = match wire.priming {
            None => None,
            Some(p) => Some(Priming {
                sources: digest("priming sources", &p.sources)?,
                predictions: p
                    .predictions
                    .into_iter()
                    .enumerate()
                    .map(|(position, p)| {
                        Ok(Prediction {
                            action: digest(&format!("prediction {position}: action"), &p.action)?,
                            identity: Identity {
                                working_directory: p.working_directory,
                                outputs: p.outputs,
                            },
                            status: p.status,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            }),
        };
        Ok(LearnedState {
            name: wire.name,
            builds: wire.builds,
            sources: optional("sources", &wire.sources)?,
            entries,
            speculative_actions: optional("speculative_actions", &wire.speculative_actions)?,
            actions_index: optional("actions_index", &wire.actions_index)?,
            last_build: wire.last_build,
            priming,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    digest_function: String,
    name: String,
    builds: u64,
    sources: Option<String>,
    speculative_actions: Option<String>,
    actions_index: Option<String>,
    entries: Vec<WireEntry>,
    last_build: Option<BuildSummary>,
    priming: Option<WirePriming>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry {
    working_directory: String,
    outputs: Vec<String>,
    action: String,
    learned_in: u64,
    sources: Option<String>,
    failures: u32,
    stale: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePriming {
    sources: String,
    predictions: Vec<WirePrediction>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePrediction {
    working_directory: String,
    outputs: Vec<String>,
    action: String,
    status: String,
}
