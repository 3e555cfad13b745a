//! [`ConfinedDir`]: a directory `sa` owns, operated on without ever following a symlink.
//!
//! Every operation below a `ConfinedDir` names its target by slash-separated segments, each
//! checked by [`check_name`](crate::merkle::check_name) and opened relative to its parent's
//! descriptor with `O_NOFOLLOW | O_DIRECTORY` (`openat` per component), so a symlink planted
//! in the tree, before or during the walk, can neither lead a read or a write outside the root
//! nor be written through: meeting one where a directory is needed is an error naming the path.
//! Creation is exclusive (`O_CREAT | O_EXCL`, `mkdirat`, `symlinkat`), replacement is a rename
//! of something made beside the target, and removal never descends through a symlink.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::error::CasError;
use crate::merkle::check_name;

/// What a name in a [`ConfinedDir`] is, never following a symlink to find out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file, and whether any execute bit is set.
    File {
        /// Any of the execute bits.
        executable: bool,
    },
    /// A directory.
    Directory,
    /// A symlink (not followed).
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// An open directory and the path it was opened at (for messages only: every operation goes
/// through the descriptor).
#[derive(Debug)]
pub struct ConfinedDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_at(path: &Path) -> impl FnOnce(rustix::io::Errno) -> CasError + '_ {
    move |errno| CasError::Io { path: path.to_path_buf(), source: io::Error::from(errno) }
}

/// Splits a relative slash-separated path into checked segments; `""` is no segment at all.
pub fn segments(path: &str) -> Result<Vec<&str>, CasError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    path.split('/')
        .map(|segment| {
            check_name(segment).map(|()| segment).map_err(|reason| CasError::UnsafePath {
                path: path.into(),
                reason: format!("segment {reason}"),
            })
        })
        .collect()
}

const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// What [`ConfinedDir::walk`] does with a directory that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Create it (never through a symlink).
    Create,
    /// Stop: the walk finds nothing.
    Absent,
}

impl ConfinedDir {
    /// Opens the directory at `path`, which the caller trusts (its own scratch directory, the
    /// working directory it was started in); only what is below it is confined.
    pub fn open(path: &Path) -> Result<ConfinedDir, CasError> {
        let fd = rustix::fs::open(path, DIR_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty())
            .map_err(io_at(path))?;
        Ok(ConfinedDir { fd, path: path.to_path_buf() })
    }

    /// Creates the directory `path` (its parent must exist and is trusted) and opens it.
    pub fn create(path: &Path) -> Result<ConfinedDir, CasError> {
        std::fs::create_dir(path).map_err(|source| CasError::Io { path: path.into(), source })?;
        ConfinedDir::open(path)
    }

    /// The path this directory was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` below this directory, for messages.
    pub fn child_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn symlink_in_the_way(&self, name: &str) -> CasError {
        CasError::UnsafePath {
            path: self.child_path(name),
            reason: "is a symlink where a directory is needed (symlinks are never followed)".into(),
        }
    }

    /// Opens the subdirectory `name` (one segment); a symlink there is an error.
    pub fn subdir(&self, name: &str) -> Result<ConfinedDir, CasError> {
        check_name(name)
            .map_err(|reason| CasError::UnsafePath { path: self.child_path(name), reason })?;
        let path = self.child_path(name);
        match rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(ConfinedDir { fd, path }),
            Err(errno)
                if errno == rustix::io::Errno::LOOP || errno == rustix::io::Errno::NOTDIR =>
            {
                match self.kind(name)? {
                    Some(EntryKind::Symlink) => Err(self.symlink_in_the_way(name)),
                    _ => Err(CasError::UnsafePath { path, reason: "is not a directory".into() }),
                }
            }
            Err(errno) => Err(io_at(&path)(errno)),
        }
    }

    /// Opens the directory at the relative path `rel` (`""` is this one); a missing directory
    /// is created or ends the walk with `Ok(None)`, as `missing` says.
    pub fn walk(&self, rel: &str, missing: Missing) -> Result<Option<ConfinedDir>, CasError> {
        let mut current: Option<ConfinedDir> = None;
        for segment in segments(rel)? {
            let here = current.as_ref().unwrap_or(self);
            let next = match here.subdir(segment) {
                Ok(dir) => dir,
                Err(CasError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && missing == Missing::Create =>
                {
                    here.mkdir(segment)?;
                    here.subdir(segment)?
                }
                Err(CasError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Ok(None);
                }
                Err(err) => return Err(err),
            };
            current = Some(next);
        }
        match current {
            Some(dir) => Ok(Some(dir)),
            None => ConfinedDir::reopen(self).map(Some),
        }
    }

    fn reopen(&self) -> Result<ConfinedDir, CasError> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|source| CasError::Io { path: self.path.clone(), source })?;
        Ok(ConfinedDir { fd, path: self.path.clone() })
    }

    /// Splits `rel` into its parent directory (opened; created or not, as `missing` says) and
    /// its last name.
    pub fn parent_of<'a>(
        &self,
        rel: &'a str,
        missing: Missing,
    ) -> Result<Option<(ConfinedDir, &'a str)>, CasError> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        check_name(name)
            .map_err(|reason| CasError::UnsafePath { path: self.child_path(rel), reason })?;
        Ok(self.walk(parent, missing)?.map(|dir| (dir, name)))
    }

    /// What `name` is, without following it; `None` if it does not exist.
    pub fn kind(&self, name: &str) -> Result<Option<EntryKind>, CasError> {
        let path = self.child_path(name);
        let stat = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(errno) => return Err(io_at(&path)(errno)),
        };
        Ok(Some(match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => EntryKind::File { executable: stat.st_mode & 0o111 != 0 },
            FileType::Directory => EntryKind::Directory,
            FileType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        }))
    }

    /// Creates the directory `name`.
    pub fn mkdir(&self, name: &str) -> Result<(), CasError> {
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755))
            .map_err(io_at(&self.child_path(name)))
    }

    /// Creates the file `name`, which must not exist (not even as a symlink), for writing.
    pub fn create_file(&self, name: &str, executable: bool) -> Result<File, CasError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(if executable { 0o755 } else { 0o644 });
        let fd = rustix::fs::openat(&self.fd, name, flags, mode)
            .map_err(io_at(&self.child_path(name)))?;
        // The umask may have taken bits away: the mode is part of the content here.
        rustix::fs::fchmod(&fd, mode).map_err(io_at(&self.child_path(name)))?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `name` for reading; a symlink or anything but a file is an error.
    pub fn open_file(&self, name: &str) -> Result<File, CasError> {
        let path = self.child_path(name);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => {
                return Err(CasError::UnsafePath {
                    path,
                    reason: "is a symlink (symlinks are never followed)".into(),
                });
            }
            Err(errno) => return Err(io_at(&path)(errno)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(io_at(&path))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(CasError::UnsafePath { path, reason: "is not a regular file".into() });
        }
        Ok(File::from(fd))
    }

    /// Creates the symlink `name` with `target`, as given.
    pub fn symlink(&self, name: &str, target: &str) -> Result<(), CasError> {
        rustix::fs::symlinkat(target, &self.fd, name).map_err(io_at(&self.child_path(name)))
    }

    /// The target of the symlink `name`, which must be UTF-8.
    pub fn read_link(&self, name: &str) -> Result<String, CasError> {
        let path = self.child_path(name);
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new()).map_err(io_at(&path))?;
        target.into_string().map_err(|_| CasError::UnsafePath {
            path,
            reason: "symlink target is not UTF-8".into(),
        })
    }

    /// Renames `from` to `to`, both in this directory, replacing a file or symlink at `to`
    /// (never following it).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), CasError> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(io_at(&self.child_path(to)))
    }

    /// Removes `name` whatever it is, a directory with everything below it; symlinks are
    /// removed, never followed. Absent is fine.
    pub fn remove(&self, name: &str) -> Result<(), CasError> {
        match self.kind(name)? {
            None => Ok(()),
            Some(EntryKind::Directory) => {
                let dir = self.subdir(name)?;
                for (child, _) in dir.list()? {
                    dir.remove(&child)?;
                }
                rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
                    .map_err(io_at(&self.child_path(name)))
            }
            Some(_) => rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
                .map_err(io_at(&self.child_path(name))),
        }
    }

    /// The entries of this directory, sorted by name; names that are not UTF-8 or not safe
    /// segments are errors naming the path.
    pub fn list(&self) -> Result<Vec<(String, EntryKind)>, CasError> {
        let mut entries = Vec::new();
        let dir = rustix::fs::Dir::read_from(&self.fd).map_err(io_at(&self.path))?;
        for entry in dir {
            let entry = entry.map_err(io_at(&self.path))?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let name = std::str::from_utf8(bytes).map_err(|_| CasError::UnsafePath {
                path: self.path.join(OsStr::from_bytes(bytes)),
                reason: "name is not UTF-8".into(),
            })?;
            check_name(name)
                .map_err(|reason| CasError::UnsafePath { path: self.child_path(name), reason })?;
            let kind = self.kind(name)?.ok_or_else(|| CasError::Io {
                path: self.child_path(name),
                source: io::Error::new(io::ErrorKind::NotFound, "vanished while listed"),
            })?;
            entries.push((name.to_owned(), kind));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// A path that reopens `file` itself on Linux (`/proc/self/fd/N`), for APIs that take
    /// paths: it names the open file, not whatever a path points to by now.
    pub fn fd_path(file: &File) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", file.as_fd().as_raw_fd()))
    }
}
