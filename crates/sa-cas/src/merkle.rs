//! Merkle trees of REAPI `Directory` messages: canonical construction and validation, batched
//! level-by-level fetching, ingest from disk, and materialization to disk.
//!
//! Structure is kept apart from hashing: [`DirectoryBuilder`] makes canonical `Directory`
//! values, [`directory_blob`] is the one place they are encoded and hashed, and
//! [`decode_directory`] is the one place outside data becomes a `Directory` (decoded and
//! validated, so every later use may assume safe, unique, sorted names).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use rayon::prelude::*;
use sa_proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};

use crate::confined::{ConfinedDir, EntryKind};
use crate::digest::{Digest, DigestFunction};
use crate::error::{CasError, io_error};
use crate::store::{Blob, Cas};

/// Bounds on the trees this module accepts; exceeding one is an error, not an out-of-memory kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeLimits {
    /// The deepest nesting of directories below a root.
    pub max_depth: usize,
    /// The most entries (files, directories, symlinks) in one Directory.
    pub max_entries: usize,
    /// The most distinct directories in one fetch.
    pub max_directories: usize,
    /// The most entries (files, directories, symlinks) the trees of one operation expand to,
    /// counting every path a walk lists, not distinct directories: what bounds a Merkle DAG
    /// whose few blobs name 2^40 paths. Checked on the counts before any walk allocates.
    pub max_expanded_entries: u64,
}

/// The default of [`TreeLimits::max_expanded_entries`]: far above the largest real build
/// (the benchmark's large workload lists 6M input file references in one run).
pub const DEFAULT_MAX_EXPANDED_ENTRIES: u64 = 100_000_000;

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits {
            max_depth: 256,
            max_entries: 1 << 20,
            max_directories: 50_000_000,
            max_expanded_entries: DEFAULT_MAX_EXPANDED_ENTRIES,
        }
    }
}

impl TreeLimits {
    /// Fails unless `entries`, what `what` expands to, is within
    /// [`max_expanded_entries`](Self::max_expanded_entries).
    pub fn check_expanded(
        &self,
        entries: u64,
        what: impl FnOnce() -> String,
    ) -> Result<(), CasError> {
        if entries > self.max_expanded_entries {
            return Err(CasError::LimitExceeded(format!(
                "{} expands to {entries} entries (files, directories, symlinks), more than the \
                 expanded-entries limit of {}",
                what(),
                self.max_expanded_entries
            )));
        }
        Ok(())
    }
}

/// Whether `name` is one safe path segment: not empty, `.` or `..`, no `/` and no NUL.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("empty name".to_owned())
    } else if name == "." || name == ".." {
        Err(format!("name {name:?} is not allowed"))
    } else if name.contains('/') {
        Err(format!("name {name:?} contains '/'"))
    } else if name.contains('\0') {
        Err(format!("name {name:?} contains NUL"))
    } else {
        Ok(())
    }
}

/// Checks that a decoded `Directory` is canonical and safe: every name one safe segment,
/// each list sorted by name with no duplicates, no name in two lists, valid digests, non-empty
/// symlink targets.
pub fn validate_directory(
    function: DigestFunction,
    digest: &Digest,
    directory: &Directory,
    limits: &TreeLimits,
) -> Result<(), CasError> {
    check_names(digest, directory, limits)?;
    compact(function, digest, directory).map(|_| ())
}

/// Every check of [`validate_directory`] but the digests and symlink targets (which
/// [`compact`] checks while converting).
fn check_names(
    digest: &Digest,
    directory: &Directory,
    limits: &TreeLimits,
) -> Result<(), CasError> {
    let invalid = |reason: String| CasError::InvalidDirectory { digest: *digest, reason };
    let entries = directory.files.len() + directory.directories.len() + directory.symlinks.len();
    if entries > limits.max_entries {
        return Err(CasError::LimitExceeded(format!(
            "Directory {digest} has {entries} entries, the limit is {}",
            limits.max_entries
        )));
    }
    fn sorted<'a>(kind: &str, names: impl Iterator<Item = &'a str>) -> Result<(), String> {
        let mut previous: Option<&str> = None;
        for name in names {
            check_name(name).map_err(|reason| format!("{kind} {reason}"))?;
            if let Some(previous) = previous {
                if previous == name {
                    return Err(format!("{kind} {name:?} appears twice"));
                }
                if previous > name {
                    return Err(format!("{kind}s not sorted: {previous:?} before {name:?}"));
                }
            }
            previous = Some(name);
        }
        Ok(())
    }
    sorted("file", directory.files.iter().map(|f| f.name.as_str())).map_err(invalid)?;
    sorted("directory", directory.directories.iter().map(|d| d.name.as_str())).map_err(invalid)?;
    sorted("symlink", directory.symlinks.iter().map(|s| s.name.as_str())).map_err(invalid)?;
    if !directory.directories.is_empty() || !directory.symlinks.is_empty() {
        let mut names = HashSet::with_capacity(entries);
        let all = directory.files.iter().map(|f| &f.name);
        let all = all.chain(directory.directories.iter().map(|d| &d.name));
        for name in all.chain(directory.symlinks.iter().map(|s| &s.name)) {
            if !names.insert(name) {
                return Err(invalid(format!("name {name:?} is used by two kinds of entry")));
            }
        }
    }
    Ok(())
}

/// The compact form of a Directory whose names were checked: digests parsed (an error names
/// the entry), symlink targets checked.
fn compact(
    function: DigestFunction,
    digest: &Digest,
    directory: &Directory,
) -> Result<Dir, CasError> {
    let invalid = |reason: String| CasError::InvalidDirectory { digest: *digest, reason };
    let files = directory
        .files
        .iter()
        .map(|file| {
            let digest =
                Digest::from_proto_field(function, file.digest.as_ref(), "FileNode.digest")
                    .map_err(|err| invalid(format!("file {:?}: {err}", file.name)))?;
            Ok(FileEntry {
                name: file.name.as_str().into(),
                digest,
                is_executable: file.is_executable,
            })
        })
        .collect::<Result<_, CasError>>()?;
    let directories = directory
        .directories
        .iter()
        .map(|dir| {
            let digest =
                Digest::from_proto_field(function, dir.digest.as_ref(), "DirectoryNode.digest")
                    .map_err(|err| invalid(format!("directory {:?}: {err}", dir.name)))?;
            Ok(DirEntry { name: dir.name.as_str().into(), digest })
        })
        .collect::<Result<_, CasError>>()?;
    let symlinks = directory
        .symlinks
        .iter()
        .map(|link| {
            if link.target.is_empty() || link.target.contains('\0') {
                return Err(invalid(format!("symlink {:?} has an empty or NUL target", link.name)));
            }
            Ok(SymlinkEntry {
                name: link.name.as_str().into(),
                target: link.target.as_str().into(),
            })
        })
        .collect::<Result<_, CasError>>()?;
    Ok(Dir { files, directories, symlinks })
}

/// A validated Directory as the tree walks hold it: names and parsed digests only, a fraction
/// of the memory of the decoded proto, each digest parsed once. Lists are in canonical order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dir {
    /// The files.
    pub files: Vec<FileEntry>,
    /// The subdirectories.
    pub directories: Vec<DirEntry>,
    /// The symlinks.
    pub symlinks: Vec<SymlinkEntry>,
}

/// A file of a [`Dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// One safe path segment.
    pub name: Box<str>,
    /// The content's digest.
    pub digest: Digest,
    /// The executable bit.
    pub is_executable: bool,
}

/// A subdirectory of a [`Dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// One safe path segment.
    pub name: Box<str>,
    /// The subdirectory's digest.
    pub digest: Digest,
}

/// A symlink of a [`Dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymlinkEntry {
    /// One safe path segment.
    pub name: Box<str>,
    /// The target, not empty, as stored (checked when materialized).
    pub target: Box<str>,
}

/// Decodes and validates a `Directory` blob (the one entry point for outside Directory data).
pub fn decode_directory(
    digest: &Digest,
    data: &[u8],
    limits: &TreeLimits,
) -> Result<Directory, CasError> {
    let directory = Directory::decode(data).map_err(|source| CasError::Decode {
        what: "Directory",
        digest: *digest,
        source,
    })?;
    validate_directory(digest.function(), digest, &directory, limits)?;
    Ok(directory)
}

/// Decodes and validates a `Directory` blob into the compact form the walks hold.
fn decode_dir(digest: &Digest, data: &[u8], limits: &TreeLimits) -> Result<Dir, CasError> {
    let directory = Directory::decode(data).map_err(|source| CasError::Decode {
        what: "Directory",
        digest: *digest,
        source,
    })?;
    check_names(digest, &directory, limits)?;
    compact(digest.function(), digest, &directory)
}

/// The canonical encoding of a `Directory` as a blob (prost writes fields in tag order and
/// omits defaults, which is REAPI's canonical form once the lists are sorted).
pub fn directory_blob(function: DigestFunction, directory: &Directory) -> Blob {
    Blob::new(function, directory.encode_to_vec())
}

/// Builds canonical `Directory` values: entries in any order, sorted and checked on `build`.
#[derive(Debug, Default)]
pub struct DirectoryBuilder {
    directory: Directory,
}

impl DirectoryBuilder {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file.
    pub fn file(mut self, name: &str, digest: &Digest, is_executable: bool) -> Self {
        self.directory.files.push(FileNode {
            name: name.to_owned(),
            digest: Some(digest.to_proto()),
            is_executable,
            ..Default::default()
        });
        self
    }

    /// Adds a subdirectory.
    pub fn directory(mut self, name: &str, digest: &Digest) -> Self {
        self.directory
            .directories
            .push(DirectoryNode { name: name.to_owned(), digest: Some(digest.to_proto()) });
        self
    }

    /// Adds a symlink.
    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        self.directory.symlinks.push(SymlinkNode {
            name: name.to_owned(),
            target: target.to_owned(),
            ..Default::default()
        });
        self
    }

    /// Sorts the entries and checks the result as [`validate_directory`] does.
    pub fn build(mut self, function: DigestFunction) -> Result<Directory, CasError> {
        self.directory.files.sort_by(|a, b| a.name.cmp(&b.name));
        self.directory.directories.sort_by(|a, b| a.name.cmp(&b.name));
        self.directory.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
        let blob = directory_blob(function, &self.directory);
        validate_directory(function, blob.digest(), &self.directory, &TreeLimits::default())?;
        Ok(self.directory)
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

    /// Every file below `root` as `(path, digest, is_executable)`, depth-first in canonical
    /// order (paths joined with `/`).
    pub fn files(&self, root: &Digest) -> Result<Vec<(String, Digest, bool)>, CasError> {
        let mut out = Vec::new();
        let mut stack = vec![(*root, String::new())];
        while let Some((digest, prefix)) = stack.pop() {
            let directory = self.get(&digest).ok_or(CasError::NotFound(digest))?;
            for file in &directory.files {
                out.push((join(&prefix, &file.name), file.digest, file.is_executable));
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
    let mut forest = Forest { directories: HashMap::new(), expansions: HashMap::new() };
    // Where each directory was first seen, to name its path in errors.
    let mut parent: HashMap<Digest, (Digest, String)> = HashMap::new();
    let mut frontier: Vec<Digest> = {
        let mut seen = HashSet::new();
        roots.iter().copied().filter(|d| seen.insert(*d)).collect()
    };
    let mut depth = 0;
    while !frontier.is_empty() {
        if depth > limits.max_depth {
            return Err(CasError::LimitExceeded(format!(
                "tree deeper than {} levels below {}",
                limits.max_depth,
                describe(&parent, &frontier[0])
            )));
        }
        if forest.directories.len() + frontier.len() > limits.max_directories {
            return Err(CasError::LimitExceeded(format!(
                "more than {} directories in one fetch",
                limits.max_directories
            )));
        }
        let fetched = read_in_batches(cas, &frontier)
            .and_then(|blobs| {
                frontier
                    .par_iter()
                    .zip(blobs.par_iter())
                    .map(|(digest, data)| {
                        decode_dir(digest, data, limits)
                            .map_err(|err| err.context(describe(&parent, digest)))
                            .map(|directory| (*digest, directory))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|err| match err.root_cause() {
                CasError::NotFound(missing) => {
                    let context = describe(&parent, missing);
                    err.context(context)
                }
                _ => err,
            })?;
        let mut next = Vec::new();
        for (digest, directory) in fetched {
            for child in &directory.directories {
                let child_digest = child.digest;
                if !forest.directories.contains_key(&child_digest)
                    && !parent.contains_key(&child_digest)
                    && !roots.contains(&child_digest)
                {
                    parent.insert(child_digest, (digest, child.name.to_string()));
                    next.push(child_digest);
                }
            }
            forest.directories.insert(digest, directory);
        }
        frontier = next;
        depth += 1;
    }
    let order = check_acyclic(&forest)?;
    // Children come after their parents in `order`: count bottom-up, each directory once.
    let mut expansions: HashMap<Digest, Expansion> = HashMap::with_capacity(order.len());
    for digest in order.iter().rev() {
        let directory = &forest.directories[digest];
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
    forest.expansions = expansions;
    let mut seen = HashSet::new();
    let mut entries = 0u64;
    for root in roots.iter().filter(|r| seen.insert(**r)) {
        let one = forest.expansion(root).entries;
        limits.check_expanded(one, || format!("tree {root}"))?;
        entries = entries.saturating_add(one);
    }
    limits.check_expanded(entries, || format!("the {} trees fetched together", seen.len()))?;
    Ok(forest)
}

/// Fails if the forest has a cycle. Content addressing rules cycles out, but only if blobs hash
/// to their digests: a store read without verification may serve a Directory that lists
/// itself, and every walk of the forest relies on its being a DAG. Kahn's algorithm, linear in
/// directories and edges; returns the directories parents first.
fn check_acyclic(forest: &Forest) -> Result<Vec<Digest>, CasError> {
    let mut children: HashMap<&Digest, Vec<Digest>> = HashMap::new();
    let mut parents: HashMap<&Digest, usize> = forest.directories.keys().map(|d| (d, 0)).collect();
    for (digest, directory) in &forest.directories {
        let mut seen = HashSet::new();
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
fn describe(parent: &HashMap<Digest, (Digest, String)>, digest: &Digest) -> String {
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

/// Fetches one tree (see [`fetch_forest`]).
pub fn fetch_tree(
    cas: &(impl Cas + ?Sized),
    root: &Digest,
    limits: &TreeLimits,
) -> Result<Forest, CasError> {
    fetch_forest(cas, std::slice::from_ref(root), limits)
}

/// Reads blobs in batches bounded by the store's batch size, the batches in parallel; blobs
/// larger than a batch are read alone.
pub fn read_in_batches(
    cas: &(impl Cas + ?Sized),
    digests: &[Digest],
) -> Result<Vec<Bytes>, CasError> {
    let batches = batch_ranges(digests.iter().map(Digest::size), cas.max_batch_bytes());
    let parts: Vec<Vec<Bytes>> = batches
        .par_iter()
        .map(|range| cas.read_blobs(&digests[range.clone()]))
        .collect::<Result<_, _>>()?;
    Ok(parts.into_iter().flatten().collect())
}

/// Writes blobs in batches bounded by the store's batch size.
pub fn write_in_batches(cas: &(impl Cas + ?Sized), blobs: &[Blob]) -> Result<(), CasError> {
    let batches = batch_ranges(blobs.iter().map(|b| b.digest().size()), cas.max_batch_bytes());
    batches.par_iter().try_for_each(|range| cas.write_blobs(&blobs[range.clone()]))
}

/// Splits a sequence of sizes into consecutive ranges of at most `max_bytes` (a larger item
/// alone) and at most 10,000 items.
pub fn batch_ranges(
    sizes: impl Iterator<Item = u64>,
    max_bytes: u64,
) -> Vec<std::ops::Range<usize>> {
    const MAX_ITEMS: usize = 10_000;
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    let mut end = 0;
    for (i, size) in sizes.enumerate() {
        // Per-item overhead in a batch request: digest and framing, about 100 bytes.
        let cost = size.saturating_add(100);
        if i > start && (bytes.saturating_add(cost) > max_bytes || i - start >= MAX_ITEMS) {
            ranges.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(cost);
        end = i + 1;
    }
    if end > start {
        ranges.push(start..end);
    }
    ranges
}

enum DiskEntry {
    /// A file, by its path relative to the ingested root.
    File {
        name: String,
        rel: String,
        executable: bool,
    },
    Dir {
        name: String,
        index: usize,
    },
    Symlink {
        name: String,
        target: String,
    },
}

/// Stores the directory at `path` as a Merkle tree and returns its root digest (see
/// [`ingest_dir`]).
pub fn ingest(
    cas: &(impl Cas + ?Sized),
    path: &Path,
    limits: &TreeLimits,
) -> Result<Digest, CasError> {
    ingest_dir(cas, &ConfinedDir::open(path)?, limits)
}

/// Stores the directory `top` as a Merkle tree and returns its root digest. Nothing below
/// `top` is followed: symlinks are kept as symlinks, every file and directory is opened
/// through its parent's descriptor with no-follow semantics. Files are hashed in parallel;
/// only blobs the store lacks are written. Other special files, non-UTF-8 names and unsafe
/// names are errors naming the path; so are trees beyond `limits`.
pub fn ingest_dir(
    cas: &(impl Cas + ?Sized),
    top: &ConfinedDir,
    limits: &TreeLimits,
) -> Result<Digest, CasError> {
    let function = cas.digest_function();
    // Scan: directories in pre-order; each holds its entries.
    let mut dirs: Vec<Vec<DiskEntry>> = Vec::new();
    let mut total = 0u64;
    scan(top, "", &mut dirs, 0, &mut total, limits)?;
    let files: Vec<&str> = dirs
        .iter()
        .flatten()
        .filter_map(|e| match e {
            DiskEntry::File { rel, .. } => Some(rel.as_str()),
            _ => None,
        })
        .collect();
    let open = |rel: &str| -> Result<fs::File, CasError> {
        let (parent, name) = top.parent_of(rel, false)?.ok_or_else(|| CasError::Io {
            path: top.child_path(rel),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "vanished while ingested"),
        })?;
        parent.open_file(name)
    };
    // Hash every file in parallel, through a descriptor opened without following anything.
    let digests: Vec<Digest> = files
        .par_iter()
        .map(|rel| function.hash_file(&ConfinedDir::fd_path(&open(rel)?)))
        .collect::<Result<_, _>>()?;
    let file_digest: HashMap<&str, Digest> =
        files.iter().copied().zip(digests.iter().copied()).collect();
    // Build directories bottom-up (children have larger indices in pre-order).
    let mut built: Vec<Option<Digest>> = vec![None; dirs.len()];
    let mut dir_blobs = Vec::with_capacity(dirs.len());
    for index in (0..dirs.len()).rev() {
        let mut builder = DirectoryBuilder::new();
        for entry in &dirs[index] {
            builder = match entry {
                DiskEntry::File { name, rel, executable } => {
                    builder.file(name, &file_digest[rel.as_str()], *executable)
                }
                DiskEntry::Dir { name, index } => {
                    builder.directory(name, &built[*index].expect("children are built first"))
                }
                DiskEntry::Symlink { name, target } => builder.symlink(name, target),
            };
        }
        let blob = directory_blob(function, &builder.build(function)?);
        built[index] = Some(*blob.digest());
        dir_blobs.push(blob);
    }
    let root = built[0].expect("the root is built");
    // Upload what is missing.
    let mut wanted: Vec<Digest> = dir_blobs.iter().map(|b| *b.digest()).collect();
    wanted.extend(digests.iter().copied());
    let missing: HashSet<Digest> = cas.find_missing(&wanted)?.into_iter().collect();
    let dir_blobs: Vec<Blob> =
        dir_blobs.into_iter().filter(|b| missing.contains(b.digest())).collect();
    write_in_batches(cas, &dir_blobs)?;
    let mut uploaded = HashSet::new();
    let to_upload: Vec<(&str, Digest)> = files
        .iter()
        .zip(digests.iter())
        .filter(|(_, d)| missing.contains(d) && uploaded.insert(**d))
        .map(|(p, d)| (*p, *d))
        .collect();
    let max = cas.max_batch_bytes();
    let (small, large): (Vec<_>, Vec<_>) =
        to_upload.into_iter().partition(|(_, d)| d.size() < max / 4);
    large.par_iter().try_for_each(|(rel, digest)| {
        cas.write_file(digest, &ConfinedDir::fd_path(&open(rel)?)).map_err(|err| {
            err.context(format!("{} changed while being ingested", top.child_path(rel).display()))
        })
    })?;
    let sizes = small.iter().map(|(_, d)| d.size());
    batch_ranges(sizes, max).par_iter().try_for_each(|range| {
        let blobs = small[range.clone()]
            .iter()
            .map(|(rel, digest)| {
                use std::io::Read;
                let path = top.child_path(rel);
                let mut data = Vec::with_capacity(digest.size() as usize);
                open(rel)?.read_to_end(&mut data).map_err(io_error(&path))?;
                let blob = Blob::new(function, data);
                if blob.digest() != digest {
                    return Err(CasError::DigestMismatch {
                        expected: *digest,
                        actual: *blob.digest(),
                    }
                    .context(format!("{} changed while being ingested", path.display())));
                }
                Ok(blob)
            })
            .collect::<Result<Vec<_>, CasError>>()?;
        cas.write_blobs(&blobs)
    })?;
    Ok(root)
}

/// Stores a tree holding `files` (slash-separated relative paths with their digests and
/// executable bits) and returns its root digest. The file blobs must already be in the store;
/// only Directory blobs the store lacks are written. Empty, `.`, `..` segments, a path given
/// twice and a file that is also a directory are errors naming the path.
pub fn build_tree(
    cas: &(impl Cas + ?Sized),
    files: &[(String, Digest, bool)],
) -> Result<Digest, CasError> {
    #[derive(Default)]
    struct Node {
        files: BTreeMap<String, (Digest, bool)>,
        dirs: BTreeMap<String, Node>,
    }
    let unsafe_path =
        |path: &str, reason: String| CasError::UnsafePath { path: path.into(), reason };
    let mut root = Node::default();
    for (path, digest, executable) in files {
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments {
            check_name(segment).map_err(|reason| unsafe_path(path, reason))?;
        }
        let (name, parents) = segments.split_last().expect("split yields one segment at least");
        let mut node = &mut root;
        for parent in parents {
            node = node.dirs.entry((*parent).to_owned()).or_default();
        }
        if node.files.insert((*name).to_owned(), (*digest, *executable)).is_some() {
            return Err(unsafe_path(path, "the path is given twice".into()));
        }
    }
    fn encode(
        node: &Node,
        function: DigestFunction,
        out: &mut Vec<Blob>,
    ) -> Result<Digest, CasError> {
        let mut builder = DirectoryBuilder::new();
        for (name, child) in &node.dirs {
            builder = builder.directory(name, &encode(child, function, out)?);
        }
        for (name, (digest, executable)) in &node.files {
            builder = builder.file(name, digest, *executable);
        }
        let blob = directory_blob(function, &builder.build(function)?);
        let digest = *blob.digest();
        out.push(blob);
        Ok(digest)
    }
    let mut blobs = Vec::new();
    let digest = encode(&root, cas.digest_function(), &mut blobs)?;
    let wanted: Vec<Digest> = blobs.iter().map(|b| *b.digest()).collect();
    let missing: HashSet<Digest> = cas.find_missing(&wanted)?.into_iter().collect();
    let mut seen = HashSet::new();
    blobs.retain(|b| missing.contains(b.digest()) && seen.insert(*b.digest()));
    write_in_batches(cas, &blobs)?;
    Ok(digest)
}

fn scan(
    dir: &ConfinedDir,
    rel: &str,
    dirs: &mut Vec<Vec<DiskEntry>>,
    depth: usize,
    total: &mut u64,
    limits: &TreeLimits,
) -> Result<(), CasError> {
    if depth > limits.max_depth {
        return Err(CasError::LimitExceeded(format!(
            "{} is nested deeper than {} levels",
            dir.path().display(),
            limits.max_depth
        )));
    }
    let index = dirs.len();
    dirs.push(Vec::new());
    let listing = dir.list()?;
    if listing.len() > limits.max_entries {
        return Err(CasError::LimitExceeded(format!(
            "{} has {} entries, the limit is {}",
            dir.path().display(),
            listing.len(),
            limits.max_entries
        )));
    }
    *total += listing.len() as u64;
    limits.check_expanded(*total, || format!("{}", dir.path().display()))?;
    let mut entries = Vec::with_capacity(listing.len());
    for (name, kind) in listing {
        let entry_rel = join(rel, &name);
        match kind {
            EntryKind::File { executable } => {
                entries.push(DiskEntry::File { name, rel: entry_rel, executable });
            }
            EntryKind::Directory => {
                let child = dirs.len();
                scan(&dir.subdir(&name)?, &entry_rel, dirs, depth + 1, total, limits)?;
                entries.push(DiskEntry::Dir { name, index: child });
            }
            EntryKind::Symlink => {
                let target = dir.read_link(&name)?;
                entries.push(DiskEntry::Symlink { name, target });
            }
            EntryKind::Other => {
                return Err(CasError::UnsafePath {
                    path: dir.child_path(&name),
                    reason: "not a regular file, directory or symlink".into(),
                });
            }
        }
    }
    dirs[index] = entries;
    Ok(())
}

/// Options of [`materialize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaterializeOptions {
    /// Allow symlinks with absolute targets (they point outside the tree by definition).
    pub allow_absolute_symlinks: bool,
    /// Allow relative symlinks whose target, resolved through the tree's own directories and
    /// symlinks, leaves the tree.
    pub allow_escaping_symlinks: bool,
    /// Bounds on the tree.
    pub limits: TreeLimits,
    /// The most bytes of file content one materialization writes.
    pub max_bytes: u64,
}

/// The default of [`MaterializeOptions::max_bytes`]: 64 GiB.
pub const DEFAULT_MAX_MATERIALIZE_BYTES: u64 = 64 << 30;

impl Default for MaterializeOptions {
    fn default() -> Self {
        MaterializeOptions {
            allow_absolute_symlinks: false,
            allow_escaping_symlinks: false,
            limits: TreeLimits::default(),
            max_bytes: DEFAULT_MAX_MATERIALIZE_BYTES,
        }
    }
}

/// Writes the tree `root` into `target`, which must not exist or be an empty directory, and
/// returns it opened. Never writes outside `target`: every entry is created exclusively
/// through its parent's descriptor (nothing existing is followed or overwritten), and a
/// symlink that is absolute or whose target, resolved through the tree's own directories and
/// symlinks, leaves the tree is refused unless allowed. The expanded size of the tree (entries
/// and bytes) is checked against the limits before anything is written.
pub fn materialize(
    cas: &(impl Cas + ?Sized),
    root: &Digest,
    target: &Path,
    options: &MaterializeOptions,
) -> Result<ConfinedDir, CasError> {
    let forest = fetch_tree(cas, root, &options.limits)?;
    check_bytes(&forest, root, options)?;
    let top = match fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CasError::UnsafePath {
                    path: target.to_path_buf(),
                    reason: "materialize target is not empty".into(),
                });
            }
            ConfinedDir::open(target)?
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => ConfinedDir::create(target)?,
        Err(err) => return Err(io_error(target)(err)),
    };
    populate(cas, &forest, root, &top, options)?;
    Ok(top)
}

/// Like [`materialize`], into the new directory `name` of `parent` (created here; it must not
/// exist), so no path outside `parent`'s descriptor is ever resolved.
pub fn materialize_in(
    cas: &(impl Cas + ?Sized),
    root: &Digest,
    parent: &ConfinedDir,
    name: &str,
    options: &MaterializeOptions,
) -> Result<ConfinedDir, CasError> {
    let forest = fetch_tree(cas, root, &options.limits)?;
    check_bytes(&forest, root, options)?;
    parent.mkdir(name)?;
    let top = parent.subdir(name)?;
    populate(cas, &forest, root, &top, options)?;
    Ok(top)
}

fn check_bytes(
    forest: &Forest,
    root: &Digest,
    options: &MaterializeOptions,
) -> Result<(), CasError> {
    let expansion = forest.expansion(root);
    if expansion.bytes > options.max_bytes {
        return Err(CasError::LimitExceeded(format!(
            "tree {root} holds {} bytes of files, more than the materialize limit of {} bytes",
            expansion.bytes, options.max_bytes
        )));
    }
    Ok(())
}

/// Creates the tree `root` of `forest` in the empty directory `top`.
fn populate(
    cas: &(impl Cas + ?Sized),
    forest: &Forest,
    root: &Digest,
    top: &ConfinedDir,
    options: &MaterializeOptions,
) -> Result<(), CasError> {
    // Create directories and symlinks; collect files. Each stack entry carries the chain of
    // directories from the root, against which its symlinks are resolved.
    let mut files: Vec<(String, Digest, bool)> = Vec::new();
    let mut stack: Vec<(String, Vec<Digest>)> = vec![(String::new(), vec![*root])];
    while let Some((rel, chain)) = stack.pop() {
        let digest = *chain.last().expect("a chain holds the root at least");
        let directory = forest.get(&digest).ok_or(CasError::NotFound(digest))?;
        let here = open_made(top, &rel)?;
        for file in &directory.files {
            files.push((join(&rel, &file.name), file.digest, file.is_executable));
        }
        for link in &directory.symlinks {
            check_symlink(forest, &chain, &link.target, options).map_err(|reason| {
                CasError::UnsafePath { path: top.child_path(&join(&rel, &link.name)), reason }
            })?;
            here.symlink(&link.name, &link.target)?;
        }
        for dir in &directory.directories {
            here.mkdir(&dir.name)?;
            let mut below = chain.clone();
            below.push(dir.digest);
            stack.push((join(&rel, &dir.name), below));
        }
    }
    // Write files, their blobs read in batches; large blobs streamed. Files are in directory
    // order, so consecutive ones share their parent's descriptor.
    let max = cas.max_batch_bytes();
    let (small, large): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|(_, d, _)| d.size() < max / 4);
    let create = |parent: &mut Option<(String, ConfinedDir)>, rel: &str, executable: bool| {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if parent.as_ref().is_none_or(|(open, _)| open != dir) {
            *parent = Some((dir.to_owned(), open_made(top, dir)?));
        }
        parent.as_ref().expect("just opened").1.create_file(name, executable)
    };
    large.par_iter().try_for_each(|(rel, digest, executable)| {
        let mut file = create(&mut None, rel, *executable)?;
        cas.read_blob_to(digest, &mut file)
    })?;
    batch_ranges(small.iter().map(|(_, d, _)| d.size()), max).par_iter().try_for_each(|range| {
        let part = &small[range.clone()];
        let digests: Vec<Digest> = part.iter().map(|(_, d, _)| *d).collect();
        let blobs = cas.read_blobs(&digests)?;
        let mut parent = None;
        for ((rel, _, executable), data) in part.iter().zip(blobs) {
            use std::io::Write;
            create(&mut parent, rel, *executable)?
                .write_all(&data)
                .map_err(io_error(top.child_path(rel)))?;
        }
        Ok(())
    })
}

/// Opens a directory this materialization made (its vanishing is an error, not a skip).
fn open_made(top: &ConfinedDir, rel: &str) -> Result<ConfinedDir, CasError> {
    top.walk(rel, false)?.ok_or_else(|| CasError::UnsafePath {
        path: top.child_path(rel),
        reason: "vanished while being materialized".into(),
    })
}

/// The most symlinks one resolution follows (Linux's own limit).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Checks a symlink target found in the directory at the end of `chain` (root first) by
/// resolving it as the kernel would, through the tree's own directories and symlinks: it may
/// not be absolute, nor climb above the root at any step. Components that do not exist (or are
/// files) are taken as directories the command might create, so the check holds whatever it
/// creates.
fn check_symlink(
    forest: &Forest,
    chain: &[Digest],
    target: &str,
    options: &MaterializeOptions,
) -> Result<(), String> {
    let mut hops = 0;
    let mut position: Vec<Option<Digest>> = chain.iter().copied().map(Some).collect();
    match resolve(forest, &mut position, target, &mut hops) {
        Ok(()) => Ok(()),
        Err(Escape::Absolute) if options.allow_absolute_symlinks => Ok(()),
        Err(Escape::Climbs) if options.allow_escaping_symlinks => Ok(()),
        Err(Escape::Absolute) => Err(format!("symlink target {target:?} is absolute")),
        Err(Escape::Climbs) => Err(format!(
            "symlink target {target:?} leads out of the tree (resolved through the tree's own \
             symlinks)"
        )),
        Err(Escape::Loop) => {
            Err(format!("symlink target {target:?} needs more than {MAX_SYMLINK_HOPS} symlinks"))
        }
    }
}

enum Escape {
    Absolute,
    Climbs,
    Loop,
}

/// Moves `position` (directories from the root; `None` for one the tree does not hold) along
/// `target`, following the tree's symlinks.
fn resolve(
    forest: &Forest,
    position: &mut Vec<Option<Digest>>,
    target: &str,
    hops: &mut u32,
) -> Result<(), Escape> {
    if target.starts_with('/') {
        return Err(Escape::Absolute);
    }
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if position.len() <= 1 {
                    return Err(Escape::Climbs);
                }
                position.pop();
            }
            name => {
                let here = position.last().copied().flatten().and_then(|d| forest.get(&d));
                let Some(directory) = here else {
                    position.push(None);
                    continue;
                };
                let find_dir = directory.directories.binary_search_by(|d| (*d.name).cmp(name));
                let find_link = directory.symlinks.binary_search_by(|s| (*s.name).cmp(name));
                if let Ok(i) = find_dir {
                    position.push(Some(directory.directories[i].digest));
                } else if let Ok(i) = find_link {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return Err(Escape::Loop);
                    }
                    resolve(forest, position, &directory.symlinks[i].target, hops)?;
                } else {
                    position.push(None);
                }
            }
        }
    }
    Ok(())
}
