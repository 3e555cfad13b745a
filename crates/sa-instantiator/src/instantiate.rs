//! Resolution of overlays and memoized rewriting of input trees.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use rayon::prelude::*;
use sa_cas::merkle::{self, DirEntry, Forest, TreeLimits, join};
use sa_cas::{Blob, CasError, DecodedAction, Digest, Store};
use sa_generator::actions_index::{IndexError, Lookup};
use sa_generator::graph::Graph;
use sa_generator::model::{Origin, OriginKind, SuffixChooser, compare_for};
use sa_generator::{ActionsIndex, IndexedAction, Progress};

use crate::splice;

/// The state of one element of the build about to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElementState {
    /// The element's name.
    pub name: String,
    /// Root Directory of its current sources, where known.
    pub sources: Option<Digest>,
    /// Root Directory of its current artifact, once built.
    pub artifact: Option<Digest>,
    /// Its cache key at the previous build.
    pub previous_key: Option<String>,
    /// Its cache key now.
    pub current_key: Option<String>,
    /// The `SpeculativeActions` generated at its previous build (for its `artifact_overlays`).
    pub previous_speculative_actions: Option<Digest>,
    /// The actions index of `previous_speculative_actions` as the previous build's graph names
    /// it (trusted, as the graph is); without one, an index found through the ActionCache is
    /// checked against the blob before use.
    pub previous_actions_index: Option<Digest>,
}

impl ElementState {
    /// The state of every element of `next`, with its previous key, `SpeculativeActions` and
    /// actions index from `previous` (the graph `sa generate --output` wrote): the one mapping
    /// from two builds' graphs to the instantiator.
    pub fn from_graphs(next: &Graph, previous: &Graph) -> Vec<ElementState> {
        next.elements
            .iter()
            .map(|e| {
                let before = previous.get(&e.name);
                ElementState {
                    name: e.name.clone(),
                    sources: e.sources,
                    artifact: e.artifact,
                    previous_key: before.and_then(|b| b.cache_key.clone()),
                    current_key: e.cache_key.clone(),
                    previous_speculative_actions: before.and_then(|b| b.speculative_actions),
                    previous_actions_index: before.and_then(|b| b.actions_index),
                }
            })
            .collect()
    }

    fn unchanged(&self) -> bool {
        matches!((&self.previous_key, &self.current_key), (Some(p), Some(c)) if p == c)
    }
}

/// Options of the [`Instantiator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstantiateConfig {
    /// Bounds on every tree walked.
    pub limits: TreeLimits,
    /// Share rewritten subtrees between actions (off only to test that it changes nothing).
    pub memoize: bool,
    /// Read each element's `SpeculativeActions` through its stored [`ActionsIndex`] (built and
    /// stored on first use); off, the blob itself is decoded every time and nothing is stored
    /// beside the instantiated actions.
    pub index: bool,
}

impl Default for InstantiateConfig {
    fn default() -> Self {
        InstantiateConfig { limits: TreeLimits::default(), memoize: true, index: true }
    }
}

/// How the elements' [`ActionsIndex`]es were found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Loaded from the store.
    pub loaded: usize,
    /// Built from the blob because none was stored.
    pub built: usize,
    /// Built from the blob because the stored one was unusable (each also a warning).
    pub rebuilt: usize,
}

/// The outcome for one speculative action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstantiatedAction {
    /// The recorded action.
    pub base: Digest,
    /// The adapted action (equal to `base` when nothing changed; then nothing was written).
    pub action: Digest,
    /// Whether every overlay that needed resolving resolved.
    pub complete: bool,
    /// Overlays that replaced a digest with another.
    pub applied: usize,
    /// Overlays resolved to the digest they already had.
    pub unchanged: usize,
    /// Overlays of dependencies whose cache key did not change.
    pub skipped: usize,
    /// Overlays that could not be resolved (the action is then incomplete).
    pub unresolved: usize,
    /// Why, for the first few unresolved overlays.
    pub unresolved_reasons: Vec<String>,
}

/// Why instantiation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstantiateError {
    /// The inputs contradict each other.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The element's `SpeculativeActions` is missing or corrupt.
    #[error("SpeculativeActions {digest} of element {element:?}")]
    SpeculativeActions {
        /// The element.
        element: String,
        /// The blob.
        digest: Digest,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
    /// An overlay cannot be used.
    #[error("overlay {index} of action {action} of element {element:?}: {reason}")]
    Overlay {
        /// The element.
        element: String,
        /// The base action.
        action: Digest,
        /// The overlay's position.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A recorded action or its input tree is missing or corrupt.
    #[error("action {action} of element {element:?}")]
    Action {
        /// The element.
        element: String,
        /// The base action.
        action: Digest,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
    /// A current source or artifact tree, or a previous SpeculativeActions, is unreadable.
    #[error("{what} {root} of element {element:?}")]
    Tree {
        /// The element.
        element: String,
        /// "sources", "artifact" or "previous SpeculativeActions".
        what: &'static str,
        /// The blob.
        root: Digest,
        /// The cause.
        #[source]
        source: Arc<CasError>,
    },
    /// A store operation failed.
    #[error("{what}")]
    Store {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Resolution {
    Replace(Digest),
    Skip,
    Unresolved(String),
}

/// A rewritten subtree: the directory, its path, and the action's replacement choices for the
/// changing digests it holds (target, overlay ids). Equal keys rewrite to equal digests.
/// A rewritten directory is shared between actions when its digest, its path and the overlay
/// groups of the changing digests below it are the same.
type MemoKey = (Digest, String, Vec<(Digest, u32)>);

/// One action's overlays for one target digest (sorted ids), interned per element so that
/// equal groups share an id (the memo key) and a chooser.
#[derive(Debug)]
struct Group {
    id: u32,
    /// The same allocation as the group's key in [`ElementWork`]'s interner.
    ids: Arc<[u32]>,
    chooser: OnceLock<SuffixChooser>,
}

/// Groups with more overlays than this choose through a [`SuffixChooser`].
const CHOOSER_THRESHOLD: usize = 8;

/// What one action's rewrite replaces: each changing target with its overlay group, and the
/// changing targets below the input root (in target order, with their groups). Each directory's
/// own list is its parent's, filtered: see [`Instantiator::rewrite`].
struct Changes {
    groups: HashMap<Digest, Arc<Group>>,
    at_root: Vec<(Digest, u32)>,
}

type Shared<T> = Arc<OnceLock<Result<Arc<T>, Arc<CasError>>>>;

/// Instantiates elements' speculative actions against the current state of a build. Holds
/// caches shared by every element: current trees' path indexes, dependencies' previous
/// `artifact_overlays`, and the map from base to instantiated actions (for ACTION overlays).
#[derive(Debug)]
pub struct Instantiator<'s, S: Store + ?Sized> {
    store: &'s S,
    config: InstantiateConfig,
    elements: HashMap<String, ElementState>,
    instantiated: DashMap<Digest, Digest>,
    path_indexes: DashMap<Digest, Shared<HashMap<String, Digest>>>,
    artifact_overlays: DashMap<Digest, Shared<HashMap<Digest, Vec<Origin>>>>,
    /// Entries of the input roots each element's actions walk, for the run's expansion limit.
    expanded: Mutex<HashMap<String, u64>>,
    index_stats: Mutex<IndexStats>,
}

/// An element's distinct overlays, by id: each origin with the digest it replaces.
type Overlays = Vec<(Origin, Digest)>;

/// Each overlay's resolution, once known.
type Resolutions = Vec<OnceLock<Resolution>>;

struct Planned {
    base: Digest,
    /// Overlay ids (into the element's interned overlays), sorted by target digest then id:
    /// each id names its target, so runs of equal targets are the groups (4 bytes an overlay,
    /// where a map per action cost a hundred on large elements).
    overlay_ids: Vec<u32>,
    /// The input root and the Action blob; `None` for an action no overlay can change (see
    /// [`Instantiator::resolve_ahead`]), whose Action and tree are never read.
    tree: Option<(Digest, Bytes)>,
    /// Producers (base digests) of this element this action waits for.
    producers: Vec<usize>,
}

/// What one element's rewrite shares between its actions.
struct ElementWork<'f> {
    forest: &'f Forest,
    overlays: Vec<(Origin, Digest)>,
    resolutions: Vec<OnceLock<Resolution>>,
    /// Each directory of the forest by a dense id (4 bytes where a digest takes 48: a large
    /// element's forest holds millions of entries).
    dir_ids: HashMap<Digest, u32>,
    /// Directory id → ids of the directories it appears in (within this element's input trees).
    parents: Vec<Vec<u32>>,
    /// File digest → ids of the directories that hold it directly, for the digests that may
    /// change (the others never need their ancestors).
    holders: HashMap<Digest, Vec<u32>>,
    /// Changing digest → ids of every directory whose subtree holds it, sorted.
    ancestors: DashMap<Digest, Arc<Vec<u32>>>,
    raw_dirs: DashMap<Digest, Bytes>,
    memo: DashMap<MemoKey, Digest>,
    groups: DashMap<Arc<[u32]>, Arc<Group>>,
    next_group: std::sync::atomic::AtomicU32,
    written: Mutex<Vec<Blob>>,
}

impl<'s, S: Store + ?Sized> Instantiator<'s, S> {
    /// An instantiator over the build's elements (every element an overlay may name).
    pub fn new(
        store: &'s S,
        elements: Vec<ElementState>,
        config: InstantiateConfig,
    ) -> Result<Self, InstantiateError> {
        let function = store.digest_function();
        let mut map = HashMap::new();
        for element in elements {
            let digests = element
                .sources
                .iter()
                .chain(&element.artifact)
                .chain(&element.previous_speculative_actions);
            for digest in digests {
                if digest.function() != function {
                    return Err(InstantiateError::InvalidInput(format!(
                        "element {:?}: digest {digest} is {}, the store uses {function}",
                        element.name,
                        digest.function()
                    )));
                }
            }
            if element.name.is_empty() {
                return Err(InstantiateError::InvalidInput("an element has an empty name".into()));
            }
            let name = element.name.clone();
            if map.insert(name.clone(), element).is_some() {
                return Err(InstantiateError::InvalidInput(format!(
                    "element {name:?} is listed twice"
                )));
            }
        }
        Ok(Instantiator {
            store,
            config,
            elements: map,
            instantiated: DashMap::new(),
            path_indexes: DashMap::new(),
            artifact_overlays: DashMap::new(),
            expanded: Mutex::new(HashMap::new()),
            index_stats: Mutex::new(IndexStats::default()),
        })
    }

    /// How the elements' actions indexes were found so far.
    pub fn index_stats(&self) -> IndexStats {
        *self.index_stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The instantiated (complete) action for a base action, once known.
    pub fn instantiated(&self, base: &Digest) -> Option<Digest> {
        self.instantiated.get(base).map(|d| *d)
    }

    /// Instantiates every action of `element`'s previous `SpeculativeActions`; stores new
    /// Directories and Actions; returns one outcome per action, in the blob's order.
    pub fn instantiate_element(
        &self,
        element: &str,
        speculative_actions: &Digest,
    ) -> Result<Vec<InstantiatedAction>, InstantiateError> {
        self.instantiate_element_observed(element, speculative_actions, &|_| {})
    }

    /// [`Instantiator::instantiate_element`], telling `progress` how many actions the element
    /// has once they are decoded, and as each is instantiated (from any thread).
    pub fn instantiate_element_observed(
        &self,
        element: &str,
        speculative_actions: &Digest,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Vec<InstantiatedAction>, InstantiateError> {
        if !self.elements.contains_key(element) {
            return Err(InstantiateError::InvalidInput(format!("unknown element {element:?}")));
        }
        let (overlays, actions) = self.actions_index(element, speculative_actions)?.into_parts();
        progress(Progress::Planned(actions.len()));
        let resolutions = self.resolve_ahead(element, &overlays, &actions)?;
        let planned = self.plan(element, &overlays, actions, &resolutions)?;
        let forest = self.fetch_input_trees(element, &planned)?;
        let work = ElementWork::new(&forest, overlays, resolutions);
        self.run_waves(element, &work, &planned, progress)
    }

    /// The element's `SpeculativeActions` as an [`ActionsIndex`]: the stored one (with
    /// [`InstantiateConfig::index`]), or one decoded from the blob, one action at a time (a large
    /// element's blob holds millions of overlays), then stored for the next run.
    fn actions_index(
        &self,
        element: &str,
        speculative_actions: &Digest,
    ) -> Result<ActionsIndex, InstantiateError> {
        let function = self.store.digest_function();
        let sa_error = |source| InstantiateError::SpeculativeActions {
            element: element.into(),
            digest: *speculative_actions,
            source: Box::new(source),
        };
        let store_error = |what: &str, source| InstantiateError::Store {
            what: format!("{what} the actions index of element {element:?}"),
            source: Box::new(source),
        };
        let mut rebuilding = false;
        let mut blob = None;
        if self.config.index {
            let named = self
                .elements
                .get(element)
                .filter(|state| state.previous_speculative_actions == Some(*speculative_actions))
                .and_then(|state| state.previous_actions_index);
            let lookup = match named {
                // The graph binds it to the blob: used as it is.
                Some(index) => ActionsIndex::load_named(self.store, speculative_actions, &index),
                // Whoever can write the ActionCache chooses this one: checked against the blob.
                None => ActionsIndex::load(self.store, speculative_actions),
            }
            .map_err(|source| store_error("looking up", source))?;
            let lookup = match (lookup, named) {
                (Lookup::Found(index), None) => {
                    let data = self.store.read_blob(speculative_actions).map_err(sa_error)?;
                    let checked = index.check_against(function, &data);
                    blob = Some(data);
                    match checked {
                        Ok(()) => Lookup::Found(index),
                        Err(reason) => Lookup::Invalid(format!(
                            "the actions index in the ActionCache for {speculative_actions} does \
                             not match the blob: {reason}"
                        )),
                    }
                }
                (lookup, _) => lookup,
            };
            match lookup {
                Lookup::Found(index) => {
                    self.count_index(|stats| stats.loaded += 1);
                    return Ok(index);
                }
                Lookup::Missing => {}
                Lookup::Invalid(reason) => {
                    tracing::warn!("element {element:?}: {reason}; rebuilding it");
                    rebuilding = true;
                }
            }
        }
        let blob = match blob {
            Some(blob) => blob,
            None => self.store.read_blob(speculative_actions).map_err(sa_error)?,
        };
        let index = ActionsIndex::from_speculative_actions(function, *speculative_actions, &blob)
            .map_err(|err| match err {
            IndexError::Decode(source) => sa_error(CasError::Decode {
                what: "SpeculativeActions",
                digest: *speculative_actions,
                source,
            }),
            IndexError::Base { source, .. } => sa_error(*source),
            IndexError::Overlay { action, index, source } => InstantiateError::Overlay {
                element: element.into(),
                action,
                index,
                reason: source.to_string(),
            },
        })?;
        if self.config.index {
            index.store(self.store).map_err(|source| store_error("storing", source))?;
            self.count_index(
                |stats| if rebuilding { stats.rebuilt += 1 } else { stats.built += 1 },
            );
        }
        Ok(index)
    }

    fn count_index(&self, count: impl FnOnce(&mut IndexStats)) {
        count(&mut self.index_stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Resolves, before any tree is read, every overlay that does not wait for a producer of
    /// this element (those resolve in [`Instantiator::run_waves`], after their producer). An
    /// action none of whose overlays replaces a digest, and none waiting, is then known to be
    /// unchanged: [`Instantiator::plan`] reads neither its Action nor its input tree, so a
    /// one-file edit costs what the actions holding that file cost.
    fn resolve_ahead(
        &self,
        element: &str,
        overlays: &Overlays,
        actions: &[IndexedAction],
    ) -> Result<Resolutions, InstantiateError> {
        let bases: HashSet<Digest> = actions.iter().map(|a| a.base).collect();
        let resolutions: Resolutions = (0..overlays.len()).map(|_| OnceLock::new()).collect();
        let outcomes: Vec<Result<(), InstantiateError>> = overlays
            .par_iter()
            .zip(&resolutions)
            .map(|((origin, target), cell)| {
                if origin.producer.is_some_and(|p| bases.contains(&p)) {
                    return Ok(());
                }
                let resolution = self.resolve(element, origin, target, 0)?;
                let _ = cell.set(resolution);
                Ok(())
            })
            .collect();
        outcomes.into_iter().collect::<Result<(), _>>()?;
        Ok(resolutions)
    }

    /// Each action's sorted overlay ids and the producers it waits for; and, for an action an
    /// overlay may change, its base Action (read in batches) and input root.
    fn plan(
        &self,
        element: &str,
        overlays: &Overlays,
        actions: Vec<IndexedAction>,
        resolutions: &Resolutions,
    ) -> Result<Vec<Planned>, InstantiateError> {
        let may_change = |action: &IndexedAction| {
            action
                .overlays
                .iter()
                .any(|&id| may_replace(resolutions[id as usize].get(), &overlays[id as usize].1))
        };
        let changing: Vec<bool> = actions.par_iter().map(may_change).collect();
        let to_read: Vec<Digest> =
            actions.iter().zip(&changing).filter(|(_, c)| **c).map(|(a, _)| a.base).collect();
        let mut raws = merkle::read_each(self.store, &to_read).into_iter();
        let position: HashMap<Digest, usize> =
            actions.iter().enumerate().map(|(i, a)| (a.base, i)).collect();
        let mut planned = Vec::with_capacity(actions.len());
        for (action, changing) in actions.into_iter().zip(changing) {
            // Ascending ids are already in (target, id) order: the index's table is sorted by
            // target first.
            let IndexedAction { base, overlays: overlay_ids } = action;
            debug_assert!(overlay_ids.windows(2).all(|w| {
                (overlays[w[0] as usize].1, w[0]) < (overlays[w[1] as usize].1, w[1])
            }));
            let mut producers: Vec<usize> = overlay_ids
                .iter()
                .filter_map(|id| overlays[*id as usize].0.producer)
                .filter_map(|p| position.get(&p).copied())
                .collect();
            producers.sort_unstable();
            producers.dedup();
            let tree = if changing {
                let raw = raws.next().expect("one read per action that may change");
                Some(self.input_root(element, &base, raw)?)
            } else {
                None
            };
            planned.push(Planned { base, overlay_ids, tree, producers });
        }
        Ok(planned)
    }

    /// An Action read for rewriting: its input root and its bytes.
    fn input_root(
        &self,
        element: &str,
        base: &Digest,
        raw: Result<Bytes, CasError>,
    ) -> Result<(Digest, Bytes), InstantiateError> {
        let action_error = |source| InstantiateError::Action {
            element: element.into(),
            action: *base,
            source: Box::new(source),
        };
        let raw = raw.map_err(action_error)?;
        let root = DecodedAction::decode(self.store.digest_function(), base, raw.clone())
            .map_err(action_error)?
            .input_root;
        Ok((root, raw))
    }

    /// Every input tree of the element's actions, fetched at once, and bounded: each action's
    /// rewrite may walk its whole input root, so the total over the element's actions, and over
    /// the run (each element counted once, whatever the waves), is checked.
    fn fetch_input_trees(
        &self,
        element: &str,
        planned: &[Planned],
    ) -> Result<Forest, InstantiateError> {
        let read: Vec<(&Planned, Digest)> =
            planned.iter().filter_map(|p| p.tree.as_ref().map(|(root, _)| (p, *root))).collect();
        let roots: Vec<Digest> = read.iter().map(|(_, root)| *root).collect();
        let fetched = merkle::fetch_forest_partial(self.store, &roots, &self.config.limits)
            .map_err(|source| InstantiateError::Store {
                what: format!("input trees of element {element:?}"),
                source: Box::new(source),
            })?;
        if let Some((position, source)) = fetched.broken.into_iter().next() {
            let base = read[position].0.base;
            return Err(InstantiateError::Action {
                element: element.into(),
                action: base,
                source: Box::new(source.context(format!("input root of Action {base}"))),
            });
        }
        let forest = fetched.forest;
        let expanded =
            roots.iter().fold(0u64, |sum, root| sum.saturating_add(forest.expansion(root).entries));
        let run_total = {
            let mut counted = self.expanded.lock().unwrap_or_else(|e| e.into_inner());
            counted.insert(element.to_owned(), expanded);
            counted.values().fold(0u64, |sum, n| sum.saturating_add(*n))
        };
        let describe =
            || format!("the input roots of element {element:?} ({} actions)", roots.len());
        self.config
            .limits
            .check_expanded(expanded, describe)
            .and_then(|()| {
                self.config.limits.check_expanded(run_total, || {
                    format!("the input roots of this run's elements (up to {element:?})")
                })
            })
            .map_err(|source| InstantiateError::Store {
                what: format!("input trees of element {element:?}"),
                source: Box::new(source),
            })?;
        Ok(forest)
    }

    /// Rewrites the actions in waves: an action runs after the producers it names (ACTION
    /// overlays) have run; each wave's blobs are stored before the next.
    fn run_waves(
        &self,
        element: &str,
        work: &ElementWork<'_>,
        planned: &[Planned],
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Vec<InstantiatedAction>, InstantiateError> {
        let mut level = vec![0usize; planned.len()];
        for i in 0..planned.len() {
            level[i] = planned[i]
                .producers
                .iter()
                .filter(|&&p| p != i)
                .map(|&p| level[p] + 1)
                .max()
                .unwrap_or(0);
        }
        let waves = level.iter().copied().max().map_or(0, |m| m + 1);
        let mut outcomes: Vec<Option<InstantiatedAction>> = vec![None; planned.len()];
        for wave in 0..waves {
            let members: Vec<usize> = (0..planned.len()).filter(|&i| level[i] == wave).collect();
            let results: Vec<Result<InstantiatedAction, InstantiateError>> = members
                .par_iter()
                .map(|&i| {
                    let outcome = self.instantiate_one(element, work, &planned[i]);
                    progress(Progress::Done(1));
                    outcome
                })
                .collect();
            self.flush(element, work)?;
            for (&i, result) in members.iter().zip(results) {
                let outcome = result?;
                if outcome.complete {
                    self.instantiated.insert(outcome.base, outcome.action);
                }
                outcomes[i] = Some(outcome);
            }
        }
        Ok(outcomes.into_iter().map(|o| o.expect("every action is in one wave")).collect())
    }

    /// Writes the blobs the element's rewrites produced that the store lacks.
    fn flush(&self, element: &str, work: &ElementWork<'_>) -> Result<(), InstantiateError> {
        let mut blobs =
            std::mem::take(&mut *work.written.lock().expect("no panics while holding the lock"));
        if blobs.is_empty() {
            return Ok(());
        }
        blobs.sort_unstable_by(|a, b| a.digest().cmp(b.digest()));
        blobs.dedup_by(|a, b| a.digest() == b.digest());
        let store_error = |source| InstantiateError::Store {
            what: format!("storing the instantiated actions of element {element:?}"),
            source: Box::new(source),
        };
        let digests: Vec<Digest> = blobs.iter().map(|b| *b.digest()).collect();
        let missing: HashSet<Digest> =
            self.store.find_missing(&digests).map_err(store_error)?.into_iter().collect();
        blobs.retain(|b| missing.contains(b.digest()));
        merkle::write_in_batches(self.store, &blobs).map_err(store_error)
    }

    fn instantiate_one(
        &self,
        element: &str,
        work: &ElementWork<'_>,
        planned: &Planned,
    ) -> Result<InstantiatedAction, InstantiateError> {
        let (mut outcome, changing) = self.resolve_overlays(element, work, planned)?;
        if changing.is_empty() {
            return Ok(outcome);
        }
        let action_error = |source: CasError| InstantiateError::Action {
            element: element.into(),
            action: planned.base,
            source: Box::new(source),
        };
        let Some((base_root, raw)) = &planned.tree else {
            return Err(InstantiateError::InvalidInput(format!(
                "action {} of element {element:?} was planned unchanged but an overlay changes it",
                planned.base
            )));
        };
        let changes = work.changes(&changing, base_root);
        let root = self
            .rewrite(work, &changes, base_root, String::new(), changes.at_root.clone())
            .map_err(|e| match e {
                RewriteError::Store(source) => InstantiateError::Action {
                    element: element.into(),
                    action: planned.base,
                    source,
                },
                RewriteError::Splice(directory, reason) => action_error(
                    CasError::Malformed { what: "Directory", digest: directory, reason }
                        .context(format!("input root {base_root}")),
                ),
            })?;
        if root == *base_root {
            return Ok(outcome);
        }
        let action = splice::rewrite_action(raw, &root).map_err(|reason| {
            action_error(CasError::Malformed { what: "Action", digest: planned.base, reason })
        })?;
        let blob = Blob::new(self.store.digest_function(), action);
        outcome.action = *blob.digest();
        work.written.lock().expect("no panics while holding the lock").push(blob);
        Ok(outcome)
    }

    /// Resolves the action's overlays (each distinct one once per element) and counts them;
    /// returns the outcome so far and the targets that change, each with its overlays.
    fn resolve_overlays<'w>(
        &self,
        element: &str,
        work: &ElementWork<'_>,
        planned: &'w Planned,
    ) -> Result<(InstantiatedAction, BTreeMap<Digest, &'w [u32]>), InstantiateError> {
        let mut outcome = InstantiatedAction {
            base: planned.base,
            action: planned.base,
            complete: true,
            applied: 0,
            unchanged: 0,
            skipped: 0,
            unresolved: 0,
            unresolved_reasons: Vec::new(),
        };
        let mut changing: BTreeMap<Digest, &[u32]> = BTreeMap::new();
        let same_target =
            |a: &u32, b: &u32| work.overlays[*a as usize].1 == work.overlays[*b as usize].1;
        for ids in planned.overlay_ids.chunk_by(same_target) {
            let target = &work.overlays[ids[0] as usize].1;
            for &id in ids {
                let resolution = match work.resolutions[id as usize].get() {
                    Some(r) => r.clone(),
                    None => {
                        let (origin, target) = &work.overlays[id as usize];
                        let r = self.resolve(element, origin, target, 0)?;
                        work.resolutions[id as usize].get_or_init(|| r).clone()
                    }
                };
                match resolution {
                    Resolution::Replace(new) if new != *target => {
                        outcome.applied += 1;
                        changing.insert(*target, ids);
                    }
                    Resolution::Replace(_) => outcome.unchanged += 1,
                    Resolution::Skip => outcome.skipped += 1,
                    Resolution::Unresolved(reason) => {
                        outcome.unresolved += 1;
                        if outcome.unresolved_reasons.len() < 3 {
                            outcome.unresolved_reasons.push(reason);
                        }
                    }
                }
            }
        }
        outcome.complete = outcome.unresolved == 0;
        Ok((outcome, changing))
    }

    /// The digest of directory `digest` at `path` after the action's replacements.
    ///
    /// `signature` is the changing targets this subtree holds, with their overlay groups (the
    /// memo key with the digest and path); each child's is computed from it, per target by
    /// whichever is smaller, the target's ancestor set or this directory's children, so the
    /// cost follows what changes, not the product of changes and directories.
    fn rewrite(
        &self,
        work: &ElementWork<'_>,
        changes: &Changes,
        digest: &Digest,
        path: String,
        signature: Vec<(Digest, u32)>,
    ) -> Result<Digest, RewriteError> {
        if signature.is_empty() {
            return Ok(*digest);
        }
        let key = (*digest, path, signature);
        if self.config.memoize
            && let Some(done) = work.memo.get(&key)
        {
            return Ok(*done);
        }
        let (digest, path, signature) = key;
        let function = digest.function();
        let directory = work.forest.get(&digest).expect("input trees were fetched");
        let mut files: HashMap<&str, Digest> = HashMap::new();
        for file in &directory.files {
            let old = file.digest;
            if let Some(group) = changes.groups.get(&old) {
                let chosen = work.choose(group, &join(&path, &file.name));
                if let Some(Resolution::Replace(new)) = work.resolutions[chosen as usize].get()
                    && *new != old
                {
                    files.insert(&*file.name, *new);
                }
            }
        }
        let mut dirs: HashMap<&str, Digest> = HashMap::new();
        let below = work.child_signatures(&directory.directories, &signature);
        for (dir, child_signature) in directory.directories.iter().zip(below) {
            let old = dir.digest;
            let new = self.rewrite(work, changes, &old, join(&path, &dir.name), child_signature)?;
            if new != old {
                dirs.insert(&*dir.name, new);
            }
        }
        let result = if files.is_empty() && dirs.is_empty() {
            digest
        } else {
            let raw = work.raw_directory(self.store, &digest).map_err(RewriteError::Store)?;
            let bytes = splice::rewrite_directory(
                &raw,
                |n| files.get(n).copied(),
                |n| dirs.get(n).copied(),
            )
            .map_err(|reason| RewriteError::Splice(digest, reason))?;
            let blob = Blob::new(function, bytes);
            let new = *blob.digest();
            work.written.lock().expect("no panics while holding the lock").push(blob);
            new
        };
        if self.config.memoize {
            work.memo.insert((digest, path, signature), result);
        }
        Ok(result)
    }

    /// Resolves one overlay in the context of `element` (whose "" it means).
    fn resolve(
        &self,
        element: &str,
        origin: &Origin,
        target: &Digest,
        depth: usize,
    ) -> Result<Resolution, InstantiateError> {
        if depth > 32 {
            return Ok(Resolution::Unresolved(format!(
                "artifact overlays of {element:?} nest deeper than 32"
            )));
        }
        let owner = if origin.element.is_empty() { element } else { origin.element.as_str() };
        let Some(state) = self.elements.get(owner) else {
            return Ok(Resolution::Unresolved(format!("unknown element {owner:?}")));
        };
        if owner != element && state.unchanged() && origin.kind != OriginKind::Action {
            return Ok(Resolution::Skip);
        }
        match origin.kind {
            OriginKind::Source => match state.sources {
                None => Ok(Resolution::Unresolved(format!("element {owner:?} has no sources"))),
                Some(root) => self.lookup(owner, "sources", &root, &origin.path),
            },
            OriginKind::Artifact => match state.artifact {
                Some(root) => self.lookup(owner, "artifact", &root, &origin.path),
                None => self.trace_unbuilt(owner, state, origin, target, depth),
            },
            OriginKind::Action => self.producer_output(origin),
        }
    }

    /// An ARTIFACT overlay of a dependency not built yet, traced through its previous
    /// `artifact_overlays` to where that file comes from now.
    fn trace_unbuilt(
        &self,
        owner: &str,
        state: &ElementState,
        origin: &Origin,
        target: &Digest,
        depth: usize,
    ) -> Result<Resolution, InstantiateError> {
        let Some(previous) = state.previous_speculative_actions else {
            return Ok(Resolution::Unresolved(format!(
                "{owner:?} is not built and has no previous SpeculativeActions"
            )));
        };
        let traces = self.previous_artifact_overlays(owner, &previous)?;
        let chosen = traces.get(target).and_then(|candidates| {
            candidates.iter().min_by(|a, b| compare_for(&origin.path, a, b))
        });
        match chosen {
            Some(traced) => self.resolve(owner, traced, target, depth + 1),
            None => Ok(Resolution::Unresolved(format!(
                "{owner:?} is not built and its artifact overlays do not trace {}",
                origin.path
            ))),
        }
    }

    /// An ACTION overlay: the output of the producer's instantiated action, once it has a
    /// result.
    fn producer_output(&self, origin: &Origin) -> Result<Resolution, InstantiateError> {
        let producer = origin.producer.expect("ACTION origins have a producer");
        let Some(adapted) = self.instantiated(&producer) else {
            return Ok(Resolution::Unresolved(format!(
                "producer {producer} is not instantiated completely"
            )));
        };
        let result =
            self.store.get_action_result(&adapted).map_err(|source| InstantiateError::Store {
                what: format!("reading the result of {adapted} (instantiated from {producer})"),
                source: Box::new(source),
            })?;
        let Some(result) = result else {
            return Ok(Resolution::Unresolved(format!("producer {adapted} has no result yet")));
        };
        let function = self.store.digest_function();
        match result.output_files.iter().find(|f| f.path == origin.path) {
            Some(file) => {
                let digest =
                    Digest::from_proto_field(function, file.digest.as_ref(), "OutputFile.digest")
                        .map_err(|source| InstantiateError::Store {
                        what: format!("reading the result of {adapted}"),
                        source: Box::new(source),
                    })?;
                Ok(Resolution::Replace(digest))
            }
            None => Ok(Resolution::Unresolved(format!(
                "producer {adapted} has no output {}",
                origin.path
            ))),
        }
    }

    fn lookup(
        &self,
        owner: &str,
        what: &'static str,
        root: &Digest,
        path: &str,
    ) -> Result<Resolution, InstantiateError> {
        let index = self.path_index(owner, what, root)?;
        Ok(match index.get(path) {
            Some(digest) => Resolution::Replace(*digest),
            None => Resolution::Unresolved(format!("no file {path} in the {what} of {owner:?}")),
        })
    }

    fn path_index(
        &self,
        owner: &str,
        what: &'static str,
        root: &Digest,
    ) -> Result<Arc<HashMap<String, Digest>>, InstantiateError> {
        let cell = self.path_indexes.entry(*root).or_default().clone();
        let result = cell.get_or_init(|| {
            let forest = merkle::fetch_tree(self.store, root, &self.config.limits)?;
            let files = forest.files(root)?;
            Ok(Arc::new(files.into_iter().map(|file| (file.path, file.digest)).collect()))
        });
        result.clone().map_err(|source| InstantiateError::Tree {
            element: owner.into(),
            what,
            root: *root,
            source,
        })
    }

    fn previous_artifact_overlays(
        &self,
        owner: &str,
        digest: &Digest,
    ) -> Result<Arc<HashMap<Digest, Vec<Origin>>>, InstantiateError> {
        let function = self.store.digest_function();
        let cell = self.artifact_overlays.entry(*digest).or_default().clone();
        let result = cell.get_or_init(|| {
            let blob = self.store.read_blob(digest)?;
            let overlays =
                sa_generator::actions_index::artifact_overlays(&blob).map_err(|source| {
                    CasError::Decode { what: "SpeculativeActions", digest: *digest, source }
                })?;
            let mut map: HashMap<Digest, Vec<Origin>> = HashMap::new();
            for (i, overlay) in overlays.iter().enumerate() {
                let (origin, target) = Origin::from_overlay(function, overlay).map_err(|err| {
                    CasError::InvalidDigest {
                        input: format!("artifact overlay {i}"),
                        reason: err.to_string(),
                    }
                })?;
                map.entry(target).or_default().push(origin);
            }
            Ok(Arc::new(map))
        });
        result.clone().map_err(|source| InstantiateError::Tree {
            element: owner.into(),
            what: "previous SpeculativeActions",
            root: *digest,
            source,
        })
    }
}

/// Whether an overlay may replace `target` with another digest: its resolution does, or it is
/// not known yet (it waits for a producer of the element).
fn may_replace(resolution: Option<&Resolution>, target: &Digest) -> bool {
    match resolution {
        None => true,
        Some(Resolution::Replace(new)) => new != target,
        Some(Resolution::Skip | Resolution::Unresolved(_)) => false,
    }
}

enum RewriteError {
    Store(Box<CasError>),
    Splice(Digest, String),
}

impl<'f> ElementWork<'f> {
    fn new(forest: &'f Forest, overlays: Overlays, resolutions: Resolutions) -> Self {
        let may_change: HashSet<Digest> = overlays
            .iter()
            .zip(&resolutions)
            .filter(|((_, target), resolution)| may_replace(resolution.get(), target))
            .map(|((_, target), _)| *target)
            .collect();
        let mut digests: Vec<Digest> = forest.directories().keys().copied().collect();
        digests.sort_unstable();
        let dir_ids: HashMap<Digest, u32> =
            digests.iter().enumerate().map(|(i, d)| (*d, i as u32)).collect();
        let mut parents: Vec<Vec<u32>> = vec![Vec::new(); digests.len()];
        let mut holders: HashMap<Digest, Vec<u32>> = HashMap::new();
        for (id, digest) in digests.iter().enumerate() {
            let directory = forest.get(digest).expect("listed by the forest");
            for dir in &directory.directories {
                parents[dir_ids[&dir.digest] as usize].push(id as u32);
            }
            for file in &directory.files {
                if may_change.contains(&file.digest) {
                    holders.entry(file.digest).or_default().push(id as u32);
                }
            }
        }
        ElementWork {
            forest,
            overlays,
            resolutions,
            dir_ids,
            parents,
            holders,
            ancestors: DashMap::new(),
            raw_dirs: DashMap::new(),
            memo: DashMap::new(),
            groups: DashMap::new(),
            next_group: std::sync::atomic::AtomicU32::new(0),
            written: Mutex::new(Vec::new()),
        }
    }

    /// An action's changes: each changing target's overlay group (interned), and those its
    /// input root holds.
    fn changes(&self, changing: &BTreeMap<Digest, &[u32]>, root: &Digest) -> Changes {
        let mut groups = HashMap::with_capacity(changing.len());
        let mut at_root = Vec::new();
        for (target, ids) in changing {
            let group = self.intern(ids);
            if self
                .dir_ids
                .get(root)
                .is_some_and(|id| self.ancestors_of(target).binary_search(id).is_ok())
            {
                at_root.push((*target, group.id));
            }
            groups.insert(*target, group);
        }
        Changes { groups, at_root }
    }

    /// The signature of each of `children` (see [`Instantiator::rewrite`]) from their parent's,
    /// in target order: a target goes to the children in its ancestor set, found by walking the
    /// smaller of that set and the children.
    fn child_signatures(
        &self,
        children: &[DirEntry],
        signature: &[(Digest, u32)],
    ) -> Vec<Vec<(Digest, u32)>> {
        let mut out = vec![Vec::new(); children.len()];
        if children.is_empty() {
            return out;
        }
        let ids: Vec<Option<u32>> =
            children.iter().map(|child| self.dir_ids.get(&child.digest).copied()).collect();
        let mut positions: HashMap<u32, Vec<usize>> = HashMap::with_capacity(children.len());
        for (i, id) in ids.iter().enumerate() {
            if let Some(id) = id {
                positions.entry(*id).or_default().push(i);
            }
        }
        for &(target, group) in signature {
            let ancestors = self.ancestors_of(&target);
            if ancestors.len() < children.len() {
                for directory in ancestors.iter() {
                    for &i in positions.get(directory).into_iter().flatten() {
                        out[i].push((target, group));
                    }
                }
            } else {
                for (i, id) in ids.iter().enumerate() {
                    if id.is_some_and(|id| ancestors.binary_search(&id).is_ok()) {
                        out[i].push((target, group));
                    }
                }
            }
        }
        out
    }

    fn intern(&self, ids: &[u32]) -> Arc<Group> {
        if let Some(group) = self.groups.get(ids) {
            return group.clone();
        }
        // Ids only tell groups apart (in memo keys): their order does not reach any output.
        let ids: Arc<[u32]> = ids.into();
        self.groups
            .entry(ids.clone())
            .or_insert_with(|| {
                let id = self.next_group.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Arc::new(Group { id, ids, chooser: OnceLock::new() })
            })
            .clone()
    }

    /// The overlay of `group` the rule picks for a file at `path`.
    fn choose(&self, group: &Group, path: &str) -> u32 {
        let origin = |id: u32| &self.overlays[id as usize].0;
        if group.ids.len() > CHOOSER_THRESHOLD {
            let chooser = group.chooser.get_or_init(|| SuffixChooser::build(&group.ids, origin));
            return chooser.best(path);
        }
        *group
            .ids
            .iter()
            .min_by(|a, b| compare_for(path, origin(**a), origin(**b)))
            .expect("targets have overlays")
    }

    /// The ids of every directory whose subtree holds a file with this digest, sorted.
    fn ancestors_of(&self, target: &Digest) -> Arc<Vec<u32>> {
        if let Some(found) = self.ancestors.get(target) {
            return found.clone();
        }
        let mut seen: HashSet<u32> = HashSet::new();
        let mut stack: Vec<u32> = self.holders.get(target).cloned().unwrap_or_default();
        while let Some(dir) = stack.pop() {
            if seen.insert(dir) {
                stack.extend(self.parents[dir as usize].iter().copied());
            }
        }
        let mut found: Vec<u32> = seen.into_iter().collect();
        found.sort_unstable();
        let found = Arc::new(found);
        self.ancestors.insert(*target, found.clone());
        found
    }

    fn raw_directory<S: Store + ?Sized>(
        &self,
        store: &S,
        digest: &Digest,
    ) -> Result<Bytes, Box<CasError>> {
        if let Some(raw) = self.raw_dirs.get(digest) {
            return Ok(raw.clone());
        }
        let raw = store.read_blob(digest).map_err(Box::new)?;
        self.raw_dirs.insert(*digest, raw.clone());
        Ok(raw)
    }
}
