//! The error type of every store operation.

use std::path::PathBuf;

use crate::digest::{Digest, DigestFunction};

/// What went wrong in a store, a digest or a tree, with the data a caller needs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CasError {
    /// A blob is not in the store.
    #[error("missing blob {0}")]
    NotFound(Digest),
    /// A blob's content does not hash to its digest.
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        /// The digest the blob was read or written under.
        expected: Digest,
        /// The digest of the content found.
        actual: Digest,
    },
    /// A blob has another size than its digest says.
    #[error(
        "blob {digest} has {actual} bytes, not the {} its digest says (a wrong size in the digest, or a corrupt object)",
        digest.size()
    )]
    SizeMismatch {
        /// The digest the blob was read under.
        digest: Digest,
        /// The size found.
        actual: u64,
    },
    /// Text or a proto field is not a valid digest.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest {
        /// The text as given.
        input: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A digest function this project does not support, or a server that does not support ours.
    #[error("unsupported digest function {0}")]
    UnsupportedDigestFunction(String),
    /// A digest of another function than the store's.
    #[error("digest {digest} is {}, the store uses {expected}", digest.function())]
    WrongDigestFunction {
        /// The digest given.
        digest: Digest,
        /// The store's function.
        expected: DigestFunction,
    },
    /// A required proto field is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A blob does not decode as the message it should hold.
    #[error("blob {digest} is not a valid {what}")]
    Decode {
        /// The message type expected.
        what: &'static str,
        /// The blob.
        digest: Digest,
        /// The decoder's complaint.
        source: prost::DecodeError,
    },
    /// A blob that does not parse as the message it should hold, read at the byte level.
    #[error("blob {digest} is not a valid {what}: {reason}")]
    Malformed {
        /// The message type expected.
        what: &'static str,
        /// The blob.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// A Directory that decodes but breaks the canonical form or is unsafe to use.
    #[error("invalid Directory {digest}: {reason}")]
    InvalidDirectory {
        /// The Directory's digest.
        digest: Digest,
        /// What is wrong, naming the entry.
        reason: String,
    },
    /// A path on disk that cannot be stored or written safely.
    #[error("unsafe path {}: {reason}", path.display())]
    UnsafePath {
        /// The path.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// A local store holds blobs of another digest function than the one asked for.
    #[error("the store at {} holds {holds} blobs ({why}), not {wanted}", path.display())]
    StoreDigestFunction {
        /// The store's directory.
        path: PathBuf,
        /// The function of its blobs.
        holds: DigestFunction,
        /// The function asked for.
        wanted: DigestFunction,
        /// How that is known.
        why: &'static str,
    },
    /// A configured limit was exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// A filesystem operation failed.
    #[error("{}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A remote call failed (after retries, where retrying applies).
    #[error("{operation} failed: {code:?}: {message}")]
    Rpc {
        /// The RPC, for example `BatchReadBlobs`.
        operation: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// A remote endpoint or its TLS configuration is unusable.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint as given.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// An error with what the caller was doing when it happened.
    #[error("{context}")]
    Context {
        /// What the caller was doing, e.g. "Directory src/ of the input root of action …".
        context: String,
        /// The underlying error.
        #[source]
        source: Box<CasError>,
    },
}

impl CasError {
    /// Wraps the error with what the caller was doing.
    pub fn context(self, context: impl Into<String>) -> CasError {
        CasError::Context { context: context.into(), source: Box::new(self) }
    }

    /// The innermost error, beneath any context.
    pub fn root_cause(&self) -> &CasError {
        match self {
            CasError::Context { source, .. } => source.root_cause(),
            other => other,
        }
    }

    /// Whether the root cause is a missing blob.
    pub fn is_not_found(&self) -> bool {
        matches!(self.root_cause(), CasError::NotFound(_))
    }
}

/// Adds context to results.
pub trait ResultExt<T> {
    /// Wraps an error with what the caller was doing (computed only on error).
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, CasError>;
}

impl<T> ResultExt<T> for Result<T, CasError> {
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, CasError> {
        self.map_err(|err| err.context(context()))
    }
}

/// `Io` error constructor for `map_err`.
pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CasError {
    let path = path.into();
    move |source| CasError::Io { path, source }
}

/// The error and its causes joined with `: `, a cause that only repeats the text before it
/// left out (transport errors and other wrappers print their cause too). The one formatter of
/// error chains in the workspace.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
