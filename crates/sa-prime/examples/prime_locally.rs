//! sa-prime alone, on an in-memory store with the local executor: a step recorded at build 1,
//! its source edited, and the adapted step executed before build 2, which then finds its
//! result in the ActionCache.
//!
//! `cargo run -p sa-prime --example prime_locally`

use sa_cas::merkle::{self, TreeFile};
use sa_cas::{ActionCache, Cas, Digest, DigestFunction, MemoryCas, write_message};
use sa_exec::{ExecConfig, LocalExecutor};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, generate};
use sa_instantiator::{ElementState, InstantiateConfig, Instantiator};
use sa_prime::{PrimeOptions, Stores, prime};
use sa_proto::reapi::{Action, Command};

/// The step as the build runs it on `text`: count the source's lines into `lines.txt`.
fn step(cas: &MemoryCas, text: &str) -> Result<(Digest, Digest), sa_cas::CasError> {
    let source = cas.write_blob(text.to_owned().into())?;
    let sources = merkle::build_tree(cas, &[TreeFile::new("src/main.c", source, false)])?;
    let command = Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), "wc -l < src/main.c > lines.txt".into()],
        environment_variables: vec![sa_proto::reapi::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: vec!["lines.txt".into()],
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
    let (action1, sources1) = step(&cas, "int main(void)\n{ return 1; }\n")?;
    let input = GenerateInput {
        element: ElementTrees { name: "app.bst".into(), sources: Some(sources1), artifact: None },
        dependencies: vec![],
        subactions: vec![action1],
        earlier_sources: Vec::new(),
    };
    let spec = generate(&cas, &input, &GenerateConfig::default())?.digest;
    let (build2_asks, sources2) = step(&cas, "int main(void)\n{\n  return 2;\n}\n")?;
    let states = vec![ElementState {
        name: "app.bst".into(),
        sources: Some(sources2),
        previous_key: Some("1".into()),
        current_key: Some("2".into()),
        previous_speculative_actions: Some(spec),
        ..Default::default()
    }];
    let instantiator = Instantiator::new(&cas, states, InstantiateConfig::default())?;
    let executor = LocalExecutor::new(&cas, ExecConfig::default(), 2);
    let report = prime(
        Stores { build: &cas, executor_cas: None },
        &executor,
        &instantiator,
        &[("app.bst".into(), spec)],
        &PrimeOptions::default(),
        &mut |_| {},
    )?;
    for action in &report.actions {
        println!("{} {:?}", action.action, action.status);
    }
    let cached = cas.get_action_result(&build2_asks)?.ok_or("build 2's action is not cached")?;
    println!("build 2's action {build2_asks} is cached (exit code {})", cached.exit_code);
    Ok(())
}
