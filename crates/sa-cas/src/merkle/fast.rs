//! A borrowing decoder of canonical `Directory` blobs straight into [`Dir`]: names are
//! validated in place and shared, digests parsed from the wire bytes, with no intermediate
//! proto. It accepts only what the prost decoder plus validation accepts, and gives the same
//! `Dir`; anything unusual (a repeated singular field, node properties, a wire type or value
//! prost would refuse or read differently, any invalid entry) is `None`, and the caller takes
//! the prost path, which also words the error.

use sa_proto::wire::{
    self, DIGEST_HASH, DIGEST_SIZE_BYTES, DIRECTORY_DIRECTORIES, DIRECTORY_FILES,
    DIRECTORY_NODE_PROPERTIES, DIRECTORY_SYMLINKS, FILE_NODE_IS_EXECUTABLE,
    FILE_NODE_NODE_PROPERTIES, NODE_DIGEST, NODE_NAME, SYMLINK_NODE_NODE_PROPERTIES,
    SYMLINK_NODE_TARGET, Value,
};

use super::codec::{Dir, DirEntry, FileEntry, NameCache, SymlinkEntry};
use super::names::{TreeLimits, check_entry_names};
use crate::digest::{Digest, DigestFunction};

fn text(payload: &[u8]) -> Option<&str> {
    std::str::from_utf8(payload).ok()
}

/// Sets a singular field once; a second occurrence sends the blob to the prost path.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// Calls `each` with every field of a message ([`wire::fields`], the one walker); `None` from
/// either (a malformed buffer, a field this decoder leaves to prost) is `None`.
fn fields<'a>(buf: &'a [u8], mut each: impl FnMut(u32, Value<'a>) -> Option<()>) -> Option<()> {
    for field in wire::fields(buf) {
        let field = field.ok()?;
        each(field.number, field.value)?;
    }
    Some(())
}

fn digest(function: DigestFunction, buf: &[u8]) -> Option<Digest> {
    let (mut hash, mut size) = (None, None);
    fields(buf, |number, value| match (number, value) {
        (DIGEST_HASH, Value::Bytes(b)) => once(&mut hash, text(b)?),
        (DIGEST_SIZE_BYTES, Value::Varint(v)) => once(&mut size, v as i64),
        (DIGEST_HASH | DIGEST_SIZE_BYTES, _) => None,
        _ => Some(()),
    })?;
    Digest::from_wire(function, hash.unwrap_or(""), size.unwrap_or(0))
}

/// `Some(dir)` exactly when the prost decoder and validation accept `data` and give `dir`.
pub(super) fn decode_dir_fast(
    digest_of_blob: &Digest,
    data: &[u8],
    limits: &TreeLimits,
    names: Option<&NameCache<'_>>,
) -> Option<Dir> {
    let function = digest_of_blob.function();
    let name = |n: &str| super::codec::name_of(names, n);
    let mut dir = Dir::default();
    fields(data, |number, value| {
        let node = match (number, value) {
            (_, Value::Bytes(node)) => node,
            (
                DIRECTORY_FILES
                | DIRECTORY_DIRECTORIES
                | DIRECTORY_SYMLINKS
                | DIRECTORY_NODE_PROPERTIES,
                _,
            ) => return None,
            _ => return Some(()),
        };
        match number {
            DIRECTORY_FILES => {
                let (mut n, mut d, mut exec) = (None, None, None);
                fields(node, |number, value| match (number, value) {
                    (NODE_NAME, Value::Bytes(b)) => once(&mut n, text(b)?),
                    (NODE_DIGEST, Value::Bytes(b)) => once(&mut d, digest(function, b)?),
                    (FILE_NODE_IS_EXECUTABLE, Value::Varint(v)) => once(&mut exec, v != 0),
                    (
                        NODE_NAME
                        | NODE_DIGEST
                        | FILE_NODE_IS_EXECUTABLE
                        | FILE_NODE_NODE_PROPERTIES,
                        _,
                    ) => None,
                    _ => Some(()),
                })?;
                dir.files.push(FileEntry {
                    name: name(n.unwrap_or("")),
                    digest: d?,
                    is_executable: exec.unwrap_or(false),
                });
            }
            DIRECTORY_DIRECTORIES => {
                let (mut n, mut d) = (None, None);
                fields(node, |number, value| match (number, value) {
                    (NODE_NAME, Value::Bytes(b)) => once(&mut n, text(b)?),
                    (NODE_DIGEST, Value::Bytes(b)) => once(&mut d, digest(function, b)?),
                    (NODE_NAME | NODE_DIGEST, _) => None,
                    _ => Some(()),
                })?;
                dir.directories.push(DirEntry { name: name(n.unwrap_or("")), digest: d? });
            }
            DIRECTORY_SYMLINKS => {
                let (mut n, mut target) = (None, None);
                fields(node, |number, value| match (number, value) {
                    (NODE_NAME, Value::Bytes(b)) => once(&mut n, text(b)?),
                    (SYMLINK_NODE_TARGET, Value::Bytes(b)) => once(&mut target, text(b)?),
                    (NODE_NAME | SYMLINK_NODE_TARGET | SYMLINK_NODE_NODE_PROPERTIES, _) => None,
                    _ => Some(()),
                })?;
                let target = target.unwrap_or("");
                if target.is_empty() || target.contains('\0') {
                    return None;
                }
                dir.symlinks
                    .push(SymlinkEntry { name: name(n.unwrap_or("")), target: target.into() });
            }
            DIRECTORY_NODE_PROPERTIES => return None,
            _ => {}
        }
        Some(())
    })?;
    let entries = dir.files.len() + dir.directories.len() + dir.symlinks.len();
    if entries > limits.max_entries {
        return None;
    }
    check_entry_names(
        dir.files.iter().map(|f| &*f.name),
        dir.directories.iter().map(|d| &*d.name),
        dir.symlinks.iter().map(|s| &*s.name),
    )
    .ok()?;
    Some(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;
    use sa_proto::reapi::{Directory, DirectoryNode, FileNode, NodeProperties, SymlinkNode};

    use super::*;
    use crate::merkle::codec::{check_names_and_compact, decode_dir};

    const F: DigestFunction = DigestFunction::Sha256;

    fn slow(digest: &Digest, data: &[u8]) -> Result<Dir, String> {
        let directory = Directory::decode(data).map_err(|e| e.to_string())?;
        check_names_and_compact(digest, &directory, &TreeLimits::default())
            .map_err(|e| e.to_string())
    }

    fn directory() -> Directory {
        let file = |name: &str, exec| FileNode {
            name: name.into(),
            digest: Some(F.hash_bytes(name.as_bytes()).to_proto()),
            is_executable: exec,
            ..Default::default()
        };
        Directory {
            files: vec![file("a.h", false), file("b.c", true)],
            directories: vec![DirectoryNode {
                name: "sub".into(),
                digest: Some(F.hash_bytes(b"sub").to_proto()),
            }],
            symlinks: vec![SymlinkNode {
                name: "z".into(),
                target: "a.h".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn canonical_blobs_take_the_fast_path_and_decode_as_prost_does() {
        let data = directory().encode_to_vec();
        let digest = F.hash_bytes(&data);
        let fast = decode_dir_fast(&digest, &data, &TreeLimits::default(), None).unwrap();
        assert_eq!(fast, slow(&digest, &data).unwrap());
        assert_eq!(decode_dir(&digest, &data, &TreeLimits::default(), None).unwrap(), fast);
        // Unusual but valid: node properties, a repeated name, an unknown field.
        let mut with_properties = directory();
        with_properties.node_properties = Some(NodeProperties::default());
        let data = with_properties.encode_to_vec();
        assert_eq!(decode_dir_fast(&digest, &data, &TreeLimits::default(), None), None);
        assert!(decode_dir(&digest, &data, &TreeLimits::default(), None).is_ok());
        let mut repeated = directory().encode_to_vec();
        repeated.extend([0x0a, 0x03, 0x0a, 0x01, b'q']);
        assert_eq!(decode_dir_fast(&digest, &repeated, &TreeLimits::default(), None), None);
        let mut unknown = directory().encode_to_vec();
        unknown.extend([7 << 3, 1]);
        let fast = decode_dir_fast(&digest, &unknown, &TreeLimits::default(), None).unwrap();
        assert_eq!(fast, slow(&digest, &unknown).unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Directories of random (often invalid: empty, `..`, `/`, unsorted, repeated, clashing)
        /// names and targets, encoded by prost: the fast path takes exactly the valid ones, and
        /// decodes them as the prost path does.
        #[test]
        fn the_fast_path_takes_exactly_the_valid_canonical_directories(
            files in proptest::collection::vec(("[ab./]{0,2}", any::<bool>()), 0..4),
            dirs in proptest::collection::vec("[ab./]{0,2}", 0..3),
            links in proptest::collection::vec(("[ab./]{0,2}", "[ab]{0,1}"), 0..3),
        ) {
            let directory = Directory {
                files: files.iter().map(|(name, exec)| FileNode {
                    name: name.clone(),
                    digest: Some(F.hash_bytes(name.as_bytes()).to_proto()),
                    is_executable: *exec,
                    ..Default::default()
                }).collect(),
                directories: dirs.iter().map(|name| DirectoryNode {
                    name: name.clone(),
                    digest: Some(F.hash_bytes(b"d").to_proto()),
                }).collect(),
                symlinks: links.iter().map(|(name, target)| SymlinkNode {
                    name: name.clone(),
                    target: target.clone(),
                    ..Default::default()
                }).collect(),
                ..Default::default()
            };
            let data = directory.encode_to_vec();
            let digest = F.hash_bytes(&data);
            let fast = decode_dir_fast(&digest, &data, &TreeLimits::default(), None);
            prop_assert_eq!(fast.ok_or(()), slow(&digest, &data).map_err(|_| ()));
        }

        /// Whatever the bytes, the fast path accepts only what prost and validation accept, and
        /// gives the same directory.
        #[test]
        fn the_fast_path_agrees_with_prost(
            flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..4),
            cut in 0usize..400,
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut data = directory().encode_to_vec();
            for (at, byte) in flips {
                let at = at % data.len();
                data[at] ^= byte;
            }
            data.truncate(cut.max(1));
            data.extend(tail);
            let digest = F.hash_bytes(&data);
            let fast = decode_dir_fast(&digest, &data, &TreeLimits::default(), None);
            let slow = slow(&digest, &data);
            if let Some(fast) = fast {
                prop_assert_eq!(Ok(fast), slow);
            }
        }
    }
}
