//! Resolution of overlays and memoized rewriting of input trees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use sa_cas::merkle::TreeLimits;
use sa_cas::{CasError, Digest, Store};
use sa_generator::Progress;
use sa_generator::graph::Graph;
use sa_generator::model::{Origin, OriginKind};

mod error;
mod plan;
mod resolve;
mod rewrite;

use error::RewriteError;
pub use error::{InstantiateError, StoreStep};
use plan::{OnTheWay, Planned};
use resolve::Resolution;
use rewrite::ElementWork;

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
    /// Read each element's `SpeculativeActions` through its stored [`ActionsIndex`](sa_generator::ActionsIndex) (built and
    /// stored on first use); off, the blob itself is decoded every time and nothing is stored
    /// beside the instantiated actions.
    pub index: bool,
}

impl Default for InstantiateConfig {
    fn default() -> Self {
        InstantiateConfig { limits: TreeLimits::default(), memoize: true, index: true }
    }
}

/// How the elements' [`ActionsIndex`](sa_generator::ActionsIndex)es were found.
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
    /// The kind and target digest of each unresolved overlay, sorted, distinct: the input
    /// files whose content the next build cannot be known to have.
    pub unresolved_targets: Vec<(OriginKind, Digest)>,
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
    /// Instantiated actions replaced by another (a re-scan's input root), for ACTION overlays.
    replaced: DashMap<Digest, Digest>,
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
            replaced: DashMap::new(),
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

    /// The instantiated (complete) action for a base action, once known; its replacement
    /// where one was given ([`Instantiator::replace`]).
    pub fn instantiated(&self, base: &Digest) -> Option<Digest> {
        let action = self.instantiated.get(base).map(|d| *d)?;
        Some(self.replaced.get(&action).map_or(action, |r| *r))
    }

    /// Makes `replacement` stand for the instantiated action `action` from now on: ACTION
    /// overlays on its base resolve against `replacement`'s result (priming re-scanned a
    /// compile's inputs and runs `replacement` instead). The outcomes of
    /// [`Instantiator::instantiate_element`] still name `action`: the instantiation itself is
    /// unchanged.
    pub fn replace(&self, action: Digest, replacement: Digest) {
        self.replaced.insert(action, replacement);
    }

    /// The state of the element `name`, as given.
    pub fn element(&self, name: &str) -> Option<&ElementState> {
        self.elements.get(name)
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
        let index =
            timed(element, "load the index", || self.actions_index(element, speculative_actions))?;
        let skeleton = index.input_skeleton().copied();
        let (overlays, actions) = index.into_parts();
        progress(Progress::Planned(actions.len()));
        let resolutions = timed(element, "resolve the overlays", || {
            self.resolve_ahead(element, &overlays, &actions)
        })?;
        let effects = resolve::effects(&overlays, &resolutions);
        let planned = timed(element, "read the changing actions", || {
            self.plan(element, &overlays, actions, &effects)
        })?;
        let changing = planned.iter().filter(|p| p.tree.is_some()).count();
        let on_the_way = match skeleton {
            Some(skeleton) if skeleton_pays(changing, planned.len()) => {
                timed(element, "fetch the directories on the way", || {
                    self.fetch_on_the_way(element, &skeleton, &overlays, &effects, &planned)
                })?
            }
            _ => None,
        };
        let (forest, raw, skeleton) = match on_the_way {
            Some(OnTheWay { forest, raw, skeleton }) => (forest, raw, Some(skeleton)),
            None => {
                let forest = timed(element, "fetch the input trees", || {
                    self.fetch_input_trees(element, &planned)
                })?;
                (forest, Vec::new(), None)
            }
        };
        let work = timed(element, "index the trees", || {
            ElementWork::new(&forest, overlays, resolutions, effects, skeleton.as_ref(), raw)
        });
        timed(element, "rewrite and store", || self.run_waves(element, &work, &planned, progress))
    }
}

/// Whether reading the element's input skeleton (its size follows all the element's
/// directories) costs less than reading the `changing` actions' trees whole (their size follows
/// those actions): when at least one action in [`SKELETON_SHARE`] changes. Measured on large:
/// the skeleton read costs what about a hundred actions' whole trees do; an app-source edit
/// (one of 6060 actions) takes 0.12 s without it, 0.27 s with it.
fn skeleton_pays(changing: usize, actions: usize) -> bool {
    changing > 0 && changing.saturating_mul(SKELETON_SHARE) >= actions
}

/// See [`skeleton_pays`].
const SKELETON_SHARE: usize = 32;

/// Runs `step` of instantiating `element`, its time logged at debug level (`sa -vv`).
fn timed<T>(element: &str, step: &str, work: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let result = work();
    tracing::debug!(element, "instantiate: {step}: {:.3}s", start.elapsed().as_secs_f64());
    result
}
