//! Project automation, run as `cargo xtask <command>`.
//!
//! `xtask` is the only writer of generated code. Commands:
//! - `codegen [--check]`: regenerate `crates/sa-proto/src/generated` from the vendored protos
//!   (pure Rust: protox compiles the protos, tonic-prost-build emits the code); `--check` fails
//!   when the checked-in code differs from what would be generated.
//! - `layering`: fail if any workspace crate depends on one its place in the crates' DAG
//!   (`layering::DAG`) does not reach.
//! - `workload --profile small|medium|large|xlarge --out DIR [--seed N]`: the synthetic two-build
//!   workload (runs the `sa-workload` binary of sa-benches in release mode).
//! - `bench-report [--profiles medium,large,xlarge] [--runs N] [--only prime|replay|bazel|profiles]`:
//!   writes BENCHMARKS.md (`--only profiles`: the profiles alone, to `target/bench/profiles.md`).
//! - `replay --bundle B [--project lz4|zlib] (--last N [--end C] | --commits A,B,…) [--dir D] [--database]`: a real
//!   history built commit after commit through `sa record`, primed between commits.

use std::process::ExitCode;

use xtask::{bench, codegen, layering, project_root, replay};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("codegen") => {
            let check = match &args[1..] {
                [] => false,
                [flag] if flag == "--check" => true,
                _ => return usage(),
            };
            codegen::run(&project_root(), check)
        }
        Some("layering") if args.len() == 1 => layering::check(&project_root()),
        Some("workload") => bench::workload(&project_root(), &args[1..]),
        Some("bench-report") => bench::report(&project_root(), &args[1..]),
        Some("replay") => replay::command(&project_root(), &args[1..]),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask codegen [--check] | layering | workload --profile P --out DIR [--seed N] | bench-report [--profiles A,B,C] [--runs N] [--only prime|replay|bazel|profiles] | replay --bundle B [--project P] (--last N [--end C] | --commits A,B) [--dir D]"
    );
    ExitCode::from(2)
}
