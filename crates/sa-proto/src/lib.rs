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

pub mod wire;
