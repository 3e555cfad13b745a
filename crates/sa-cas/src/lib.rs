//! Content-addressable storage for speculative-actions.
//!
//! This crate is the only one that touches storage: digests and digest functions, the
//! batch-first `Cas` and `ActionCache` traits, a local store laid out like buildbox-casd's, an
//! in-memory store, a gRPC backend, and the Merkle-tree toolkit (canonical `Directory` encoding,
//! ingest, walk, materialize). The generator and instantiator are written against its traits.

#![deny(missing_docs)]
