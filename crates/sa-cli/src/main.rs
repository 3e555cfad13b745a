//! `sa`: the speculative-actions command-line tool that build scripts call between builds.
//!
//! Exit codes: 0 success, 1 failure (the error and its causes go to stderr), 2 usage error;
//! `sa record` exits with the compiler's code.
//! A closed stdout (a broken pipe) ends the command quietly with 0.

mod args;
mod commands;
mod demo;
mod exit;
mod graph;
mod inspect;
mod learned;
mod memory;
mod prime;
mod proxy;
mod record;
mod serve;
mod store;
mod ui;
mod worker;

use std::process::ExitCode;

use args::Cli;
use args::settle_stores;
use exit::{UsageError, install_signal_handlers, is_broken_pipe};
use ui::Ui;

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (mut cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    // An empty SA_REMOTE= or SA_CAS= (or an empty flag) means unset, as shells expect.
    cli.store.remote = cli.store.remote.take().filter(|r| !r.is_empty());
    cli.store.cas = cli.store.cas.take().filter(|c| !c.as_os_str().is_empty());
    if let Err(message) = settle_stores(&mut cli, &matches) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    ui::init_logging(cli.verbose);
    if let Err(err) = install_signal_handlers() {
        eprintln!("error: installing signal handlers: {err}");
        return ExitCode::FAILURE;
    }
    let budget = cli.store.limits.max_memory.unwrap_or_else(memory::default_budget);
    if let Err(err) = memory::watch(budget) {
        eprintln!("error: starting the memory watchdog: {err}");
        return ExitCode::FAILURE;
    }
    let mut ui = Ui::new(cli.json, cli.stats);
    let result = cli.command.run(&cli.store, &mut ui);
    exit::exit_if_interrupted();
    let result = result.and_then(|code| ui.flush().map(|()| code));
    // Also after a failure: what the command did before it failed.
    ui.report_stats();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            match exit::hint(&err) {
                Some(hint) => eprintln!("error: {} ({hint})", sa_cas::error_chain(err.as_ref())),
                None => eprintln!("error: {}", sa_cas::error_chain(err.as_ref())),
            }
            if err.chain().any(|cause| cause.is::<UsageError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
