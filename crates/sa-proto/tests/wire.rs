//! Wire compatibility with BuildStream's speculative-actions branch.
//!
//! The expected bytes are assembled by hand, field by field, from the protobuf encoding rules
//! (tag = field_number << 3 | wire_type; wire type 0 varint, 2 length-delimited), independently
//! of prost. Each case decodes the bytes to the expected value and re-encodes them byte for
//! byte, so a wrong field number, wire type or enum value fails here.

use prost::Message;
use sa_proto::buildstream::v2::artifact::Dependency;
use sa_proto::buildstream::v2::speculative_actions::overlay::OverlayType;
use sa_proto::buildstream::v2::speculative_actions::{Overlay, SpeculativeAction};
use sa_proto::buildstream::v2::{Artifact, SpeculativeActions};
use sa_proto::reapi::{ActionResult, Digest, OutputFile};

fn digest(hash: &str, size_bytes: i64) -> Option<Digest> {
    Some(Digest { hash: hash.into(), size_bytes })
}

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8], expected: M) {
    let decoded = M::decode(bytes).expect("golden bytes decode");
    assert_eq!(decoded, expected);
    assert_eq!(hex::encode(expected.encode_to_vec()), hex::encode(bytes));
}

fn source_overlay() -> Overlay {
    Overlay {
        r#type: OverlayType::Source as i32,
        source_element: String::new(),
        source_action_digest: None,
        source_path: "src/a.c".into(),
        target_digest: digest("ab", 3),
    }
}

#[rustfmt::skip]
const SOURCE_OVERLAY: &[u8] = &[
    // type SOURCE = 0 and source_element "" are defaults: not on the wire.
    0x22, 0x07, b's', b'r', b'c', b'/', b'a', b'.', b'c', // 4: source_path "src/a.c"
    0x2a, 0x06,                                           // 5: target_digest, 6 bytes
        0x0a, 0x02, b'a', b'b',                           //   1: hash "ab"
        0x10, 0x03,                                       //   2: size_bytes 3
];

#[test]
fn speculative_actions_with_all_overlay_types_round_trips() {
    let mut bytes = vec![
        0x0a, 0x52, // 1: actions[0], 82 bytes
        0x0a, 0x06, 0x0a, 0x02, b'c', b'd', 0x10, 0x04, //   1: base_action_digest "cd"/4
        0x12, 0x11, //   2: overlays[0], 17 bytes
    ];
    bytes.extend_from_slice(SOURCE_OVERLAY);
    #[rustfmt::skip]
    bytes.extend_from_slice(&[
        0x12, 0x17,                                         //   2: overlays[1], 23 bytes
            0x08, 0x02,                                     //     1: type ACTION = 2
            0x1a, 0x06, 0x0a, 0x02, b'c', b'd', 0x10, 0x04, //     3: source_action_digest "cd"/4
            0x22, 0x03, b'a', b'.', b'o',                   //     4: source_path "a.o"
            0x2a, 0x06, 0x0a, 0x02, b'e', b'f', 0x10, 0x05, //     5: target_digest "ef"/5
        0x12, 0x1c,                                         //   2: overlays[2], 28 bytes
            0x08, 0x01,                                     //     1: type ARTIFACT = 1
            0x12, 0x03, b'l', b'i', b'b',                   //     2: source_element "lib"
            0x22, 0x0b, b'i', b'n', b'c', b'l', b'u', b'd', b'e', b'/', b'x', b'.', b'h',
                                                            //     4: source_path "include/x.h"
            0x2a, 0x06, 0x0a, 0x02, b'0', b'1', 0x10, 0x07, //     5: target_digest "01"/7
        0x12, 0x11,                                         // 2: artifact_overlays[0], 17 bytes
    ]);
    bytes.extend_from_slice(SOURCE_OVERLAY);

    let expected = SpeculativeActions {
        actions: vec![SpeculativeAction {
            base_action_digest: digest("cd", 4),
            overlays: vec![
                source_overlay(),
                Overlay {
                    r#type: OverlayType::Action as i32,
                    source_element: String::new(),
                    source_action_digest: digest("cd", 4),
                    source_path: "a.o".into(),
                    target_digest: digest("ef", 5),
                },
                Overlay {
                    r#type: OverlayType::Artifact as i32,
                    source_element: "lib".into(),
                    source_action_digest: None,
                    source_path: "include/x.h".into(),
                    target_digest: digest("01", 7),
                },
            ],
        }],
        artifact_overlays: vec![source_overlay()],
    };
    check(&bytes, expected);
}

#[test]
fn artifact_with_speculative_actions_field_19_round_trips() {
    #[rustfmt::skip]
    let bytes = [
        0x08, 0x01,                                     // 1: version 1
        0x10, 0x01,                                     // 2: build_success true
        0x2a, 0x01, b'k',                               // 5: strong_key "k"
        0x42, 0x06, 0x0a, 0x02, b'a', b'b', 0x10, 0x03, // 8: files "ab"/3
        0x4a, 0x09,                                     // 9: build_deps[0], 9 bytes
            0x12, 0x03, b'l', b'i', b'b',               //   2: element_name "lib"
            0x1a, 0x02, b'c', b'1',                     //   3: cache_key "c1"
        0x9a, 0x01, 0x06,                               // 19: tag 19<<3|2 = 154 = varint 9a 01
            0x0a, 0x02, b'e', b'f', 0x10, 0x05,         //   speculative_actions "ef"/5
    ];
    let expected = Artifact {
        version: 1,
        build_success: true,
        strong_key: "k".into(),
        files: digest("ab", 3),
        build_deps: vec![Dependency {
            element_name: "lib".into(),
            cache_key: "c1".into(),
            ..Default::default()
        }],
        speculative_actions: digest("ef", 5),
        ..Default::default()
    };
    check(&bytes, expected);
}

#[test]
fn action_result_with_subactions_field_99_round_trips() {
    #[rustfmt::skip]
    let bytes = [
        0x12, 0x0d,                                     // 2: output_files[0], 13 bytes
            0x0a, 0x03, b'a', b'.', b'o',               //   1: path "a.o"
            0x12, 0x06, 0x0a, 0x02, b'e', b'f', 0x10, 0x05, // 2: digest "ef"/5
        0x20, 0x01,                                     // 4: exit_code 1
        0x9a, 0x06, 0x06,                               // 99: tag 99<<3|2 = 794 = varint 9a 06
            0x0a, 0x02, b'c', b'd', 0x10, 0x04,         //   subactions[0] "cd"/4
        0x9a, 0x06, 0x06,                               // 99
            0x0a, 0x02, b'a', b'b', 0x10, 0x03,         //   subactions[1] "ab"/3
    ];
    let expected = ActionResult {
        output_files: vec![OutputFile {
            path: "a.o".into(),
            digest: digest("ef", 5),
            ..Default::default()
        }],
        exit_code: 1,
        subactions: vec![
            Digest { hash: "cd".into(), size_bytes: 4 },
            Digest { hash: "ab".into(), size_bytes: 3 },
        ],
        ..Default::default()
    };
    check(&bytes, expected);
}

#[test]
fn reference_overlay_without_new_fields_decodes_as_source() {
    // A blob written by the reference's first commit knows neither ACTION nor field 3: it must
    // decode unchanged, with `source_action_digest` absent.
    let decoded = Overlay::decode(SOURCE_OVERLAY).expect("golden bytes decode");
    assert_eq!(decoded.r#type(), OverlayType::Source);
    assert_eq!(decoded.source_action_digest, None);
    assert_eq!(decoded, source_overlay());
}
