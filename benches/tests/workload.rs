//! The synthetic workload is deterministic, and the pipeline predicts its build 2 exactly.

use sa_benches::workload::{self, Profile};
use sa_cas::{Digest, DigestFunction, MemoryCas};
use sa_generator::GenerateConfig;
use sa_instantiator::{InstantiateConfig, Instantiator};

const F: DigestFunction = DigestFunction::Sha256;

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
    for name in workload::ELEMENTS {
        let input = workload::generate_input(&w.build1, name);
        let generated =
            sa_generator::generate(&cas, &input, &GenerateConfig::default()).expect("generate");
        assert_eq!(generated.stats.unattributed_inputs, 0, "{name}: every input has an origin");
        specs.insert(name, generated.digest);
    }
    let states = workload::states(&w.build1, &w.build2, &specs);
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
