//! The tree walk, generate and instantiate against a store holding adversarial blobs: the
//! input is cut into blobs; the first is taken as the input root and as a SpeculativeActions.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{Cas, DigestFunction, MemoryCas, write_message};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput};
use sa_instantiator::{ElementState, InstantiateConfig, Instantiator};
use sa_proto::reapi::Action;

fuzz_target!(|data: &[u8]| {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let blobs: Vec<_> = data
        .split(|b| *b == 0xff)
        .map(|part| cas.write_blob(Bytes::copy_from_slice(part)).expect("memory store"))
        .collect();
    let root = blobs[0];
    let limits = TreeLimits {
        max_depth: 64,
        max_entries: 4096,
        max_directories: 4096,
        max_expanded_entries: 1 << 20,
    };
    let _ = merkle::fetch_tree(&cas, &root, &limits).map(|f| f.files(&root));
    let action = write_message(
        &cas,
        &Action { input_root_digest: Some(root.to_proto()), ..Default::default() },
    )
    .expect("memory store");
    let input = GenerateInput {
        element: ElementTrees { name: "e".into(), sources: blobs.get(1).copied(), artifact: None },
        dependencies: vec![],
        subactions: vec![action],
        earlier_sources: Vec::new(),
    };
    let config = GenerateConfig { limits, ..Default::default() };
    let _ = sa_generator::generate(&cas, &input, &config);
    let state = ElementState { name: "e".into(), sources: Some(root), ..Default::default() };
    let config = InstantiateConfig { limits, ..Default::default() };
    if let Ok(instantiator) = Instantiator::new(&cas, vec![state], config) {
        let _ = instantiator.instantiate_element("e", &root);
    }
});
