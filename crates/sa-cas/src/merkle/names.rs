//! Bounds on trees and the validation every outside Directory goes through: safe, unique,
//! sorted names.

use std::collections::HashSet;

use sa_proto::reapi::Directory;

use crate::digest::Digest;
use crate::error::CasError;

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

/// The canonical-name rule of a Directory, the one both decoders follow: every name one safe
/// segment ([`check_name`]), each list sorted by name with no duplicates, no name in two
/// lists. The lists are files, directories and symlinks.
pub(super) fn check_entry_names<'a>(
    files: impl Iterator<Item = &'a str> + Clone,
    directories: impl Iterator<Item = &'a str> + Clone,
    symlinks: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), String> {
    fn sorted<'a>(kind: &str, names: impl Iterator<Item = &'a str>) -> Result<usize, String> {
        let mut previous: Option<&str> = None;
        let mut count = 0;
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
            count += 1;
        }
        Ok(count)
    }
    let file_count = sorted("file", files.clone())?;
    let others = sorted("directory", directories.clone())? + sorted("symlink", symlinks.clone())?;
    if others > 0 {
        let mut names = HashSet::with_capacity(file_count + others);
        for name in files.chain(directories).chain(symlinks) {
            if !names.insert(name) {
                return Err(format!("name {name:?} is used by two kinds of entry"));
            }
        }
    }
    Ok(())
}

/// Every check of [`super::validate_directory`] but the digests and symlink targets (which
/// [`compact`] checks while converting).
pub(super) fn check_names(
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
    check_entry_names(
        directory.files.iter().map(|f| f.name.as_str()),
        directory.directories.iter().map(|d| d.name.as_str()),
        directory.symlinks.iter().map(|s| s.name.as_str()),
    )
    .map_err(invalid)?;
    Ok(())
}
