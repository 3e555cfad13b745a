//! Fetching trees: every distinct Directory once, level by level in batches, with the
//! counts the limits bound.

use std::collections::{HashMap as StdHashMap, HashSet as StdHashSet};

/// The maps of a fetch: keyed by digests, millions of lookups (foldhash, seeded per process).
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = StdHashSet<K, foldhash::fast::RandomState>;

use bytes::Bytes;
use rayon::prelude::*;

use super::batch::*;
use super::codec::*;
use super::names::*;
use crate::digest::Digest;
use crate::error::CasError;
use crate::store::Cas;

/// A file of a tree, as [`Forest::files`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeFile {
    /// Its path below the root, components joined with `/`.
    pub path: String,
    /// Its content.
    pub digest: Digest,
    /// Whether it is executable.
    pub is_executable: bool,
}

impl TreeFile {
    /// A file at `path`.
    pub fn new(path: impl Into<String>, digest: Digest, is_executable: bool) -> TreeFile {
        TreeFile { path: path.into(), digest, is_executable }
    }
}

/// What a full walk of a tree lists, counted over the DAG (each distinct directory once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Files, directories and symlinks below the root (the root itself not counted),
    /// saturating.
    pub entries: u64,
    /// Bytes of all files below the root, counted once per path, saturating.
    pub bytes: u64,
}

/// Directories fetched from a store, by digest.
#[derive(Debug, Default, Clone)]
pub struct Forest {
    directories: HashMap<Digest, Dir>,
    expansions: HashMap<Digest, Expansion>,
}

impl Forest {
    /// The Directory with this digest, if it was fetched.
    pub fn get(&self, digest: &Digest) -> Option<&Dir> {
        self.directories.get(digest)
    }

    /// How many distinct directories were fetched.
    pub fn len(&self) -> usize {
        self.directories.len()
    }

    /// Whether nothing was fetched.
    pub fn is_empty(&self) -> bool {
        self.directories.is_empty()
    }

    /// Every fetched directory, by digest.
    pub fn directories(&self) -> &HashMap<Digest, Dir> {
        &self.directories
    }

    /// What a full walk below the fetched directory `digest` lists (zero if not fetched).
    pub fn expansion(&self, digest: &Digest) -> Expansion {
        self.expansions.get(digest).copied().unwrap_or_default()
    }

    /// Every file below `root`, depth-first in canonical order.
    pub fn files(&self, root: &Digest) -> Result<Vec<TreeFile>, CasError> {
        let mut out = Vec::new();
        let mut stack = vec![(*root, String::new())];
        while let Some((digest, prefix)) = stack.pop() {
            let directory = self.get(&digest).ok_or(CasError::NotFound(digest))?;
            for file in &directory.files {
                out.push(TreeFile {
                    path: join(&prefix, &file.name),
                    digest: file.digest,
                    is_executable: file.is_executable,
                });
            }
            for dir in directory.directories.iter().rev() {
                stack.push((dir.digest, join(&prefix, &dir.name)));
            }
        }
        Ok(out)
    }
}

/// Joins a `/`-separated prefix and a name.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") }
}

/// Fetches every directory reachable from `roots`, each distinct one once, level by level in
/// batches: round trips grow with depth, not with the number of directories.
pub fn fetch_forest(
    cas: &(impl Cas + ?Sized),
    roots: &[Digest],
    limits: &TreeLimits,
) -> Result<Forest, CasError> {
    let mut forest =
        Forest { directories: fetch_levels(cas, roots, limits)?, expansions: HashMap::default() };
    let order = check_acyclic(&forest)?;
    forest.expansions = expansions(&forest.directories, &order);
    let mut seen = HashSet::default();
    let mut entries = 0u64;
    for root in roots.iter().filter(|r| seen.insert(**r)) {
        let one = forest.expansion(root).entries;
        limits.check_expanded(one, || format!("tree {root}"))?;
        entries = entries.saturating_add(one);
    }
    limits.check_expanded(entries, || format!("the {} trees fetched together", seen.len()))?;
    Ok(forest)
}

/// Reads and decodes exactly the directories `digests` (not what they hold) in batches, each
/// validated as [`fetch_forest`] validates: a forest whose directories' children may be
/// absent, for a walk that knows which ones it visits, and each directory's bytes as read
/// (for a rewrite that splices them). No expansion is counted.
pub fn fetch_directories(
    cas: &(impl Cas + ?Sized),
    digests: &[Digest],
    limits: &TreeLimits,
) -> Result<(Forest, Vec<(Digest, Bytes)>), CasError> {
    let mut wanted = digests.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    if wanted.len() > limits.max_directories {
        return Err(CasError::LimitExceeded(format!(
            "more than {} directories in one fetch",
            limits.max_directories
        )));
    }
    let names = Names::default();
    let blobs = read_in_batches(cas, &wanted)?;
    let directories = wanted
        .par_iter()
        .zip(blobs.par_iter())
        .map_init(
            || names.cache(),
            |names, (digest, data)| {
                decode_dir(digest, data, limits, Some(names))
                    .map_err(|err| err.context(format!("Directory {digest}")))
                    .map(|directory| (*digest, directory))
            },
        )
        .collect::<Result<HashMap<_, _>, _>>()?;
    let raw = wanted.into_iter().zip(blobs).collect();
    Ok((Forest { directories, expansions: HashMap::default() }, raw))
}

/// Reads and decodes the directories below `roots`, one level (one set of batches) at a time,
/// within the depth and count limits.
fn fetch_levels(
    cas: &(impl Cas + ?Sized),
    roots: &[Digest],
    limits: &TreeLimits,
) -> Result<HashMap<Digest, Dir>, CasError> {
    let mut directories: HashMap<Digest, Dir> = HashMap::default();
    // Where each directory was first seen, to name its path in errors.
    let mut parent: HashMap<Digest, (Digest, String)> = HashMap::default();
    let mut frontier: Vec<Digest> = {
        let mut seen = HashSet::default();
        roots.iter().copied().filter(|d| seen.insert(*d)).collect()
    };
    let root_set: HashSet<Digest> = frontier.iter().copied().collect();
    let names = Names::default();
    let mut depth = 0;
    while !frontier.is_empty() {
        if depth > limits.max_depth {
            return Err(CasError::LimitExceeded(format!(
                "tree deeper than {} levels below {}",
                limits.max_depth,
                describe(&parent, &frontier[0])
            )));
        }
        if directories.len() + frontier.len() > limits.max_directories {
            return Err(CasError::LimitExceeded(format!(
                "more than {} directories in one fetch",
                limits.max_directories
            )));
        }
        let mut next = Vec::new();
        for (digest, directory) in fetch_level(cas, &frontier, &parent, limits, &names)? {
            for child in &directory.directories {
                let child_digest = child.digest;
                if !directories.contains_key(&child_digest)
                    && !parent.contains_key(&child_digest)
                    && !root_set.contains(&child_digest)
                {
                    parent.insert(child_digest, (digest, child.name.to_string()));
                    next.push(child_digest);
                }
            }
            directories.insert(digest, directory);
        }
        frontier = next;
        depth += 1;
    }
    Ok(directories)
}

/// Reads and decodes one level, naming the path of a directory that is missing or invalid.
fn fetch_level(
    cas: &(impl Cas + ?Sized),
    frontier: &[Digest],
    parent: &HashMap<Digest, (Digest, String)>,
    limits: &TreeLimits,
    names: &Names,
) -> Result<Vec<(Digest, Dir)>, CasError> {
    read_in_batches(cas, frontier)
        .and_then(|blobs| {
            frontier
                .par_iter()
                .zip(blobs.par_iter())
                .map_init(
                    || names.cache(),
                    |names, (digest, data)| {
                        decode_dir(digest, data, limits, Some(names))
                            .map_err(|err| err.context(describe(parent, digest)))
                            .map(|directory| (*digest, directory))
                    },
                )
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|err| match err.root_cause() {
            CasError::NotFound(missing) => {
                let context = describe(parent, missing);
                err.context(context)
            }
            _ => err,
        })
}

/// What a full walk below each directory lists, counted bottom-up (children come after their
/// parents in `order`), each directory once.
fn expansions(directories: &HashMap<Digest, Dir>, order: &[Digest]) -> HashMap<Digest, Expansion> {
    let mut expansions: HashMap<Digest, Expansion> =
        HashMap::with_capacity_and_hasher(order.len(), Default::default());
    for digest in order.iter().rev() {
        let directory = &directories[digest];
        let mut total = Expansion {
            entries: (directory.files.len()
                + directory.directories.len()
                + directory.symlinks.len()) as u64,
            bytes: directory.files.iter().fold(0u64, |sum, f| sum.saturating_add(f.digest.size())),
        };
        for child in &directory.directories {
            let below = expansions[&child.digest];
            total.entries = total.entries.saturating_add(below.entries);
            total.bytes = total.bytes.saturating_add(below.bytes);
        }
        expansions.insert(*digest, total);
    }
    expansions
}

/// Fails if the forest has a cycle. Content addressing rules cycles out, but only if blobs hash
/// to their digests: a store read without verification may serve a Directory that lists
/// itself, and every walk of the forest relies on its being a DAG. Kahn's algorithm, linear in
/// directories and edges; returns the directories parents first.
pub(super) fn check_acyclic(forest: &Forest) -> Result<Vec<Digest>, CasError> {
    let mut children: HashMap<&Digest, Vec<Digest>> = HashMap::default();
    let mut parents: HashMap<&Digest, usize> = forest.directories.keys().map(|d| (d, 0)).collect();
    for (digest, directory) in &forest.directories {
        let mut seen = HashSet::default();
        for child in &directory.directories {
            let child = child.digest;
            if seen.insert(child) {
                if let Some(count) = parents.get_mut(&child) {
                    *count += 1;
                }
                children.entry(digest).or_default().push(child);
            }
        }
    }
    let mut ready: Vec<&Digest> =
        parents.iter().filter(|(_, n)| **n == 0).map(|(d, _)| *d).collect();
    let mut order = Vec::with_capacity(forest.directories.len());
    while let Some(digest) = ready.pop() {
        order.push(*digest);
        for child in children.get(digest).into_iter().flatten() {
            if let Some((key, count)) = parents.get_key_value(child).map(|(k, n)| (*k, *n)) {
                parents.insert(key, count - 1);
                if count == 1 {
                    ready.push(key);
                }
            }
        }
    }
    if order.len() < forest.directories.len() {
        let mut cyclic: Vec<&Digest> =
            parents.iter().filter(|(_, n)| **n > 0).map(|(d, _)| *d).collect();
        cyclic.sort();
        return Err(CasError::InvalidDirectory {
            digest: *cyclic[0],
            reason: "it contains itself through its subdirectories: the store served a blob \
                     that does not hash to its digest"
                .into(),
        });
    }
    Ok(order)
}

/// `Directory <digest> at <path>`, from the parent links, for error messages.
pub(super) fn describe(parent: &HashMap<Digest, (Digest, String)>, digest: &Digest) -> String {
    let mut path = Vec::new();
    let mut current = *digest;
    while let Some((up, name)) = parent.get(&current) {
        path.push(name.as_str());
        current = *up;
        if path.len() > 4096 {
            break;
        }
    }
    path.reverse();
    if path.is_empty() {
        format!("Directory {digest} (a root)")
    } else {
        format!("Directory {digest} at {}/ below root {current}", path.join("/"))
    }
}

/// What [`fetch_forest_partial`] could fetch: the forest of every root whose tree is whole, and
/// why each other root's is not.
#[derive(Debug)]
pub struct PartialForest {
    /// The trees that could be fetched.
    pub forest: Forest,
    /// The roots whose trees could not, by their position in the roots given, in that order.
    pub broken: Vec<(usize, CasError)>,
}

/// Fetches the trees of `roots` as one forest (see [`fetch_forest`]); where that fails, finds
/// the roots whose own trees fail (tree by tree: the error path only) and fetches the others.
/// Fails as a whole only where no single tree is to blame (a limit on all the trees together)
/// or where the trees changed between the reads.
pub fn fetch_forest_partial(
    cas: &(impl Cas + ?Sized),
    roots: &[Digest],
    limits: &TreeLimits,
) -> Result<PartialForest, CasError> {
    let whole = match fetch_forest(cas, roots, limits) {
        Ok(forest) => return Ok(PartialForest { forest, broken: Vec::new() }),
        Err(err) => err,
    };
    let checked: Vec<Result<(), CasError>> =
        roots.par_iter().map(|root| fetch_tree(cas, root, limits).map(drop)).collect();
    let broken: Vec<(usize, CasError)> = checked
        .into_iter()
        .enumerate()
        .filter_map(|(position, checked)| checked.err().map(|err| (position, err)))
        .collect();
    if broken.is_empty() {
        return Err(whole);
    }
    let whole_roots: Vec<Digest> = roots
        .iter()
        .enumerate()
        .filter(|(position, _)| broken.binary_search_by_key(position, |(p, _)| *p).is_err())
        .map(|(_, root)| *root)
        .collect();
    let forest = fetch_forest(cas, &whole_roots, limits).map_err(|err| {
        err.context(format!(
            "fetching the {} trees that were whole when read one by one",
            whole_roots.len()
        ))
    })?;
    Ok(PartialForest { forest, broken })
}

/// Fetches one tree (see [`fetch_forest`]).
pub fn fetch_tree(
    cas: &(impl Cas + ?Sized),
    root: &Digest,
    limits: &TreeLimits,
) -> Result<Forest, CasError> {
    fetch_forest(cas, std::slice::from_ref(root), limits)
}
