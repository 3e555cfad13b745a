//! `sa demo`, the README's main command: real gcc and make builds through `sa record`.

use super::*;

#[test]
fn demo_primes_every_changed_compile_step_of_the_second_build() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("demo");
    let out = sa(&["--json", "--stats", "demo", "--workdir", &dir.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = &lines(&String::from_utf8(out.stdout).unwrap())[0];
    // 5 library and 6 application compile steps; the edit of greet.h changes the 2 library
    // and 2 application steps that include it, the edit of main.c one more.
    assert_eq!(report["build1_steps"], 11, "{report}");
    assert_eq!(report["build2_steps"], 11, "{report}");
    assert_eq!(report["build2_hits"], 11, "{report}");
    assert_eq!(report["build2_hits_without_priming"], 6, "{report}");
    assert_eq!((&report["complete"], &report["changed"]), (&11.into(), &5.into()), "{report}");
    assert_eq!(report["primed_executed"], 5, "{report}");
    assert_eq!(report["mispredicted"], serde_json::json!([]), "{report}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stats: phase build 2:"));
    // What build 2 ran came from the primed cache: its log says hit for every step.
    let log = std::fs::read_to_string(dir.join("build2/app.bst/subactions.log")).unwrap();
    assert!(log.lines().all(|l| l.ends_with(" hit")), "{log}");
    // The application built from cached objects runs and shows the edited library header.
    let hello = dir.join("build2/app.bst/install/bin/hello");
    let ran = Process::new(hello).arg("demo").output().unwrap();
    assert!(String::from_utf8_lossy(&ran.stdout).contains("greetings up to 96 bytes"));
    // Another run, elsewhere (a path with a space in it), stores byte-identical
    // SpeculativeActions, although make -j finishes the compiles in another order.
    let again = work.path().join("with space").join("again");
    let again = sa(&["--json", "demo", "--workdir", &again.display().to_string()]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let again = &lines(&String::from_utf8(again.stdout).unwrap())[0];
    assert_eq!(again["generated"], report["generated"]);
}

#[test]
fn demo_refuses_a_non_empty_workdir_and_a_remote() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("precious"), "").unwrap();
    let out = sa(&["demo", "--workdir", &work.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    let out = sa(&["--remote", "grpc://127.0.0.1:1", "demo"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("drop --remote"));
    let out = sa(&["--cas", &work.path().display().to_string(), "demo"]);
    assert_eq!(out.status.code(), Some(2), "--cas is not silently ignored");
    assert!(String::from_utf8_lossy(&out.stderr).contains("drop --cas"));
}

#[test]
fn a_failed_demo_removes_what_it_made_of_its_workdir() {
    let work = tempfile::tempdir().unwrap();
    let empty_path = tempfile::tempdir().unwrap();
    let run = |workdir: &Path| {
        Process::new(env!("CARGO_BIN_EXE_sa"))
            .args(["demo", "--workdir", &workdir.display().to_string()])
            .env("PATH", empty_path.path())
            .env_remove("SA_CAS")
            .env_remove("SA_REMOTE")
            .output()
            .unwrap()
    };
    // No make on PATH: build 1 fails after the sources were written.
    let made = work.path().join("made");
    let out = run(&made);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("running make"), "{out:?}");
    assert!(!made.exists(), "the directory it made is removed");
    // A directory that was there (empty) stays, emptied.
    let given = work.path().join("given");
    std::fs::create_dir(&given).unwrap();
    let out = run(&given);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_dir(&given).unwrap().count(), 0, "emptied, not removed");
}
