//! Encode and decode of the wire types every stage handles in bulk.

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use sa_proto::reapi::{Digest, Directory, FileNode};
use std::hint::black_box;

fn directory(files: usize) -> Directory {
    Directory {
        files: (0..files)
            .map(|i| FileNode {
                name: format!("file-{i:05}.h"),
                digest: Some(Digest { hash: format!("{i:064x}"), size_bytes: i as i64 }),
                is_executable: false,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn encode_decode(c: &mut Criterion) {
    for files in [10, 1000] {
        let dir = directory(files);
        let bytes = dir.encode_to_vec();
        c.bench_function(&format!("directory_encode/files={files}"), |b| {
            b.iter(|| black_box(&dir).encode_to_vec())
        });
        c.bench_function(&format!("directory_decode/files={files}"), |b| {
            b.iter(|| Directory::decode(black_box(&bytes[..])).expect("valid encoding"))
        });
    }
}

criterion_group!(benches, encode_decode);
criterion_main!(benches);
