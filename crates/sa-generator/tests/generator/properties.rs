//! Property tests over random trees with many duplicate contents.

use std::collections::HashMap;

use proptest::prelude::*;
use prost::Message;
use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{Cas, Digest, DigestFunction, MemoryCas};
use sa_generator::model::{Origin, OriginKind, choose, overlay_order};
use sa_generator::{GenerateInput, model};
use sa_proto::buildstream::v2::SpeculativeActions;

use super::{action, element, run, tree};

/// A random file set: paths from a small vocabulary (so paths share suffixes) and contents
/// from a tiny alphabet (so contents collide).
fn files() -> impl Strategy<Value = Vec<(String, String)>> {
    let path = ("[ab]{0,1}", "[xyz]", 0u8..4).prop_map(|(d, f, n)| {
        if d.is_empty() { format!("{f}{n}.h") } else { format!("{d}/{f}{n}.h") }
    });
    proptest::collection::btree_map(path, "[pq]{1,2}", 1..12).prop_map(|m| m.into_iter().collect())
}

fn as_refs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect()
}

proptest! {
    // PROPTEST_CASES raises the count for a deeper local run.
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    /// Every input file occurrence either is covered by the overlay the shared rule picks
    /// over all origins, or is counted as unattributed; overlays are sorted and unique; the
    /// output is the same with 1 and 3 threads.
    #[test]
    fn every_input_is_attributed_by_the_rule_or_counted(
        sources in files(),
        artifact in files(),
        inputs in proptest::collection::vec(files(), 1..4),
    ) {
        let cas = MemoryCas::new(DigestFunction::Sha256);
        let f = cas.digest_function();
        let src = tree(&cas, &as_refs(&sources));
        let art = tree(&cas, &as_refs(&artifact));
        let actions: Vec<Digest> = inputs.iter().enumerate().map(|(i, files)| action(&cas, &format!("{i}"), &as_refs(files))).collect();
        let input = GenerateInput {
            element: element("e", Some(src), None),
            dependencies: vec![element("d", None, Some(art))],
            subactions: actions.clone(), earlier_sources: Vec::new() };
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| run(&cas, &input));
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| run(&cas, &input));
        prop_assert_eq!(&one.digest, &three.digest);

        // All origins, computed naively.
        let mut origins: HashMap<Digest, Vec<Origin>> = HashMap::new();
        for (path, content) in &sources {
            let origin = Origin { kind: OriginKind::Source, element: String::new(), path: path.clone(), producer: None };
            origins.entry(f.hash_bytes(content.as_bytes())).or_default().push(origin);
        }
        for (path, content) in &artifact {
            let origin = Origin { kind: OriginKind::Artifact, element: "d".into(), path: path.clone(), producer: None };
            origins.entry(f.hash_bytes(content.as_bytes())).or_default().push(origin);
        }
        let message = SpeculativeActions::decode(cas.read_blob(&one.digest).unwrap()).unwrap();
        let by_action: HashMap<Digest, Vec<(Origin, Digest)>> = message
            .actions
            .iter()
            .map(|a| {
                let base = Digest::from_proto(f, a.base_action_digest.as_ref().unwrap()).unwrap();
                let overlays = a.overlays.iter().map(|o| model::Origin::from_overlay(f, o).unwrap()).collect();
                (base, overlays)
            })
            .collect();
        let mut unattributed = 0u64;
        for (files, digest) in inputs.iter().zip(&actions) {
            let empty = Vec::new();
            let overlays = by_action.get(digest).unwrap_or(&empty);
            let mut expected = Vec::new();
            for (path, content) in files {
                let d = f.hash_bytes(content.as_bytes());
                match origins.get(&d).and_then(|all| choose(path, all)) {
                    Some(origin) => expected.push((origin.clone(), d)),
                    None => unattributed += 1,
                }
            }
            expected.sort_by(|a, b| overlay_order(&(a.1, &a.0), &(b.1, &b.0)));
            expected.dedup();
            prop_assert_eq!(overlays, &expected, "action {}", digest);
        }
        prop_assert_eq!(one.stats.unattributed_inputs, unattributed);
        let forest = merkle::fetch_tree(&cas, &src, &TreeLimits::default()).unwrap();
        prop_assert_eq!(forest.files(&src).unwrap().len(), sources.len());
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
