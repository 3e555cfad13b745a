//! The build graph (JSON), the input of `generate`, `instantiate` and `prime`: its format is
//! `sa_generator::graph`'s; this reads it with the command line's limits.

use std::path::Path;

use anyhow::Result;
pub(crate) use sa_generator::graph::{Element, Graph};

use crate::StoreArgs;

/// Reads and validates a graph file with the command line's digest function and size limit.
pub(crate) fn load(path: &Path, args: &StoreArgs) -> Result<Graph> {
    Ok(Graph::load(path, args.digest_function, args.limits.max_graph_bytes)?)
}
