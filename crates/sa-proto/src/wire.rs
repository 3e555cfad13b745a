//! The wire format below prost, for code that reads or edits encoded messages without
//! decoding them whole (streaming `SpeculativeActions`, decoding canonical `Directory` blobs
//! in place, splicing digests into `Directory` and `Action` blobs, checking an actions index
//! against its blob, listing unknown fields): the field numbers it relies on, named; the one
//! field walker, [`fields`]; and the one writer of a length-delimited field. A test checks
//! each number against prost's encoding.

use prost::encoding::{WireType, decode_key, decode_varint};

/// `SpeculativeActions.actions` (repeated `SpeculativeAction`).
pub const SPECULATIVE_ACTIONS_ACTIONS: u32 = 1;
/// `SpeculativeActions.artifact_overlays` (repeated `Overlay`).
pub const SPECULATIVE_ACTIONS_ARTIFACT_OVERLAYS: u32 = 2;
/// `SpeculativeAction.base_action_digest`.
pub const SPECULATIVE_ACTION_BASE_ACTION_DIGEST: u32 = 1;
/// `SpeculativeAction.overlays` (repeated `Overlay`).
pub const SPECULATIVE_ACTION_OVERLAYS: u32 = 2;
/// `Directory.files` (repeated `FileNode`).
pub const DIRECTORY_FILES: u32 = 1;
/// `Directory.directories` (repeated `DirectoryNode`).
pub const DIRECTORY_DIRECTORIES: u32 = 2;
/// `FileNode.name` and `DirectoryNode.name`.
pub const NODE_NAME: u32 = 1;
/// `FileNode.digest` and `DirectoryNode.digest`.
pub const NODE_DIGEST: u32 = 2;
/// `Action.input_root_digest`.
pub const ACTION_INPUT_ROOT_DIGEST: u32 = 2;

/// Appends a length-delimited field (key, length, payload), as prost encodes a message or
/// `bytes` field and each element of a repeated one.
pub fn put_length_delimited(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// `Digest.hash`.
pub const DIGEST_HASH: u32 = 1;
/// `Digest.size_bytes`.
pub const DIGEST_SIZE_BYTES: u32 = 2;
/// `Directory.symlinks` (repeated `SymlinkNode`).
pub const DIRECTORY_SYMLINKS: u32 = 3;
/// `Directory.node_properties`.
pub const DIRECTORY_NODE_PROPERTIES: u32 = 5;
/// `FileNode.is_executable`.
pub const FILE_NODE_IS_EXECUTABLE: u32 = 4;
/// `FileNode.node_properties`.
pub const FILE_NODE_NODE_PROPERTIES: u32 = 6;
/// `SymlinkNode.target`.
pub const SYMLINK_NODE_TARGET: u32 = 2;
/// `SymlinkNode.node_properties`.
pub const SYMLINK_NODE_NODE_PROPERTIES: u32 = 4;

/// A field's value as encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// A varint (integers, booleans, enums).
    Varint(u64),
    /// Eight little-endian bytes.
    Fixed64(u64),
    /// Four little-endian bytes.
    Fixed32(u32),
    /// A length-delimited payload (a message, a string, bytes, a packed repeated field).
    Bytes(&'a [u8]),
}

/// One field of an encoded message, as it appears in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    /// Its field number.
    pub number: u32,
    /// Its value.
    pub value: Value<'a>,
    /// The whole field, key included, as it is in the buffer (for copying it unchanged).
    pub raw: &'a [u8],
}

impl<'a> Field<'a> {
    /// The payload of a length-delimited field.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self.value {
            Value::Bytes(payload) => Some(payload),
            _ => None,
        }
    }

    /// The value of a varint field.
    pub fn varint(&self) -> Option<u64> {
        match self.value {
            Value::Varint(value) => Some(value),
            _ => None,
        }
    }
}

/// What makes a buffer not a sequence of fields.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A key, varint or length that does not decode.
    #[error("malformed field: {0}")]
    Malformed(String),
    /// A field whose declared length runs past the buffer.
    #[error("truncated field {0}")]
    Truncated(u32),
    /// A group (deprecated, never in our protos).
    #[error("field {0} is a group")]
    Group(u32),
}

/// The fields of an encoded message, in order: the one field walker. After an error it yields
/// nothing more.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf, failed: false }
}

/// The iterator of [`fields`].
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<Field<'a>, WireError> {
        let start = self.buf;
        let malformed = |e: prost::DecodeError| WireError::Malformed(e.to_string());
        let (number, wire_type) = decode_key(&mut self.buf).map_err(malformed)?;
        let take = |buf: &mut &'a [u8], len: usize| -> Result<&'a [u8], WireError> {
            let payload = buf.get(..len).ok_or(WireError::Truncated(number))?;
            *buf = &buf[len..];
            Ok(payload)
        };
        let value = match wire_type {
            WireType::Varint => Value::Varint(decode_varint(&mut self.buf).map_err(malformed)?),
            WireType::SixtyFourBit => {
                let bytes: [u8; 8] =
                    take(&mut self.buf, 8)?.try_into().expect("eight bytes were taken");
                Value::Fixed64(u64::from_le_bytes(bytes))
            }
            WireType::ThirtyTwoBit => {
                let bytes: [u8; 4] =
                    take(&mut self.buf, 4)?.try_into().expect("four bytes were taken");
                Value::Fixed32(u32::from_le_bytes(bytes))
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut self.buf).map_err(malformed)?;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated(number))?;
                Value::Bytes(take(&mut self.buf, len)?)
            }
            WireType::StartGroup | WireType::EndGroup => return Err(WireError::Group(number)),
        };
        let used = start.len() - self.buf.len();
        Ok(Field { number, value, raw: &start[..used] })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants
mod tests {
    use prost::Message;

    use super::*;
    use crate::buildstream::v2::SpeculativeActions;
    use crate::buildstream::v2::speculative_actions::{Overlay, SpeculativeAction};
    use crate::reapi::{
        Action, Digest, Directory, DirectoryNode, FileNode, NodeProperties, SymlinkNode,
    };

    /// The one field `message` encodes, written with [`put_length_delimited`].
    fn one_field(number: u32, payload: impl Message) -> Vec<u8> {
        let mut out = Vec::new();
        put_length_delimited(&mut out, number, &payload.encode_to_vec());
        out
    }

    #[test]
    fn the_walker_reads_every_wire_type_and_keeps_each_field_raw() {
        let message = Action {
            input_root_digest: Some(Digest { hash: "ab".into(), size_bytes: 7 }),
            do_not_cache: true,
            ..Default::default()
        };
        let encoded = message.encode_to_vec();
        let walked: Vec<Field<'_>> = fields(&encoded).collect::<Result<_, _>>().unwrap();
        assert_eq!(walked.len(), 2);
        assert_eq!(walked[0].number, ACTION_INPUT_ROOT_DIGEST);
        let digest: Vec<Field<'_>> =
            fields(walked[0].bytes().unwrap()).collect::<Result<_, _>>().unwrap();
        assert_eq!(digest[0].bytes(), Some(&b"ab"[..]));
        assert_eq!((digest[1].number, digest[1].varint()), (DIGEST_SIZE_BYTES, Some(7)));
        assert_eq!(walked[1].varint(), Some(1));
        let raw: Vec<u8> = walked.iter().flat_map(|f| f.raw.iter().copied()).collect();
        assert_eq!(raw, encoded, "the raw fields are the message, byte for byte");
        // fixed64 (tag 1, wire type 1) and fixed32 (tag 2, wire type 5).
        let mut fixed = vec![0x09];
        fixed.extend(7u64.to_le_bytes());
        fixed.push(0x15);
        fixed.extend(9u32.to_le_bytes());
        let walked: Vec<Value<'_>> = fields(&fixed).map(|f| f.unwrap().value).collect();
        assert_eq!(walked, [Value::Fixed64(7), Value::Fixed32(9)]);
    }

    #[test]
    fn the_walker_refuses_truncation_groups_and_bad_keys_then_stops() {
        assert_eq!(fields(&[0x0a, 0x05, 1, 2]).next(), Some(Err(WireError::Truncated(1))));
        assert_eq!(fields(&[0x0b]).next(), Some(Err(WireError::Group(1))));
        assert!(matches!(fields(&[0x00]).next(), Some(Err(WireError::Malformed(_)))));
        let mut walker = fields(&[0x09, 1, 2]);
        assert_eq!(walker.next(), Some(Err(WireError::Truncated(1))));
        assert_eq!(walker.next(), None);
    }

    #[test]
    fn field_numbers_are_the_protos() {
        let digest = Digest { hash: "ab".into(), size_bytes: 1 };
        let action = SpeculativeAction::default();
        let encoded = SpeculativeActions { actions: vec![action.clone()], ..Default::default() }
            .encode_to_vec();
        assert_eq!(encoded, one_field(SPECULATIVE_ACTIONS_ACTIONS, action));
        let overlay = Overlay { source_path: "p".into(), ..Default::default() };
        let encoded =
            SpeculativeActions { artifact_overlays: vec![overlay.clone()], ..Default::default() }
                .encode_to_vec();
        assert_eq!(encoded, one_field(SPECULATIVE_ACTIONS_ARTIFACT_OVERLAYS, overlay.clone()));
        let action = SpeculativeAction {
            base_action_digest: Some(digest.clone()),
            overlays: vec![overlay.clone()],
        };
        let mut expected = one_field(SPECULATIVE_ACTION_BASE_ACTION_DIGEST, digest.clone());
        expected.extend(one_field(SPECULATIVE_ACTION_OVERLAYS, overlay));
        assert_eq!(action.encode_to_vec(), expected);
        let file = FileNode { name: "f".into(), ..Default::default() };
        let encoded = Directory { files: vec![file.clone()], ..Default::default() };
        assert_eq!(encoded.encode_to_vec(), one_field(DIRECTORY_FILES, file));
        let dir = DirectoryNode { name: "d".into(), ..Default::default() };
        let encoded = Directory { directories: vec![dir.clone()], ..Default::default() };
        assert_eq!(encoded.encode_to_vec(), one_field(DIRECTORY_DIRECTORIES, dir));
        let node = DirectoryNode { digest: Some(digest.clone()), ..Default::default() };
        assert_eq!(node.encode_to_vec(), one_field(NODE_DIGEST, digest.clone()));
        let node = FileNode { digest: Some(digest.clone()), ..Default::default() };
        assert_eq!(node.encode_to_vec(), one_field(NODE_DIGEST, digest.clone()));
        let mut name = Vec::new();
        put_length_delimited(&mut name, NODE_NAME, b"n");
        assert_eq!(FileNode { name: "n".into(), ..Default::default() }.encode_to_vec(), name);
        let action = Action { input_root_digest: Some(digest.clone()), ..Default::default() };
        assert_eq!(action.encode_to_vec(), one_field(ACTION_INPUT_ROOT_DIGEST, digest.clone()));
        let mut hash = Vec::new();
        put_length_delimited(&mut hash, DIGEST_HASH, b"ab");
        prost::encoding::encode_key(DIGEST_SIZE_BYTES, WireType::Varint, &mut hash);
        prost::encoding::encode_varint(1, &mut hash);
        assert_eq!(digest.encode_to_vec(), hash);
        let link = SymlinkNode { target: "t".into(), ..Default::default() };
        let mut target = Vec::new();
        put_length_delimited(&mut target, SYMLINK_NODE_TARGET, b"t");
        assert_eq!(link.encode_to_vec(), target);
        let encoded = Directory { symlinks: vec![link.clone()], ..Default::default() };
        assert_eq!(encoded.encode_to_vec(), one_field(DIRECTORY_SYMLINKS, link));
        let properties = NodeProperties { mtime: None, unix_mode: Some(7), properties: vec![] };
        let encoded = Directory { node_properties: Some(properties.clone()), ..Default::default() };
        assert_eq!(
            encoded.encode_to_vec(),
            one_field(DIRECTORY_NODE_PROPERTIES, properties.clone())
        );
        let file = FileNode { node_properties: Some(properties.clone()), ..Default::default() };
        assert_eq!(file.encode_to_vec(), one_field(FILE_NODE_NODE_PROPERTIES, properties.clone()));
        let link = SymlinkNode { node_properties: Some(properties.clone()), ..Default::default() };
        assert_eq!(link.encode_to_vec(), one_field(SYMLINK_NODE_NODE_PROPERTIES, properties));
        let file = FileNode { is_executable: true, ..Default::default() };
        let mut exec = Vec::new();
        prost::encoding::encode_key(FILE_NODE_IS_EXECUTABLE, WireType::Varint, &mut exec);
        prost::encoding::encode_varint(1, &mut exec);
        assert_eq!(file.encode_to_vec(), exec);
    }
}
