//! Action, Command, ActionResult, SpeculativeActions, Artifact and an actions index from
//! outside: decode, and convert every digest and overlay the way the pipeline does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sa_cas::{Digest, DigestFunction};
use sa_generator::ActionsIndex;
use sa_generator::model::Origin;
use sa_proto::buildstream::v2::{Artifact, SpeculativeActions};
use sa_proto::reapi::{Action, ActionResult, Command};

const F: DigestFunction = DigestFunction::Sha256;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, data)) = data.split_first() else { return };
    match kind % 6 {
        0 => {
            if let Ok(a) = Action::decode(data) {
                let _ = Digest::from_proto_field(F, a.command_digest.as_ref(), "command");
                let _ = Digest::from_proto_field(F, a.input_root_digest.as_ref(), "root");
            }
        }
        1 => {
            let _ = Command::decode(data);
        }
        2 => {
            if let Ok(r) = ActionResult::decode(data) {
                for d in r
                    .subactions
                    .iter()
                    .chain(r.output_files.iter().filter_map(|f| f.digest.as_ref()))
                {
                    let _ = Digest::from_proto(F, d);
                }
            }
        }
        3 => {
            if let Ok(s) = SpeculativeActions::decode(data) {
                for overlay in
                    s.actions.iter().flat_map(|a| &a.overlays).chain(&s.artifact_overlays)
                {
                    let _ = Origin::from_overlay(F, overlay);
                }
            }
        }
        4 => {
            // As the instantiator reads a stored index, and as it indexes a blob.
            let expected = F.hash_bytes(data);
            let _ = ActionsIndex::from_blob(F, &expected, data);
            let _ = ActionsIndex::from_speculative_actions(F, expected, data);
        }
        _ => {
            if let Ok(a) = Artifact::decode(data) {
                let _ = Digest::from_proto_field(F, a.speculative_actions.as_ref(), "spec");
            }
        }
    }
});
