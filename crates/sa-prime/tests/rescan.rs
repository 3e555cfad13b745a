//! Re-scanning changed compiles with a real compiler (gcc, run locally by sa-exec): a header
//! that starts including a new one, an include removed, an include of a file the sources lack;
//! and what a lying executor's listing can and cannot do.
#![allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants

use std::sync::Mutex;
use std::time::Duration;

use sa_cas::merkle::{self, TreeFile};
use sa_cas::{Digest, DigestFunction, MemoryCas, Store, write_message};
use sa_exec::{ExecConfig, Executor, Finished, LocalExecutor, Outcome};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, generate};
use sa_instantiator::{ElementState, InstantiateConfig, Instantiator};
use sa_prime::{
    PlannedCompile, PrimeOptions, PrimeReport, SCAN_FILE, Status, StatusKind, Stores, prime,
};
use sa_proto::reapi::command::EnvironmentVariable;
use sa_proto::reapi::{Action, ActionResult, Command, OutputFile};

const SHA: DigestFunction = DigestFunction::Sha256;

fn tree(cas: &dyn Store, files: &[(&str, &str)]) -> Digest {
    let entries: Vec<TreeFile> = files
        .iter()
        .map(|(p, c)| TreeFile::new(*p, cas.write_blob(c.to_string().into()).unwrap(), false))
        .collect();
    merkle::build_tree(cas, &entries).unwrap()
}

/// The Action `sa record` makes of `gcc -c main.c -o main.o` over `files` (the files the
/// compile reads: its input root).
fn compile(cas: &dyn Store, files: &[(&str, &str)]) -> Digest {
    compile_of(cas, "gcc -c main.c -o main.o", files)
}

/// The Action `sa record` makes of `line` (one output, `X.o`) over `files`.
fn compile_of(cas: &dyn Store, line: &str, files: &[(&str, &str)]) -> Digest {
    let arguments: Vec<String> = line.split(' ').map(String::from).collect();
    let output = arguments[arguments.iter().position(|a| a == "-o").unwrap() + 1].clone();
    let command = Command {
        arguments,
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/local/bin:/usr/bin:/bin".into(),
        }],
        output_paths: vec![output],
        ..Default::default()
    };
    let command = write_message(cas, &command).unwrap();
    let action = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(tree(cas, files).to_proto()),
        ..Default::default()
    };
    write_message(cas, &action).unwrap()
}

/// Build 1 compiled over `recorded` (its input root) with the workspace `sources1`; build 2's
/// workspace is `sources2`. Primes with `executor` (None: gcc here) and returns the report.
fn prime_next(
    cas: &MemoryCas,
    sources1: &[(&str, &str)],
    recorded: &[(&str, &str)],
    sources2: &[(&str, &str)],
    options: &PrimeOptions,
    executor: Option<&dyn Executor>,
) -> PrimeReport {
    let base = compile(cas, recorded);
    let generated = generate(
        cas,
        &GenerateInput {
            element: ElementTrees {
                name: "ws".into(),
                sources: Some(tree(cas, sources1)),
                artifact: None,
            },
            dependencies: vec![],
            subactions: vec![base],
            earlier_sources: Vec::new(),
        },
        &GenerateConfig::default(),
    )
    .unwrap();
    let states = vec![ElementState {
        name: "ws".into(),
        sources: Some(tree(cas, sources2)),
        previous_key: Some("1".into()),
        current_key: Some("2".into()),
        previous_speculative_actions: Some(generated.digest),
        ..Default::default()
    }];
    let instantiator = Instantiator::new(cas, states, InstantiateConfig::default()).unwrap();
    let local = LocalExecutor::new(cas, ExecConfig::default(), 2);
    let executor = executor.unwrap_or(&local);
    prime(
        Stores { build: cas, executor_cas: None },
        executor,
        &instantiator,
        &[("ws".into(), generated.digest)],
        options,
        &mut |_| {},
    )
    .unwrap()
}

const MAIN: &str = "#include \"a.h\"\nint main(void) { return A; }\n";

#[test]
fn a_header_that_starts_including_a_new_one_is_primed_with_it() {
    let cas = MemoryCas::new(SHA);
    let v1 = [("main.c", MAIN), ("a.h", "#define A 0\n"), ("README", "docs\n")];
    let v2 = [
        ("main.c", MAIN),
        ("a.h", "#include \"sub/b.h\"\n#define A B\n"),
        ("sub/b.h", "#define B 0\n"),
        ("README", "docs\n"),
    ];
    let report = prime_next(&cas, &v1, &v1[..2], &v2, &PrimeOptions::default(), None);
    let [primed] = report.actions.as_slice() else { panic!("{:?}", report.actions) };
    assert_eq!(primed.status, Status::Executed, "{primed:?}");
    // Exactly what `sa record` records for build 2: the three files the compile reads.
    assert_eq!(primed.action, compile(&cas, &v2[..3]));
    // Without the scan the overlay result misses the new header, and fails.
    let cas = MemoryCas::new(SHA);
    let options = PrimeOptions { rescan: false, ..Default::default() };
    let report = prime_next(&cas, &v1, &v1[..2], &v2, &options, None);
    assert_eq!(report.actions[0].status.kind(), StatusKind::Failed);
    assert!(report.actions[0].status.detail().contains("sub/b.h"), "{:?}", report.actions);
}

#[test]
fn a_removed_include_leaves_the_input_root_and_an_unchanged_listing_stands_byte_for_byte() {
    let cas = MemoryCas::new(SHA);
    let main_two = "#include \"a.h\"\n#include \"c.h\"\nint main(void) { return A + C; }\n";
    let v1 = [("main.c", main_two), ("a.h", "#define A 0\n"), ("c.h", "#define C 0\n")];
    let v2 = [("main.c", MAIN), ("a.h", "#define A 0\n"), ("c.h", "#define C 0\n")];
    let report = prime_next(&cas, &v1, &v1, &v2, &PrimeOptions::default(), None);
    assert_eq!(report.actions[0].status, Status::Executed, "{:?}", report.actions);
    assert_eq!(report.actions[0].action, compile(&cas, &v2[..2]));
    // An edit that reads the same files: the overlay result, byte for byte.
    let cas = MemoryCas::new(SHA);
    let v3 = [("main.c", main_two), ("a.h", "#define A 1\n"), ("c.h", "#define C 0\n")];
    let report = prime_next(&cas, &v1, &v1, &v3, &PrimeOptions::default(), None);
    assert_eq!(report.actions[0].status, Status::Executed, "{:?}", report.actions);
    assert_eq!(report.actions[0].action, compile(&cas, &v3));
}

#[test]
fn an_include_of_a_file_the_sources_lack_is_unpredictable_and_never_executed() {
    let cas = MemoryCas::new(SHA);
    let v1 = [("main.c", MAIN), ("a.h", "#define A 0\n")];
    let v2 = [("main.c", MAIN), ("a.h", "#include \"gone.h\"\n#define A 0\n")];
    let executor = Counting {
        inner: LocalExecutor::new(&cas, ExecConfig::default(), 1),
        seen: Mutex::default(),
    };
    let report = prime_next(&cas, &v1, &v1, &v2, &PrimeOptions::default(), Some(&executor));
    let status = &report.actions[0].status;
    assert_eq!(status.kind(), StatusKind::Unpredictable, "{status:?}");
    assert!(
        status.detail().contains("dependency scan") && status.detail().contains("gone.h"),
        "{status:?}"
    );
    // Only the scans ran (the recorded action's, which lists its root, and the next one's):
    // the compile whose inputs cannot be known was not executed.
    assert_eq!(executor.seen.lock().unwrap().len(), 2);
    assert_eq!(report.submitted, 0);
}

/// An executor that counts what it is given.
#[derive(Debug)]
struct Counting<'s> {
    inner: LocalExecutor<'s>,
    seen: Mutex<Vec<Digest>>,
}

impl Executor for Counting<'_> {
    fn execute_all(&self, actions: &[Digest], done: &mut dyn FnMut(Finished)) {
        self.seen.lock().unwrap().extend_from_slice(actions);
        self.inner.execute_all(actions, done);
    }
}

/// An executor answering every scan with `listing` as the scan's output but the recorded
/// action's (over `honest`, the recorded root: `main.c a.h`), and running nothing else.
#[derive(Debug)]
struct Lying<'s> {
    store: &'s dyn Store,
    listing: String,
    honest: Digest,
}

impl Executor for Lying<'_> {
    fn execute_all(&self, actions: &[Digest], done: &mut dyn FnMut(Finished)) {
        for action in actions {
            let decoded = sa_cas::DecodedAction::read(self.store, action).unwrap();
            let listing = if decoded.input_root == self.honest {
                "sa-record-deps: main.c a.h\n".to_owned()
            } else {
                self.listing.clone()
            };
            let digest = self.store.write_blob(listing.into()).unwrap();
            let file = OutputFile {
                path: SCAN_FILE.into(),
                digest: Some(digest.to_proto()),
                ..Default::default()
            };
            let result = ActionResult { output_files: vec![file], ..Default::default() };
            done(Finished {
                action: *action,
                outcome: Outcome::Executed(result),
                latency: Duration::ZERO,
            });
        }
    }
}

#[test]
fn a_lying_scan_cannot_add_a_file_the_sources_lack_or_reach_outside_the_root() {
    let v1 = [("main.c", MAIN), ("a.h", "#define A 0\n")];
    let v2 = [("main.c", MAIN), ("a.h", "#define A 1\n")];
    for (listing, expect) in [
        // A file neither the sources nor the recorded inputs have.
        ("sa-record-deps: main.c a.h secret.h\n", "\"secret.h\", which neither"),
        // Not the rule asked for.
        ("other: main.c\n", "does not start with the rule"),
    ] {
        let cas = MemoryCas::new(SHA);
        let lying = Lying { store: &cas, listing: listing.into(), honest: tree(&cas, &v1) };
        let report = prime_next(&cas, &v1, &v1, &v2, &PrimeOptions::default(), Some(&lying));
        let status = &report.actions[0].status;
        assert_eq!(status.kind(), StatusKind::Unpredictable, "{listing}: {status:?}");
        assert!(status.detail().contains(expect), "{listing}: {status:?}");
    }
    // Paths outside the root (absolute, or climbing out) are system files, not inputs: the
    // root stays what the overlays made it, and no file outside is read.
    let cas = MemoryCas::new(SHA);
    let listing = "sa-record-deps: main.c a.h /etc/passwd ../../etc/shadow sub/../../x.h\n";
    let lying = Lying { store: &cas, listing: listing.into(), honest: tree(&cas, &v1) };
    let report = prime_next(&cas, &v1, &v1, &v2, &PrimeOptions::default(), Some(&lying));
    assert_eq!(report.actions[0].action, compile(&cas, &v2), "{:?}", report.actions);
    // A listing over the size limit is the executor's error, named.
    let cas = MemoryCas::new(SHA);
    let huge = format!("sa-record-deps: {}\n", "x".repeat(sa_prime::MAX_SCAN_BYTES as usize));
    let lying = Lying { store: &cas, listing: huge, honest: tree(&cas, &v1) };
    let report = prime_next(&cas, &v1, &v1, &v2, &PrimeOptions::default(), Some(&lying));
    let status = &report.actions[0].status;
    assert_eq!(status.kind(), StatusKind::Error, "{status:?}");
    assert!(status.detail().contains("larger than"), "{status:?}");
}

fn planned(lines: &[&str]) -> PrimeOptions {
    let compile_commands = lines
        .iter()
        .map(|line| PlannedCompile {
            element: "ws".into(),
            working_directory: String::new(),
            arguments: line.split(' ').map(String::from).collect(),
        })
        .collect();
    PrimeOptions { compile_commands, ..Default::default() }
}

#[test]
fn a_compilation_database_predicts_changed_flags_and_new_files_and_drops_what_is_not_built() {
    let cas = MemoryCas::new(SHA);
    let v1 = [("main.c", MAIN), ("a.h", "#define A 0\n")];
    let extra = "#include \"a.h\"\nint extra(void) { return A; }\n";
    let v2 = [("main.c", MAIN), ("a.h", "#define A 0\n"), ("extra.c", extra)];
    let options = planned(&["gcc -O2 -c main.c -o main.o", "gcc -c extra.c -o extra.o"]);
    let report = prime_next(&cas, &v1, &v1, &v2, &options, None);
    let found: Vec<(Option<Digest>, Digest, Status)> =
        report.actions.iter().map(|a| (a.base, a.action, a.status.clone())).collect();
    let main = compile_of(&cas, "gcc -O2 -c main.c -o main.o", &v1);
    let new = compile_of(&cas, "gcc -c extra.c -o extra.o", &[v2[2], v2[1]]);
    assert_eq!(
        found,
        [(Some(compile(&cas, &v1)), main, Status::Executed), (None, new, Status::Executed),],
        "the new flags over the same files; the new file's compile over what it reads"
    );
    // A recorded compile the database does not name is not run.
    let cas = MemoryCas::new(SHA);
    let options = planned(&["gcc -c extra.c -o extra.o"]);
    let v3 = [
        ("main.c", "int main(void) { return 1; }\n"),
        ("a.h", "#define A 0\n"),
        ("extra.c", extra),
    ];
    let report = prime_next(&cas, &v1, &v1, &v3, &options, None);
    let status = &report.actions[0].status;
    assert_eq!(status.kind(), StatusKind::Unpredictable, "{status:?}");
    assert!(status.detail().contains("does not run it"), "{status:?}");
    assert_eq!(report.actions[1].status, Status::Executed, "{:?}", report.actions);
    assert_eq!(report.submitted, 1);
}

#[test]
fn a_removed_header_no_longer_included_is_primed_exactly_with_or_without_a_database() {
    let cas = MemoryCas::new(SHA);
    let main_two = "#include \"a.h\"\n#include \"c.h\"\nint main(void) { return A + C; }\n";
    let v1 = [("main.c", main_two), ("a.h", "#define A 0\n"), ("c.h", "#define C 0\n")];
    let v2 = [("main.c", MAIN), ("a.h", "#define A 0\n")];
    // c.h is gone, so its overlay cannot resolve; the scan says main.c no longer reads it.
    let report = prime_next(&cas, &v1, &v1, &v2, &PrimeOptions::default(), None);
    assert_eq!(report.actions[0].status, Status::Executed, "{:?}", report.actions);
    assert_eq!(report.actions[0].action, compile(&cas, &v2));
    // The database says the compile runs: its inputs come from the scan of the next sources.
    let cas = MemoryCas::new(SHA);
    let report = prime_next(&cas, &v1, &v1, &v2, &planned(&["gcc -c main.c -o main.o"]), None);
    assert_eq!(report.actions[0].status, Status::Executed, "{:?}", report.actions);
    assert_eq!(report.actions[0].action, compile(&cas, &v2));
}

#[test]
fn a_recorded_root_holding_more_than_the_compiler_reads_keeps_the_overlay_result() {
    // Bazel sends every declared header of a target's dependencies, included or not: the
    // recorded root is not what a scan lists, so a scan cannot say what the client will send.
    let cas = MemoryCas::new(SHA);
    let v1 = [("main.c", MAIN), ("a.h", "#define A 0\n"), ("declared.h", "int d;\n")];
    let v2 = [("main.c", MAIN), ("a.h", "#define A 1\n"), ("declared.h", "int d;\n")];
    let report = prime_next(&cas, &v1, &v1, &v2, &PrimeOptions::default(), None);
    assert_eq!(report.actions[0].status, Status::Executed, "{:?}", report.actions);
    assert_eq!(report.actions[0].action, compile(&cas, &v2), "the overlay result, declared.h kept");
}

#[test]
fn a_renamed_header_is_primed_exactly_without_a_database() {
    let cas = MemoryCas::new(SHA);
    let v1 = [("main.c", MAIN), ("a.h", "#define A 0\n")];
    let renamed = "#include \"b.h\"\nint main(void) { return A; }\n";
    let v2 = [("main.c", renamed), ("b.h", "#define A 0\n")];
    let report = prime_next(&cas, &v1, &v1, &v2, &PrimeOptions::default(), None);
    assert_eq!(report.actions[0].status, Status::Executed, "{:?}", report.actions);
    assert_eq!(report.actions[0].action, compile(&cas, &v2));
    // Without the re-scan a.h's overlay cannot resolve: unpredictable, never run.
    let cas = MemoryCas::new(SHA);
    let options = PrimeOptions { rescan: false, ..Default::default() };
    let report = prime_next(&cas, &v1, &v1, &v2, &options, None);
    assert_eq!(report.actions[0].status.kind(), StatusKind::Unpredictable);
    assert_eq!(report.submitted, 0);
}
