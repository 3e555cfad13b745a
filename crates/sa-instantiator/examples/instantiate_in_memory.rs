//! sa-instantiator alone, on an in-memory store: a compile step recorded at build 1, its
//! overlays generated, the source edited, and the step instantiated for build 2. The adapted
//! Action is exactly the one build 2 will ask for.
//!
//! `cargo run -p sa-instantiator --example instantiate_in_memory`

use sa_cas::merkle::{self, TreeFile};
use sa_cas::{Cas, Digest, DigestFunction, MemoryCas, write_message};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, generate};
use sa_instantiator::{ElementState, InstantiateConfig, Instantiator};
use sa_proto::reapi::{Action, Command};

/// The compile of `source` as the build runs it: its Action digest, and the sources tree.
fn compile(cas: &MemoryCas, source: &str) -> Result<(Digest, Digest), sa_cas::CasError> {
    let main_c = cas.write_blob(source.to_owned().into())?;
    let sources = merkle::build_tree(cas, &[TreeFile::new("src/main.c", main_c, false)])?;
    let command = Command {
        arguments: vec!["cc".into(), "-c".into(), "src/main.c".into()],
        output_paths: vec!["main.o".into()],
        ..Default::default()
    };
    let action = Action {
        command_digest: Some(write_message(cas, &command)?.to_proto()),
        input_root_digest: Some(sources.to_proto()),
        ..Default::default()
    };
    Ok((write_message(cas, &action)?, sources))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    // Build 1 ran the compile; generate its overlays.
    let (action1, sources1) = compile(&cas, "int main(void) { return 1; }\n")?;
    let input = GenerateInput {
        element: ElementTrees { name: "app.bst".into(), sources: Some(sources1), artifact: None },
        dependencies: vec![],
        subactions: vec![action1],
        earlier_sources: Vec::new(),
    };
    let spec = generate(&cas, &input, &GenerateConfig::default())?.digest;
    // The edit; build 2 has not run yet. (`compile` here only to know what it will ask for.)
    let (expected, sources2) = compile(&cas, "int main(void) { return 2; }\n")?;
    let states = vec![ElementState {
        name: "app.bst".into(),
        sources: Some(sources2),
        previous_key: Some("1".into()),
        current_key: Some("2".into()),
        previous_speculative_actions: Some(spec),
        ..Default::default()
    }];
    let instantiator = Instantiator::new(&cas, states, InstantiateConfig::default())?;
    for outcome in instantiator.instantiate_element("app.bst", &spec)? {
        println!("{} -> {} (complete: {})", outcome.base, outcome.action, outcome.complete);
        assert_eq!(outcome.action, expected, "the action build 2 runs");
    }
    Ok(())
}
