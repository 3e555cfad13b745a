//! Content-addressable storage for speculative-actions.
//!
//! This crate is the only one that touches storage. It holds:
//!
//! - [`Digest`] and [`DigestFunction`]: a digest is valid by construction (hash of the
//!   function's length, size within `int64`) and knows its function, so SHA-256 and BLAKE3
//!   digests never mix; the proto `Digest` is converted at the boundary.
//! - The batch-first [`Cas`] and [`ActionCache`] traits: batch calls are the primitive, single
//!   blobs are default methods, and every implementation is blocking and callable from rayon
//!   worker threads.
//! - Backends: [`LocalCas`] (a directory laid out exactly like buildbox-casd's store),
//!   [`MemoryCas`] (tests and benches) and [`GrpcCas`] (any REAPI server).
//! - The Merkle toolkit in [`merkle`]: canonical `Directory` construction and validation,
//!   batched level-by-level tree fetching, ingest from disk and safe materialization.
//!
//! ```
//! use sa_cas::{Cas, DigestFunction, MemoryCas, merkle};
//!
//! let cas = MemoryCas::new(DigestFunction::Sha256);
//! let hello = cas.write_blob("hello\n".into()).unwrap();
//! let dir = merkle::DirectoryBuilder::new().file("hello.txt", &hello, false).build(cas.digest_function()).unwrap();
//! let root = cas.write_blob(merkle::directory_blob(cas.digest_function(), &dir).into_data()).unwrap();
//! let tree = merkle::fetch_tree(&cas, &root, &Default::default()).unwrap();
//! let files = tree.files(&root).unwrap();
//! assert_eq!((files[0].path.as_str(), files[0].digest), ("hello.txt", hello));
//! ```

#![deny(missing_docs)]

mod action;
mod bounded;
mod confined;
mod digest;
mod error;
mod grpc;
mod keyed;
mod limited;
mod local;
mod memory;
pub mod merkle;
mod metered;
mod spool;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use action::DecodedAction;
pub use bounded::{BoundedReadError, read_bounded, read_bounded_text};
pub use confined::{ConfinedDir, EntryKind, Missing, segments};
pub use digest::{CopyError, Digest, DigestFunction, HASH_LEN, Hasher};
pub use error::{CasError, ResultExt, error_chain};
pub use grpc::{
    Backoff, Exhausted, GrpcCas, GrpcConfig, GrpcConnection, Retry, RetryLimit, RetryPolicy,
    is_transient, lazy_channel, retry_call, warm_channel,
};
pub use keyed::{Entry, EntryKey};
pub use limited::Limited;
pub use local::{LocalCas, LocalCasConfig};
pub use memory::MemoryCas;
pub use metered::{Meter, Metered, StoreStats};
pub use spool::BlobSink;
pub use store::{ActionCache, Blob, Cas, Store, decode_message, read_message, write_message};
