//! `sa record` as a build would call it: exit codes, the log, and refusals.

use super::*;

fn record_in(dir: &Path, store: &str, log: &Path, args: &[&str]) -> Output {
    let base = ["--cas", store, "record", "--log", log.to_str().unwrap(), "--"];
    Process::new(env!("CARGO_BIN_EXE_sa"))
        .args(base.iter().chain(args))
        .current_dir(dir)
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE")
        .output()
        .unwrap()
}

#[test]
fn record_keeps_the_compilers_exit_code_and_logs_only_successful_compiles() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store").display().to_string();
    let log = work.path().join("log");
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("ok.c"), "int ok(void) { return 1; }\n").unwrap();
    std::fs::write(src.join("bad.c"), "int bad(void) { return }\n").unwrap();

    // Not a compile: runs unchanged, its exit code passes through, nothing is logged.
    let out = record_in(&src, &store, &log, &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    // A compile error: the compiler's diagnostics and exit code, nothing logged.
    let out = record_in(&src, &store, &log, &["gcc", "-c", "bad.c"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("error:").count(), 1, "the compiler's own message, once: {stderr}");
    assert!(!stderr.contains("\x1b["), "no colour codes into a pipe: {stderr}");
    assert!(!log.exists());
    // A good compile: a miss, then a hit that rewrites the output from the store.
    let out = record_in(&src, &store, &log, &["gcc", "-c", "ok.c"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let object = std::fs::read(src.join("ok.o")).unwrap();
    std::fs::remove_file(src.join("ok.o")).unwrap();
    let out = record_in(&src, &store, &log, &["gcc", "-c", "ok.c"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read(src.join("ok.o")).unwrap(), object);
    let logged: Vec<String> =
        std::fs::read_to_string(&log).unwrap().lines().map(String::from).collect();
    assert_eq!(logged.len(), 2);
    assert!(logged[0].ends_with(" miss") && logged[1].ends_with(" hit"), "{logged:?}");
    assert_eq!(logged[0].split(' ').next(), logged[1].split(' ').next(), "the same Action");
}

#[test]
fn record_refuses_a_working_directory_outside_the_root() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store").display().to_string();
    let elsewhere = work.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(work.path().join("a.c"), "int a;\n").unwrap();
    let out = Process::new(env!("CARGO_BIN_EXE_sa"))
        .args([
            "--cas",
            &store,
            "record",
            "--root",
            elsewhere.to_str().unwrap(),
            "--",
            "gcc",
            "-c",
            "a.c",
        ])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not inside --root"));
}

#[test]
fn the_same_compile_has_the_same_action_whatever_the_host_environment() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store").display().to_string();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.c"), "int a;\n").unwrap();
    let mut logged = Vec::new();
    for (i, (path, lang)) in
        [("/usr/bin:/bin", "C"), ("/opt/x/bin:/usr/bin:/bin:/sbin", "de_DE.UTF-8")]
            .into_iter()
            .enumerate()
    {
        let log = work.path().join(format!("log{i}"));
        let out = Process::new(env!("CARGO_BIN_EXE_sa"))
            .args([
                "--cas",
                &store,
                "record",
                "--log",
                log.to_str().unwrap(),
                "--",
                "gcc",
                "-c",
                "a.c",
            ])
            .current_dir(&src)
            .env("PATH", path)
            .env("LANG", lang)
            .env_remove("SA_CAS")
            .env_remove("SA_REMOTE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        logged.push(std::fs::read_to_string(&log).unwrap().split(' ').next().unwrap().to_owned());
    }
    assert_eq!(logged[0], logged[1], "the host's PATH and LANG are not part of the Action");
    // The Command holds the fixed environment.
    let action = Digest::parse(DigestFunction::Sha256, &logged[0]).unwrap();
    let cas = LocalCas::open(&store, LocalCasConfig::default()).unwrap();
    let action: Action = sa_cas::read_message(&cas, &action, "Action").unwrap();
    let command =
        Digest::from_proto(DigestFunction::Sha256, &action.command_digest.unwrap()).unwrap();
    let command: Command = sa_cas::read_message(&cas, &command, "Command").unwrap();
    let env: Vec<(String, String)> =
        command.environment_variables.into_iter().map(|e| (e.name, e.value)).collect();
    assert_eq!(
        env,
        [
            ("LC_ALL".to_owned(), "C".to_owned()),
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned())
        ]
    );
}

#[test]
fn outputs_go_through_a_symlink_the_user_made_in_the_workspace() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store").display().to_string();
    let log = work.path().join("log");
    let src = work.path().join("src");
    let elsewhere = work.path().join("scratch-build");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, src.join("build")).unwrap();
    std::fs::write(src.join("m.c"), "int m(void) { return 3; }\n").unwrap();
    let compile = ["gcc", "-c", "m.c", "-o", "build/m.o", "-MD"];
    // A miss (compiled here), then a hit (written from the store): both through the link.
    for run in ["miss", "hit"] {
        let out = record_in(&src, &store, &log, &compile);
        assert_eq!(out.status.code(), Some(0), "{run}: {}", String::from_utf8_lossy(&out.stderr));
        let object = std::fs::read(elsewhere.join("m.o")).unwrap();
        assert!(object.starts_with(b"\x7fELF"), "{run}: the object is where the link points");
        assert!(elsewhere.join("m.d").is_file(), "{run}: the dependency file too");
        assert!(std::fs::symlink_metadata(src.join("build")).unwrap().is_symlink());
        std::fs::remove_file(elsewhere.join("m.o")).unwrap();
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.lines().last().unwrap().ends_with(" hit"), "{logged}");
}

#[test]
fn many_processes_opening_a_new_store_at_once_all_succeed() {
    // What a parallel build does on its first compile: every `sa record` makes the store.
    for round in 0..3 {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        let store = work.path().join("store").display().to_string();
        let children: Vec<_> = (0..8)
            .map(|_| {
                Process::new(env!("CARGO_BIN_EXE_sa"))
                    .args(["--cas", &store, "ingest", src.to_str().unwrap()])
                    .env_remove("SA_CAS")
                    .env_remove("SA_REMOTE")
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
