//! Reading and writing many blobs in batches the store accepts.

use bytes::Bytes;
use rayon::prelude::*;

use crate::digest::Digest;
use crate::error::CasError;
use crate::store::{Blob, Cas};

/// Reads blobs in batches bounded by the store's batch size, the batches in parallel; blobs
/// larger than a batch are read alone.
pub fn read_in_batches(
    cas: &(impl Cas + ?Sized),
    digests: &[Digest],
) -> Result<Vec<Bytes>, CasError> {
    let batches = batch_ranges(digests.iter().map(Digest::size), cas.max_batch_bytes());
    let parts: Vec<Vec<Bytes>> = batches
        .par_iter()
        .map(|range| cas.read_blobs(&digests[range.clone()]))
        .collect::<Result<_, _>>()?;
    Ok(parts.into_iter().flatten().collect())
}

/// Writes blobs in batches bounded by the store's batch size.
pub fn write_in_batches(cas: &(impl Cas + ?Sized), blobs: &[Blob]) -> Result<(), CasError> {
    let batches = batch_ranges(blobs.iter().map(|b| b.digest().size()), cas.max_batch_bytes());
    batches.par_iter().try_for_each(|range| cas.write_blobs(&blobs[range.clone()]))
}

/// Splits a sequence of sizes into consecutive ranges of at most `max_bytes` (a larger item
/// alone) and at most 10,000 items.
pub fn batch_ranges(
    sizes: impl Iterator<Item = u64>,
    max_bytes: u64,
) -> Vec<std::ops::Range<usize>> {
    const MAX_ITEMS: usize = 10_000;
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    let mut end = 0;
    for (i, size) in sizes.enumerate() {
        // Per-item overhead in a batch request: digest and framing, about 100 bytes.
        let cost = size.saturating_add(100);
        if i > start && (bytes.saturating_add(cost) > max_bytes || i - start >= MAX_ITEMS) {
            ranges.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(cost);
        end = i + 1;
    }
    if end > start {
        ranges.push(start..end);
    }
    ranges
}

/// Reads each blob: in batches, and where that fails, one by one, so that each failure names
/// its own blob (the error path only; the blobs that can be read are returned).
pub fn read_each(cas: &(impl Cas + ?Sized), digests: &[Digest]) -> Vec<Result<Bytes, CasError>> {
    match read_in_batches(cas, digests) {
        Ok(blobs) => blobs.into_iter().map(Ok).collect(),
        Err(_) => digests.par_iter().map(|digest| cas.read_blob(digest)).collect(),
    }
}
