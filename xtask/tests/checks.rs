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
    assert_eq!(found, ["sa-cas depends on sa-generator, which is not below it in the DAG"]);
}

#[test]
fn layering_rejects_edges_a_line_would_accept() {
    // Below in the old line (proto <- cas <- proxy <- exec <- generator), not in the DAG.
    let found = layering::violations(&edges(&[
        ("sa-generator", &["sa-exec"]),
        ("sa-generator", &["sa-proxy"]),
        ("sa-exec", &["sa-proxy"]),
        ("sa-proxy", &["sa-exec"]),
    ]));
    assert_eq!(
        found,
        [
            "sa-generator depends on sa-exec, which is not below it in the DAG",
            "sa-generator depends on sa-proxy, which is not below it in the DAG",
            "sa-exec depends on sa-proxy, which is not below it in the DAG",
            "sa-proxy depends on sa-exec, which is not below it in the DAG",
        ]
    );
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
            "sa-generator depends on sa-generator, which is not below it in the DAG",
            "sa-cli depends on the tool crate xtask",
            "sa-mystery is not placed in the layering (xtask/src/layering.rs)",
        ]
    );
}

#[test]
fn layering_accepts_the_designed_dag_and_its_reach() {
    let found = layering::violations(&edges(&[
        ("sa-proto", &[]),
        ("sa-cas", &["sa-proto"]),
        ("sa-proxy", &["sa-cas", "sa-proto"]),
        ("sa-exec", &["sa-cas", "sa-proto"]),
        ("sa-generator", &["sa-cas", "sa-proto"]),
        ("sa-instantiator", &["sa-generator", "sa-cas"]),
        ("sa-prime", &["sa-exec", "sa-instantiator", "sa-generator", "sa-cas"]),
        ("sa-cli", &["sa-prime", "sa-proxy", "sa-exec", "sa-instantiator", "sa-generator"]),
        ("sa-benches", &["sa-cli", "sa-cas"]),
    ]));
    assert!(found.is_empty(), "{found:?}");
    layering::dag_is_acyclic().expect("the DAG has no cycle");
}

#[test]
fn libraries_never_print_exit_or_parse_arguments() {
    let found = layering::cli_only_in_libraries(&project_root()).expect("the sources are read");
    assert!(found.is_empty(), "{found:#?}");
}
