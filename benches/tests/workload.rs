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

/// `sa-floors` reads what the store holds: every Directory of the graph's trees, the
/// SpeculativeActions generate stored (verified), and writes an output blob of the size asked.
#[test]
fn the_floors_read_every_directory_and_every_speculative_actions_blob() {
    use sa_cas::{LocalCas, LocalCasConfig, merkle};
    let dir = tempfile::tempdir().expect("a temp dir");
    let cas = LocalCas::open(dir.path().join("store"), LocalCasConfig::default()).expect("store");
    let profile = Profile::named("small").expect("a profile");
    let mut w = workload::generate(&cas, &profile, 1).expect("generates");
    let mut roots = Vec::new();
    for name in workload::ELEMENTS {
        let input = workload::generate_input(&w.build1, name);
        roots.extend(input.element.sources.iter().chain(&input.element.artifact));
        let generated =
            sa_generator::generate(&cas, &input, &GenerateConfig::default()).expect("generate");
        w.build1.get_mut(name).expect("an element").speculative_actions = Some(generated.digest);
    }
    for action in w.build1.elements.iter().flat_map(|e| &e.subactions) {
        let action: sa_proto::reapi::Action =
            sa_cas::read_message(&cas, action, "Action").expect("an action");
        roots.push(
            Digest::from_proto(F, action.input_root_digest.as_ref().expect("a root"))
                .expect("a digest"),
        );
    }
    let expected = merkle::fetch_forest(&cas, &roots, &Default::default()).expect("forest").len();
    std::fs::write(dir.path().join("out.json"), w.build1.to_json()).expect("write");
    let floors = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sa-floors"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("sa-floors runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("one JSON line")
    };
    let read = floors(&["read", "--cas", "store", "--graph", "out.json"]);
    assert_eq!(read["directories"], expected);
    let speculative = floors(&["speculative", "--cas", "store", "--graph", "out.json"]);
    assert_eq!(speculative["blobs"], 3);
    assert_eq!(speculative["actions"], w.stats["actions"]);
    let output = floors(&["output", "--bytes", "1000", "--dir", "."]);
    let written = output["digest"].as_str().expect("a digest").split('/').next().expect("a hash");
    assert_eq!(std::fs::metadata(dir.path().join(written)).expect("the blob").len(), 1000);
}
