//! A Directory from outside: decode and validate; whatever passes is safe to use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sa_cas::DigestFunction;
use sa_cas::merkle::{self, TreeLimits};

fuzz_target!(|data: &[u8]| {
    let digest = DigestFunction::Sha256.hash_bytes(data);
    if let Ok(directory) = merkle::decode_directory(&digest, data, &TreeLimits::default()) {
        for name in directory
            .files
            .iter()
            .map(|f| &f.name)
            .chain(directory.directories.iter().map(|d| &d.name))
            .chain(directory.symlinks.iter().map(|s| &s.name))
        {
            assert!(merkle::check_name(name).is_ok(), "an unsafe name passed: {name:?}");
        }
    }
});
