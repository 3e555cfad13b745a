//! Wire types of speculative-actions: the Remote Execution API v2, BuildStream's `Artifact`
//! and the `SpeculativeActions` message, generated from the vendored protos in `proto/`.
//!
//! The protos are vendored at their canonical package paths and compiled by `cargo xtask
//! codegen` (protox + tonic-prost-build, no `protoc`); the generated Rust is checked in under
//! `src/generated` and a test fails when it is stale. Three extensions are made to the upstream
//! protos, all wire-compatible with Apache BuildStream's speculative-actions branch:
//!
//! - `ActionResult.subactions = 99`: the nested actions recorded during a build;
//! - `Artifact.speculative_actions = 19`: the digest of the stored `SpeculativeActions`;
//! - `buildstream/v2/speculative_actions.proto`, with `OverlayType.ACTION = 2` and
//!   `Overlay.source_action_digest = 3` from the branch's later commits.
//!
//! Every `bytes` field is a [`prost::bytes::Bytes`], so blobs are shared rather than copied.
//!
//! ```
//! use prost::Message;
//! use sa_proto::buildstream::v2::{SpeculativeActions, speculative_actions::{Overlay, overlay::OverlayType}};
//!
//! let overlay = Overlay { r#type: OverlayType::Action as i32, ..Default::default() };
//! let message = SpeculativeActions { artifact_overlays: vec![overlay], ..Default::default() };
//! let bytes = message.encode_to_vec();
//! assert_eq!(SpeculativeActions::decode(&bytes[..]).unwrap(), message);
//! ```

#![deny(missing_docs)]

// Generated code: its items carry the proto comments (or none), and its shape is prost's.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    rustdoc::all
)]
mod generated {
    include!("generated/mod.rs");
}

pub use generated::{build, buildstream, google, sa};

/// Short names for the REAPI v2 package, the one every crate uses.
pub use generated::build::bazel::remote::execution::v2 as reapi;

/// The field numbers the byte-level readers and writers (streaming `SpeculativeActions`,
/// splicing digests into `Directory` and `Action` blobs) rely on, and the one writer of a
/// length-delimited field. A test checks each number against prost's encoding.
pub mod wire {
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

    #[cfg(test)]
    mod tests {
        use prost::Message;

        use super::*;
        use crate::buildstream::v2::SpeculativeActions;
        use crate::buildstream::v2::speculative_actions::{Overlay, SpeculativeAction};
        use crate::reapi::{Action, Digest, Directory, DirectoryNode, FileNode};

        /// The one field `message` encodes, written with [`put_length_delimited`].
        fn one_field(number: u32, payload: impl Message) -> Vec<u8> {
            let mut out = Vec::new();
            put_length_delimited(&mut out, number, &payload.encode_to_vec());
            out
        }

        #[test]
        fn field_numbers_are_the_protos() {
            let digest = Digest { hash: "ab".into(), size_bytes: 1 };
            let action = SpeculativeAction::default();
            let encoded =
                SpeculativeActions { actions: vec![action.clone()], ..Default::default() }
                    .encode_to_vec();
            assert_eq!(encoded, one_field(SPECULATIVE_ACTIONS_ACTIONS, action));
            let overlay = Overlay { source_path: "p".into(), ..Default::default() };
            let encoded = SpeculativeActions {
                artifact_overlays: vec![overlay.clone()],
                ..Default::default()
            }
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
            assert_eq!(action.encode_to_vec(), one_field(ACTION_INPUT_ROOT_DIGEST, digest));
        }
    }
}
