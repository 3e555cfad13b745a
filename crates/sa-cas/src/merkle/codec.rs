//! The compact form walks hold ([`Dir`]), decoding outside data into it, and the one place
//! a `Directory` is encoded and hashed.

use std::cell::RefCell;
use std::sync::Arc;

use prost::Message;
use sa_proto::reapi::Directory;

use super::names::{TreeLimits, check_names};
use crate::digest::{Digest, DigestFunction};
use crate::error::CasError;
use crate::store::Blob;

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
    /// One safe path segment (shared between the directories of one fetch that use it).
    pub name: Arc<str>,
    /// The content's digest.
    pub digest: Digest,
    /// The executable bit.
    pub is_executable: bool,
}

/// A subdirectory of a [`Dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// One safe path segment (shared between the directories of one fetch that use it).
    pub name: Arc<str>,
    /// The subdirectory's digest.
    pub digest: Digest,
}

/// A symlink of a [`Dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymlinkEntry {
    /// One safe path segment (shared between the directories of one fetch that use it).
    pub name: Arc<str>,
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
pub(super) fn decode_dir(
    digest: &Digest,
    data: &[u8],
    limits: &TreeLimits,
    names: Option<&NameCache<'_>>,
) -> Result<Dir, CasError> {
    if let Some(dir) = super::fast::decode_dir_fast(digest, data, limits, names) {
        return Ok(dir);
    }
    let directory = Directory::decode(data).map_err(|source| CasError::Decode {
        what: "Directory",
        digest: *digest,
        source,
    })?;
    check_names(digest, &directory, limits)?;
    compact(digest.function(), digest, &directory, names)
}

/// The prost path's validation and conversion of a decoded Directory (for the fast path's tests).
#[cfg(test)]
pub(super) fn check_names_and_compact(
    digest: &Digest,
    directory: &Directory,
    limits: &TreeLimits,
) -> Result<Dir, CasError> {
    check_names(digest, directory, limits)?;
    compact(digest.function(), digest, directory, None)
}

/// The names of the directories of one fetch, each held once: a forest repeats a few thousand
/// names millions of times. Bounded by what the fetch holds, and dropped with it.
#[derive(Debug, Default)]
pub(super) struct Names(dashmap::DashSet<Arc<str>, foldhash::fast::RandomState>);

impl Names {
    fn get(&self, name: &str) -> Arc<str> {
        if let Some(found) = self.0.get(name) {
            return found.clone();
        }
        let name: Arc<str> = name.into();
        self.0.insert(name.clone());
        name
    }

    /// A cache of this set for one thread's run of decodes (rayon's `map_init`): a name seen
    /// before on the thread costs one unshared lookup, not a lock on a shard both threads
    /// hit (a fifth of a fetch's time before).
    pub(super) fn cache(&self) -> NameCache<'_> {
        NameCache { shared: self, local: RefCell::default() }
    }
}

/// A thread's cache of a [`Names`]; it holds at most [`NameCache::MAX`] names, so a fetch of
/// millions of distinct names costs no more than the shared set.
pub(super) struct NameCache<'a> {
    shared: &'a Names,
    local: RefCell<std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>>,
}

impl NameCache<'_> {
    const MAX: usize = 4096;

    fn get(&self, name: &str) -> Arc<str> {
        let mut local = self.local.borrow_mut();
        if let Some(found) = local.get(name) {
            return found.clone();
        }
        let found = self.shared.get(name);
        if local.len() < Self::MAX {
            local.insert(found.clone());
        }
        found
    }
}

pub(super) fn name_of(names: Option<&NameCache<'_>>, name: &str) -> Arc<str> {
    match names {
        Some(names) => names.get(name),
        None => name.into(),
    }
}

/// The canonical encoding of a `Directory` as a blob (prost writes fields in tag order and
/// omits defaults, which is REAPI's canonical form once the lists are sorted).
pub fn directory_blob(function: DigestFunction, directory: &Directory) -> Blob {
    Blob::new(function, directory.encode_to_vec())
}

/// The compact form of a Directory whose names were checked: digests parsed (an error names
/// the entry), symlink targets checked.
pub(super) fn compact(
    function: DigestFunction,
    digest: &Digest,
    directory: &Directory,
    names: Option<&NameCache<'_>>,
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
                name: name_of(names, &file.name),
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
            Ok(DirEntry { name: name_of(names, &dir.name), digest })
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
                name: name_of(names, &link.name),
                target: link.target.as_str().into(),
            })
        })
        .collect::<Result<_, CasError>>()?;
    Ok(Dir { files, directories, symlinks })
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
    compact(function, digest, directory, None).map(|_| ())
}
