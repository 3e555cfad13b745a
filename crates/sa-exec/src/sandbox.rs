//! How a command is isolated from the host: not at all, or in a bubblewrap sandbox.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

/// Where a command runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Sandbox {
    /// On the host, unsandboxed: the command sees the whole file system beside its input root
    /// and the network. Only for stores that are trusted.
    #[default]
    None,
    /// In bubblewrap (`bwrap`, this path): new user, PID, network, IPC and UTS namespaces
    /// (no network), the input root bound writable at its own path, `/usr` read-only, `/bin`,
    /// `/lib`, `/lib64`, `/sbin` as on the host (symlinks into `/usr` recreated as symlinks,
    /// real directories bound read-only), a private `/tmp`, `/proc` and `/dev`; nothing else
    /// of the host. Killed with the process that started it.
    Bwrap(PathBuf),
}

impl Sandbox {
    /// `bwrap` from `PATH`, if there is one.
    pub fn find_bwrap() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("bwrap"))
            .find(|candidate| is_executable(candidate))
    }

    /// The default: bubblewrap where it is installed, else none.
    pub fn detect() -> Sandbox {
        Sandbox::find_bwrap().map_or(Sandbox::None, Sandbox::Bwrap)
    }

    /// The process to spawn for `program` with `args`, run in `cwd` below the input root
    /// `root`.
    pub(crate) fn command(
        &self,
        program: &Path,
        args: &[String],
        root: &Path,
        cwd: &Path,
    ) -> Process {
        match self {
            Sandbox::None => {
                let mut process = Process::new(program);
                process.args(args).current_dir(cwd);
                process
            }
            Sandbox::Bwrap(bwrap) => {
                let mut process = Process::new(bwrap);
                process.args(["--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]);
                for top in ["/bin", "/lib", "/lib64", "/sbin"] {
                    match std::fs::symlink_metadata(top) {
                        Ok(meta) if meta.file_type().is_symlink() => {
                            if let Ok(target) = std::fs::read_link(top) {
                                process.arg("--symlink").arg(target).arg(top);
                            }
                        }
                        Ok(meta) if meta.is_dir() => {
                            process.args(["--ro-bind", top, top]);
                        }
                        _ => {}
                    }
                }
                process.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
                process.arg("--bind").arg(root).arg(root);
                process.arg("--chdir").arg(cwd);
                process.arg("--").arg(program).args(args);
                // bwrap itself needs no directory of the input root to start in.
                process.current_dir("/");
                process
            }
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
