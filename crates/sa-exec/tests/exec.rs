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
        let entries: Vec<(String, Digest, bool)> = files
            .iter()
            .map(|(p, c)| {
                ((*p).to_owned(), self.store.write_blob(c.to_string().into()).unwrap(), false)
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
        ("", "/etc/passwd", "output path: path \"/etc/passwd\""),
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
