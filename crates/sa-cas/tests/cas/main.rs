//! sa-cas integration tests: one binary, one module per area. The conformance suite runs
//! against every backend, including a real buildbox-casd.

// Test helpers unwrap: a failure is a panic naming the line, which is what a test wants.
#![allow(clippy::unwrap_used)]

mod conformance;
mod digest;
mod hostile;
mod local;
mod merkle;
mod processes;

use sa_cas::{Blob, DigestFunction};

/// Deterministic blob content: `len` bytes derived from `seed`.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn blob(seed: u64, len: usize) -> Blob {
    Blob::new(DigestFunction::Sha256, content(seed, len))
}
