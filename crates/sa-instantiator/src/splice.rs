//! Byte-level editing of `Directory` and `Action` blobs: replace digests, keep every other
//! byte (including fields a newer client wrote that our protos do not know) as it was.
//!
//! Protobuf fields are a sequence of (key, payload); a Directory holds its FileNodes in field 1
//! and DirectoryNodes in field 2, each with `name = 1` and `digest = 2`; an Action holds
//! `input_root_digest = 2`. Replacing a digest rewrites that one field (and the lengths of the
//! messages around it); everything else is copied, in its original order.

use prost::Message;
use sa_cas::Digest;
use sa_proto::wire::{
    self, ACTION_INPUT_ROOT_DIGEST, DIRECTORY_DIRECTORIES, DIRECTORY_FILES, Field, NODE_DIGEST,
    NODE_NAME, put_length_delimited,
};

/// The fields of a message ([`sa_proto::wire::fields`], the one walker). Fails on malformed
/// input.
fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, String> {
    wire::fields(buf).collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// Rewrites a node (FileNode or DirectoryNode): its `digest = 2` replaced by `digest`.
fn replace_node_digest(node: &[u8], digest: &Digest) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(node.len() + 8);
    let mut replaced = false;
    for field in fields(node)? {
        if field.number == NODE_DIGEST && field.bytes().is_some() && !replaced {
            put_length_delimited(&mut out, NODE_DIGEST, &digest.to_proto().encode_to_vec());
            replaced = true;
        } else {
            out.extend_from_slice(field.raw);
        }
    }
    if !replaced {
        return Err("node has no digest".into());
    }
    Ok(out)
}

/// Rewrites a Directory blob: `files(name)` and `dirs(name)` return the digest to put in place
/// of the entry's, or `None` to keep it. Returns the new blob.
pub(crate) fn rewrite_directory(
    blob: &[u8],
    mut files: impl FnMut(&str) -> Option<Digest>,
    mut dirs: impl FnMut(&str) -> Option<Digest>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(blob.len() + 64);
    for field in fields(blob)? {
        let replacement = match (field.number, field.bytes()) {
            (DIRECTORY_FILES, Some(node)) => files(&node_name(node)?).map(|d| (node, d)),
            (DIRECTORY_DIRECTORIES, Some(node)) => dirs(&node_name(node)?).map(|d| (node, d)),
            _ => None,
        };
        match replacement {
            Some((node, digest)) => {
                put_length_delimited(&mut out, field.number, &replace_node_digest(node, &digest)?)
            }
            None => out.extend_from_slice(field.raw),
        }
    }
    Ok(out)
}

fn node_name(node: &[u8]) -> Result<String, String> {
    for field in fields(node)? {
        if field.number == NODE_NAME {
            let payload = field.bytes().ok_or("node name is not a string")?;
            return String::from_utf8(payload.to_vec())
                .map_err(|_| "node name is not UTF-8".into());
        }
    }
    // proto3 omits an empty name; validation has already refused empty names.
    Ok(String::new())
}

/// Rewrites an Action blob with a new `input_root_digest`.
pub(crate) fn rewrite_action(blob: &[u8], input_root: &Digest) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(blob.len() + 8);
    let mut replaced = false;
    for field in fields(blob)? {
        if field.number == ACTION_INPUT_ROOT_DIGEST && field.bytes().is_some() && !replaced {
            let digest = input_root.to_proto().encode_to_vec();
            put_length_delimited(&mut out, ACTION_INPUT_ROOT_DIGEST, &digest);
            replaced = true;
        } else {
            out.extend_from_slice(field.raw);
        }
    }
    if !replaced {
        return Err("Action has no input_root_digest".into());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail by panicking
mod tests {
    use super::*;
    use sa_cas::DigestFunction;
    use sa_proto::reapi::{Action, Directory, DirectoryNode, FileNode};

    fn d(s: &str) -> Digest {
        DigestFunction::Sha256.hash_bytes(s.as_bytes())
    }

    #[test]
    fn replaces_only_named_digests_and_matches_prost() {
        let dir = Directory {
            files: vec![
                FileNode {
                    name: "a".into(),
                    digest: Some(d("a").to_proto()),
                    is_executable: true,
                    ..Default::default()
                },
                FileNode {
                    name: "b".into(),
                    digest: Some(d("b").to_proto()),
                    ..Default::default()
                },
            ],
            directories: vec![DirectoryNode { name: "c".into(), digest: Some(d("c").to_proto()) }],
            ..Default::default()
        };
        let out = rewrite_directory(
            &dir.encode_to_vec(),
            |name| (name == "b").then(|| d("B")),
            |name| (name == "c").then(|| d("C")),
        )
        .unwrap();
        let mut expected = dir.clone();
        expected.files[1].digest = Some(d("B").to_proto());
        expected.directories[0].digest = Some(d("C").to_proto());
        assert_eq!(out, expected.encode_to_vec());
    }

    #[test]
    fn unknown_fields_survive_byte_for_byte() {
        let file =
            FileNode { name: "a".into(), digest: Some(d("a").to_proto()), ..Default::default() };
        let mut node = file.encode_to_vec();
        // Field 15 (varint 7) inside the node, and field 99 (bytes "x") in the Directory.
        node.extend_from_slice(&[0x78, 0x07]);
        let mut blob = Vec::new();
        put_length_delimited(&mut blob, DIRECTORY_FILES, &node);
        blob.extend_from_slice(&[0x9a, 0x06, 0x01, b'x']);
        let out = rewrite_directory(&blob, |_| Some(d("A")), |_| None).unwrap();
        let mut expected_node =
            FileNode { digest: Some(d("A").to_proto()), ..file }.encode_to_vec();
        expected_node.extend_from_slice(&[0x78, 0x07]);
        let mut expected = Vec::new();
        put_length_delimited(&mut expected, DIRECTORY_FILES, &expected_node);
        expected.extend_from_slice(&[0x9a, 0x06, 0x01, b'x']);
        assert_eq!(out, expected);
    }

    #[test]
    fn action_keeps_everything_but_the_input_root() {
        let action = Action {
            command_digest: Some(d("cmd").to_proto()),
            input_root_digest: Some(d("root").to_proto()),
            do_not_cache: false,
            salt: bytes::Bytes::from_static(b"salt"),
            ..Default::default()
        };
        let mut blob = action.encode_to_vec();
        blob.extend_from_slice(&[0xa0, 0x06, 0x01]); // unknown field 100 = 1
        let out = rewrite_action(&blob, &d("new")).unwrap();
        let mut expected =
            Action { input_root_digest: Some(d("new").to_proto()), ..action }.encode_to_vec();
        expected.extend_from_slice(&[0xa0, 0x06, 0x01]);
        assert_eq!(out, expected);
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(rewrite_directory(&[0x0a, 0x05, 0x01], |_| None, |_| None).is_err());
        assert!(rewrite_action(&[0x0a, 0x00], &d("x")).is_err());
    }
}
