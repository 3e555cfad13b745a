//! The repository checks of `cargo xtask`, run by plain `cargo test`.

use xtask::{codegen, layering, project_root};

#[test]
fn generated_code_is_fresh() {
    if let Err(err) = codegen::run(&project_root(), true) {
        panic!("{err:#}");
    }
}

#[test]
fn workspace_respects_layering() {
    if let Err(err) = layering::check(&project_root()) {
        panic!("{err:#}");
    }
}

fn edges(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    pairs
        .iter()
        .map(|(name, deps)| (name.to_string(), deps.iter().map(|d| d.to_string()).collect()))
        .collect()
}

#[test]
fn layering_rejects_upward_dependency() {
    let found = layering::violations(&edges(&[("sa-cas", &["sa-proto", "sa-generator"])]));
    assert_eq!(found, ["sa-cas depends on sa-generator, which is not below it"]);
}

#[test]
fn layering_rejects_self_and_sideways_and_unplaced() {
    let found = layering::violations(&edges(&[
        ("sa-generator", &["sa-generator"]),
        ("sa-cli", &["xtask"]),
        ("sa-mystery", &[]),
    ]));
    assert_eq!(
        found,
        [
            "sa-generator depends on sa-generator, which is not below it",
            "sa-cli depends on the tool crate xtask",
            "sa-mystery is not placed in the layering (xtask/src/layering.rs)",
        ]
    );
}

#[test]
fn layering_accepts_the_designed_line() {
    let found = layering::violations(&edges(&[
        ("sa-proto", &[]),
        ("sa-cas", &["sa-proto"]),
        ("sa-generator", &["sa-cas", "sa-proto"]),
        ("sa-instantiator", &["sa-generator", "sa-cas"]),
        ("sa-cli", &["sa-instantiator", "sa-generator", "sa-cas", "sa-proto"]),
        ("sa-benches", &["sa-cli", "sa-cas"]),
    ]));
    assert!(found.is_empty(), "{found:?}");
}
