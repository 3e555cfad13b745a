//! `sa`: the speculative-actions command-line tool that build scripts call between builds.

use std::process::ExitCode;

use clap::Parser;

/// Speculative actions: prime a remote-execution action cache before the build asks for it.
#[derive(Debug, Parser)]
#[command(name = "sa", version, about)]
struct Cli {}

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(Cli {}) => ExitCode::SUCCESS,
        Err(err) => {
            // clap prints help and version to stdout with exit 0, usage errors with exit 2.
            let _ = err.print();
            ExitCode::from(if err.use_stderr() { 2 } else { 0 })
        }
    }
}
