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
    // Edits of existing files: every changed step primed exactly. A new source file is a step
    // no recorded action predicts (issue 25's re-scan and compilation database will).
    assert_eq!(counts, [(1, 1), (3, 3), (0, 0), (1, 0)], "{reports:#?}");
    assert!(reports.iter().all(|r| r.wrong == 0 && r.failed == 0), "{reports:#?}");
    assert_eq!(reports[3].missed.get("new"), Some(&1), "lz4file.c is new: {reports:#?}");
}
