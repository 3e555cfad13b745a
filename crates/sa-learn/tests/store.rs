//! Learning against a store: the state is found by the project's name, accumulates over
//! incremental builds, and whatever the store serves as a state is checked.

#![allow(clippy::unwrap_used)] // tests: a failure is the test failing

use std::collections::BTreeMap;

use sa_cas::merkle::{self, TreeFile};
use sa_cas::{ActionCache, Blob, Cas, Digest, DigestFunction, EntryKey, MemoryCas, write_message};
use sa_learn::{LearnConfig, LearnError, Recorded, learn, load};
use sa_proto::reapi::{Action, ActionResult, Command, OutputFile};

const F: DigestFunction = DigestFunction::Sha256;

/// A C project at one commit: file contents by path.
struct Project {
    files: BTreeMap<&'static str, String>,
}

impl Project {
    fn new() -> Project {
        let files = [
            ("include/lib.h", "int lib(void);\n"),
            ("src/a.c", "#include \"lib.h\"\nint a(void) { return lib(); }\n"),
            ("src/b.c", "#include \"lib.h\"\nint b(void) { return 2; }\n"),
        ];
        Project { files: files.iter().map(|(p, t)| (*p, t.to_string())).collect() }
    }

    fn sources(&self, cas: &MemoryCas) -> Digest {
        let files: Vec<TreeFile> = self
            .files
            .iter()
            .map(|(p, t)| TreeFile::new(*p, cas.write_blob(t.clone().into()).unwrap(), false))
            .collect();
        merkle::build_tree(cas, &files).unwrap()
    }

    /// An action over `inputs` (path, content digest) producing `output`, with its result
    /// (the output's content made from the inputs) in the ActionCache.
    fn action(cas: &MemoryCas, inputs: &[(String, Digest)], output: &str) -> (Digest, Digest) {
        let files: Vec<TreeFile> =
            inputs.iter().map(|(p, d)| TreeFile::new(p.clone(), *d, false)).collect();
        let root = merkle::build_tree(cas, &files).unwrap();
        let command = Command {
            arguments: vec!["cc".into(), "-o".into(), output.into()],
            output_paths: vec![output.into()],
            ..Default::default()
        };
        let action = Action {
            command_digest: Some(write_message(cas, &command).unwrap().to_proto()),
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        };
        let action = write_message(cas, &action).unwrap();
        let made = cas.write_blob(format!("{output} of {root}").into()).unwrap();
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: output.into(),
                digest: Some(made.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        cas.update_action_result(&action, &result).unwrap();
        (action, made)
    }

    /// Every action of a clean build: a compile per source, then the link.
    fn build(&self, cas: &MemoryCas) -> Vec<Digest> {
        let header = cas.write_blob(self.files["include/lib.h"].clone().into()).unwrap();
        let mut actions = Vec::new();
        let mut objects = Vec::new();
        for source in ["src/a.c", "src/b.c"] {
            let content = cas.write_blob(self.files[source].clone().into()).unwrap();
            let object = format!("obj/{}.o", &source[4..5]);
            let inputs = [(source.to_string(), content), ("include/lib.h".to_string(), header)];
            let (action, made) = Project::action(cas, &inputs, &object);
            actions.push(action);
            objects.push((object, made));
        }
        actions.push(Project::action(cas, &objects, "app").0);
        actions
    }
}

fn ran(actions: &[Digest]) -> Vec<Recorded> {
    actions.iter().map(|a| Recorded { action: *a, succeeded: true, cached: false }).collect()
}

#[test]
fn an_incremental_build_updates_what_it_re_ran_and_keeps_the_rest() {
    let cas = MemoryCas::new(F);
    let config = LearnConfig::default();
    let mut project = Project::new();
    let build1 = project.build(&cas);
    let learned =
        learn(&cas, "app", "build-1", &ran(&build1), project.sources(&cas), &config).unwrap();
    assert_eq!(learned.state.entries.len(), 3);
    assert_eq!(learned.generate.subactions, 3);
    assert_eq!(learned.update.learned.len(), 3);

    // Build 2 edits b.c: an incremental build asks for b's compile and the link only.
    project.files.insert("src/b.c", "#include \"lib.h\"\nint b(void) { return 3; }\n".into());
    let build2 = project.build(&cas);
    assert_eq!(build2[0], build1[0], "a.o's inputs did not change");
    let learned =
        learn(&cas, "app", "build-2", &ran(&build2[1..]), project.sources(&cas), &config).unwrap();
    assert_eq!(learned.update.learned.len(), 2);
    assert_eq!(learned.state.entries.len(), 3, "a.o kept");
    let mut actions = learned.state.actions();
    actions.sort();
    let mut expected = build2.clone();
    expected.sort();
    assert_eq!(actions, expected, "what a clean build 2 would teach");
    assert_eq!(learned.generate.subactions, 3, "generated for every identity");
    assert!(learned.generate.action_overlays > 0, "the link's objects trace to the compiles");
    assert_eq!(learned.state.last_build.as_ref().unwrap().invocation, "build-2");

    // Found again by name, as stored; another name has nothing.
    let (digest, state) = load(&cas, "app", &config).unwrap().unwrap();
    assert_eq!((digest, &state), (learned.digest, &learned.state));
    assert!(load(&cas, "other", &config).unwrap().is_none());
}

#[test]
fn recorded_actions_the_store_cannot_explain_are_named_and_not_learned() {
    let cas = MemoryCas::new(F);
    let project = Project::new();
    let build = project.build(&cas);
    let missing = F.hash_bytes(b"an action nobody stored");
    let mut recorded = ran(&build);
    recorded.push(Recorded { action: missing, succeeded: true, cached: true });
    let learned =
        learn(&cas, "app", "b", &recorded, project.sources(&cas), &LearnConfig::default()).unwrap();
    assert_eq!(learned.state.entries.len(), 3);
    assert_eq!(learned.unreadable.len(), 1);
    assert_eq!(learned.unreadable[0].action, missing);
    assert!(
        learned.unreadable[0].reason.contains(&missing.to_string()),
        "{:?}",
        learned.unreadable
    );
}

#[test]
fn a_hostile_state_in_the_action_cache_is_an_error_naming_it_never_a_fresh_start() {
    let cas = MemoryCas::new(F);
    let project = Project::new();
    let config = LearnConfig::default();
    let learned =
        learn(&cas, "app", "b", &ran(&project.build(&cas)), project.sources(&cas), &config)
            .unwrap();
    let good = String::from_utf8(learned.state.encode(F)).unwrap();
    let key = EntryKey::new(F, &["sa-learned-state", "v1", "app"], &[], "learned-state");
    let plant = |bytes: Vec<u8>| {
        key.store(&cas, Blob::new(F, bytes)).unwrap();
    };
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"\x00\xff garbage".to_vec()),
        ("another project's", good.replace("\"name\":\"app\"", "\"name\":\"evil\"").into_bytes()),
        ("another format", good.replace("sa-learned-state v1", "sa-learned-state v9").into_bytes()),
        ("another function", good.replace("\"sha256\"", "\"blake3\"").into_bytes()),
        ("an unknown field", good.replacen("{", "{\"run\":\"rm -rf ~\",", 1).into_bytes()),
        ("a bad digest", good.replacen("\"action\":\"", "\"action\":\"zz", 1).into_bytes()),
    ];
    for (what, bytes) in attacks {
        plant(bytes);
        let err = load(&cas, "app", &config).expect_err(what).to_string();
        assert!(err.contains("learned state of \"app\""), "{what}: {err}");
        // Learning refuses to overwrite it with a fresh state.
        let err = learn(&cas, "app", "b", &[], project.sources(&cas), &config).expect_err(what);
        assert!(matches!(err, LearnError::InvalidState(_)), "{what}: {err}");
    }
    // Entries out of order or repeated.
    let mut state = learned.state.clone();
    let mut swapped: serde_json::Value = serde_json::from_slice(&state.encode(F)).unwrap();
    swapped["entries"].as_array_mut().unwrap().swap(0, 1);
    let swapped = serde_json::to_string(&swapped).unwrap();
    plant(swapped.into_bytes());
    let err = load(&cas, "app", &config).unwrap_err().to_string();
    assert!(err.contains("out of order or repeated"), "{err}");
    // A state larger than the limit is never read.
    state.name = "app".into();
    plant(state.encode(F));
    let small = LearnConfig { max_state_bytes: 16, ..config };
    let err = load(&cas, "app", &small).unwrap_err().to_string();
    assert!(err.contains("larger than 16 bytes"), "{err}");
    // An entry naming a blob the CAS does not hold.
    let absent = F.hash_bytes(b"a state never stored");
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "learned-state".into(),
            digest: Some(absent.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    cas.update_action_result(&key.digest, &result).unwrap();
    let err = load(&cas, "app", &config).unwrap_err().to_string();
    assert!(err.contains("learned state of \"app\"") && err.contains(&absent.to_string()), "{err}");
}

#[test]
fn an_action_not_re_run_keeps_the_origins_of_the_sources_it_was_recorded_against() {
    // b.c's compile has lib.h in its input root but does not read it: a build with input
    // discovery (Bazel, make with .d files) does not re-run it when lib.h changes, and links
    // the b.o it has.
    let cas = MemoryCas::new(F);
    let config = LearnConfig::default();
    let mut project = Project::new();
    let build1 = project.build(&cas);
    learn(&cas, "app", "1", &ran(&build1), project.sources(&cas), &config).unwrap();
    let old_b = cas.get_action_result(&build1[1]).unwrap().unwrap().output_files[0].clone();
    for (n, header) in ["int lib(void); /* 2 */\n", "int lib(void); /* 3 */\n"].iter().enumerate() {
        project.files.insert("include/lib.h", header.to_string());
        let a = project.build(&cas)[0];
        let new_a = cas.get_action_result(&a).unwrap().unwrap().output_files[0].clone();
        let objects = [new_a, old_b.clone()]
            .map(|f| (f.path, Digest::from_proto(F, &f.digest.unwrap()).unwrap()));
        let link = Project::action(&cas, &objects, "app").0;
        let learned = learn(
            &cas,
            "app",
            &format!("{}", n + 2),
            &ran(&[a, link]),
            project.sources(&cas),
            &config,
        )
        .unwrap();
        assert_eq!(learned.state.entries.len(), 3);
        assert_eq!(learned.state.entries.values().filter(|e| e.action == build1[1]).count(), 1);
        // b.o's lib.h (build 1's) is gone from the sources, yet still attributed: to the
        // path it had in the snapshot b.o was learned from, which instantiation resolves
        // against the sources of the day.
        assert_eq!(learned.generate.unattributed_inputs, 0, "after build {}", n + 2);
    }
}
