//! Encodes a `SpeculativeActions` with one action and one overlay, decodes it back, and shows
//! the top-level fields as the wire holds them (`sa_proto::wire` names their numbers).
//!
//! `cargo run -p sa-proto --example wire`

use prost::Message;
use sa_proto::buildstream::v2::SpeculativeActions;
use sa_proto::buildstream::v2::speculative_actions::overlay::OverlayType;
use sa_proto::buildstream::v2::speculative_actions::{Overlay, SpeculativeAction};
use sa_proto::reapi::Digest;
use sa_proto::wire;

fn main() -> Result<(), prost::DecodeError> {
    let digest = |hash: &str, size| Digest { hash: hash.repeat(64), size_bytes: size };
    let overlay = Overlay {
        r#type: OverlayType::Source as i32,
        source_element: String::new(),
        source_path: "src/main.c".into(),
        target_digest: Some(digest("a", 120)),
        ..Default::default()
    };
    let message = SpeculativeActions {
        actions: vec![SpeculativeAction {
            base_action_digest: Some(digest("b", 142)),
            overlays: vec![overlay],
        }],
        artifact_overlays: Vec::new(),
    };
    let blob = message.encode_to_vec();
    assert_eq!(SpeculativeActions::decode(&blob[..])?, message);
    // The outer message is its repeated fields, each a key byte and a length.
    let key = blob[0];
    println!(
        "{} bytes; first field number {} (actions is {})",
        blob.len(),
        key >> 3,
        wire::SPECULATIVE_ACTIONS_ACTIONS
    );
    println!("{message:#?}");
    Ok(())
}
