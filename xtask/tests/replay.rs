//! A short range of lz4's real history (`../shared/data/histories/lz4.bundle`), replayed: each
//! commit's library built through `sa record`, primed from the learned state before the next.
//! The range holds a one-file edit, an edit of four files (a header among them), a commit that
//! leaves the library alone and one that adds a source file.

#![allow(clippy::unwrap_used)] // tests: a failure is the test failing

use std::path::Path;

#[test]
fn lz4_history_edits_are_primed_exactly_and_nothing_wrong_or_failing_runs() {
    let root = xtask::project_root();
    let bundle = root.join("../shared/data/histories/lz4.bundle");
    assert!(bundle.is_file(), "the history {} must be there", bundle.display());
    let commits: Vec<String> = [
        "f4ab8ca2d9694cb364d08b6e298161d3d944e9d5",
        "756693083a0ac4c176101ca021809fe15d3a69ee", // one file edited
        "7601d57f878649eea61fa2629424e0059d1591c6", // four files, lz4.h among them
        "5b138c01b4644c133e556d96ad6105d24c401cac", // the library untouched
        "f14be20f5d21e074211daa2b15beeedb714736df", // adds lib/lz4file.c and lz4file.h
    ]
    .map(String::from)
    .to_vec();
    let dir = tempfile::tempdir().unwrap();
    let sa = xtask::replay::sa_binary(&root).unwrap();
    let reports =
        xtask::replay::replay(&sa, &bundle, "lz4", &commits, Path::new(dir.path())).unwrap();
    for report in &reports {
        println!("replay lz4 {}", report.line());
    }
    let counts: Vec<(usize, usize)> = reports.iter().map(|r| (r.changed, r.primed)).collect();
    // Edits of existing files: every changed step primed exactly. Without a compilation
    // database a new source file is a step no recorded action predicts (the next test has one).
    assert_eq!(counts, [(1, 1), (3, 3), (0, 0), (1, 0)], "{reports:#?}");
    assert!(reports.iter().all(|r| r.wrong == 0 && r.failed == 0), "{reports:#?}");
    assert_eq!(reports[3].missed.get("new"), Some(&1), "lz4file.c is new: {reports:#?}");
}

/// With the next build's compilation database (`compiledb -n` over the same make command):
/// a merge that changes lz4's warning flags and adds `lz4opt.h` with an include of it, and a
/// commit that adds a source file, are primed exactly, with nothing wrong or failing.
#[test]
fn with_a_compilation_database_flag_changes_new_includes_and_new_files_are_primed_exactly() {
    let root = xtask::project_root();
    let bundle = root.join("../shared/data/histories/lz4.bundle");
    assert!(bundle.is_file(), "the history {} must be there", bundle.display());
    let compiledb = xtask::replay::compiledb();
    assert!(
        compiledb.is_file(),
        "{} must be there: scripts/provision.sh installs it",
        compiledb.display()
    );
    let sa = xtask::replay::sa_binary(&root).unwrap();
    for (commits, expect) in [
        (
            [
                "7628d9d15a399404d3ee4c0c07fcf0f6a2f39ede",
                "151a50e16e558b9619b979ef1c0a525acc13ed92",
            ],
            4,
        ),
        (
            [
                "5b138c01b4644c133e556d96ad6105d24c401cac",
                "f14be20f5d21e074211daa2b15beeedb714736df",
            ],
            1,
        ),
    ] {
        let commits = commits.map(String::from).to_vec();
        let dir = tempfile::tempdir().unwrap();
        let mode = xtask::replay::Mode::Database;
        let reports =
            xtask::replay::replay_with(&sa, &bundle, "lz4", &commits, dir.path(), mode).unwrap();
        for report in &reports {
            println!("replay lz4 (database) {}", report.line());
        }
        let [r] = reports.as_slice() else { panic!("{reports:#?}") };
        assert_eq!((r.changed, r.primed), (expect, expect), "{r:#?}");
        assert_eq!((r.wrong, r.failed, r.unpredictable), (0, 0, 0), "{r:#?}");
    }
}
