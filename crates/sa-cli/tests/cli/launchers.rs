//! `sa record` where people put it: make's `CC`, CMake's compiler launchers (Makefile and Ninja
//! generators, which pass `-MD -MT -MF`), and Debian's `cc`/`c++`, which reach the compiler
//! through `/etc/alternatives`: all in the default sandbox (bubblewrap, provisioned).

use super::*;

fn sandbox_args() -> [&'static str; 2] {
    assert!(
        sa_exec::Sandbox::find_bwrap().is_some(),
        "bwrap is provisioned by scripts/provision.sh: the default sandbox is under test"
    );
    ["--sandbox", "bwrap"]
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn cc_and_cxx_through_debian_alternatives_run_in_the_sandbox_and_as_makes_cc() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("m.c"), "int m(void) { return 1; }\n").unwrap();
    std::fs::write(src.join("x.cpp"), "int x() { return 2; }\n").unwrap();
    let store = dir.path().join("store").display().to_string();
    let log = dir.path().join("log");
    let sa_bin = env!("CARGO_BIN_EXE_sa");
    let [flag, value] = sandbox_args();
    for (compiler, source) in [("cc", "m.c"), ("c++", "x.cpp")] {
        let out = Process::new(sa_bin)
            .args(["--cas", &store, "record", flag, value, "--log"])
            .arg(&log)
            .args(["--", compiler, "-c", source])
            .current_dir(&src)
            .env_remove("SA_CAS")
            .env_remove("SA_REMOTE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{compiler}: {}", stderr_of(&out));
    }
    assert!(src.join("m.o").is_file() && src.join("x.o").is_file());
    assert_eq!(log_lines(&log).len(), 2);
    // make's default $(CC) is cc: the wrapper as CC, in a fresh directory.
    let made = dir.path().join("made");
    std::fs::create_dir(&made).unwrap();
    std::fs::write(made.join("a.c"), "int a(void) { return 3; }\n").unwrap();
    std::fs::write(made.join("b.c"), "int b(void) { return 4; }\n").unwrap();
    std::fs::write(made.join("Makefile"), "all: a.o b.o\n").unwrap();
    let cc = format!("{sa_bin} --cas {store} record {flag} {value} --log {} -- cc", log.display());
    let out = Process::new("make")
        .arg(format!("CC={cc}"))
        .current_dir(&made)
        .env_remove("SA_CAS")
        .env_remove("SA_REMOTE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(made.join("a.o").is_file() && made.join("b.o").is_file());
    assert_eq!(log_lines(&log).len(), 4);
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A CMake project of two C sources, a C++ source and a header, built into one program.
fn cmake_project(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("include")).unwrap();
    std::fs::write(
        src.join("CMakeLists.txt"),
        "cmake_minimum_required(VERSION 3.20)\nproject(demo C CXX)\n\
         add_executable(app a.c b.c c.cpp)\ntarget_include_directories(app PRIVATE include)\n",
    )
    .unwrap();
    std::fs::write(src.join("include/h.h"), "#define N 3\n").unwrap();
    std::fs::write(src.join("a.c"), "#include \"h.h\"\nint b(void);\nint c(void);\nint main(void) { return b() + c() - 2 * N; }\n").unwrap();
    std::fs::write(src.join("b.c"), "#include \"h.h\"\nint b(void) { return N; }\n").unwrap();
    std::fs::write(src.join("c.cpp"), "#include \"h.h\"\nextern \"C\" int c() { return N; }\n")
        .unwrap();
    src
}

#[test]
fn cmake_with_sa_record_as_the_compiler_launcher_records_then_hits_every_compile() {
    for generator in ["Unix Makefiles", "Ninja"] {
        let dir = tempfile::tempdir().unwrap();
        let src = cmake_project(dir.path());
        let build = dir.path().join("build");
        let store = dir.path().join("store").display().to_string();
        let log = dir.path().join("log");
        let [flag, value] = sandbox_args();
        // The ccache pattern: a launcher list (CMake splits it at the semicolons).
        let launcher = format!(
            "{};--cas;{store};record;{flag};{value};--root;{};--log;{};--",
            env!("CARGO_BIN_EXE_sa"),
            dir.path().display(),
            log.display()
        );
        for round in ["first build", "fresh build directory"] {
            let _ = std::fs::remove_dir_all(&build);
            let configure = Process::new("cmake")
                .arg("-S")
                .arg(&src)
                .arg("-B")
                .arg(&build)
                .args(["-G", generator])
                .arg(format!("-DCMAKE_C_COMPILER_LAUNCHER={launcher}"))
                .arg(format!("-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}"))
                .env_remove("SA_CAS")
                .env_remove("SA_REMOTE")
                .output()
                .unwrap();
            assert!(configure.status.success(), "{generator}: {}", stderr_of(&configure));
            // Only the build's compiles count (configure's checks may use the launcher too).
            let _ = std::fs::remove_file(&log);
            let built = Process::new("cmake")
                .arg("--build")
                .arg(&build)
                .env_remove("SA_CAS")
                .env_remove("SA_REMOTE")
                .output()
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&built.stdout), stderr_of(&built));
            assert!(built.status.success(), "{generator}, {round}: {text}");
            let lines = log_lines(&log);
            assert_eq!(lines.len(), 3, "{generator}, {round}: three compiles: {lines:?}");
            let expected = if round == "first build" { " miss" } else { " hit" };
            assert!(lines.iter().all(|l| l.ends_with(expected)), "{generator}, {round}: {lines:?}");
            let ran = Process::new(build.join("app")).status().unwrap();
            assert_eq!(ran.code(), Some(0), "{generator}, {round}: the program works");
            // The dependency files CMake asked for (-MD -MT -MF) were written: Make keeps them,
            // Ninja reads them into its log and deletes them.
            if generator == "Ninja" {
                assert!(build.join(".ninja_deps").is_file(), "{round}");
            } else {
                let depfiles =
                    walk_files(&build).into_iter().filter(|p| p.ends_with(".o.d")).count();
                assert_eq!(depfiles, 3, "{generator}, {round}");
            }
        }
    }
}

fn walk_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(walk_files(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}
