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
    /// `root`; `search_path` is the command's own `PATH`, where a bare program name is found.
    pub(crate) fn command(
        &self,
        program: &Path,
        args: &[String],
        root: &Path,
        cwd: &Path,
        search_path: Option<&str>,
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
                // A program reached through symlinks outside what is bound (Debian's `cc` is
                // /usr/bin/cc -> /etc/alternatives/cc -> /usr/bin/gcc): the links on the way
                // are recreated as links, a file at the end is bound read-only.
                for (kind, target, path) in reach(program, search_path, root) {
                    process.arg(kind).arg(target).arg(path);
                }
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

/// Host directories the sandbox has as they are.
const BOUND: [&str; 5] = ["/usr", "/bin", "/lib", "/lib64", "/sbin"];

/// What bwrap needs besides [`BOUND`] and the input root to reach `program` as the host does:
/// `(--symlink, target, link)` for each symlink on the way that is outside them, and
/// `(--ro-bind, file, file)` for a file at the end that is. At most 40 links are followed.
fn reach(
    program: &Path,
    search_path: Option<&str>,
    root: &Path,
) -> Vec<(&'static str, PathBuf, PathBuf)> {
    let inside = |path: &Path| path.starts_with(root) || BOUND.iter().any(|b| path.starts_with(b));
    let found = if program.is_absolute() {
        Some(program.to_path_buf())
    } else if program.components().count() == 1 {
        search_path
            .into_iter()
            .flat_map(|p| p.split(':'))
            .filter(|dir| dir.starts_with('/'))
            .map(|dir| Path::new(dir).join(program))
            .find(|candidate| std::fs::symlink_metadata(candidate).is_ok())
    } else {
        None
    };
    let mut extra = Vec::new();
    let Some(mut path) = found else { return extra };
    for _ in 0..40 {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { break };
        if !meta.file_type().is_symlink() {
            if !inside(&path) {
                extra.push(("--ro-bind", path.clone(), path));
            }
            break;
        }
        let Ok(target) = std::fs::read_link(&path) else { break };
        if !inside(&path) {
            extra.push(("--symlink", target.clone(), path.clone()));
        }
        path = match path.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
    }
    extra
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
