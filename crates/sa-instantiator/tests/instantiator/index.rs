//! The actions index: what generate stores is what the blob gives, an unchanged action is
//! reported without reading its Action or input tree, and an index a hostile store serves is
//! refused (a warning), rebuilt and replaced, never used.

use prost::Message;
use sa_cas::{ActionCache, Cas, Digest, DigestFunction, LocalCas, LocalCasConfig, Store};
use sa_generator::actions_index::Lookup;
use sa_generator::{
    ActionsIndex, ElementTrees, GenerateConfig, GenerateInput, Generated, InputSkeleton, generate,
};
use sa_instantiator::{
    ElementState, IndexStats, InstantiateConfig, InstantiatedAction, Instantiator,
};
use sa_proto::reapi::{ActionResult, OutputFile};

use super::{action, files, ingest};

const F: DigestFunction = DigestFunction::Sha256;

/// Two compile steps, `a.c` and `b.c`, each with `common.h`, recorded and generated; then
/// `b.c` is edited.
struct Case {
    _dir: tempfile::TempDir,
    cas: LocalCas,
    actions: [Digest; 2],
    roots: [Digest; 2],
    generated: Generated,
    sources2: Digest,
}

fn case(config: &GenerateConfig) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let cas = LocalCas::open(dir.path().join("store"), LocalCasConfig::default()).unwrap();
    let src = files(&[("a.c", "int a;"), ("b.c", "int b;"), ("common.h", "#pragma once")]);
    let sources = ingest(&cas, &dir.path().join("src1"), &src);
    let mut roots = [sources; 2];
    let mut actions = [sources; 2];
    for (i, name) in ["a.c", "b.c"].iter().enumerate() {
        let input = files(&[(name, &src[*name]), ("common.h", &src["common.h"])]);
        roots[i] = ingest(&cas, &dir.path().join(format!("in-{i}")), &input);
        actions[i] = action(&cas, &format!("cc -c {name}"), roots[i]);
    }
    let input = GenerateInput {
        element: ElementTrees { name: "e".into(), sources: Some(sources), artifact: None },
        dependencies: vec![],
        subactions: actions.to_vec(),
        earlier_sources: Vec::new(),
    };
    let generated = generate(&cas, &input, config).unwrap();
    let mut edited = src.clone();
    edited.insert("b.c".into(), "int b2;".into());
    let sources2 = ingest(&cas, &dir.path().join("src2"), &edited);
    Case { _dir: dir, cas, actions, roots, generated, sources2 }
}

fn instantiate(
    cas: &(impl Store + ?Sized),
    sources: Digest,
    spec: &Digest,
    index: bool,
) -> (Vec<InstantiatedAction>, IndexStats) {
    let state = ElementState { name: "e".into(), sources: Some(sources), ..Default::default() };
    let config = InstantiateConfig { index, ..Default::default() };
    let instantiator = Instantiator::new(cas, vec![state], config).unwrap();
    let outcomes = instantiator.instantiate_element("e", spec).unwrap();
    (outcomes, instantiator.index_stats())
}

fn object_path(cas: &LocalCas, digest: &Digest) -> std::path::PathBuf {
    let hash = digest.hash_hex();
    cas.root().join("cas/objects").join(&hash[..2]).join(&hash[2..])
}

#[test]
fn the_index_generate_stores_is_the_one_derived_from_its_blob() {
    let c = case(&GenerateConfig::default());
    let derived = ActionsIndex::from_speculative_actions(
        F,
        c.generated.digest,
        &c.cas.read_blob(&c.generated.digest).unwrap(),
    )
    .unwrap();
    let Lookup::Found(stored) = ActionsIndex::load(&c.cas, &c.generated.digest).unwrap() else {
        panic!("generate stores the index")
    };
    assert_eq!(stored, derived, "found through the ActionCache: the skeleton is not used");
    // The graph's index is the derived one naming the skeleton of the input trees.
    let named = c.generated.index.unwrap();
    let Lookup::Found(trusted) =
        ActionsIndex::load_named(&c.cas, &c.generated.digest, &named).unwrap()
    else {
        panic!("the index generate names")
    };
    let skeleton = *trusted.input_skeleton().expect("generate writes the input skeleton");
    assert_eq!(*derived.clone().with_input_skeleton(skeleton).to_blob(F).digest(), named);
    let shape = InputSkeleton::load(&c.cas, &skeleton, &Default::default()).unwrap();
    let roots: Vec<Digest> = c.roots.to_vec();
    let forest = sa_cas::merkle::fetch_forest(&c.cas, &roots, &Default::default()).unwrap();
    assert_eq!(shape, InputSkeleton::from_forest(&forest, &roots).unwrap());
    assert_eq!(derived.actions().len(), 2);
    // a.c and b.c each once, common.h once although both actions hold it.
    assert_eq!(derived.overlays().len(), 3);
}

#[test]
fn an_unchanged_action_is_reported_without_reading_its_action_or_input_tree() {
    let c = case(&GenerateConfig::default());
    let (expected, _) = instantiate(&c.cas, c.sources2, &c.generated.digest, false);
    // The first action's Action and input root disappear from the store.
    for digest in [c.actions[0], c.roots[0]] {
        std::fs::remove_file(object_path(&c.cas, &digest)).unwrap();
    }
    let (outcomes, stats) = instantiate(&c.cas, c.sources2, &c.generated.digest, true);
    assert_eq!(outcomes, expected);
    assert_eq!(stats, IndexStats { loaded: 1, built: 0, rebuilt: 0 });
    assert_eq!(outcomes[0].action, c.actions[0], "a.c's action is unchanged");
    assert_eq!((outcomes[0].unchanged, outcomes[0].applied), (2, 0));
    assert_ne!(outcomes[1].action, c.actions[1], "b.c's action changed");
    // Without the index the blob is decoded, and the unchanged action is not read either.
    let (decoded, stats) = instantiate(&c.cas, c.sources2, &c.generated.digest, false);
    assert_eq!((decoded, stats), (expected, IndexStats::default()));
}

#[test]
fn an_index_missing_from_the_store_is_built_on_first_use_then_loaded() {
    let c = case(&GenerateConfig { skip_index: true, ..Default::default() });
    assert_eq!(c.generated.index, None);
    assert!(matches!(ActionsIndex::load(&c.cas, &c.generated.digest).unwrap(), Lookup::Missing));
    let (reference, _) = instantiate(&c.cas, c.sources2, &c.generated.digest, false);
    assert!(matches!(ActionsIndex::load(&c.cas, &c.generated.digest).unwrap(), Lookup::Missing));
    let (first, stats) = instantiate(&c.cas, c.sources2, &c.generated.digest, true);
    assert_eq!((first, stats.built), (reference.clone(), 1));
    let (second, stats) = instantiate(&c.cas, c.sources2, &c.generated.digest, true);
    assert_eq!((second, stats.loaded), (reference, 1));
}

/// Plants an ActionCache entry for the index of `spec` whose one output is `index`.
fn plant_entry(cas: &LocalCas, spec: &Digest, outputs: Vec<(&str, Digest)>) {
    let (key, _) = ActionsIndex::key(F, spec);
    let output_files = outputs
        .into_iter()
        .map(|(path, digest)| OutputFile {
            path: path.into(),
            digest: Some(digest.to_proto()),
            ..Default::default()
        })
        .collect();
    cas.update_action_result(&key, &ActionResult { output_files, ..Default::default() }).unwrap();
}

/// Stores `message` as the index of `spec`.
fn plant_index(cas: &LocalCas, spec: &Digest, message: &sa_proto::sa::v1::ActionsIndex) {
    let digest = cas.write_blob(message.encode_to_vec().into()).unwrap();
    plant_entry(cas, spec, vec![("actions-index", digest)]);
}

/// The valid index of the case's blob, as its wire message, changed by what the caller asks.
fn mutations_of(
    c: &Case,
) -> impl Fn(&dyn Fn(&mut sa_proto::sa::v1::ActionsIndex)) -> sa_proto::sa::v1::ActionsIndex {
    let spec = c.generated.digest;
    let valid = sa_proto::sa::v1::ActionsIndex::decode(
        ActionsIndex::from_speculative_actions(F, spec, &c.cas.read_blob(&spec).unwrap())
            .unwrap()
            .to_blob(F)
            .data()
            .clone(),
    )
    .unwrap();
    move |change| {
        let mut message = valid.clone();
        change(&mut message);
        message
    }
}

#[test]
fn a_hostile_actions_index_is_refused_rebuilt_and_replaced() {
    let c = case(&GenerateConfig::default());
    let spec = c.generated.digest;
    let (reference, _) = instantiate(&c.cas, c.sources2, &spec, false);
    let mutated = mutations_of(&c);
    let garbage = c.cas.write_blob(vec![0xffu8; 64].into()).unwrap();
    let absent = F.hash_bytes(b"an index nobody stored");
    let absurd = Digest::new(F, *F.hash_bytes(b"x").hash(), 1 << 40).unwrap();
    type Plant<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let plants: Vec<Plant<'_>> = vec![
        ("no output", Box::new(|| plant_entry(&c.cas, &spec, vec![]))),
        (
            "two outputs",
            Box::new(|| {
                plant_entry(
                    &c.cas,
                    &spec,
                    vec![("actions-index", garbage), ("actions-index", garbage)],
                )
            }),
        ),
        ("another output name", Box::new(|| plant_entry(&c.cas, &spec, vec![("../x", garbage)]))),
        (
            "a terabyte index",
            Box::new(|| plant_entry(&c.cas, &spec, vec![("actions-index", absurd)])),
        ),
        (
            "an index not in the CAS",
            Box::new(|| plant_entry(&c.cas, &spec, vec![("actions-index", absent)])),
        ),
        ("garbage", Box::new(|| plant_entry(&c.cas, &spec, vec![("actions-index", garbage)]))),
        (
            "the index of another blob",
            Box::new(|| {
                plant_index(
                    &c.cas,
                    &spec,
                    &mutated(&|m| {
                        m.speculative_actions = Some(absent.to_proto());
                    }),
                )
            }),
        ),
        (
            "an overlay position out of range",
            Box::new(|| {
                plant_index(&c.cas, &spec, &mutated(&|m| m.actions[0].overlay_deltas.push(7)))
            }),
        ),
        (
            "a repeated overlay position",
            Box::new(|| {
                plant_index(&c.cas, &spec, &mutated(&|m| m.actions[0].overlay_deltas.push(0)))
            }),
        ),
        (
            "a position overflowing",
            Box::new(|| {
                plant_index(
                    &c.cas,
                    &spec,
                    &mutated(&|m| m.actions[0].overlay_deltas.push(u32::MAX)),
                )
            }),
        ),
        (
            "overlays out of order",
            Box::new(|| plant_index(&c.cas, &spec, &mutated(&|m| m.overlays.swap(0, 1)))),
        ),
        (
            "an invalid overlay",
            Box::new(|| {
                plant_index(&c.cas, &spec, &mutated(&|m| m.overlays[0].source_path.clear()))
            }),
        ),
    ];
    for (what, plant) in plants {
        plant();
        assert!(
            matches!(ActionsIndex::load(&c.cas, &spec).unwrap(), Lookup::Invalid(_)),
            "{what}: refused"
        );
        let (outcomes, stats) = instantiate(&c.cas, c.sources2, &spec, true);
        assert_eq!(outcomes, reference, "{what}: the result is the blob's");
        assert_eq!(stats, IndexStats { loaded: 0, built: 0, rebuilt: 1 }, "{what}");
        assert!(
            matches!(ActionsIndex::load(&c.cas, &spec).unwrap(), Lookup::Found(_)),
            "{what}: replaced by a valid index"
        );
    }
}

/// Instantiates with the previous graph naming `index` for `spec` (the trust root).
fn instantiate_named(
    cas: &(impl Store + ?Sized),
    sources: Digest,
    spec: &Digest,
    index: Option<Digest>,
) -> (Vec<InstantiatedAction>, IndexStats) {
    let state = ElementState {
        name: "e".into(),
        sources: Some(sources),
        previous_speculative_actions: Some(*spec),
        previous_actions_index: index,
        ..Default::default()
    };
    let instantiator = Instantiator::new(cas, vec![state], InstantiateConfig::default()).unwrap();
    let outcomes = instantiator.instantiate_element("e", spec).unwrap();
    (outcomes, instantiator.index_stats())
}

/// Structurally valid lies an ActionCache writer can plant: every one passes the checks of
/// the index itself, and would change what runs or what is primed if it were believed.
fn lies(c: &Case, other_action: Digest) -> Vec<(&'static str, sa_proto::sa::v1::ActionsIndex)> {
    let mutated = mutations_of(c);
    vec![
        (
            "every base digest replaced by another Action",
            mutated(&|m| {
                for action in &mut m.actions {
                    action.base_action_digest = Some(other_action.to_proto());
                }
            }),
        ),
        ("an action dropped", mutated(&|m| drop(m.actions.remove(0)))),
        ("an action added", mutated(&|m| m.actions.push(m.actions[0].clone()))),
        ("the actions swapped", mutated(&|m| m.actions.swap(0, 1))),
        (
            "an overlay dropped",
            mutated(&|m| {
                m.actions[1].overlay_deltas.pop();
            }),
        ),
    ]
}

#[test]
fn a_lying_index_in_the_action_cache_changes_nothing_that_runs() {
    let c = case(&GenerateConfig::default());
    let spec = c.generated.digest;
    let (reference, _) = instantiate(&c.cas, c.sources2, &spec, false);
    // An Action the user never recorded, stored where the instantiator can read it.
    let evil = super::action(&c.cas, "rm -rf ~", c.roots[0]);
    for (what, lie) in lies(&c, evil) {
        plant_index(&c.cas, &spec, &lie);
        assert!(
            matches!(ActionsIndex::load(&c.cas, &spec).unwrap(), Lookup::Found(_)),
            "{what}: structurally valid, so only the check against the blob can refuse it"
        );
        let (outcomes, stats) = instantiate(&c.cas, c.sources2, &spec, true);
        assert_eq!(outcomes, reference, "{what}: the outcomes are the blob's");
        assert!(outcomes.iter().all(|o| o.action != evil && o.base != evil), "{what}");
        assert_eq!(stats, IndexStats { loaded: 0, built: 0, rebuilt: 1 }, "{what}");
        // The lie was replaced by the index of the blob.
        let Lookup::Found(replaced) = ActionsIndex::load(&c.cas, &spec).unwrap() else {
            panic!("{what}: replaced")
        };
        let derived =
            ActionsIndex::from_speculative_actions(F, spec, &c.cas.read_blob(&spec).unwrap());
        assert_eq!(replaced, derived.unwrap(), "{what}");
    }
}

#[test]
fn the_index_the_graph_names_is_used_whatever_the_action_cache_holds() {
    let c = case(&GenerateConfig::default());
    let spec = c.generated.digest;
    let (reference, _) = instantiate(&c.cas, c.sources2, &spec, false);
    let evil = super::action(&c.cas, "rm -rf ~", c.roots[0]);
    let lie = lies(&c, evil).remove(0).1;
    plant_index(&c.cas, &spec, &lie);
    let (outcomes, stats) = instantiate_named(&c.cas, c.sources2, &spec, c.generated.index);
    assert_eq!(outcomes, reference);
    assert_eq!(stats, IndexStats { loaded: 1, built: 0, rebuilt: 0 });
    // The blob itself is never read on this path: gone from the store, nothing changes.
    std::fs::remove_file(object_path(&c.cas, &spec)).unwrap();
    let (outcomes, _) = instantiate_named(&c.cas, c.sources2, &spec, c.generated.index);
    assert_eq!(outcomes, reference);
}

#[test]
fn a_named_index_that_is_not_the_blobs_is_refused_and_rebuilt() {
    let c = case(&GenerateConfig::default());
    let spec = c.generated.digest;
    let (reference, _) = instantiate(&c.cas, c.sources2, &spec, false);
    let other = c.cas.write_blob(vec![0xffu8; 64].into()).unwrap();
    let absent = F.hash_bytes(b"an index nobody stored");
    for (what, named) in [("garbage", other), ("absent", absent)] {
        let (outcomes, stats) = instantiate_named(&c.cas, c.sources2, &spec, Some(named));
        assert_eq!(outcomes, reference, "{what}");
        let expected = if what == "absent" {
            IndexStats { loaded: 0, built: 1, rebuilt: 0 }
        } else {
            IndexStats { loaded: 0, built: 0, rebuilt: 1 }
        };
        assert_eq!(stats, expected, "{what}");
    }
}

/// Two compile steps whose input roots hold `lib/include/l.h` and directories of their own
/// (`src/`, `deep/x/y/`, each with a generated file the sources lack); `l.h` changes.
#[test]
fn with_the_graphs_index_only_the_directories_on_the_way_to_a_change_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let cas = LocalCas::open(dir.path().join("store"), LocalCasConfig::default()).unwrap();
    let src = files(&[
        ("lib/include/l.h", "v1"),
        ("lib/include/m.h", "m"),
        ("src/a.c", "a"),
        ("src/b.c", "b"),
        ("deep/x/y/z.h", "z"),
    ]);
    let sources = ingest(&cas, &dir.path().join("src1"), &src);
    let inputs = [
        vec!["lib/include/l.h", "lib/include/m.h", "src/a.c", "deep/x/y/z.h"],
        vec!["lib/include/l.h", "src/b.c"],
    ];
    let mut roots = Vec::new();
    let mut actions = Vec::new();
    for (i, paths) in inputs.iter().enumerate() {
        let mut input: super::Files =
            paths.iter().map(|p| (p.to_string(), src[*p].clone())).collect();
        input.insert("src/gen.h".into(), format!("generated {i}"));
        input.insert("deep/x/y/gen.h".into(), format!("generated {i}"));
        let root = ingest(&cas, &dir.path().join(format!("in-{i}")), &input);
        roots.push(root);
        actions.push(super::action(&cas, &format!("cc -c {i}"), root));
    }
    let input = GenerateInput {
        element: ElementTrees { name: "e".into(), sources: Some(sources), artifact: None },
        dependencies: vec![],
        subactions: actions.clone(),
        earlier_sources: Vec::new(),
    };
    let generated = generate(&cas, &input, &GenerateConfig::default()).unwrap();
    let spec = generated.digest;
    let mut edited = src.clone();
    edited.insert("lib/include/l.h".into(), "v2".into());
    let sources2 = ingest(&cas, &dir.path().join("src2"), &edited);
    let (expected, _) = instantiate(&cas, sources2, &spec, false);
    assert!(expected.iter().all(|o| o.complete && o.applied == 1), "{expected:?}");

    // Every directory of the input roots but the roots, lib/ and lib/include/ disappears.
    let forest = sa_cas::merkle::fetch_forest(&cas, &roots, &Default::default()).unwrap();
    let mut on_the_way = roots.clone();
    for root in &roots {
        let lib = forest.get(root).unwrap().directories.iter().find(|d| &*d.name == "lib");
        let lib = lib.unwrap().digest;
        on_the_way.push(lib);
        on_the_way.push(forest.get(&lib).unwrap().directories[0].digest);
    }
    let mut removed = 0;
    for digest in forest.directories().keys().filter(|d| !on_the_way.contains(d)) {
        std::fs::remove_file(object_path(&cas, digest)).unwrap();
        removed += 1;
    }
    assert_eq!(removed, 8, "src/, deep/, deep/x/, deep/x/y/ of each");
    let (outcomes, stats) = instantiate_named(&cas, sources2, &spec, generated.index);
    assert_eq!(outcomes, expected, "the same actions, byte for byte");
    assert_eq!(stats, IndexStats { loaded: 1, built: 0, rebuilt: 0 });

    // A skeleton the store evicted: the trees are read whole (and fail on what is gone).
    let Lookup::Found(index) =
        ActionsIndex::load_named(&cas, &spec, &generated.index.unwrap()).unwrap()
    else {
        panic!("the index generate names")
    };
    let skeleton = *index.input_skeleton().unwrap();
    let kept = std::fs::read(object_path(&cas, &skeleton)).unwrap();
    std::fs::remove_file(object_path(&cas, &skeleton)).unwrap();
    let state = ElementState {
        name: "e".into(),
        sources: Some(sources2),
        previous_speculative_actions: Some(spec),
        previous_actions_index: generated.index,
        ..Default::default()
    };
    let instantiator = Instantiator::new(&cas, vec![state], InstantiateConfig::default()).unwrap();
    let err = sa_cas::error_chain(&instantiator.instantiate_element("e", &spec).unwrap_err());
    assert!(err.contains("input root of Action") && err.contains("missing blob"), "{err}");
    assert!(!err.contains("skeleton"), "{err}");
    std::fs::write(object_path(&cas, &skeleton), kept).unwrap();
    let (outcomes, _) = instantiate_named(&cas, sources2, &spec, generated.index);
    assert_eq!(outcomes, expected, "the skeleton back: read on the way again");

    // Found through the ActionCache, the same index's skeleton is not trusted: the trees are
    // read whole, and the missing directories are named.
    let state = ElementState { name: "e".into(), sources: Some(sources2), ..Default::default() };
    let instantiator = Instantiator::new(&cas, vec![state], InstantiateConfig::default()).unwrap();
    let err = instantiator.instantiate_element("e", &spec).unwrap_err();
    assert!(sa_cas::error_chain(&err).contains("missing"), "{}", sa_cas::error_chain(&err));
}

#[test]
fn the_skeleton_is_read_only_when_enough_actions_change_to_pay_for_it() {
    // 40 compiles, each of its own source and the library header. An edit of one source
    // changes one action in 40: its tree is read whole, the skeleton not at all (a skeleton
    // the store serves corrupt goes unnoticed); an edit of the header changes all 40: the
    // skeleton is read, and a corrupt one is an error naming it.
    let dir = tempfile::tempdir().unwrap();
    let cas = LocalCas::open(dir.path().join("store"), LocalCasConfig::default()).unwrap();
    let mut pairs: Vec<(String, String)> =
        (0..40).map(|i| (format!("src/{i}.c"), format!("int f{i};"))).collect();
    pairs.push(("lib/include/l.h".into(), "v1".into()));
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let src = files(&refs);
    let sources = ingest(&cas, &dir.path().join("src1"), &src);
    let mut actions = Vec::new();
    for i in 0..40 {
        let path = format!("src/{i}.c");
        let input = files(&[(&path, &src[&path]), ("lib/include/l.h", &src["lib/include/l.h"])]);
        let root = ingest(&cas, &dir.path().join(format!("in-{i}")), &input);
        actions.push(super::action(&cas, &format!("cc -c {i}"), root));
    }
    let input = GenerateInput {
        element: ElementTrees { name: "e".into(), sources: Some(sources), artifact: None },
        dependencies: vec![],
        subactions: actions,
        earlier_sources: Vec::new(),
    };
    let generated = generate(&cas, &input, &GenerateConfig::default()).unwrap();
    let spec = generated.digest;
    let Lookup::Found(index) =
        ActionsIndex::load_named(&cas, &spec, &generated.index.unwrap()).unwrap()
    else {
        panic!("the index generate names")
    };
    let skeleton = *index.input_skeleton().unwrap();
    let path = object_path(&cas, &skeleton);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, vec![0xff; skeleton.size() as usize]).unwrap();

    let mut one = src.clone();
    one.insert("src/7.c".into(), "int g7;".into());
    let one = ingest(&cas, &dir.path().join("src2"), &one);
    let (expected, _) = instantiate(&cas, one, &spec, false);
    assert_eq!(expected.iter().filter(|o| o.applied == 1).count(), 1, "{expected:?}");
    let (outcomes, _) = instantiate_named(&cas, one, &spec, generated.index);
    assert_eq!(outcomes, expected, "one action in 40: the skeleton is not read");

    let mut header = src.clone();
    header.insert("lib/include/l.h".into(), "v2".into());
    let header = ingest(&cas, &dir.path().join("src3"), &header);
    let state = ElementState {
        name: "e".into(),
        sources: Some(header),
        previous_speculative_actions: Some(spec),
        previous_actions_index: generated.index,
        ..Default::default()
    };
    let instantiator = Instantiator::new(&cas, vec![state], InstantiateConfig::default()).unwrap();
    let err = sa_cas::error_chain(&instantiator.instantiate_element("e", &spec).unwrap_err());
    assert!(err.contains(&skeleton.to_string()), "all 40 change: the skeleton is read: {err}");
}
