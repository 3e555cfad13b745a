//! Overlay generation: from an element's recorded subactions to a stored `SpeculativeActions`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dashmap::DashMap;
use prost::Message;
use rayon::prelude::*;
use sa_cas::merkle::{self, Forest, TreeLimits};
use sa_cas::{
    BlobSink, CasError, DecodedAction, Digest, DigestFunction, Store, error_chain, merkle::join,
};
use sa_proto::wire::{
    SPECULATIVE_ACTION_BASE_ACTION_DIGEST, SPECULATIVE_ACTION_OVERLAYS,
    SPECULATIVE_ACTIONS_ACTIONS, SPECULATIVE_ACTIONS_ARTIFACT_OVERLAYS, put_length_delimited,
};

use crate::actions_index::{ActionsIndex, IndexedAction};
use crate::index::OriginIndex;
use crate::model::{Origin, OriginKind};
use crate::skeleton::InputSkeleton;

/// Each directory's attributed entries at a path (foldhash: one lookup per directory visited).
type Memo = DashMap<(Digest, String), Arc<Entry>, foldhash::fast::RandomState>;

/// An element's trees: its name and, where they exist, its source and artifact roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementTrees {
    /// The element's name.
    pub name: String,
    /// Root Directory of its sources.
    pub sources: Option<Digest>,
    /// Root Directory of its artifact's files.
    pub artifact: Option<Digest>,
}

/// What the generator needs about one build of one element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerateInput {
    /// The element that was built.
    pub element: ElementTrees,
    /// Its direct build dependencies.
    pub dependencies: Vec<ElementTrees>,
    /// The Action digests its build recorded, in the order they ran.
    pub subactions: Vec<Digest>,
    /// Earlier snapshots of the element's own sources, for subactions recorded against them
    /// (a learned action an incremental build did not re-run): a file found only there is
    /// attributed to the element's sources at its path there, which instantiation resolves
    /// against the element's current sources. The current sources win where both have it.
    pub earlier_sources: Vec<Digest>,
}

impl GenerateInput {
    /// The input of `name` in a build graph: its trees, its direct dependencies' trees, its
    /// subactions; `None` when the graph has no such element. The one mapping from a graph to
    /// the generator.
    pub fn from_graph(graph: &crate::graph::Graph, name: &str) -> Option<GenerateInput> {
        let trees = |e: &crate::graph::Element| ElementTrees {
            name: e.name.clone(),
            sources: e.sources,
            artifact: e.artifact,
        };
        let element = graph.get(name)?;
        Some(GenerateInput {
            element: trees(element),
            dependencies: element
                .build_deps
                .iter()
                .filter_map(|d| graph.get(d))
                .map(trees)
                .collect(),
            subactions: element.subactions.clone(),
            earlier_sources: Vec::new(),
        })
    }
}

/// Options of [`generate`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenerateConfig {
    /// Leave out (and report) subactions whose Action or input tree is missing or invalid,
    /// instead of failing.
    pub skip_broken_subactions: bool,
    /// Bounds on every tree walked.
    pub limits: TreeLimits,
    /// Do not store the [`ActionsIndex`] of the output (the instantiator then builds it on
    /// first use).
    pub skip_index: bool,
}

/// A subaction left out under [`GenerateConfig::skip_broken_subactions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedSubaction {
    /// The subaction.
    pub action: Digest,
    /// Why, with its cause chain.
    pub reason: String,
}

/// What [`generate`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerateStats {
    /// Distinct subactions recorded.
    pub subactions: usize,
    /// Speculative actions emitted (subactions with at least one overlay).
    pub actions: usize,
    /// SOURCE overlays over all actions.
    pub source_overlays: usize,
    /// ACTION overlays over all actions.
    pub action_overlays: usize,
    /// ARTIFACT overlays over all actions.
    pub artifact_overlays: usize,
    /// Entries of `artifact_overlays`.
    pub artifact_file_overlays: usize,
    /// Input file occurrences with no origin, over all actions.
    pub unattributed_inputs: u64,
    /// Files of the element's artifact with no origin.
    pub unattributed_artifact_files: u64,
    /// Distinct directories fetched and decoded.
    pub directories: usize,
    /// Entries (files, directories, symlinks) of every tree walked, each input root counted
    /// once per action: what [`TreeLimits::max_expanded_entries`] bounds.
    pub expanded_entries: u64,
    /// Distinct origins indexed.
    pub origins: usize,
    /// Subactions left out, with the reason.
    pub skipped: Vec<SkippedSubaction>,
}

impl GenerateStats {
    /// Overlays over all actions.
    pub fn overlays(&self) -> usize {
        self.source_overlays + self.action_overlays + self.artifact_overlays
    }
}

/// The stored result of [`generate`].
#[derive(Clone, Debug)]
pub struct Generated {
    /// Digest of the stored `SpeculativeActions` blob (wire format
    /// `buildstream.v2.SpeculativeActions`), written as it was encoded.
    pub digest: Digest,
    /// Digest of the stored [`ActionsIndex`] of the blob, unless
    /// [`GenerateConfig::skip_index`].
    pub index: Option<Digest>,
    /// Statistics.
    pub stats: GenerateStats,
}

/// Why [`generate`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The input itself is inconsistent.
    #[error("invalid input for element {element:?}: {reason}")]
    InvalidInput {
        /// The element.
        element: String,
        /// What is wrong.
        reason: String,
    },
    /// A subaction's Action or input tree is missing or invalid.
    #[error("subaction {action} of element {element:?}")]
    Subaction {
        /// The element.
        element: String,
        /// The subaction.
        action: Digest,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
    /// A source or artifact tree is missing or invalid.
    #[error("{what} {root} of element {element:?}")]
    Tree {
        /// The element whose tree it is.
        element: String,
        /// "sources" or "artifact".
        what: &'static str,
        /// The tree's root.
        root: Digest,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
    /// A subaction's ActionResult is unreadable.
    #[error("action result of subaction {action} of element {element:?}")]
    ActionResult {
        /// The element.
        element: String,
        /// The subaction.
        action: Digest,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
    /// Storing the result failed.
    #[error("storing the SpeculativeActions of element {element:?}")]
    Store {
        /// The element.
        element: String,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
}

/// One origin tree to index.
struct OriginTree<'a> {
    kind: OriginKind,
    element: &'a str,
    /// The name used in overlays: "" for the element itself.
    overlay_element: &'a str,
    what: &'static str,
    root: Digest,
}

/// A memoized directory occurrence: the overlays its own files resolve to, the occurrences
/// whose choice depends on the consuming action (digests with ACTION origins), and its
/// subdirectories' entries.
#[derive(Debug, Default)]
struct Entry {
    overlays: Vec<(Digest, u32)>,
    deferred: Vec<(String, Digest)>,
    unattributed: u64,
    children: Vec<Arc<Entry>>,
}

/// Generates the element's `SpeculativeActions`, stores it, and returns its digest.
///
/// Every distinct Directory is fetched once, level by level in batches; the origin index is
/// built in parallel; per-action attribution reuses memoized directory occurrences, so its cost
/// follows the action's distinct directories and overlays. The output is byte-identical for
/// identical input whatever the thread count.
pub fn generate(
    store: &(impl Store + ?Sized),
    input: &GenerateInput,
    config: &GenerateConfig,
) -> Result<Generated, GenerateError> {
    generate_observed(store, input, config, &|_| {})
}

/// Work announced and done, for a progress display within one element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// This many more actions are to be worked on.
    Planned(usize),
    /// This many more are done.
    Done(usize),
}

/// [`generate`], telling `progress` how many subactions it attributes and as it attributes
/// them (from any thread).
pub fn generate_observed(
    store: &(impl Store + ?Sized),
    input: &GenerateInput,
    config: &GenerateConfig,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Generated, GenerateError> {
    let function = store.digest_function();
    check_input(input, function)?;
    let mut run = Run { element: &input.element.name, config, stats: GenerateStats::default() };
    let element = input.element.name.as_str();
    let roots =
        timed(element, "read the subactions", || run.input_roots(store, &input.subactions))?;
    let trees = origin_trees(input);
    let (forest, roots) = timed(element, "fetch the trees", || {
        run.fetch_trees(store, &trees, input.element.artifact, roots)
    })?;
    let index =
        timed(element, "index the origins", || run.origin_index(store, &forest, &trees, &roots))?;
    let artifact_overlays = timed(element, "trace the artifact", || {
        run.artifact_overlays(&forest, &index, input.element.artifact)
    })?;
    progress(Progress::Planned(roots.len()));
    let store_error = |source| GenerateError::Store {
        element: input.element.name.clone(),
        source: Box::new(source),
    };
    // The shape of the input trees, for instantiations that read only what changes.
    let skeleton = if config.skip_index {
        None
    } else {
        let blob = timed(element, "build the input skeleton", || {
            InputSkeleton::from_forest(&forest, roots.iter().map(|(_, root)| root))
                .map(|skeleton| skeleton.to_blob(function))
        })
        .map_err(store_error)?;
        let digest = *blob.digest();
        timed(element, "store the input skeleton", || store.write_blobs(&[blob]))
            .map_err(store_error)?;
        Some(digest)
    };
    // The output goes to the store as it is encoded: a large element's is hundreds of MiB.
    let mut sink = store.spool().map_err(store_error)?;
    let indexed = timed(element, "attribute and encode", || {
        run.encode(&forest, &index, &roots, &artifact_overlays, sink.as_mut(), progress)
    })
    .map_err(store_error)?;
    timed(element, "free the trees", || drop(forest));
    let digest = timed(element, "store the blob", || sink.commit()).map_err(store_error)?;
    let stored_index = if config.skip_index {
        None
    } else {
        let table = (0..index.len() as u32).map(|id| (index.origin(id).clone(), *index.digest(id)));
        let mut actions_index = ActionsIndex::new(digest, table.collect(), indexed);
        if let Some(skeleton) = skeleton {
            actions_index = actions_index.with_input_skeleton(skeleton);
        }
        Some(
            timed(element, "store the actions index", || actions_index.store(store))
                .map_err(store_error)?,
        )
    };
    Ok(Generated { digest, index: stored_index, stats: run.stats })
}

/// Runs `step` of generating for `element`, its time logged at debug level (`sa -vv`).
fn timed<T>(element: &str, step: &str, work: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let result = work();
    tracing::debug!(element, "generate: {step}: {:.3}s", start.elapsed().as_secs_f64());
    result
}

/// One run of [`generate`]: the element, the options, and the statistics gathered so far.
struct Run<'a> {
    element: &'a str,
    config: &'a GenerateConfig,
    stats: GenerateStats,
}

impl Run<'_> {
    /// The distinct subactions, in recorded order, with their input roots; a subaction whose
    /// Action is missing or invalid is skipped or fails the run.
    fn input_roots(
        &mut self,
        store: &(impl Store + ?Sized),
        subactions: &[Digest],
    ) -> Result<Vec<(Digest, Digest)>, GenerateError> {
        let function = store.digest_function();
        let mut seen = HashSet::new();
        let subactions: Vec<Digest> =
            subactions.iter().copied().filter(|d| seen.insert(*d)).collect();
        self.stats.subactions = subactions.len();
        let blobs = merkle::read_each(store, &subactions);
        let decoded: Vec<Result<Digest, CasError>> = subactions
            .par_iter()
            .zip(blobs.into_par_iter())
            .map(|(digest, data)| {
                let data = data.map_err(|err| err.context(format!("Action {digest}")))?;
                input_root(function, digest, &data)
            })
            .collect();
        let mut roots = Vec::with_capacity(subactions.len());
        for (action, decoded) in subactions.into_iter().zip(decoded) {
            match decoded {
                Ok(root) => roots.push((action, root)),
                Err(source) => self.skip_or_fail(action, source)?,
            }
        }
        Ok(roots)
    }

    /// Fetches every tree at once (the origin trees, the element's artifact, the input roots)
    /// and bounds the walks below; returns the forest and the actions whose trees it holds.
    fn fetch_trees(
        &mut self,
        store: &(impl Store + ?Sized),
        trees: &[OriginTree<'_>],
        artifact: Option<Digest>,
        roots: Vec<(Digest, Digest)>,
    ) -> Result<(Forest, Vec<(Digest, Digest)>), GenerateError> {
        let element = self.element;
        let mut all_roots: Vec<Digest> = trees.iter().map(|t| t.root).collect();
        all_roots.extend(artifact);
        let origin_roots = all_roots.len();
        all_roots.extend(roots.iter().map(|(_, root)| *root));
        let fetched = merkle::fetch_forest_partial(store, &all_roots, &self.config.limits)
            .map_err(|source| GenerateError::InvalidInput {
                element: element.into(),
                reason: format!("the trees cannot be read together: {}", error_chain(&source)),
            })?;
        let mut broken_actions = HashSet::new();
        for (position, source) in fetched.broken {
            if position < origin_roots {
                let (tree_element, what) =
                    trees.get(position).map_or((element, "artifact"), |t| (t.element, t.what));
                return Err(GenerateError::Tree {
                    element: tree_element.into(),
                    what,
                    root: all_roots[position],
                    source: Box::new(source),
                });
            }
            let action = roots[position - origin_roots].0;
            broken_actions.insert(position - origin_roots);
            self.skip_or_fail(action, source.context(format!("input root of Action {action}")))?;
        }
        let forest = fetched.forest;
        let roots: Vec<(Digest, Digest)> = roots
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !broken_actions.contains(i))
            .map(|(_, r)| r)
            .collect();
        self.stats.directories = forest.len();
        // Every walk below lists each tree once, and each input root once per action: bound
        // the total before any of them allocates.
        let expanded = all_roots[..origin_roots]
            .iter()
            .chain(roots.iter().map(|(_, root)| root))
            .fold(0u64, |sum, root| sum.saturating_add(forest.expansion(root).entries));
        self.config
            .limits
            .check_expanded(expanded, || {
                format!(
                    "the trees of element {element:?} (sources, artifacts, {} input roots)",
                    roots.len()
                )
            })
            .map_err(|source| GenerateError::Store {
                element: element.into(),
                source: Box::new(source),
            })?;
        self.stats.expanded_entries = expanded;
        Ok((forest, roots))
    }

    /// The origin index: every file of the origin trees, and the outputs of each subaction
    /// that has a result (ACTION origins), indexed in parallel.
    fn origin_index(
        &mut self,
        store: &(impl Store + ?Sized),
        forest: &Forest,
        trees: &[OriginTree<'_>],
        roots: &[(Digest, Digest)],
    ) -> Result<OriginIndex, GenerateError> {
        let function = store.digest_function();
        let results: Vec<Result<Vec<(Digest, Origin)>, GenerateError>> = roots
            .par_iter()
            .map(|(action, _)| action_outputs(store, function, self.element, action))
            .collect();
        let tree_entries: Vec<Vec<(Digest, Origin)>> =
            trees.par_iter().map(|tree| tree_origins(forest, tree)).collect::<Result<_, _>>()?;
        let mut entries: Vec<(Digest, Origin)> = tree_entries.into_iter().flatten().collect();
        for result in results {
            entries.extend(result?);
        }
        let index = OriginIndex::build(entries);
        self.stats.origins = index.len();
        Ok(index)
    }

    /// The element's own artifact files traced to their origins, any subaction's outputs
    /// allowed.
    fn artifact_overlays(
        &mut self,
        forest: &Forest,
        index: &OriginIndex,
        artifact: Option<Digest>,
    ) -> Result<Vec<(Digest, u32)>, GenerateError> {
        let mut overlays = Vec::new();
        let Some(root) = artifact else {
            return Ok(overlays);
        };
        let files = forest.files(&root).map_err(|source| GenerateError::Tree {
            element: self.element.into(),
            what: "artifact",
            root,
            source: Box::new(source),
        })?;
        for file in files {
            match index.candidates(&file.digest).and_then(|c| index.select(&file.path, c, |_| true))
            {
                Some(id) => overlays.push((file.digest, id)),
                None => self.stats.unattributed_artifact_files += 1,
            }
        }
        sort_overlays(index, &mut overlays);
        self.stats.artifact_file_overlays = overlays.len();
        Ok(overlays)
    }

    /// The encoded `SpeculativeActions`: per-action attribution over memoized directory
    /// occurrences, in parallel within chunks of actions whose encodings go straight into the
    /// output (the outer message is the concatenation of its repeated fields, in order, so no
    /// action's encoding is held longer than its chunk), then the artifact overlays.
    fn encode(
        &mut self,
        forest: &Forest,
        index: &OriginIndex,
        roots: &[(Digest, Digest)],
        artifact_overlays: &[(Digest, u32)],
        sink: &mut dyn BlobSink,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Vec<IndexedAction>, CasError> {
        let producer_index: HashMap<Digest, usize> =
            roots.iter().enumerate().map(|(i, (a, _))| (*a, i)).collect();
        let memo: Memo = DashMap::default();
        let encodings: Encodings = (0..index.len()).map(|_| Default::default()).collect();
        let mut indexed = Vec::new();
        let mut out = Vec::new();
        for (chunk_index, chunk) in roots.chunks(ATTRIBUTION_CHUNK).enumerate() {
            let attributed: Vec<Attributed> = chunk
                .par_iter()
                .enumerate()
                .map(|(offset, (action, root))| {
                    let position = chunk_index * ATTRIBUTION_CHUNK + offset;
                    let allowed = |origin: &Origin| match origin.producer {
                        Some(producer) => {
                            producer_index.get(&producer).is_some_and(|&p| p < position)
                        }
                        None => true,
                    };
                    attribute(forest, index, &encodings, &memo, action, root, allowed)
                })
                .collect();
            progress(Progress::Done(chunk.len()));
            for (one, (action, _)) in attributed.into_iter().zip(chunk) {
                self.stats.unattributed_inputs += one.unattributed;
                self.stats.source_overlays += one.counts[OriginKind::Source as usize];
                self.stats.action_overlays += one.counts[OriginKind::Action as usize];
                self.stats.artifact_overlays += one.counts[OriginKind::Artifact as usize];
                if let Some(encoded) = one.encoded {
                    self.stats.actions += 1;
                    put_length_delimited(&mut out, SPECULATIVE_ACTIONS_ACTIONS, &encoded);
                    indexed.push(IndexedAction { base: *action, overlays: one.origin_ids });
                }
            }
            sink.write(&out)?;
            out.clear();
        }
        for (digest, id) in artifact_overlays {
            let overlay = index.origin(*id).to_overlay(digest).encode_to_vec();
            put_length_delimited(&mut out, SPECULATIVE_ACTIONS_ARTIFACT_OVERLAYS, &overlay);
        }
        sink.write(&out)?;
        Ok(indexed)
    }

    fn skip_or_fail(&mut self, action: Digest, source: CasError) -> Result<(), GenerateError> {
        let error = GenerateError::Subaction {
            element: self.element.into(),
            action,
            source: Box::new(source),
        };
        if !self.config.skip_broken_subactions {
            return Err(error);
        }
        tracing::debug!("skipping: {}", error_chain(&error));
        self.stats.skipped.push(SkippedSubaction { action, reason: error_chain(&error) });
        Ok(())
    }
}

/// One action attributed: its encoded `SpeculativeAction` (none without overlays), its
/// overlays per origin kind, and its input files with no origin.
struct Attributed {
    encoded: Option<Vec<u8>>,
    /// The overlays' origin ids (each names its target too), for the [`ActionsIndex`].
    origin_ids: Vec<u32>,
    counts: [usize; 3],
    unattributed: u64,
}

fn attribute(
    forest: &Forest,
    index: &OriginIndex,
    encodings: &Encodings,
    memo: &Memo,
    action: &Digest,
    root: &Digest,
    allowed: impl Fn(&Origin) -> bool,
) -> Attributed {
    let entry = occurrence(forest, index, memo, root, String::new());
    let (mut overlays, unattributed) = collect(index, &entry, allowed);
    sort_overlays(index, &mut overlays);
    let mut counts = [0usize; 3];
    for (_, id) in &overlays {
        counts[index.origin(*id).kind as usize] += 1;
    }
    if overlays.is_empty() {
        return Attributed { encoded: None, origin_ids: Vec::new(), counts, unattributed };
    }
    // The message as prost writes it (fields in number order), each distinct overlay encoded
    // once per run: millions of references share tens of thousands of overlays.
    let mut encoded = Vec::new();
    let base = action.to_proto().encode_to_vec();
    put_length_delimited(&mut encoded, SPECULATIVE_ACTION_BASE_ACTION_DIGEST, &base);
    // Each overlay targets its origin's own digest (see `sort_overlays`), so an origin's
    // encoding is the overlay's.
    for (digest, id) in &overlays {
        let overlay = encodings[*id as usize].get_or_init(|| {
            index.origin(*id).to_overlay(digest).encode_to_vec().into_boxed_slice()
        });
        put_length_delimited(&mut encoded, SPECULATIVE_ACTION_OVERLAYS, overlay);
    }
    let origin_ids = overlays.iter().map(|(_, id)| *id).collect();
    Attributed { encoded: Some(encoded), origin_ids, counts, unattributed }
}

/// Each origin's `Overlay` encoding (with its own digest as the target), made on first use.
type Encodings = Vec<std::sync::OnceLock<Box<[u8]>>>;

/// The trees origins come from: the element's sources, and its dependencies' sources and
/// artifacts.
fn origin_trees(input: &GenerateInput) -> Vec<OriginTree<'_>> {
    let element = input.element.name.as_str();
    let mut trees: Vec<OriginTree<'_>> = Vec::new();
    if let Some(root) = input.element.sources {
        trees.push(OriginTree {
            kind: OriginKind::Source,
            element,
            overlay_element: "",
            what: "sources",
            root,
        });
    }
    for &root in &input.earlier_sources {
        trees.push(OriginTree {
            kind: OriginKind::Source,
            element,
            overlay_element: "",
            what: "earlier sources",
            root,
        });
    }
    for dep in &input.dependencies {
        let name = dep.name.as_str();
        let tree = |kind, what, root| OriginTree {
            kind,
            element: name,
            overlay_element: name,
            what,
            root,
        };
        trees.extend(dep.sources.map(|root| tree(OriginKind::Source, "sources", root)));
        trees.extend(dep.artifact.map(|root| tree(OriginKind::Artifact, "artifact", root)));
    }
    trees
}

fn check_input(input: &GenerateInput, function: DigestFunction) -> Result<(), GenerateError> {
    let element = &input.element.name;
    let invalid = |reason: String| GenerateError::InvalidInput { element: element.clone(), reason };
    if element.is_empty() {
        return Err(invalid("the element name is empty".into()));
    }
    let mut names = HashSet::new();
    for dep in &input.dependencies {
        if dep.name.is_empty() || dep.name == *element {
            return Err(invalid(format!(
                "dependency name {:?} is empty or the element itself",
                dep.name
            )));
        }
        if !names.insert(&dep.name) {
            return Err(invalid(format!("dependency {:?} is listed twice", dep.name)));
        }
    }
    let trees = std::iter::once(&input.element).chain(&input.dependencies);
    let digests = trees
        .flat_map(|t| t.sources.iter().chain(t.artifact.iter()))
        .chain(&input.subactions)
        .chain(&input.earlier_sources);
    for digest in digests {
        if digest.function() != function {
            return Err(invalid(format!(
                "digest {digest} is {}, the store uses {function}",
                digest.function()
            )));
        }
    }
    Ok(())
}

fn input_root(function: DigestFunction, digest: &Digest, data: &[u8]) -> Result<Digest, CasError> {
    Ok(DecodedAction::decode(function, digest, data)?.input_root)
}

fn action_outputs(
    store: &(impl Store + ?Sized),
    function: DigestFunction,
    element: &str,
    action: &Digest,
) -> Result<Vec<(Digest, Origin)>, GenerateError> {
    let error = |source| GenerateError::ActionResult {
        element: element.into(),
        action: *action,
        source: Box::new(source),
    };
    let Some(result) = store.get_action_result(action).map_err(error)? else {
        return Ok(Vec::new());
    };
    result
        .output_files
        .iter()
        .map(|file| {
            let digest =
                Digest::from_proto_field(function, file.digest.as_ref(), "OutputFile.digest")
                    .map_err(|err| error(err.context(format!("output file {:?}", file.path))))?;
            if file.path.is_empty() {
                return Err(error(CasError::MissingField("OutputFile.path")));
            }
            let origin = Origin {
                kind: OriginKind::Action,
                element: String::new(),
                path: file.path.clone(),
                producer: Some(*action),
            };
            Ok((digest, origin))
        })
        .collect()
}

fn tree_origins(
    forest: &Forest,
    tree: &OriginTree<'_>,
) -> Result<Vec<(Digest, Origin)>, GenerateError> {
    let files = forest.files(&tree.root).map_err(|source| GenerateError::Tree {
        element: tree.element.into(),
        what: tree.what,
        root: tree.root,
        source: Box::new(source),
    })?;
    Ok(files
        .into_iter()
        .map(|file| {
            let origin = Origin {
                kind: tree.kind,
                element: tree.overlay_element.to_owned(),
                path: file.path,
                producer: None,
            };
            (file.digest, origin)
        })
        .collect())
}

/// The memoized entry of the directory `digest` occurring at `path`.
fn occurrence(
    forest: &Forest,
    index: &OriginIndex,
    memo: &Memo,
    digest: &Digest,
    path: String,
) -> Arc<Entry> {
    let key = (*digest, path);
    if let Some(entry) = memo.get(&key) {
        return entry.clone();
    }
    let (digest, path) = key;
    let directory = forest.get(&digest).expect("every directory of an input root was fetched");
    let mut entry = Entry::default();
    for file in &directory.files {
        let file_digest = file.digest;
        let file_path = join(&path, &file.name);
        match index.candidates(&file_digest) {
            None => entry.unattributed += 1,
            Some(c) if c.has_action() => entry.deferred.push((file_path, file_digest)),
            Some(c) => match index.select(&file_path, c, |_| true) {
                Some(id) => entry.overlays.push((file_digest, id)),
                None => entry.unattributed += 1,
            },
        }
    }
    for dir in &directory.directories {
        entry.children.push(occurrence(forest, index, memo, &dir.digest, join(&path, &dir.name)));
    }
    let entry = Arc::new(entry);
    memo.insert((digest, path), entry.clone());
    entry
}

/// The overlays and unattributed count of one action's tree of entries.
fn collect(
    index: &OriginIndex,
    root: &Arc<Entry>,
    allowed: impl Fn(&Origin) -> bool,
) -> (Vec<(Digest, u32)>, u64) {
    let mut overlays = Vec::new();
    let mut unattributed = 0;
    let mut stack = vec![root];
    while let Some(entry) = stack.pop() {
        overlays.extend_from_slice(&entry.overlays);
        unattributed += entry.unattributed;
        for (path, digest) in &entry.deferred {
            let candidates = index.candidates(digest).expect("deferred digests have candidates");
            match index.select(path, candidates, &allowed) {
                Some(id) => overlays.push((*digest, id)),
                None => unattributed += 1,
            }
        }
        stack.extend(entry.children.iter());
    }
    (overlays, unattributed)
}

/// Sorts an action's overlays in [`overlay_order`](crate::model::overlay_order) and drops repeats. Every overlay targets its
/// origin's own digest (an origin is chosen among the candidates of the digest it replaces), so
/// the origin's precomputed rank is the order.
fn sort_overlays(index: &OriginIndex, overlays: &mut Vec<(Digest, u32)>) {
    debug_assert!(overlays.iter().all(|(digest, id)| digest == index.digest(*id)));
    overlays.sort_unstable_by_key(|(_, id)| index.rank(*id));
    overlays.dedup();
}

/// Actions attributed (in parallel) before their encodings are appended to the output.
const ATTRIBUTION_CHUNK: usize = 512;
