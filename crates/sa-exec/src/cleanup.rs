//! What an interrupted process must undo: the process groups of running actions and the
//! scratch directories of materialized input roots. Libraries do not handle signals; the
//! binary that does calls [`interrupt`] from its handler and then exits.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::process::{Pid, Signal};

#[derive(Debug, Default)]
struct Registry {
    groups: Vec<i32>,
    scratch: Vec<PathBuf>,
    interrupted: bool,
}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { groups: Vec::new(), scratch: Vec::new(), interrupted: false });

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves plain lists behind: still usable.
    REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn kill_group(group: i32) {
    if let Some(pid) = Pid::from_raw(group) {
        // Already gone is fine: there is nothing left to stop.
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
}

/// Kills the process group of every running action and removes every scratch directory this
/// process made; later actions refuse to start. Returns how many groups and directories there
/// were. Safe to call from a signal-handling thread while actions run.
pub fn interrupt() -> (usize, usize) {
    let (groups, scratch) = {
        let mut registry = registry();
        registry.interrupted = true;
        (std::mem::take(&mut registry.groups), std::mem::take(&mut registry.scratch))
    };
    for group in &groups {
        kill_group(*group);
    }
    for dir in &scratch {
        // Best effort: a directory another thread is removing may vanish under us.
        let _ = std::fs::remove_dir_all(dir);
    }
    (groups.len(), scratch.len())
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    registry().interrupted
}

/// A registered process group, unregistered on drop.
#[derive(Debug)]
pub(crate) struct GroupGuard(i32);

impl GroupGuard {
    /// Registers the group; if the process was interrupted meanwhile, kills it at once.
    pub(crate) fn register(group: u32) -> GroupGuard {
        let group = group as i32;
        let interrupted = {
            let mut registry = registry();
            registry.groups.push(group);
            registry.interrupted
        };
        if interrupted {
            kill_group(group);
        }
        GroupGuard(group)
    }

    /// Kills the whole group (the command and anything it started).
    pub(crate) fn kill(&self) {
        kill_group(self.0);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // Whatever the command left running in its group ends with it.
        kill_group(self.0);
        registry().groups.retain(|g| *g != self.0);
    }
}

/// A registered scratch directory, unregistered (not removed) on drop: [`interrupt`] removes
/// it while registered.
#[derive(Debug)]
pub struct ScratchGuard(PathBuf);

impl ScratchGuard {
    /// Registers `path` for removal by [`interrupt`] (a directory this process made, such as
    /// `sa serve`'s temporary recordings).
    pub fn register(path: &Path) -> ScratchGuard {
        registry().scratch.push(path.to_path_buf());
        ScratchGuard(path.to_path_buf())
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        registry().scratch.retain(|p| *p != self.0);
    }
}
