//! [`Metered`]: a store wrapper that counts what passes through it, for `--stats`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use sa_proto::reapi::ActionResult;

use crate::digest::{Digest, DigestFunction};
use crate::error::CasError;
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
    counters: [AtomicU64; 8],
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
        let c = |i: usize| self.counters[i].load(Relaxed);
        StoreStats {
            blobs_read: c(0),
            bytes_read: c(1),
            blobs_written: c(2),
            bytes_written: c(3),
            calls: c(4),
            presence_checks: c(5),
            action_cache_reads: c(6),
            action_cache_writes: c(7),
        }
    }

    fn add(&self, index: usize, amount: u64) {
        self.counters[index].fetch_add(amount, Relaxed);
    }
}

impl<S: Cas> Cas for Metered<S> {
    fn digest_function(&self) -> DigestFunction {
        self.inner.digest_function()
    }

    fn read_blobs(&self, digests: &[Digest]) -> Result<Vec<Bytes>, CasError> {
        self.add(4, 1);
        let blobs = self.inner.read_blobs(digests)?;
        self.add(0, blobs.len() as u64);
        self.add(1, blobs.iter().map(|b| b.len() as u64).sum());
        Ok(blobs)
    }

    fn write_blobs(&self, blobs: &[Blob]) -> Result<(), CasError> {
        self.add(4, 1);
        self.add(2, blobs.len() as u64);
        self.add(3, blobs.iter().map(|b| b.data().len() as u64).sum());
        self.inner.write_blobs(blobs)
    }

    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        self.add(4, 1);
        self.add(5, digests.len() as u64);
        self.inner.find_missing(digests)
    }

    fn max_batch_bytes(&self) -> u64 {
        self.inner.max_batch_bytes()
    }

    fn read_blob_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<(), CasError> {
        self.add(4, 1);
        self.inner.read_blob_to(digest, out)?;
        self.add(0, 1);
        self.add(1, digest.size());
        Ok(())
    }

    fn write_file(&self, digest: &Digest, path: &Path) -> Result<(), CasError> {
        self.add(4, 1);
        self.add(2, 1);
        self.add(3, digest.size());
        self.inner.write_file(digest, path)
    }
}

impl<S: ActionCache> ActionCache for Metered<S> {
    fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, CasError> {
        self.add(4, 1);
        self.add(6, 1);
        self.inner.get_action_result(action)
    }

    fn update_action_result(&self, action: &Digest, result: &ActionResult) -> Result<(), CasError> {
        self.add(4, 1);
        self.add(7, 1);
        self.inner.update_action_result(action, result)
    }
}
