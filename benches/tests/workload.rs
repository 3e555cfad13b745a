//! The synthetic workload is deterministic, and the pipeline predicts its build 2 exactly.

use sa_benches::workload::{self, Profile};
use sa_cas::{Digest, DigestFunction, MemoryCas};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput};
use sa_instantiator::{ElementState, InstantiateConfig, Instantiator};
use serde_json::Value;

const F: DigestFunction = DigestFunction::Sha256;

fn digest(value: &Value) -> Option<Digest> {
    value.as_str().map(|s| Digest::parse(F, s).expect("the workload's digests parse"))
}

fn element<'a>(graph: &'a Value, name: &str) -> &'a Value {
    let elements = graph["elements"].as_array().expect("elements");
    elements.iter().find(|e| e["name"] == name).expect("the element is in the graph")
}

fn trees(graph: &Value, name: &str) -> ElementTrees {
    let e = element(graph, name);
    ElementTrees {
        name: name.into(),
        sources: digest(&e["sources"]),
        artifact: digest(&e["artifact"]),
    }
}

#[test]
fn the_same_seed_gives_the_same_workload_and_another_seed_another() {
    let small = Profile::named("small").expect("a profile");
    let a = workload::generate(&MemoryCas::new(F), &small, 7).expect("generates");
    let b = workload::generate(&MemoryCas::new(F), &small, 7).expect("generates");
    let c = workload::generate(&MemoryCas::new(F), &small, 8).expect("generates");
    assert_eq!(a.build1, b.build1);
    assert_eq!(a.truth, b.truth);
    assert_ne!(a.build1, c.build1);
    assert!(Profile::named("huge").is_none());
}

#[test]
fn generate_then_instantiate_predicts_every_action_of_build_2() {
    let cas = MemoryCas::new(F);
    let profile = Profile::named("small").expect("a profile");
    let w = workload::generate(&cas, &profile, 1).expect("generates");
    assert_eq!(
        w.stats["actions"],
        profile.lib_sources + profile.app_dirs * profile.app_sources_per_dir
    );
    let mut specs = std::collections::HashMap::new();
    for name in ["base.bst", "lib.bst", "app.bst"] {
        let e = element(&w.build1, name);
        let dependencies = e["build_deps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| trees(&w.build1, d.as_str().expect("a name")))
            .collect();
        let subactions =
            e["subactions"].as_array().into_iter().flatten().filter_map(digest).collect();
        let input = GenerateInput { element: trees(&w.build1, name), dependencies, subactions };
        let generated =
            sa_generator::generate(&cas, &input, &GenerateConfig::default()).expect("generate");
        assert_eq!(generated.stats.unattributed_inputs, 0, "{name}: every input has an origin");
        specs.insert(name, generated.digest);
    }
    let states = ["base.bst", "lib.bst", "app.bst"]
        .iter()
        .map(|name| {
            let now = element(&w.build2, name);
            ElementState {
                name: (*name).into(),
                sources: digest(&now["sources"]),
                artifact: digest(&now["artifact"]),
                previous_key: element(&w.build1, name)["cache_key"].as_str().map(str::to_owned),
                current_key: now["cache_key"].as_str().map(str::to_owned),
                previous_speculative_actions: Some(specs[name]),
            }
        })
        .collect();
    let instantiator = Instantiator::new(&cas, states, InstantiateConfig::default()).expect("new");
    let truth: std::collections::HashMap<Digest, Digest> = w.truth.iter().copied().collect();
    let mut checked = 0;
    for name in ["lib.bst", "app.bst"] {
        for outcome in instantiator.instantiate_element(name, &specs[name]).expect("instantiate") {
            assert!(outcome.complete, "{name} {}: {:?}", outcome.base, outcome.unresolved_reasons);
            assert_eq!(outcome.action, truth[&outcome.base], "{name} {}", outcome.base);
            checked += 1;
        }
    }
    assert_eq!(checked, w.truth.len());
    // Build 2 really differs: most actions changed, including those holding twin_b.h only.
    let changed = w.truth.iter().filter(|(a, b)| a != b).count();
    assert!(changed > w.truth.len() / 2, "{changed} of {} changed", w.truth.len());
}
