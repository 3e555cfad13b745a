//! The build graph (JSON), the input of `generate`, `instantiate` and `prime`: its format is
//! `sa_generator::graph`'s; this reads the file with the command line's limits.

use std::path::Path;

use anyhow::{Result, anyhow};
use sa_cas::BoundedReadError;
pub(crate) use sa_generator::graph::{Element, Graph};

use crate::args::StoreArgs;

/// Reads and validates a graph file with the command line's digest function and size limit
/// (counted as it is read, so a pipe or a device is held to it too).
pub(crate) fn load(path: &Path, args: &StoreArgs) -> Result<Graph> {
    let limit = args.limits.max_graph_bytes;
    let text = sa_cas::read_bounded_text(path, limit).map_err(|err| match err {
        BoundedReadError::TooLarge { .. } => {
            anyhow!("graph {}: more than --max-graph-bytes {limit}", path.display())
        }
        err => anyhow!("graph: {err}"),
    })?;
    Graph::parse(&text, args.digest_function)
        .map_err(|err| anyhow::Error::new(err).context(format!("graph {}", path.display())))
}
