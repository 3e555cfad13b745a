//! Storing a directory on disk as a Merkle tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;

use rayon::prelude::*;

use super::batch::*;
use super::builder::DirectoryBuilder;
use super::codec::*;
use super::forest::*;
use super::names::*;
use crate::confined::{ConfinedDir, EntryKind, Missing};
use crate::digest::{Digest, DigestFunction};
use crate::error::{CasError, io_error};
use crate::store::{Blob, Cas};

pub(super) enum DiskEntry {
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
    ingest_with(cas, top, limits, None)
}

/// What a file was when it was last hashed: if its device, inode, size, mode and both times
/// are the same, its content is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mode: u32,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Digests of the files an earlier ingest of the same directory hashed, by path and stamp
/// (device, inode, size, mode, modification and change times), so a directory ingested again (a workspace watched for changes) costs a `stat`
/// per unchanged file, not a read. A file changed less than two seconds before it was hashed
/// is not remembered (its next change could keep the same times: git's "racily clean"). Only
/// the files of the newest ingest are kept.
#[derive(Debug, Default)]
pub struct IngestCache {
    files: std::sync::Mutex<HashMap<String, (Stamp, Digest)>>,
    hits: std::sync::atomic::AtomicU64,
}

impl IngestCache {
    /// Files hashed by an earlier ingest and found unchanged, so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The digest of the file `rel` (opened as `file`; `path` names it in errors), and its
    /// stamp when it may be remembered.
    fn digest(
        &self,
        function: DigestFunction,
        file: &fs::File,
        rel: &str,
        path: &Path,
    ) -> Result<(Digest, Option<Stamp>), CasError> {
        let io_err = |source: std::io::Error| CasError::Io { path: path.to_path_buf(), source };
        let stat = rustix::fs::fstat(file).map_err(|e| io_err(e.into()))?;
        let stamp = Stamp {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
            size: stat.st_size as u64,
            mode: stat.st_mode as u32,
            mtime: (stat.st_mtime as i64, stat.st_mtime_nsec as i64),
            ctime: (stat.st_ctime as i64, stat.st_ctime_nsec as i64),
        };
        let known = self.files.lock().unwrap_or_else(|e| e.into_inner()).get(rel).copied();
        if let Some((known, digest)) = known
            && known == stamp
            && digest.function() == function
        {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok((digest, Some(stamp)));
        }
        let digest = function.hash_file(&ConfinedDir::fd_path(file))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let settled = stamp.mtime.0 < now - 2;
        Ok((digest, settled.then_some(stamp)))
    }
}

/// [`ingest_dir`], hashing only the files `cache` does not know unchanged, and remembering
/// this ingest's files in it.
pub fn ingest_cached(
    cas: &(impl Cas + ?Sized),
    top: &ConfinedDir,
    limits: &TreeLimits,
    cache: &IngestCache,
) -> Result<Digest, CasError> {
    ingest_with(cas, top, limits, Some(cache))
}

/// [`ingest_dir`] with or without a cache: without one, a file costs its open and read, with
/// no `fstat`, lookup or remembered stamp (a one-shot ingest has no next time).
fn ingest_with(
    cas: &(impl Cas + ?Sized),
    top: &ConfinedDir,
    limits: &TreeLimits,
    cache: Option<&IngestCache>,
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
    // Hash every file in parallel, through a descriptor opened without following anything
    // (unless the cache knows it unchanged).
    let hashed: Vec<(Digest, Option<Stamp>)> = files
        .par_iter()
        .map(|rel| {
            let file = open_below(top, rel)?;
            match cache {
                Some(cache) => cache.digest(function, &file, rel, &top.child_path(rel)),
                None => Ok((function.hash_file(&ConfinedDir::fd_path(&file))?, None)),
            }
        })
        .collect::<Result<_, _>>()?;
    let digests: Vec<Digest> = hashed.iter().map(|(d, _)| *d).collect();
    if let Some(cache) = cache {
        *cache.files.lock().unwrap_or_else(|e| e.into_inner()) = files
            .iter()
            .zip(&hashed)
            .filter_map(|(rel, (digest, stamp))| stamp.map(|s| (rel.to_string(), (s, *digest))))
            .collect();
    }
    let file_digest: HashMap<&str, Digest> =
        files.iter().copied().zip(digests.iter().copied()).collect();
    let dir_blobs = build_directories(function, &dirs, &file_digest)?;
    let root = *dir_blobs.last().expect("the root is built").digest();
    upload(cas, top, &files, &digests, dir_blobs)?;
    Ok(root)
}

/// Opens the file `rel` below `top` without following any symlink.
fn open_below(top: &ConfinedDir, rel: &str) -> Result<fs::File, CasError> {
    let (parent, name) = top.parent_of(rel, Missing::Absent)?.ok_or_else(|| CasError::Io {
        path: top.child_path(rel),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "vanished while ingested"),
    })?;
    parent.open_file(name)
}

/// The scanned directories' blobs, built bottom-up (children have larger indices in
/// pre-order): the root's is the last.
fn build_directories(
    function: DigestFunction,
    dirs: &[Vec<DiskEntry>],
    file_digest: &HashMap<&str, Digest>,
) -> Result<Vec<Blob>, CasError> {
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
    Ok(dir_blobs)
}

/// Writes what the store lacks: the Directory blobs, then each distinct file, large ones
/// alone and small ones in batches, each checked against the digest it was hashed to.
fn upload(
    cas: &(impl Cas + ?Sized),
    top: &ConfinedDir,
    files: &[&str],
    digests: &[Digest],
    dir_blobs: Vec<Blob>,
) -> Result<(), CasError> {
    let mut wanted: Vec<Digest> = dir_blobs.iter().map(|b| *b.digest()).collect();
    wanted.extend(digests.iter().copied());
    let missing: HashSet<Digest> = cas.find_missing_for_write(&wanted)?.into_iter().collect();
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
    let changed =
        |rel: &str| format!("{} changed while being ingested", top.child_path(rel).display());
    let max = cas.max_batch_bytes();
    let (small, large): (Vec<_>, Vec<_>) =
        to_upload.into_iter().partition(|(_, d)| d.size() < max / 4);
    large.par_iter().try_for_each(|(rel, digest)| {
        cas.write_file(digest, &ConfinedDir::fd_path(&open_below(top, rel)?))
            .map_err(|err| err.context(changed(rel)))
    })?;
    let sizes = small.iter().map(|(_, d)| d.size());
    batch_ranges(sizes, max).par_iter().try_for_each(|range| {
        let blobs = small[range.clone()]
            .iter()
            .map(|(rel, digest)| {
                use std::io::Read;
                let mut data = Vec::with_capacity(digest.size() as usize);
                open_below(top, rel)?
                    .read_to_end(&mut data)
                    .map_err(io_error(&top.child_path(rel)))?;
                Blob::verified(digest, data).map_err(|mismatch| mismatch.context(changed(rel)))
            })
            .collect::<Result<Vec<_>, CasError>>()?;
        cas.write_blobs(&blobs)
    })
}

/// Stores a tree holding `files` (slash-separated relative paths) and returns its root
/// digest. The file blobs must already be in the store;
/// only Directory blobs the store lacks are written. Empty, `.`, `..` segments, a path given
/// twice and a file that is also a directory are errors naming the path.
pub fn build_tree(cas: &(impl Cas + ?Sized), files: &[TreeFile]) -> Result<Digest, CasError> {
    #[derive(Default)]
    struct Node {
        files: BTreeMap<String, (Digest, bool)>,
        dirs: BTreeMap<String, Node>,
    }
    let unsafe_path =
        |path: &str, reason: String| CasError::UnsafePath { path: path.into(), reason };
    let mut root = Node::default();
    for TreeFile { path, digest, is_executable: executable } in files {
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
    let missing: HashSet<Digest> = cas.find_missing_for_write(&wanted)?.into_iter().collect();
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
