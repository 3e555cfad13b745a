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
    #[error("overlay {index} of action {action} of element {element:?}")]
    Overlay {
        /// The element.
        element: String,
        /// The base action.
        action: Digest,
        /// The overlay's position.
        index: usize,
        /// What is wrong with it (a missing or invalid field keeps its store error).
        #[source]
        source: Box<sa_generator::model::OverlayError>,
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
    /// A store operation failed (the cause keeps what the store said: a gRPC code, a path).
    #[error("{step} of element {element:?}")]
    Store {
        /// The element.
        element: String,
        /// What was being done.
        step: Box<StoreStep>,
        /// The cause.
        #[source]
        source: Box<CasError>,
    },
}

/// What the instantiator was doing with the store when it failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreStep {
    /// Looking up the element's actions index.
    #[error("looking up the actions index")]
    LookingUpIndex,
    /// Storing the element's actions index.
    #[error("storing the actions index")]
    StoringIndex,
    /// Fetching the input trees of the element's actions.
    #[error("fetching the input trees")]
    FetchingInputTrees,
    /// Reading the input skeleton its actions index names.
    #[error("reading the input skeleton {0}")]
    ReadingSkeleton(Digest),
    /// Storing the instantiated Directories and Actions.
    #[error("storing the instantiated actions")]
    StoringActions,
    /// Reading the result of an instantiated producer (for an ACTION overlay).
    #[error("reading the result of {adapted} (instantiated from {producer})")]
    ReadingResult {
        /// The instantiated producer.
        adapted: Digest,
        /// The producer as recorded.
        producer: Digest,
    },
}

pub(super) enum RewriteError {
    Store(Box<CasError>),
    Splice(Digest, String),
}
