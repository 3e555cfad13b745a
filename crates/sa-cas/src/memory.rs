//! [`MemoryCas`]: an in-memory store for tests and benches.

use bytes::Bytes;
use dashmap::DashMap;
use sa_proto::reapi::ActionResult;

use crate::digest::{Digest, DigestFunction};
use crate::error::CasError;
use crate::store::{ActionCache, Blob, Cas, check_function, to_look_up};

/// A store in memory; concurrent, and as strict as the others about digest functions.
#[derive(Debug, Default)]
pub struct MemoryCas {
    function: DigestFunction,
    blobs: DashMap<Digest, Bytes>,
    results: DashMap<Digest, ActionResult>,
}

impl MemoryCas {
    /// An empty store for `function`.
    pub fn new(function: DigestFunction) -> MemoryCas {
        MemoryCas { function, blobs: DashMap::new(), results: DashMap::new() }
    }

    /// How many blobs are stored (the empty blob is never stored).
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether no blob is stored.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Replaces a blob's content without checking it: for tests of corruption handling.
    pub fn insert_unchecked(&self, digest: Digest, data: Bytes) {
        self.blobs.insert(digest, data);
    }
}

impl Cas for MemoryCas {
    fn digest_function(&self) -> DigestFunction {
        self.function
    }

    fn read_blobs(&self, digests: &[Digest]) -> Result<Vec<Bytes>, CasError> {
        digests
            .iter()
            .map(|digest| {
                check_function(self.function, digest)?;
                if digest.is_empty_blob() {
                    return Ok(Bytes::new());
                }
                let data = self.blobs.get(digest).ok_or(CasError::NotFound(*digest))?.clone();
                crate::store::check_content(digest, &data, true)?;
                Ok(data)
            })
            .collect()
    }

    fn write_blobs(&self, blobs: &[Blob]) -> Result<(), CasError> {
        for blob in blobs {
            check_function(self.function, blob.digest())?;
            if !blob.digest().is_empty_blob() {
                self.blobs.entry(*blob.digest()).or_insert_with(|| blob.data().clone());
            }
        }
        Ok(())
    }

    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        let mut unique = to_look_up(self.function, digests)?;
        unique.retain(|digest| !self.blobs.contains_key(digest));
        Ok(unique)
    }
}

impl ActionCache for MemoryCas {
    fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, CasError> {
        check_function(self.function, action)?;
        Ok(self.results.get(action).map(|r| r.clone()))
    }

    fn update_action_result(&self, action: &Digest, result: &ActionResult) -> Result<(), CasError> {
        check_function(self.function, action)?;
        self.results.insert(*action, result.clone());
        Ok(())
    }
}
