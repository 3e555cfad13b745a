//! [`GrpcCas`]: a REAPI v2 server (CAS, ByteStream, ActionCache, Capabilities) behind the
//! blocking, batch-first [`Cas`](crate::Cas) and [`ActionCache`](crate::ActionCache) traits.
//!
//! The client owns a tokio runtime and blocks on it, so it can be called from any thread that
//! is not itself running async code (rayon workers included). Batches are sized by the
//! server's `max_batch_total_size_bytes` and never above 4 MiB (buildbox-casd advertises no
//! limit yet rejects larger messages); larger blobs go through ByteStream. Every RPC runs under
//! a semaphore (bounded concurrency), a per-attempt timeout, and retries with exponential
//! backoff on UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED. Every blob read is
//! verified against its digest.

mod client;
mod config;
mod connection;
mod retry;

pub use client::GrpcCas;
pub use config::GrpcConfig;
pub use connection::{GrpcConnection, lazy_channel, warm_channel};
pub use retry::{Backoff, Exhausted, Retry, RetryLimit, RetryPolicy, is_transient, retry_call};

/// The largest gRPC message we send: servers commonly receive at most 4 MiB.
const MAX_MESSAGE: u64 = 4 << 20;
/// Room left in a batch for the request's own framing.
const BATCH_HEADROOM: u64 = 64 << 10;
/// ByteStream chunk size.
const CHUNK: usize = 1 << 20;
/// Digests per FindMissingBlobs request.
const FIND_MISSING_CHUNK: usize = 10_000;
