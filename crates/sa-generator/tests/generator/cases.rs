//! Data-driven cases over small hand-built trees.

use sa_cas::{Cas, CasError, DigestFunction, LocalCas, LocalCasConfig, MemoryCas, Store};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use sa_generator::{
    GenerateConfig, GenerateError, GenerateInput, Progress, generate, generate_observed,
};

use super::{action, element, render, result, run, tree};

fn check(actual: Vec<String>, expected: &[&str]) {
    assert_eq!(actual, expected, "\nactual:\n{}", actual.join("\n"));
}

#[test]
fn attributes_sources_dependency_sources_and_artifacts() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let app_src = tree(&cas, &[("src/main.c", "main"), ("include/app.h", "app.h")]);
    let lib_src = tree(&cas, &[("include/lib.h", "lib.h"), ("lib.c", "lib.c")]);
    let lib_art = tree(&cas, &[("usr/include/lib.h", "lib.h"), ("usr/lib/liblib.a", "archive")]);
    let base_art = tree(&cas, &[("usr/include/stdio.h", "stdio")]);
    let compile = action(
        &cas,
        "compile",
        &[
            ("src/main.c", "main"),
            ("include/app.h", "app.h"),
            ("usr/include/lib.h", "lib.h"),
            ("usr/include/stdio.h", "stdio"),
            ("unknown.h", "nobody made me"),
        ],
    );
    let input = GenerateInput {
        element: element("app.bst", Some(app_src), None),
        dependencies: vec![
            element("lib.bst", Some(lib_src), Some(lib_art)),
            element("base.bst", None, Some(base_art)),
        ],
        subactions: vec![compile],
        earlier_sources: Vec::new(),
    };
    let generated = run(&cas, &input);
    check(
        render(&cas, &generated, &[("compile", compile)]),
        &[
            "action compile",
            // SOURCE first; within a type, overlays are ordered by target digest.
            "  SOURCE :src/main.c <- \"main\"",
            "  SOURCE :include/app.h <- \"app.h\"",
            // usr/include/lib.h shares three components with lib's artifact, two with its sources.
            "  ARTIFACT base.bst:usr/include/stdio.h <- \"stdio\"",
            "  ARTIFACT lib.bst:usr/include/lib.h <- \"lib.h\"",
        ],
    );
    let stats = &generated.stats;
    assert_eq!((stats.actions, stats.source_overlays, stats.artifact_overlays), (1, 2, 2));
    assert_eq!(stats.unattributed_inputs, 1);
}

#[test]
fn equal_suffix_prefers_source_then_action_then_artifact() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let src = tree(&cas, &[("x.h", "same")]);
    let dep_art = tree(&cas, &[("x.h", "same")]);
    let first = action(&cas, "first", &[("a.in", "in")]);
    result(&cas, &first, &[("x.h", "same")]);
    let second = action(&cas, "second", &[("x.h", "same")]);
    let input = GenerateInput {
        element: element("e", Some(src), None),
        dependencies: vec![element("d", None, Some(dep_art))],
        subactions: vec![first, second],
        earlier_sources: Vec::new(),
    };
    check(
        render(&cas, &run(&cas, &input), &[("second", second)]),
        &["action second", "  SOURCE :x.h <- \"same\""],
    );
}

#[test]
fn identical_files_keep_their_own_origins() {
    // The reference keys origins by digest alone: both occurrences would name one path, and
    // an edit to the other file would be applied to both. Here each keeps its own.
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let src =
        tree(&cas, &[("a/stub.h", "// stub"), ("b/stub.h", "// stub"), ("c/other.h", "other")]);
    let compile = action(
        &cas,
        "compile",
        &[("a/stub.h", "// stub"), ("b/stub.h", "// stub"), ("c/other.h", "other")],
    );
    let input = GenerateInput {
        element: element("e", Some(src), None),
        dependencies: vec![],
        subactions: vec![compile],
        earlier_sources: Vec::new(),
    };
    check(
        render(&cas, &run(&cas, &input), &[("compile", compile)]),
        &[
            "action compile",
            "  SOURCE :a/stub.h <- \"// stub\"",
            "  SOURCE :b/stub.h <- \"// stub\"",
            "  SOURCE :c/other.h <- \"other\"",
        ],
    );
}

#[test]
fn action_overlays_name_earlier_producers_in_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let cas = LocalCas::open(dir.path(), LocalCasConfig::default()).unwrap();
    let src = tree(&cas, &[("a.c", "a"), ("b.c", "b")]);
    let compile_a = action(&cas, "compile_a", &[("a.c", "a"), ("a.o", "A-object")]);
    result(&cas, &compile_a, &[("a.o", "A-object")]);
    let compile_b = action(&cas, "compile_b", &[("b.c", "b")]);
    result(&cas, &compile_b, &[("out/b.o", "B-object")]);
    let link = action(&cas, "link", &[("a.o", "A-object"), ("out/b.o", "B-object")]);
    result(&cas, &link, &[("app", "binary")]);
    let artifact = tree(&cas, &[("usr/bin/app", "binary"), ("usr/share/a.c", "a")]);
    let input = GenerateInput {
        element: element("e", Some(src), Some(artifact)),
        dependencies: vec![],
        subactions: vec![compile_a, compile_b, link],
        earlier_sources: Vec::new(),
    };
    let generated = run(&cas, &input);
    let labels = [("compile_a", compile_a), ("compile_b", compile_b), ("link", link)];
    check(
        render(&cas, &generated, &labels),
        &[
            // compile_a's own output in its input is not attributed to itself.
            "action compile_a",
            "  SOURCE :a.c <- \"a\"",
            "action compile_b",
            "  SOURCE :b.c <- \"b\"",
            "action link",
            "  ACTION :out/b.o of compile_b <- \"B-object\"",
            "  ACTION :a.o of compile_a <- \"A-object\"",
            "artifact",
            "  SOURCE :a.c <- \"a\"",
            "  ACTION :app of link <- \"binary\"",
        ],
    );
    assert_eq!(generated.stats.action_overlays, 2);
    assert_eq!(generated.stats.unattributed_inputs, 1, "compile_a's a.o");
}

#[test]
fn subactions_without_overlays_are_left_out_and_duplicates_merged() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let src = tree(&cas, &[("a.c", "a")]);
    let useful = action(&cas, "useful", &[("a.c", "a")]);
    let useless = action(&cas, "useless", &[("gen.c", "generated")]);
    let input = GenerateInput {
        element: element("e", Some(src), None),
        dependencies: vec![],
        subactions: vec![useless, useful, useful],
        earlier_sources: Vec::new(),
    };
    let generated = run(&cas, &input);
    check(
        render(&cas, &generated, &[("useful", useful)]),
        &["action useful", "  SOURCE :a.c <- \"a\""],
    );
    assert_eq!((generated.stats.subactions, generated.stats.actions), (2, 1));
}

#[test]
fn output_is_stored_and_identical_across_thread_counts() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let files: Vec<(String, String)> =
        (0..200).map(|i| (format!("d{}/f{i}.h", i % 7), format!("{}", i % 13))).collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let src = tree(&cas, &files);
    let actions: Vec<_> =
        (0..20).map(|i| action(&cas, &format!("a{i}"), &files[i * 5..i * 5 + 60])).collect();
    let input = GenerateInput {
        element: element("e", Some(src), Some(src)),
        dependencies: vec![],
        subactions: actions,
        earlier_sources: Vec::new(),
    };
    let outputs: Vec<_> = [1, 2, 4]
        .iter()
        .map(|&threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run(&cas, &input))
        })
        .collect();
    // Equal digests: equal bytes, stored (read back and verified).
    assert!(outputs.windows(2).all(|w| w[0].digest == w[1].digest && w[0].index == w[1].index));
    assert_eq!(cas.read_blob(&outputs[0].digest).unwrap().len() as u64, outputs[0].digest.size());
    assert_eq!(outputs[0].stats.actions, 20);
    // Observed: the 20 subactions announced, then reported done, with the same output.
    let (planned, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let observed = generate_observed(&cas, &input, &GenerateConfig::default(), &|p| match p {
        Progress::Planned(n) => _ = planned.fetch_add(n, Relaxed),
        Progress::Done(n) => {
            assert!(done.fetch_add(n, Relaxed) + n <= planned.load(Relaxed), "done after planned")
        }
    })
    .unwrap();
    assert_eq!((planned.into_inner(), done.into_inner()), (20, 20));
    assert_eq!(observed.digest, outputs[0].digest);
}

fn generate_err(cas: &dyn Store, input: &GenerateInput) -> GenerateError {
    generate(cas, input, &GenerateConfig::default()).unwrap_err()
}

#[test]
fn missing_action_is_an_error_naming_it_unless_skipped() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let src = tree(&cas, &[("a.c", "a")]);
    let good = action(&cas, "good", &[("a.c", "a")]);
    let absent = DigestFunction::Sha256.hash_bytes(b"no such action");
    let input = GenerateInput {
        element: element("e", Some(src), None),
        dependencies: vec![],
        subactions: vec![absent, good],
        earlier_sources: Vec::new(),
    };
    let err = generate_err(&cas, &input);
    assert_eq!(
        sa_cas::error_chain(&err),
        format!("subaction {absent} of element \"e\": Action {absent}: missing blob {absent}")
    );
    let config = GenerateConfig { skip_broken_subactions: true, ..Default::default() };
    let generated = generate(&cas, &input, &config).unwrap();
    assert_eq!(generated.stats.actions, 1);
    assert_eq!(generated.stats.skipped.len(), 1);
    assert_eq!(generated.stats.skipped[0].action, absent);
}

#[test]
fn corrupt_action_and_missing_input_directory_are_named() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let src = tree(&cas, &[("a.c", "a")]);
    let garbage = cas.write_blob(bytes::Bytes::from_static(&[0x0a, 0x05, 0x01])).unwrap();
    let input = GenerateInput {
        element: element("e", Some(src), None),
        dependencies: vec![],
        subactions: vec![garbage],
        earlier_sources: Vec::new(),
    };
    let err = sa_cas::error_chain(&generate_err(&cas, &input));
    assert!(
        err.starts_with(&format!(
            "subaction {garbage} of element \"e\": blob {garbage} is not a valid Action"
        )),
        "{err}"
    );

    // An Action whose input tree lacks a subdirectory.
    let missing_dir = DigestFunction::Sha256.hash_bytes(b"gone");
    let f = cas.digest_function();
    let root = sa_cas::merkle::DirectoryBuilder::new()
        .directory("include", &missing_dir)
        .build(f)
        .unwrap();
    let root = cas.write_blob(sa_cas::merkle::directory_blob(f, &root).into_data()).unwrap();
    let act =
        sa_proto::reapi::Action { input_root_digest: Some(root.to_proto()), ..Default::default() };
    let act = sa_cas::write_message(&cas, &act).unwrap();
    let input = GenerateInput {
        element: element("e", Some(src), None),
        dependencies: vec![],
        subactions: vec![act],
        earlier_sources: Vec::new(),
    };
    let err = generate_err(&cas, &input);
    assert_eq!(
        sa_cas::error_chain(&err),
        format!(
            "subaction {act} of element \"e\": input root of Action {act}: Directory {missing_dir} at include/ below root {root}: missing blob {missing_dir}"
        )
    );
    assert!(matches!(err, GenerateError::Subaction { source, .. } if source.is_not_found()));
}

#[test]
fn unsafe_name_in_an_input_tree_is_an_error() {
    use prost::Message;
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let file = cas.write_blob("x".into()).unwrap();
    let evil = sa_proto::reapi::Directory {
        files: vec![sa_proto::reapi::FileNode {
            name: "..".into(),
            digest: Some(file.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root = cas.write_blob(evil.encode_to_vec().into()).unwrap();
    let act =
        sa_proto::reapi::Action { input_root_digest: Some(root.to_proto()), ..Default::default() };
    let act = sa_cas::write_message(&cas, &act).unwrap();
    let input = GenerateInput {
        element: element("e", None, None),
        dependencies: vec![],
        subactions: vec![act],
        earlier_sources: Vec::new(),
    };
    let err = sa_cas::error_chain(&generate_err(&cas, &input));
    assert!(
        err.ends_with(&format!("invalid Directory {root}: file name \"..\" is not allowed")),
        "{err}"
    );
}

#[test]
fn missing_dependency_tree_is_an_error_naming_the_dependency() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let gone = DigestFunction::Sha256.hash_bytes(b"gone");
    let input = GenerateInput {
        element: element("e", None, None),
        dependencies: vec![element("lib.bst", None, Some(gone))],
        subactions: vec![],
        earlier_sources: Vec::new(),
    };
    let err = generate_err(&cas, &input);
    assert!(
        matches!(&err, GenerateError::Tree { element, what: "artifact", .. } if element == "lib.bst")
    );
    assert!(
        sa_cas::error_chain(&err).starts_with(&format!("artifact {gone} of element \"lib.bst\""))
    );
}

#[test]
fn inconsistent_input_is_rejected() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let dup = GenerateInput {
        element: element("e", None, None),
        dependencies: vec![element("d", None, None), element("d", None, None)],
        subactions: vec![],
        earlier_sources: Vec::new(),
    };
    assert_eq!(
        generate_err(&cas, &dup).to_string(),
        "invalid input for element \"e\": dependency \"d\" is listed twice"
    );
    let blake = DigestFunction::Blake3.hash_bytes(b"x");
    let wrong = GenerateInput {
        element: element("e", Some(blake), None),
        dependencies: vec![],
        subactions: vec![],
        earlier_sources: Vec::new(),
    };
    assert!(generate_err(&cas, &wrong).to_string().contains("is blake3, the store uses sha256"));
    let _ = CasError::MissingField("unused");
}
