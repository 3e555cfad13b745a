//! Canonical `Directory` construction.

use sa_proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};

use super::codec::*;
use super::names::*;
use crate::digest::{Digest, DigestFunction};
use crate::error::CasError;

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
