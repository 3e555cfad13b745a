//! Two builds of a two-file project in a `MemoryCas`: the first clean, the second incremental
//! (it re-runs only the compile whose source changed). The learned state keeps both compiles.

use sa_cas::merkle::{self, TreeFile};
use sa_cas::{ActionCache, Cas, Digest, DigestFunction, MemoryCas, write_message};
use sa_learn::{LearnConfig, Recorded, learn};
use sa_proto::reapi::{Action, ActionResult, Command, OutputFile};

/// The compile of `source` (text `text`) into `object`, with its result stored.
fn compile(
    cas: &MemoryCas,
    source: &str,
    text: &str,
    object: &str,
) -> Result<Digest, sa_cas::CasError> {
    let content = cas.write_blob(text.to_owned().into())?;
    let root = merkle::build_tree(cas, &[TreeFile::new(source, content, false)])?;
    let command = Command {
        arguments: vec!["cc".into(), "-c".into(), source.into(), "-o".into(), object.into()],
        output_paths: vec![object.into()],
        ..Default::default()
    };
    let action = write_message(
        cas,
        &Action {
            command_digest: Some(write_message(cas, &command)?.to_proto()),
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        },
    )?;
    let made = cas.write_blob(format!("object of {text}").into())?;
    let output =
        OutputFile { path: object.into(), digest: Some(made.to_proto()), ..Default::default() };
    cas.update_action_result(
        &action,
        &ActionResult { output_files: vec![output], ..Default::default() },
    )?;
    Ok(action)
}

fn sources(cas: &MemoryCas, files: &[(&str, &str)]) -> Result<Digest, sa_cas::CasError> {
    let files = files
        .iter()
        .map(|(path, text)| {
            Ok(TreeFile::new(*path, cas.write_blob(text.to_string().into())?, false))
        })
        .collect::<Result<Vec<_>, sa_cas::CasError>>()?;
    merkle::build_tree(cas, &files)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let config = LearnConfig::default();
    let ran = |actions: &[Digest]| -> Vec<Recorded> {
        actions.iter().map(|a| Recorded { action: *a, succeeded: true, cached: false }).collect()
    };
    let a1 = compile(&cas, "a.c", "int a = 1;", "a.o")?;
    let b1 = compile(&cas, "b.c", "int b = 1;", "b.o")?;
    let first = sources(&cas, &[("a.c", "int a = 1;"), ("b.c", "int b = 1;")])?;
    let learned = learn(&cas, "demo", "build-1", &ran(&[a1, b1]), first, &config)?;
    println!("build 1: {} identities", learned.state.entries.len());

    // Build 2 edits b.c; an incremental build re-runs b's compile only.
    let b2 = compile(&cas, "b.c", "int b = 2;", "b.o")?;
    let second = sources(&cas, &[("a.c", "int a = 1;"), ("b.c", "int b = 2;")])?;
    let learned = learn(&cas, "demo", "build-2", &ran(&[b2]), second, &config)?;
    println!(
        "build 2: {} re-ran, {} identities kept, speculative actions {}",
        learned.update.learned.len(),
        learned.state.entries.len(),
        learned.state.speculative_actions.expect("generated")
    );
    assert_eq!(learned.state.entries.len(), 2);
    Ok(())
}
