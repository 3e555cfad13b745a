//! Merkle trees of REAPI `Directory` messages: canonical construction and validation, batched
//! level-by-level fetching, ingest from disk, and materialization to disk.
//!
//! Structure is kept apart from hashing: [`DirectoryBuilder`] makes canonical `Directory`
//! values, [`directory_blob`] is the one place they are encoded and hashed, and
//! [`decode_directory`] is the one place outside data becomes a `Directory` (decoded and
//! validated, so every later use may assume safe, unique, sorted names).

mod batch;
mod builder;
mod codec;
mod fast;
mod forest;
mod ingest;
mod materialize;
mod names;

pub use batch::{batch_ranges, read_each, read_in_batches, write_in_batches};
pub use builder::DirectoryBuilder;
pub use codec::{
    Dir, DirEntry, FileEntry, SymlinkEntry, decode_directory, directory_blob, validate_directory,
};
pub use forest::{
    Expansion, Forest, PartialForest, TreeFile, fetch_directories, fetch_forest,
    fetch_forest_partial, fetch_tree, join,
};
pub use ingest::{IngestCache, build_tree, ingest, ingest_cached, ingest_dir};
pub use materialize::{
    DEFAULT_MAX_MATERIALIZE_BYTES, MaterializeOptions, materialize, materialize_in,
};
pub use names::{DEFAULT_MAX_EXPANDED_ENTRIES, TreeLimits, check_name};
