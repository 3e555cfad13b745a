//! [`Metered`]: a store wrapper that counts what passes through it, for `--stats`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use sa_proto::reapi::ActionResult;

use crate::digest::{Digest, DigestFunction};
use crate::error::CasError;
use crate::spool::BlobSink;
use crate::store::{ActionCache, Blob, Cas};

/// Counts of store traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Blobs read.
    pub blobs_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Blobs handed to the store for writing (present ones included).
    pub blobs_written: u64,
    /// Bytes handed to the store for writing.
    pub bytes_written: u64,
    /// Batch calls (read, write, find-missing, streams, action cache).
    pub calls: u64,
    /// Digests checked for presence.
    pub presence_checks: u64,
    /// Action cache lookups.
    pub action_cache_reads: u64,
    /// Action cache updates.
    pub action_cache_writes: u64,
}

/// Wraps a store and counts its traffic.
#[derive(Debug)]
pub struct Metered<S> {
    inner: S,
    counters: std::sync::Arc<Counters>,
}

/// A handle on a [`Metered`] store's counts that outlives borrows of the store (for a report
/// printed whatever way the work ended).
#[derive(Clone, Debug)]
pub struct Meter(std::sync::Arc<Counters>);

impl Meter {
    /// The counts so far.
    pub fn stats(&self) -> StoreStats {
        let c = &self.0;
        StoreStats {
            blobs_read: c.blobs_read.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            blobs_written: c.blobs_written.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            calls: c.calls.load(Relaxed),
            presence_checks: c.presence_checks.load(Relaxed),
            action_cache_reads: c.action_cache_reads.load(Relaxed),
            action_cache_writes: c.action_cache_writes.load(Relaxed),
        }
    }
}

/// The live counts behind [`StoreStats`], one named counter each.
#[derive(Debug, Default)]
struct Counters {
    blobs_read: AtomicU64,
    bytes_read: AtomicU64,
    blobs_written: AtomicU64,
    bytes_written: AtomicU64,
    calls: AtomicU64,
    presence_checks: AtomicU64,
    action_cache_reads: AtomicU64,
    action_cache_writes: AtomicU64,
}

fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Relaxed);
}

impl<S> Metered<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Metered { inner, counters: Default::default() }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The counts so far.
    pub fn stats(&self) -> StoreStats {
        self.meter().stats()
    }

    /// A handle on the counts.
    pub fn meter(&self) -> Meter {
        Meter(self.counters.clone())
    }
}

impl<S: Cas> Cas for Metered<S> {
    fn digest_function(&self) -> DigestFunction {
        self.inner.digest_function()
    }

    fn read_blobs(&self, digests: &[Digest]) -> Result<Vec<Bytes>, CasError> {
        add(&self.counters.calls, 1);
        let blobs = self.inner.read_blobs(digests)?;
        add(&self.counters.blobs_read, blobs.len() as u64);
        add(&self.counters.bytes_read, blobs.iter().map(|b| b.len() as u64).sum());
        Ok(blobs)
    }

    fn write_blobs(&self, blobs: &[Blob]) -> Result<(), CasError> {
        add(&self.counters.calls, 1);
        add(&self.counters.blobs_written, blobs.len() as u64);
        add(&self.counters.bytes_written, blobs.iter().map(|b| b.data().len() as u64).sum());
        self.inner.write_blobs(blobs)
    }

    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        add(&self.counters.calls, 1);
        add(&self.counters.presence_checks, digests.len() as u64);
        self.inner.find_missing(digests)
    }

    fn find_missing_for_write(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        add(&self.counters.calls, 1);
        add(&self.counters.presence_checks, digests.len() as u64);
        self.inner.find_missing_for_write(digests)
    }

    fn max_batch_bytes(&self) -> u64 {
        self.inner.max_batch_bytes()
    }

    fn read_blob_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<(), CasError> {
        add(&self.counters.calls, 1);
        self.inner.read_blob_to(digest, out)?;
        add(&self.counters.blobs_read, 1);
        add(&self.counters.bytes_read, digest.size());
        Ok(())
    }

    fn write_file(&self, digest: &Digest, path: &Path) -> Result<(), CasError> {
        add(&self.counters.calls, 1);
        add(&self.counters.blobs_written, 1);
        add(&self.counters.bytes_written, digest.size());
        self.inner.write_file(digest, path)
    }

    fn spool(&self) -> Result<Box<dyn BlobSink + '_>, CasError> {
        Ok(Box::new(MeteredSink { inner: self.inner.spool()?, counters: &self.counters }))
    }
}

/// A sink of a [`Metered`] store: counted as one blob written when committed.
struct MeteredSink<'a> {
    inner: Box<dyn BlobSink + 'a>,
    counters: &'a Counters,
}

impl BlobSink for MeteredSink<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), CasError> {
        self.inner.write(data)
    }

    fn commit(self: Box<Self>) -> Result<Digest, CasError> {
        let counters = self.counters;
        let digest = self.inner.commit()?;
        add(&counters.calls, 1);
        add(&counters.blobs_written, 1);
        add(&counters.bytes_written, digest.size());
        Ok(digest)
    }
}

impl<S: ActionCache> ActionCache for Metered<S> {
    fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, CasError> {
        add(&self.counters.calls, 1);
        add(&self.counters.action_cache_reads, 1);
        self.inner.get_action_result(action)
    }

    fn update_action_result(&self, action: &Digest, result: &ActionResult) -> Result<(), CasError> {
        add(&self.counters.calls, 1);
        add(&self.counters.action_cache_writes, 1);
        self.inner.update_action_result(action, result)
    }
}
