//! [`Limited`]: a store wrapper that refuses to read into memory a blob larger than a limit,
//! so a hostile or corrupt digest (a size of many gigabytes) is an error, not an OOM kill.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use sa_proto::reapi::ActionResult;

use crate::digest::{Digest, DigestFunction};
use crate::error::CasError;
use crate::store::{ActionCache, Blob, Cas};

/// Wraps a store; in-memory reads of blobs over `max_blob_bytes` fail naming the blob.
/// Streaming reads (`read_blob_to`) are not limited: they do not hold the blob.
#[derive(Debug)]
pub struct Limited<S> {
    inner: S,
    max_blob_bytes: u64,
}

impl<S> Limited<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, max_blob_bytes: u64) -> Self {
        Limited { inner, max_blob_bytes }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Cas> Cas for Limited<S> {
    fn digest_function(&self) -> DigestFunction {
        self.inner.digest_function()
    }

    fn read_blobs(&self, digests: &[Digest]) -> Result<Vec<Bytes>, CasError> {
        if let Some(large) = digests.iter().find(|d| d.size() > self.max_blob_bytes) {
            return Err(CasError::LimitExceeded(format!(
                "blob {large} has {} bytes, more than the {} a blob read into memory may have",
                large.size(),
                self.max_blob_bytes
            )));
        }
        self.inner.read_blobs(digests)
    }

    fn write_blobs(&self, blobs: &[Blob]) -> Result<(), CasError> {
        self.inner.write_blobs(blobs)
    }

    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        self.inner.find_missing(digests)
    }

    fn find_missing_for_write(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        self.inner.find_missing_for_write(digests)
    }

    fn max_batch_bytes(&self) -> u64 {
        self.inner.max_batch_bytes()
    }

    fn read_blob_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<(), CasError> {
        self.inner.read_blob_to(digest, out)
    }

    fn write_file(&self, digest: &Digest, path: &Path) -> Result<(), CasError> {
        self.inner.write_file(digest, path)
    }

    fn spool(&self) -> Result<Box<dyn crate::BlobSink + '_>, CasError> {
        self.inner.spool()
    }
}

impl<S: ActionCache> ActionCache for Limited<S> {
    fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, CasError> {
        self.inner.get_action_result(action)
    }

    fn update_action_result(&self, action: &Digest, result: &ActionResult) -> Result<(), CasError> {
        self.inner.update_action_result(action, result)
    }
}
