//! Property: over random trees with colliding contents and random edits, every complete
//! instantiated action equals the action built directly from the edited sources; and the
//! outcomes through the stored actions index equal those of the blob decoded.

use proptest::prelude::*;
use sa_cas::{Cas, DigestFunction, MemoryCas};
use sa_generator::actions_index::Lookup;
use sa_generator::{ActionsIndex, ElementTrees, GenerateConfig, GenerateInput, generate};
use sa_instantiator::{ElementState, InstantiateConfig, Instantiator};

use super::{Files, action, ingest};

fn source_files() -> impl Strategy<Value = Files> {
    let path = ("[ab]{0,1}", "[xyz]", 0u8..3).prop_map(|(d, f, n)| {
        if d.is_empty() { format!("{f}{n}.h") } else { format!("{d}/{f}{n}.h") }
    });
    proptest::collection::btree_map(path, "[pq]{0,2}", 1..10)
}

proptest! {
    // PROPTEST_CASES raises the count for a deeper local run.
    #![proptest_config(ProptestConfig { cases: cases(32), ..ProptestConfig::default() })]

    #[test]
    fn complete_actions_equal_actions_built_from_the_edited_sources(
        sources in source_files(),
        picks in proptest::collection::vec(proptest::collection::vec(any::<prop::sample::Index>(), 1..6), 1..4),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), "[pqr]{0,2}"), 0..4),
    ) {
        let cas = MemoryCas::new(DigestFunction::Sha256);
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<&String> = sources.keys().collect();
        let inputs: Vec<Vec<String>> = picks
            .iter()
            .map(|p| { let mut v: Vec<String> = p.iter().map(|i| i.get(&paths).to_string()).collect(); v.sort(); v.dedup(); v })
            .collect();
        let subset = |files: &Files, chosen: &[String]| -> Files {
            chosen.iter().map(|p| (p.clone(), files[p].clone())).collect()
        };
        let root1 = ingest(&cas, &dir.path().join("src1"), &sources);
        let recorded: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, chosen)| {
                let root = ingest(&cas, &dir.path().join(format!("in1-{i}")), &subset(&sources, chosen));
                action(&cas, &format!("cc {i}"), root)
            })
            .collect();
        let input = GenerateInput {
            element: ElementTrees { name: "e".into(), sources: Some(root1), artifact: None },
            dependencies: vec![],
            subactions: recorded.clone(), earlier_sources: Vec::new() };
        let spec = generate(&cas, &input, &GenerateConfig::default()).unwrap();
        let mut edited = sources.clone();
        for (index, content) in &edits {
            let path = index.get(&paths).to_string();
            edited.insert(path, content.clone());
        }
        let root2 = ingest(&cas, &dir.path().join("src2"), &edited);
        let state = ElementState { name: "e".into(), sources: Some(root2), ..Default::default() };
        let instantiator = Instantiator::new(&cas, vec![state.clone()], InstantiateConfig::default()).unwrap();
        let outcomes = instantiator.instantiate_element("e", &spec.digest).unwrap();
        // The index generate stored is the blob's, and gives the blob's result.
        let derived = ActionsIndex::from_speculative_actions(DigestFunction::Sha256, spec.digest, &cas.read_blob(&spec.digest).unwrap()).unwrap();
        let Lookup::Found(stored) = ActionsIndex::load(&cas, &spec.digest).unwrap() else { panic!("stored") };
        prop_assert_eq!(stored, derived);
        let config = InstantiateConfig { index: false, ..Default::default() };
        let decoded = Instantiator::new(&cas, vec![state], config).unwrap().instantiate_element("e", &spec.digest).unwrap();
        prop_assert_eq!(&decoded, &outcomes);
        for (i, chosen) in inputs.iter().enumerate() {
            let root = ingest(&cas, &dir.path().join(format!("in2-{i}")), &subset(&edited, chosen));
            let expected = action(&cas, &format!("cc {i}"), root);
            // Every input file comes from the sources, so every action has overlays.
            let outcome = outcomes.iter().find(|o| o.base == recorded[i]).unwrap();
            prop_assert!(outcome.complete);
            prop_assert_eq!(outcome.action, expected, "action {}", i);
        }
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
