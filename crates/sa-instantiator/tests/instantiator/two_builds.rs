//! Two builds over real directories on disk: the instantiated actions must equal the actions
//! the second build really runs, byte for byte, including duplicate-content files and a
//! dependency that is not rebuilt yet.

use sa_cas::{Cas, CasError, Digest, DigestFunction, LocalCas, LocalCasConfig, MemoryCas, Store};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use sa_cas::error_chain;
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, Progress, generate};
use sa_instantiator::{ElementState, InstantiateConfig, InstantiateError, Instantiator};

use super::{Files, action, execute, files, ingest};

/// One build of the three-element graph base <- lib <- app.
struct Build {
    app_src: Files,
    lib_src: Files,
    base_art: Files,
}

impl Build {
    fn first() -> Build {
        Build {
            app_src: files(&[
                ("src/main.c", "int main() { return lib(); }"),
                ("src/util.c", "int util = 1;"),
                ("include/app.h", "#define APP 1"),
                ("include/stub_a.h", "// stub"),
                ("include/stub_b.h", "// stub"),
            ]),
            lib_src: files(&[
                ("include/lib.h", "int lib(void);"),
                ("include/empty.h", ""),
                ("src/lib.c", "int lib(void) { return 0; }"),
            ]),
            base_art: files(&[("usr/include/stdio.h", "/* stdio */"), ("usr/include/empty.h", "")]),
        }
    }

    /// lib installs its headers verbatim plus an archive derived from its sources.
    fn lib_art(&self) -> Files {
        let mut art: Files = self
            .lib_src
            .iter()
            .filter(|(p, _)| p.starts_with("include/"))
            .map(|(p, c)| (format!("usr/{p}"), c.clone()))
            .collect();
        art.insert("usr/lib/liblib.a".into(), format!("archive of {}", self.lib_src["src/lib.c"]));
        art
    }

    /// The input files of compiling `source`, as recc would stage them.
    fn compile_inputs(&self, source: &str) -> Files {
        let mut inputs = Files::new();
        inputs.insert(source.into(), self.app_src[source].clone());
        for (path, content) in &self.app_src {
            if path.starts_with("include/") {
                inputs.insert(path.clone(), content.clone());
            }
        }
        for (path, content) in self.lib_art().into_iter().chain(self.base_art.clone()) {
            if path.starts_with("usr/include/") {
                inputs.insert(path, content);
            }
        }
        inputs
    }
}

struct Recorded {
    compiles: Vec<(String, Digest)>,
    link: Digest,
}

/// Runs a build's actions (compiles, then the link) against `cas`, as the build would.
fn run_build(cas: &dyn Store, dir: &std::path::Path, build: &Build) -> Recorded {
    let mut compiles = Vec::new();
    let mut link_inputs = Files::new();
    for source in ["src/main.c", "src/util.c"] {
        let root = ingest(
            cas,
            &dir.join(format!("in-{}", source.replace('/', "_"))),
            &build.compile_inputs(source),
        );
        let digest = action(cas, &format!("cc -c {source}"), root);
        let object = source.replace("src/", "").replace(".c", ".o");
        link_inputs.insert(object.clone(), execute(cas, &digest, &object));
        compiles.push((source.to_string(), digest));
    }
    link_inputs.insert("usr/lib/liblib.a".into(), build.lib_art()["usr/lib/liblib.a"].clone());
    let root = ingest(cas, &dir.join("in-link"), &link_inputs);
    let link = action(cas, "cc -o app main.o util.o -llib", root);
    execute(cas, &link, "app");
    Recorded { compiles, link }
}

struct Scenario {
    cas: LocalCas,
    _dir: tempfile::TempDir,
    app_spec: Digest,
    lib_spec: Digest,
    first: Recorded,
    app_src2: Digest,
    lib_src2: Digest,
    lib_art2: Digest,
    base_art: Digest,
    second: Build,
}

fn scenario() -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let cas = LocalCas::open(dir.path().join("store"), LocalCasConfig::default()).unwrap();
    let b1 = Build::first();
    let first = run_build(&cas, &dir.path().join("b1"), &b1);
    let app_src = ingest(&cas, &dir.path().join("b1/app"), &b1.app_src);
    let lib_src = ingest(&cas, &dir.path().join("b1/lib"), &b1.lib_src);
    let lib_art = ingest(&cas, &dir.path().join("b1/lib-art"), &b1.lib_art());
    let base_art = ingest(&cas, &dir.path().join("b1/base-art"), &b1.base_art);
    let mut subactions: Vec<Digest> = first.compiles.iter().map(|(_, d)| *d).collect();
    subactions.push(first.link);
    let generated = generate(
        &cas,
        &GenerateInput {
            element: ElementTrees {
                name: "app.bst".into(),
                sources: Some(app_src),
                artifact: None,
            },
            dependencies: vec![
                ElementTrees {
                    name: "lib.bst".into(),
                    sources: Some(lib_src),
                    artifact: Some(lib_art),
                },
                ElementTrees { name: "base.bst".into(), sources: None, artifact: Some(base_art) },
            ],
            subactions,
            earlier_sources: Vec::new(),
        },
        &GenerateConfig::default(),
    )
    .unwrap();
    let lib_generated = generate(
        &cas,
        &GenerateInput {
            element: ElementTrees {
                name: "lib.bst".into(),
                sources: Some(lib_src),
                artifact: Some(lib_art),
            },
            dependencies: vec![ElementTrees {
                name: "base.bst".into(),
                sources: None,
                artifact: Some(base_art),
            }],
            subactions: vec![],
            earlier_sources: Vec::new(),
        },
        &GenerateConfig::default(),
    )
    .unwrap();
    // The edits: an app source, one of two identical app headers, a lib header.
    let mut b2 = Build::first();
    b2.app_src.insert("src/util.c".into(), "int util = 2;".into());
    b2.app_src.insert("include/stub_b.h".into(), "// stub, now different".into());
    b2.lib_src.insert("include/lib.h".into(), "int lib(void); /* v2 */".into());
    let app_src2 = ingest(&cas, &dir.path().join("b2/app"), &b2.app_src);
    let lib_src2 = ingest(&cas, &dir.path().join("b2/lib"), &b2.lib_src);
    let lib_art2 = ingest(&cas, &dir.path().join("b2/lib-art"), &b2.lib_art());
    Scenario {
        cas,
        _dir: dir,
        app_spec: generated.digest,
        lib_spec: lib_generated.digest,
        first,
        app_src2,
        lib_src2,
        lib_art2,
        base_art,
        second: b2,
    }
}

fn states(s: &Scenario, lib_built: bool) -> Vec<ElementState> {
    vec![
        ElementState {
            name: "app.bst".into(),
            sources: Some(s.app_src2),
            previous_key: Some("app1".into()),
            current_key: Some("app2".into()),
            ..Default::default()
        },
        ElementState {
            name: "lib.bst".into(),
            sources: Some(s.lib_src2),
            artifact: lib_built.then_some(s.lib_art2),
            previous_key: Some("lib1".into()),
            current_key: Some("lib2".into()),
            previous_speculative_actions: Some(s.lib_spec),
            ..Default::default()
        },
        ElementState {
            name: "base.bst".into(),
            artifact: Some(s.base_art),
            previous_key: Some("base1".into()),
            current_key: Some("base1".into()),
            ..Default::default()
        },
    ]
}

#[test]
fn instantiated_actions_equal_the_next_builds_actions() {
    let s = scenario();
    let instantiator =
        Instantiator::new(&s.cas, states(&s, false), InstantiateConfig::default()).unwrap();
    let (planned, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let outcomes = instantiator
        .instantiate_element_observed("app.bst", &s.app_spec, &|progress| match progress {
            Progress::Planned(n) => _ = planned.fetch_add(n, Relaxed),
            Progress::Done(n) => _ = done.fetch_add(n, Relaxed),
        })
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    assert_eq!((planned.into_inner(), done.into_inner()), (3, 3), "each action reported");

    // The second build, run directly from the edited trees, in a store of its own.
    let truth_dir = tempfile::tempdir().unwrap();
    let truth_cas = MemoryCas::new(DigestFunction::Sha256);
    let second = run_build(&truth_cas, truth_dir.path(), &s.second);

    // Compiles: lib is not rebuilt yet, its header resolves through its artifact overlays.
    for ((source, base), (_, expected)) in s.first.compiles.iter().zip(&second.compiles) {
        let outcome = outcomes.iter().find(|o| o.base == *base).unwrap();
        assert!(outcome.complete, "{source}: {:?}", outcome.unresolved_reasons);
        assert_eq!(outcome.action, *expected, "{source}");
        assert!(outcome.skipped > 0, "base.bst did not change: its overlays are skipped");
        assert!(s.cas.read_blob(&outcome.action).is_ok(), "the adapted action is stored");
    }
    // The link waits for its producers' results and for lib's archive.
    let link = outcomes.iter().find(|o| o.base == s.first.link).unwrap();
    assert!(!link.complete);
    assert!(
        link.unresolved_reasons.iter().any(
            |r| r.contains("is not instantiated completely") || r.contains("has no result yet")
        ),
        "{:?}",
        link.unresolved_reasons
    );

    // Priming runs the compiles; lib finishes building; instantiating again completes the link.
    for outcome in outcomes.iter().filter(|o| o.base != s.first.link) {
        let object = if s.first.compiles[0].1 == outcome.base { "main.o" } else { "util.o" };
        execute(&s.cas, &outcome.action, object);
    }
    let instantiator =
        Instantiator::new(&s.cas, states(&s, true), InstantiateConfig::default()).unwrap();
    let again = instantiator.instantiate_element("app.bst", &s.app_spec).unwrap();
    let link = again.iter().find(|o| o.base == s.first.link).unwrap();
    assert!(link.complete, "{:?}", link.unresolved_reasons);
    assert_eq!(link.action, second.link);
    assert_eq!(
        (link.applied, link.unchanged),
        (2, 1),
        "main.o and util.o changed; liblib.a did not (lib.c is unchanged)"
    );
}

#[test]
fn memo_index_and_thread_count_do_not_change_the_result() {
    let s = scenario();
    for lib_built in [true, false] {
        let run = |memoize: bool, index: bool, threads: usize| {
            let config = InstantiateConfig { memoize, index, ..Default::default() };
            let instantiator = Instantiator::new(&s.cas, states(&s, lib_built), config).unwrap();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| instantiator.instantiate_element("app.bst", &s.app_spec).unwrap())
        };
        let reference = run(true, true, 4);
        for (memoize, index, threads) in [(false, true, 4), (true, false, 1), (false, false, 1)] {
            assert_eq!(run(memoize, index, threads), reference, "{memoize} {index} {threads}");
        }
    }
}

#[test]
fn nothing_is_written_when_nothing_changed() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let dir = tempfile::tempdir().unwrap();
    let b1 = Build::first();
    let first = run_build(&cas, dir.path(), &b1);
    let app_src = ingest(&cas, &dir.path().join("app"), &b1.app_src);
    let generated = generate(
        &cas,
        &GenerateInput {
            element: ElementTrees {
                name: "app.bst".into(),
                sources: Some(app_src),
                artifact: None,
            },
            dependencies: vec![],
            subactions: first.compiles.iter().map(|(_, d)| *d).collect(),
            earlier_sources: Vec::new(),
        },
        &GenerateConfig::default(),
    )
    .unwrap();
    let blobs_before = cas.len();
    let state =
        ElementState { name: "app.bst".into(), sources: Some(app_src), ..Default::default() };
    let instantiator = Instantiator::new(&cas, vec![state], InstantiateConfig::default()).unwrap();
    let outcomes = instantiator.instantiate_element("app.bst", &generated.digest).unwrap();
    assert_eq!(outcomes.len(), 2);
    for outcome in &outcomes {
        assert_eq!(outcome.action, outcome.base);
        assert!(outcome.complete);
        assert_eq!(outcome.applied, 0);
        assert!(outcome.unchanged > 0);
    }
    assert_eq!(cas.len(), blobs_before);
}

#[test]
fn a_deleted_source_file_leaves_the_action_incomplete() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let dir = tempfile::tempdir().unwrap();
    let src = files(&[("a.c", "a"), ("a.h", "h")]);
    let root = ingest(&cas, &dir.path().join("1"), &src);
    let recorded = action(&cas, "cc a.c", root);
    let input = GenerateInput {
        element: ElementTrees { name: "e".into(), sources: Some(root), artifact: None },
        dependencies: vec![],
        subactions: vec![recorded],
        earlier_sources: Vec::new(),
    };
    let spec = generate(&cas, &input, &GenerateConfig::default()).unwrap().digest;
    let root2 = ingest(&cas, &dir.path().join("2"), &files(&[("a.c", "a2")]));
    let state = ElementState { name: "e".into(), sources: Some(root2), ..Default::default() };
    let instantiator = Instantiator::new(&cas, vec![state], InstantiateConfig::default()).unwrap();
    let outcome = &instantiator.instantiate_element("e", &spec).unwrap()[0];
    assert!(!outcome.complete);
    assert_eq!((outcome.applied, outcome.unresolved), (1, 1));
    assert_eq!(outcome.unresolved_reasons, ["no file a.h in the sources of \"e\""]);
}

#[test]
fn missing_or_corrupt_inputs_are_errors_naming_them() {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let state = ElementState { name: "e".into(), ..Default::default() };
    let instantiator =
        Instantiator::new(&cas, vec![state.clone()], InstantiateConfig::default()).unwrap();
    let absent = DigestFunction::Sha256.hash_bytes(b"absent");
    let err = instantiator.instantiate_element("e", &absent).unwrap_err();
    assert_eq!(
        error_chain(&err),
        format!("SpeculativeActions {absent} of element \"e\": missing blob {absent}")
    );
    let corrupt = cas.write_blob(bytes::Bytes::from_static(&[0x0a, 0x09, 0x00])).unwrap();
    let err = error_chain(&instantiator.instantiate_element("e", &corrupt).unwrap_err());
    assert!(err.contains(&format!("blob {corrupt} is not a valid SpeculativeActions")), "{err}");
    let err = instantiator.instantiate_element("nope", &corrupt).unwrap_err();
    assert_eq!(err.to_string(), "invalid input: unknown element \"nope\"");
    let err = Instantiator::new(&cas, vec![state.clone(), state], InstantiateConfig::default())
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid input: element \"e\" is listed twice");

    // An overlay of an unknown type names the action and the overlay.
    use prost::Message;
    use sa_proto::buildstream::v2::SpeculativeActions;
    use sa_proto::buildstream::v2::speculative_actions::{Overlay, SpeculativeAction};
    let base = DigestFunction::Sha256.hash_bytes(b"base");
    let bad = SpeculativeActions {
        actions: vec![SpeculativeAction {
            base_action_digest: Some(base.to_proto()),
            overlays: vec![Overlay {
                r#type: 7,
                source_path: "x".into(),
                target_digest: Some(base.to_proto()),
                ..Default::default()
            }],
        }],
        artifact_overlays: vec![],
    };
    let bad = cas.write_blob(bad.encode_to_vec().into()).unwrap();
    let err = instantiator.instantiate_element("e", &bad).unwrap_err();
    assert_eq!(
        sa_cas::error_chain(&err),
        format!("overlay 0 of action {base} of element \"e\": unknown overlay type 7")
    );
    // The cause is kept, typed.
    assert!(matches!(
        &err,
        sa_instantiator::InstantiateError::Overlay { source, .. }
            if matches!(**source, sa_generator::model::OverlayError::UnknownType(7))
    ));

    // A current source tree that is missing is an error naming the element.
    let s = scenario();
    let mut broken = states(&s, true);
    broken[0].sources = Some(DigestFunction::Sha256.hash_bytes(b"no such tree"));
    let instantiator = Instantiator::new(&s.cas, broken, InstantiateConfig::default()).unwrap();
    let err = instantiator.instantiate_element("app.bst", &s.app_spec).unwrap_err();
    assert!(
        matches!(&err, InstantiateError::Tree { element, what: "sources", source, .. } if element == "app.bst" && matches!(**source, CasError::Context { .. } | CasError::NotFound(_))),
        "{}",
        error_chain(&err)
    );
    let _: &dyn Store = &s.cas;
}
