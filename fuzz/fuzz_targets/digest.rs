//! Digests from outside (graph JSON, command lines, protos): parse, print, parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sa_cas::{Digest, DigestFunction};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for function in [DigestFunction::Sha256, DigestFunction::Blake3] {
        if let Ok(digest) = Digest::parse(function, &text) {
            assert_eq!(Digest::parse(function, &digest.to_string()).ok(), Some(digest));
            assert_eq!(Digest::from_proto(function, &digest.to_proto()).ok(), Some(digest));
        }
    }
    let _ = text.parse::<DigestFunction>();
});
