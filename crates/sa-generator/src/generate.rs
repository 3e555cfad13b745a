//! Overlay generation: from an element's recorded subactions to a stored `SpeculativeActions`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use prost::Message;
use rayon::prelude::*;
use sa_cas::merkle::{self, Forest, TreeLimits};
use sa_cas::{Blob, CasError, Digest, DigestFunction, Store, merkle::join};
use sa_proto::buildstream::v2::speculative_actions::SpeculativeAction;
use sa_proto::reapi::Action;

use crate::index::OriginIndex;
use crate::model::{Origin, OriginKind, overlay_order};

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
}

/// Options of [`generate`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenerateConfig {
    /// Leave out (and report) subactions whose Action or input tree is missing or invalid,
    /// instead of failing.
    pub skip_broken_subactions: bool,
    /// Bounds on every tree walked.
    pub limits: TreeLimits,
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
    /// Digest of the stored `SpeculativeActions` blob.
    pub digest: Digest,
    /// The blob (wire format `buildstream.v2.SpeculativeActions`).
    pub encoded: Bytes,
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
    let element = input.element.name.as_str();
    let function = store.digest_function();
    check_input(input, function)?;
    let mut stats = GenerateStats::default();

    // Distinct subactions, in recorded order.
    let mut seen = HashSet::new();
    let subactions: Vec<Digest> =
        input.subactions.iter().copied().filter(|d| seen.insert(*d)).collect();
    stats.subactions = subactions.len();

    // Actions and their input roots.
    let mut roots: Vec<(Digest, Digest)> = Vec::with_capacity(subactions.len());
    let missing: HashSet<Digest> = store
        .find_missing(&subactions)
        .map_err(|source| GenerateError::Subaction {
            element: element.into(),
            action: subactions[0],
            source: Box::new(source),
        })?
        .into_iter()
        .collect();
    let present: Vec<Digest> =
        subactions.iter().copied().filter(|d| !missing.contains(d)).collect();
    let blobs: Vec<Result<Bytes, CasError>> = match merkle::read_in_batches(store, &present) {
        Ok(blobs) => blobs.into_iter().map(Ok).collect(),
        // A blob that vanished or is corrupt: find which, one by one (error path only).
        Err(_) => present.iter().map(|d| store.read_blob(d)).collect(),
    };
    let decoded: Vec<Result<Digest, CasError>> = present
        .par_iter()
        .zip(blobs.into_par_iter())
        .map(|(digest, data)| data.and_then(|data| input_root(function, digest, &data)))
        .collect();
    let mut present_iter = present.iter().zip(decoded);
    for action in &subactions {
        let outcome = if missing.contains(action) {
            Err(CasError::NotFound(*action).context(format!("Action {action}")))
        } else {
            let (_, decoded) = present_iter.next().expect("one decode per present action");
            decoded
        };
        match outcome {
            Ok(root) => roots.push((*action, root)),
            Err(source) => skip_or_fail(config, &mut stats, element, *action, source)?,
        }
    }

    // Origin trees.
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
    for dep in &input.dependencies {
        if let Some(root) = dep.sources {
            trees.push(OriginTree {
                kind: OriginKind::Source,
                element: &dep.name,
                overlay_element: &dep.name,
                what: "sources",
                root,
            });
        }
        if let Some(root) = dep.artifact {
            trees.push(OriginTree {
                kind: OriginKind::Artifact,
                element: &dep.name,
                overlay_element: &dep.name,
                what: "artifact",
                root,
            });
        }
    }

    // Fetch every tree at once; on failure, find the culprits tree by tree (error path only).
    let mut all_roots: Vec<Digest> = trees.iter().map(|t| t.root).collect();
    all_roots.extend(input.element.artifact);
    all_roots.extend(roots.iter().map(|(_, root)| *root));
    let forest = match merkle::fetch_forest(store, &all_roots, &config.limits) {
        Ok(forest) => forest,
        Err(_) => {
            let mut own = Vec::new();
            if let Some(root) = input.element.artifact {
                own.push((element, "artifact", root));
            }
            for tree in trees.iter().map(|t| (t.element, t.what, t.root)).chain(own) {
                if let Err(source) = merkle::fetch_tree(store, &tree.2, &config.limits) {
                    return Err(GenerateError::Tree {
                        element: tree.0.into(),
                        what: tree.1,
                        root: tree.2,
                        source: Box::new(source),
                    });
                }
            }
            let mut kept = Vec::with_capacity(roots.len());
            for (action, root) in roots {
                match merkle::fetch_tree(store, &root, &config.limits) {
                    Ok(_) => kept.push((action, root)),
                    Err(source) => {
                        let source = source.context(format!("input root of Action {action}"));
                        skip_or_fail(config, &mut stats, element, action, source)?;
                    }
                }
            }
            roots = kept;
            all_roots = trees.iter().map(|t| t.root).collect();
            all_roots.extend(input.element.artifact);
            all_roots.extend(roots.iter().map(|(_, root)| *root));
            merkle::fetch_forest(store, &all_roots, &config.limits).map_err(|source| {
                GenerateError::InvalidInput {
                    element: element.into(),
                    reason: format!("trees changed while being read: {source}"),
                }
            })?
        }
    };
    stats.directories = forest.len();
    // Every walk below lists each tree once, and each input root once per action: bound the
    // total before any of them allocates.
    let mut expanded = 0u64;
    for root in trees.iter().map(|t| &t.root).chain(&input.element.artifact) {
        expanded = expanded.saturating_add(forest.expansion(root).entries);
    }
    for (_, root) in &roots {
        expanded = expanded.saturating_add(forest.expansion(root).entries);
    }
    config
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
    stats.expanded_entries = expanded;

    // ACTION origins: the outputs of each subaction that has a result.
    let results: Vec<Result<Vec<(Digest, Origin)>, GenerateError>> = roots
        .par_iter()
        .map(|(action, _)| action_outputs(store, function, element, action))
        .collect();
    let producer_index: HashMap<Digest, usize> =
        roots.iter().enumerate().map(|(i, (a, _))| (*a, i)).collect();

    // The origin index, from all trees in parallel.
    let tree_entries: Vec<Vec<(Digest, Origin)>> =
        trees.par_iter().map(|tree| tree_origins(&forest, tree)).collect::<Result<_, _>>()?;
    let mut entries: Vec<(Digest, Origin)> = tree_entries.into_iter().flatten().collect();
    for result in results {
        entries.extend(result?);
    }
    let index = OriginIndex::build(entries);
    stats.origins = index.len();

    // Artifact overlays: the element's own artifact files, any subaction's outputs allowed.
    let mut artifact_overlays = Vec::new();
    if let Some(root) = input.element.artifact {
        let files = forest.files(&root).map_err(|source| GenerateError::Tree {
            element: element.into(),
            what: "artifact",
            root,
            source: Box::new(source),
        })?;
        for (path, digest, _) in files {
            match index.candidates(&digest).and_then(|c| index.select(&path, c, |_| true)) {
                Some(id) => artifact_overlays.push((digest, id)),
                None => stats.unattributed_artifact_files += 1,
            }
        }
        sort_overlays(&index, &mut artifact_overlays);
    }
    stats.artifact_file_overlays = artifact_overlays.len();

    // Per-action attribution over memoized directory occurrences, in parallel within chunks
    // of actions whose encodings go straight into the output: the outer message is the
    // concatenation of its repeated fields, in order, so no action's encoding is held longer
    // than its chunk.
    let memo: DashMap<(Digest, String), Arc<Entry>> = DashMap::new();
    let mut out = Vec::new();
    for (chunk_index, chunk) in roots.chunks(ATTRIBUTION_CHUNK).enumerate() {
        let attributed: Vec<(Option<Vec<u8>>, [usize; 3], u64)> = chunk
            .par_iter()
            .enumerate()
            .map(|(offset, (action, root))| {
                let position = chunk_index * ATTRIBUTION_CHUNK + offset;
                let entry = occurrence(&forest, &index, &memo, root, String::new());
                let allowed = |origin: &Origin| match origin.producer {
                    Some(producer) => producer_index.get(&producer).is_some_and(|&p| p < position),
                    None => true,
                };
                let (mut overlays, unattributed) = collect(&index, &entry, allowed);
                sort_overlays(&index, &mut overlays);
                let mut counts = [0usize; 3];
                for (_, id) in &overlays {
                    counts[index.origin(*id).kind as usize] += 1;
                }
                if overlays.is_empty() {
                    return (None, counts, unattributed);
                }
                let message = SpeculativeAction {
                    base_action_digest: Some(action.to_proto()),
                    overlays: overlays
                        .iter()
                        .map(|(d, id)| index.origin(*id).to_overlay(d))
                        .collect(),
                };
                (Some(message.encode_to_vec()), counts, unattributed)
            })
            .collect();
        for (encoded, counts, unattributed) in attributed {
            stats.unattributed_inputs += unattributed;
            stats.source_overlays += counts[OriginKind::Source as usize];
            stats.action_overlays += counts[OriginKind::Action as usize];
            stats.artifact_overlays += counts[OriginKind::Artifact as usize];
            if let Some(encoded) = encoded {
                stats.actions += 1;
                put_field(&mut out, 1, &encoded);
            }
        }
    }
    for (digest, id) in &artifact_overlays {
        put_field(&mut out, 2, &index.origin(*id).to_overlay(digest).encode_to_vec());
    }
    // The trees are done with: free them before hashing and storing the output.
    drop(memo);
    drop(forest);
    let blob = Blob::new(function, out);
    let digest = *blob.digest();
    let encoded = blob.data().clone();
    merkle::write_in_batches(store, std::slice::from_ref(&blob)).map_err(|source| {
        GenerateError::Store { element: element.into(), source: Box::new(source) }
    })?;
    Ok(Generated { digest, encoded, stats })
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
    let digests =
        trees.flat_map(|t| t.sources.iter().chain(t.artifact.iter())).chain(&input.subactions);
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

fn skip_or_fail(
    config: &GenerateConfig,
    stats: &mut GenerateStats,
    element: &str,
    action: Digest,
    source: CasError,
) -> Result<(), GenerateError> {
    let error =
        GenerateError::Subaction { element: element.into(), action, source: Box::new(source) };
    if !config.skip_broken_subactions {
        return Err(error);
    }
    tracing::warn!("skipping: {}", error_chain(&error));
    stats.skipped.push(SkippedSubaction { action, reason: error_chain(&error) });
    Ok(())
}

pub use sa_cas::error_chain;

fn input_root(function: DigestFunction, digest: &Digest, data: &[u8]) -> Result<Digest, CasError> {
    let action = Action::decode(data).map_err(|source| CasError::Decode {
        what: "Action",
        digest: *digest,
        source,
    })?;
    Digest::from_proto_field(
        function,
        action.input_root_digest.as_ref(),
        "Action.input_root_digest",
    )
    .map_err(|err| err.context(format!("Action {digest}")))
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
        .map(|(path, digest, _)| {
            let origin = Origin {
                kind: tree.kind,
                element: tree.overlay_element.to_owned(),
                path,
                producer: None,
            };
            (digest, origin)
        })
        .collect())
}

/// The memoized entry of the directory `digest` occurring at `path`.
fn occurrence(
    forest: &Forest,
    index: &OriginIndex,
    memo: &DashMap<(Digest, String), Arc<Entry>>,
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

fn sort_overlays(index: &OriginIndex, overlays: &mut Vec<(Digest, u32)>) {
    overlays.sort_unstable_by(|a, b| {
        overlay_order(&(a.0, index.origin(a.1)), &(b.0, index.origin(b.1)))
    });
    overlays.dedup();
}

/// Actions attributed (in parallel) before their encodings are appended to the output.
const ATTRIBUTION_CHUNK: usize = 512;

/// Appends a length-delimited field, as prost encodes a repeated message field.
fn put_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}
