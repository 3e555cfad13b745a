//! Why instantiation fails, typed, each with its cause.

use std::sync::Arc;

use sa_cas::{CasError, Digest};

/// Why instantiation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstantiateError {
    /// The inputs contradict each other.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The element's `SpeculativeActions` is missing or corrupt.
    #[error("SpeculativeActions {digest} of element {element:?}")]
    SpeculativeActions {
        /// The element.
        element: String,
        /// The blob.
        digest: Digest,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
    /// An overlay cannot be used.
    #[error("overlay {index} of action {action} of element {element:?}: {reason}")]
    Overlay {
        /// The element.
        element: String,
        /// The base action.
        action: Digest,
        /// The overlay's position.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A recorded action or its input tree is missing or corrupt.
    #[error("action {action} of element {element:?}")]
    Action {
        /// The element.
        element: String,
        /// The base action.
        action: Digest,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
    /// A current source or artifact tree, or a previous SpeculativeActions, is unreadable.
    #[error("{what} {root} of element {element:?}")]
    Tree {
        /// The element.
        element: String,
        /// "sources", "artifact" or "previous SpeculativeActions".
        what: &'static str,
        /// The blob.
        root: Digest,
        /// The cause.
        #[source]
        source: Arc<CasError>,
    },
    /// A store operation failed.
    #[error("{what}")]
    Store {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
}

pub(super) enum RewriteError {
    Store(Box<CasError>),
    Splice(Digest, String),
}
