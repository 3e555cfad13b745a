//! Writing a tree to disk, confined to the destination.

use std::fs;
use std::path::Path;

use rayon::prelude::*;

use super::batch::*;
use super::forest::*;
use super::names::*;
use crate::confined::{ConfinedDir, Missing};
use crate::digest::Digest;
use crate::error::{CasError, io_error};
use crate::store::Cas;

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
    top.walk(rel, Missing::Absent)?.ok_or_else(|| CasError::UnsafePath {
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
