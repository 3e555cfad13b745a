//! sa-exec against a real local store: results, caching, outputs, and every refusal.

// Test helpers unwrap: a failure is a panic naming the line, which is what a test wants.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sa_cas::write_message;
use sa_cas::{ActionCache, Cas, Digest, DigestFunction, LocalCas, LocalCasConfig, merkle};
use sa_exec::{ExecConfig, ExecError, execute, execute_cached, write_outputs};
use sa_proto::reapi::{Action, Command, command::EnvironmentVariable};

struct Fixture {
    _dir: tempfile::TempDir,
    scratch: std::path::PathBuf,
    store: LocalCas,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalCas::open(dir.path().join("store"), LocalCasConfig::default()).unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    Fixture { _dir: dir, scratch, store }
}

impl Fixture {
    fn config(&self) -> ExecConfig {
        ExecConfig { scratch_dir: Some(self.scratch.clone()), ..Default::default() }
    }

    /// An action running `/bin/sh -c SCRIPT` over `files`, asking for `outputs`.
    fn action(&self, files: &[(&str, &str)], script: &str, outputs: &[&str]) -> Digest {
        self.action_with(files, script, outputs, |_, _| {})
    }

    fn action_with(
        &self,
        files: &[(&str, &str)],
        script: &str,
        outputs: &[&str],
        edit: impl FnOnce(&mut Action, &mut Command),
    ) -> Digest {
        let entries: Vec<merkle::TreeFile> = files
            .iter()
            .map(|(p, c)| {
                merkle::TreeFile::new(
                    *p,
                    self.store.write_blob(c.to_string().into()).unwrap(),
                    false,
                )
            })
            .collect();
        let root = merkle::build_tree(&self.store, &entries).unwrap();
        let mut command = Command {
            arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
            environment_variables: vec![EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            output_paths: outputs.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        };
        let mut action = Action { input_root_digest: Some(root.to_proto()), ..Default::default() };
        edit(&mut action, &mut command);
        action.command_digest = Some(write_message(&self.store, &command).unwrap().to_proto());
        write_message(&self.store, &action).unwrap()
    }

    fn blob_text(&self, digest: &Option<sa_proto::reapi::Digest>) -> String {
        let digest = Digest::from_proto(DigestFunction::Sha256, digest.as_ref().unwrap()).unwrap();
        String::from_utf8(self.store.read_blob(&digest).unwrap().to_vec()).unwrap()
    }

    /// The Command of an action.
    fn command(&self, action: &Digest) -> Command {
        let action: Action = sa_cas::read_message(&self.store, action, "Action").unwrap();
        let digest = action.command_digest.unwrap();
        let digest = Digest::from_proto(DigestFunction::Sha256, &digest).unwrap();
        sa_cas::read_message(&self.store, &digest, "Command").unwrap()
    }

    fn scratch_is_empty(&self) -> bool {
        std::fs::read_dir(&self.scratch).unwrap().next().is_none()
    }
}

fn error_text(err: &ExecError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[test]
fn runs_the_command_in_its_input_root_and_caches_the_success() {
    let f = fixture();
    let action = f.action(
        &[("src/in.txt", "hello\n")],
        "cat in.txt > ../out/copy.txt && echo said && echo warned >&2",
        &["../out/copy.txt"],
    );
    // `../out` climbs out of the working directory: refused (see below). Use a proper one.
    assert!(matches!(
        execute(&f.store, &action, &f.config()),
        Err(ExecError::InvalidAction { .. })
    ));

    let action = f.action_with(
        &[("src/in.txt", "hello\n")],
        "cat in.txt > out/copy.txt && echo said && echo warned >&2",
        &["out/copy.txt"],
        |_, c| c.working_directory = "src".into(),
    );
    let result = execute(&f.store, &action, &f.config()).unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.output_files.len(), 1);
    assert_eq!(result.output_files[0].path, "out/copy.txt");
    assert_eq!(f.blob_text(&result.output_files[0].digest), "hello\n");
    assert_eq!(f.blob_text(&result.stdout_digest), "said\n");
    assert_eq!(f.blob_text(&result.stderr_digest), "warned\n");
    assert_eq!(f.store.get_action_result(&action).unwrap(), Some(result.clone()));
    assert!(f.scratch_is_empty(), "the scratch directory is removed");

    let again = execute_cached(&f.store, &action, &f.config()).unwrap();
    assert!(again.cached);
    assert_eq!(again.result, result);
}

#[test]
fn the_environment_is_exactly_the_commands() {
    let f = fixture();
    let action = f.action_with(&[], "", &[], |_, c| {
        c.arguments = vec!["/usr/bin/env".into()];
        c.environment_variables = vec![EnvironmentVariable { name: "A".into(), value: "1".into() }];
    });
    let result = execute(&f.store, &action, &f.config()).unwrap();
    assert_eq!(f.blob_text(&result.stdout_digest), "A=1\n");
}

#[test]
fn a_failing_command_gives_its_exit_code_and_is_not_cached() {
    let f = fixture();
    let action = f.action(&[], "echo broken >&2; exit 3", &["never"]);
    let result = execute(&f.store, &action, &f.config()).unwrap();
    assert_eq!(result.exit_code, 3);
    assert!(result.output_files.is_empty(), "a missing output is simply absent");
    assert_eq!(f.blob_text(&result.stderr_digest), "broken\n");
    assert_eq!(f.store.get_action_result(&action).unwrap(), None);
    // execute_cached runs it again rather than trusting a failure.
    assert!(!execute_cached(&f.store, &action, &f.config()).unwrap().cached);
}

#[test]
fn output_directories_and_symlinks_round_trip_through_write_outputs() {
    let f = fixture();
    let action = f.action(
        &[],
        "mkdir -p d/e && echo x > d/e/f && chmod +x d/e/f && ln -s d/e/f link && echo y > plain",
        &["d", "link", "plain"],
    );
    let result = execute(&f.store, &action, &f.config()).unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.output_directories.len(), 1);
    assert_eq!(result.output_symlinks[0].target, "d/e/f");
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("plain"), "stale").unwrap();
    write_outputs(&f.store, &f.command(&action), &result, out.path()).unwrap();
    assert_eq!(std::fs::read_to_string(out.path().join("plain")).unwrap(), "y\n");
    assert_eq!(std::fs::read_to_string(out.path().join("link")).unwrap(), "x\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.path().join("d/e/f")).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "the executable bit survives");
}

#[test]
fn unsafe_paths_in_the_command_are_refused_naming_them() {
    let f = fixture();
    for (working, output, expected) in [
        ("..", "o", "working_directory: path \"..\""),
        ("a//b", "o", "working_directory: path \"a//b\""),
        ("", "/etc/passwd", "output path: path \"/etc/passwd\" is absolute"),
        ("", "x/../../y", "output path: path \"x/../../y\""),
    ] {
        let action = f.action_with(&[], "true", &[output], |_, c| {
            c.working_directory = working.into();
        });
        let err = execute(&f.store, &action, &f.config()).unwrap_err();
        assert!(error_text(&err).contains(expected), "{}", error_text(&err));
    }
    let action = f.action_with(&[], "true", &[], |_, c| c.arguments.clear());
    let err = execute(&f.store, &action, &f.config()).unwrap_err();
    assert_eq!(err.to_string(), format!("action {action}: its Command has no arguments"));
    assert!(f.scratch_is_empty());
}

#[test]
fn missing_blobs_and_programs_are_errors_naming_them() {
    let f = fixture();
    let absent = DigestFunction::Sha256.hash_bytes(b"absent");
    let err = execute(&f.store, &absent, &f.config()).unwrap_err();
    assert_eq!(error_text(&err), format!("action {absent}: missing blob {absent}"));

    let action = f.action_with(&[], "true", &[], |a, _| {
        a.input_root_digest = Some(absent.to_proto());
    });
    let err = execute(&f.store, &action, &f.config()).unwrap_err();
    assert!(error_text(&err).contains(&format!("missing blob {absent}")), "{}", error_text(&err));

    let action = f.action_with(&[], "true", &[], |_, c| {
        c.arguments = vec!["/no/such/program".into()];
    });
    let err = execute(&f.store, &action, &f.config()).unwrap_err();
    assert!(
        error_text(&err).starts_with(&format!("action {action}: cannot run \"/no/such/program\"")),
        "{}",
        error_text(&err)
    );
    assert!(f.scratch_is_empty());
}

#[test]
fn a_command_past_its_timeout_is_killed() {
    let f = fixture();
    let action = f.action_with(&[], "sleep 30", &[], |a, _| {
        a.timeout = Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 });
    });
    let err = execute(&f.store, &action, &f.config()).unwrap_err();
    assert!(
        matches!(err, ExecError::Timeout { timeout, .. } if timeout == Duration::from_millis(200))
    );
    assert_eq!(f.store.get_action_result(&action).unwrap(), None);
}

#[test]
fn working_directory_and_output_parents_through_input_root_symlinks_are_refused() {
    let f = fixture();
    let x =
        merkle::DirectoryBuilder::new().symlink("x", "..").build(DigestFunction::Sha256).unwrap();
    let x =
        f.store.write_blob(merkle::directory_blob(DigestFunction::Sha256, &x).into_data()).unwrap();
    let root =
        merkle::DirectoryBuilder::new().directory("d", &x).build(DigestFunction::Sha256).unwrap();
    let root = f
        .store
        .write_blob(merkle::directory_blob(DigestFunction::Sha256, &root).into_data())
        .unwrap();
    for (working, output) in [("d/x/wd", "o"), ("", "d/x/o")] {
        let action = f.action_with(&[], "true", &[output], |a, c| {
            a.input_root_digest = Some(root.to_proto());
            c.working_directory = working.into();
        });
        let err = execute(&f.store, &action, &f.config()).unwrap_err();
        let text = error_text(&err);
        assert!(text.contains("d/x: is a symlink where a directory is needed"), "{text}");
        assert!(text.starts_with(&format!("action {action}")), "{text}");
    }
    assert!(f.scratch_is_empty());
}

#[test]
fn a_symlink_chain_root_creates_nothing_outside_and_stores_no_host_file() {
    let f = fixture();
    let sha = DigestFunction::Sha256;
    let put = |dir: merkle::DirectoryBuilder| {
        f.store
            .write_blob(merkle::directory_blob(sha, &dir.build(sha).unwrap()).into_data())
            .unwrap()
    };
    let d = put(merkle::DirectoryBuilder::new().symlink("x", ".."));
    let mut root = merkle::DirectoryBuilder::new().directory("d", &d).symlink("z", "d/x/../..");
    root = root.symlink("w1", "z/..");
    for i in 2..=30 {
        root = root.symlink(&format!("w{i}"), &format!("w{}/..", i - 1));
    }
    let root = put(root);
    let action = f.action_with(&[], "true", &["z/ESCAPED_OUT/o", "w30/etc/hostname"], |a, c| {
        a.input_root_digest = Some(root.to_proto());
        c.working_directory = "z/ESCAPED_WD".into();
    });
    let err = execute(&f.store, &action, &f.config()).unwrap_err();
    assert!(error_text(&err).contains("leads out of the tree"), "{}", error_text(&err));
    assert!(f.scratch_is_empty(), "nothing is left in the scratch directory");
    let hostname = std::fs::read("/etc/hostname").unwrap();
    let digest = DigestFunction::Sha256.hash_bytes(&hostname);
    assert_eq!(f.store.find_missing(&[digest]).unwrap(), vec![digest], "no host file is stored");
}

#[test]
fn an_output_that_is_a_symlink_is_recorded_as_one_never_followed() {
    let f = fixture();
    let action =
        f.action(&[], "ln -s /etc/hostname leak && mkdir d && ln -s /etc d/e", &["leak", "d"]);
    let result = execute(&f.store, &action, &f.config()).unwrap();
    assert_eq!(result.exit_code, 0);
    assert!(result.output_files.is_empty());
    assert_eq!(result.output_symlinks[0].target, "/etc/hostname");
    let digest = DigestFunction::Sha256.hash_bytes(&std::fs::read("/etc/hostname").unwrap());
    assert_eq!(f.store.find_missing(&[digest]).unwrap(), vec![digest], "no host file is stored");
}

/// A result for `command` that the cache could have been poisoned with.
fn poisoned(
    f: &Fixture,
    edit: impl FnOnce(&mut sa_proto::reapi::ActionResult, Digest),
) -> sa_proto::reapi::ActionResult {
    let pwned = f.store.write_blob("pwned\n".into()).unwrap();
    let mut result = sa_proto::reapi::ActionResult::default();
    edit(&mut result, pwned);
    result
}

#[test]
fn write_outputs_refuses_what_a_poisoned_result_asks() {
    use sa_proto::reapi::{OutputDirectory, OutputFile, OutputSymlink, Tree};
    let f = fixture();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("victim")).unwrap();
    std::fs::write(outside.path().join("victim/keep"), "keep").unwrap();
    let command = Command {
        output_paths: vec!["main.o".into(), "lnk".into(), "lnk/victim".into()],
        ..Default::default()
    };
    let tree = write_message(&f.store, &Tree { root: Some(Default::default()), children: vec![] })
        .unwrap();
    let outside_text = outside.path().display().to_string();
    let cases: Vec<(sa_proto::reapi::ActionResult, &str)> = vec![
        (
            poisoned(&f, |r, d| {
                r.output_files.push(OutputFile {
                    path: "Makefile".into(),
                    digest: Some(d.to_proto()),
                    ..Default::default()
                })
            }),
            "does not declare",
        ),
        (
            poisoned(&f, |r, _| {
                r.output_symlinks.push(OutputSymlink {
                    path: "lnk".into(),
                    target: outside_text.clone(),
                    ..Default::default()
                })
            }),
            "is absolute",
        ),
        (
            poisoned(&f, |r, _| {
                r.output_symlinks.push(OutputSymlink {
                    path: "main.o".into(),
                    target: "/etc/passwd".into(),
                    ..Default::default()
                })
            }),
            "is absolute",
        ),
        (
            poisoned(&f, |r, _| {
                r.output_symlinks.push(OutputSymlink {
                    path: "main.o".into(),
                    target: "../../etc/passwd".into(),
                    ..Default::default()
                })
            }),
            "climbs out",
        ),
        (
            poisoned(&f, |r, _| {
                r.output_directories.push(OutputDirectory {
                    path: "lnk/victim".into(),
                    tree_digest: Some(tree.to_proto()),
                    ..Default::default()
                })
            }),
            "is a symlink where a directory is needed",
        ),
    ];
    for (result, expected) in cases {
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("Makefile"), "all:\n").unwrap();
        // A symlink planted by an earlier run, where an output's parent should be.
        std::os::unix::fs::symlink(outside.path(), work.path().join("lnk")).unwrap();
        let err = write_outputs(&f.store, &command, &result, work.path()).unwrap_err();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        assert!(text.contains(expected), "{expected}: {text}");
        assert_eq!(std::fs::read_to_string(work.path().join("Makefile")).unwrap(), "all:\n");
        assert!(!work.path().join("main.o").exists());
        assert_eq!(std::fs::read_to_string(outside.path().join("victim/keep")).unwrap(), "keep");
        let names: Vec<_> =
            std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temp file is left: {names:?}");
    }
}

#[test]
fn a_command_past_its_timeout_is_killed_with_everything_it_started() {
    let f = fixture();
    let action = f.action_with(&[], "sleep 31.125 & sleep 31.125", &[], |a, _| {
        a.timeout = Some(prost_types::Duration { seconds: 0, nanos: 300_000_000 });
    });
    let err = execute(&f.store, &action, &f.config()).unwrap_err();
    assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
    // SIGKILL is delivered at once, but reaping by init may take a moment.
    let mut left = sa_cas::testing::processes_with("sleep 31.125");
    for _ in 0..50 {
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        left = sa_cas::testing::processes_with("sleep 31.125");
    }
    assert_eq!(left, 0, "the background child was killed with its group");
    assert!(f.scratch_is_empty());
}

#[test]
fn the_bwrap_sandbox_hides_the_host_and_keeps_the_input_root_writable() {
    let Some(bwrap) = sa_exec::Sandbox::find_bwrap() else {
        panic!("bwrap is not installed: scripts/provision.sh installs bubblewrap");
    };
    let f = fixture();
    let config = ExecConfig { sandbox: sa_exec::Sandbox::Bwrap(bwrap), ..f.config() };
    let store_dir = f.store.root().display().to_string();
    let script = format!(
        "test ! -e /etc/hostname && test ! -e {store_dir} && test -x /bin/sh && echo built > out"
    );
    let action = f.action(&[("in.txt", "x")], &script, &["out"]);
    let result = execute(&f.store, &action, &config).unwrap();
    assert_eq!(result.exit_code, 0, "{}", f.blob_text(&result.stderr_digest));
    assert_eq!(f.blob_text(&result.output_files[0].digest), "built\n");
    // No network: only loopback, and nothing listens there.
    let action =
        f.action(&[], "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' > ifs", &["ifs"]);
    let result = execute(&f.store, &action, &config).unwrap();
    assert_eq!(f.blob_text(&result.output_files[0].digest), "lo\n");
}

/// `BotWorker::run_lease` against a real casd as the service's CAS: a good lease completes
/// with its ActionResult, bad ones with a status naming the lease and what is wrong.
#[test]
fn a_bot_completes_leases_with_results_or_a_status_naming_what_is_wrong() {
    use prost::Message;
    use sa_cas::{GrpcCas, GrpcConfig};
    use sa_exec::{BotOptions, BotWorker};
    use sa_proto::google::devtools::remoteworkers::v1test2::{Lease, LeaseState};
    let dir = tempfile::tempdir().unwrap();
    let casd = sa_cas::testing::Casd::start(&dir.path().join("casd"));
    let cas = GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap();
    // The action's blobs in casd: a command over one input file.
    let input = cas.write_blob("hello\n".into()).unwrap();
    let root = merkle::build_tree(&cas, &[merkle::TreeFile::new("in.txt", input, false)]).unwrap();
    let command = Command {
        arguments: vec!["/bin/cp".into(), "in.txt".into(), "out.txt".into()],
        output_paths: vec!["out.txt".into()],
        ..Default::default()
    };
    let command = write_message(&cas, &command).unwrap();
    let action = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    let action_bytes = action.encode_to_vec();
    write_message(&cas, &action).unwrap();
    let worker = BotWorker::new(
        cas,
        BotOptions {
            bot_id: "test".into(),
            properties: Vec::new(),
            exec: ExecConfig { scratch_dir: Some(dir.path().to_owned()), ..Default::default() },
            poll_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(30),
        },
    );
    let lease = |type_url: &str, value: Vec<u8>| Lease {
        id: "L1".into(),
        state: LeaseState::Active as i32,
        payload: Some(prost_types::Any { type_url: type_url.into(), value }),
        ..Default::default()
    };
    let any = "type.googleapis.com/build.bazel.remote.execution.v2.";

    // BuildGrid inlines the Action: the result comes back in the lease.
    let mut good = lease(&format!("{any}Action"), action_bytes.clone());
    worker.run_lease(&mut good);
    assert_eq!(good.state, LeaseState::Completed as i32);
    assert_eq!(good.status.as_ref().unwrap().code, 0, "{:?}", good.status);
    let result = good.result.unwrap();
    assert_eq!(result.type_url, format!("{any}ActionResult"));
    let result = sa_proto::reapi::ActionResult::decode(result.value.as_slice()).unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.output_files[0].digest, Some(input.to_proto()));

    // Other servers send the Action's digest.
    let digest = DigestFunction::Sha256.hash_bytes(&action_bytes);
    let mut by_digest = lease(&format!("{any}Digest"), digest.to_proto().encode_to_vec());
    worker.run_lease(&mut by_digest);
    assert_eq!(by_digest.status.as_ref().unwrap().code, 0, "{:?}", by_digest.status);

    let code_of = |mut lease: Lease| {
        worker.run_lease(&mut lease);
        assert_eq!(lease.state, LeaseState::Completed as i32);
        assert!(lease.result.is_none());
        let status = lease.status.unwrap();
        assert!(
            status.message.contains("lease L1") || status.message.contains("action"),
            "{status:?}"
        );
        (tonic::Code::from(status.code), status.message)
    };
    let (code, message) = code_of(Lease { id: "L1".into(), ..Default::default() });
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("no payload"), "{message}");
    let (code, message) = code_of(lease(&format!("{any}Command"), Vec::new()));
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("neither an Action nor its digest"), "{message}");
    let (code, message) = code_of(lease(&format!("{any}Action"), b"\xff\xff".to_vec()));
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("not an Action"), "{message}");
    // An Action whose input root is not in the CAS: FAILED_PRECONDITION naming the action.
    let missing = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(DigestFunction::Sha256.hash_bytes(b"nowhere").to_proto()),
        ..Default::default()
    };
    let (code, message) = code_of(lease(&format!("{any}Action"), missing.encode_to_vec()));
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
}

/// A service that answers an Execute with a status: the outcome keeps the code, typed.
#[test]
fn a_failed_remote_execution_keeps_the_services_status_code() {
    use sa_cas::{GrpcCas, GrpcConfig};
    use sa_exec::{Executor, Outcome, RemoteExecutor, RemoteOptions};
    let dir = tempfile::tempdir().unwrap();
    // casd without a runner serves no Execution.
    let casd = sa_cas::testing::Casd::start(&dir.path().join("casd"));
    let cas = GrpcCas::connect(GrpcConfig::new(casd.endpoint())).unwrap();
    let action = DigestFunction::Sha256.hash_bytes(b"an action");
    let executor = RemoteExecutor::new(cas.connection().clone(), RemoteOptions::default());
    match executor.execute_one(&action) {
        Outcome::Failed(failure) => {
            assert!(failure.code.is_some(), "{failure:?}");
            assert!(failure.message.contains(&action.hash_hex()), "{failure:?}");
            assert!(failure.to_string().contains(&format!("{:?}", failure.code.unwrap())));
        }
        other => panic!("{other:?}"),
    }
}
