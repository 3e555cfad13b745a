//! Library half of `xtask`, so that tests can run the same checks as `cargo xtask`.

pub mod bench;
pub mod codegen;
pub mod layering;
pub mod replay;

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate's directory).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
