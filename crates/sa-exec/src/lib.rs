//! Execution of REAPI Actions: here, so priming and recording work with no server at all, or
//! on a REAPI execution service, behind one [`Executor`] trait.
//!
//! [`LocalExecutor`] runs actions on this machine with [`execute_cached`];
//! [`RemoteExecutor`] submits them to an execution service (`Execute`, `WaitExecution`) with
//! a bounded number in flight, resuming broken streams and resubmitting what a restarted
//! service forgot.
//!
//! [`execute`] runs one Action from a store: it materializes the input root into a fresh
//! scratch directory, runs the Command there (its arguments, exactly its environment, its
//! working directory; the parents of its output paths created first, as REAPI asks of a
//! server), stores stdout, stderr and the outputs in the store, and writes the `ActionResult`
//! to the ActionCache when the command succeeded and the action may be cached. The scratch
//! directory is removed afterwards whatever happened. [`execute_cached`] looks in the
//! ActionCache first, as `Execute` with `skip_cache_lookup = false` does. [`write_outputs`]
//! puts a result's outputs into a directory (what a compiler wrapper does on a cache hit).
//!
//! This is not a sandbox: the command sees the host's file system beside its input root (a
//! compiler finds `/usr/include` there). What it is given is exactly its input root and its
//! environment, so an action that reads an undeclared relative input fails here instead of
//! being cached.
//!
//! ```
//! use sa_cas::{Cas, DigestFunction, MemoryCas, merkle, write_message};
//! use sa_proto::reapi::{Action, Command};
//!
//! let cas = MemoryCas::new(DigestFunction::Sha256);
//! let input = cas.write_blob("hello\n".into()).unwrap();
//! let root = merkle::build_tree(&cas, &[merkle::TreeFile::new("in.txt", input, false)]).unwrap();
//! let command = Command {
//!     arguments: vec!["/bin/cp".into(), "in.txt".into(), "out.txt".into()],
//!     output_paths: vec!["out.txt".into()],
//!     ..Default::default()
//! };
//! let command = write_message(&cas, &command).unwrap();
//! let action = Action {
//!     command_digest: Some(command.to_proto()),
//!     input_root_digest: Some(root.to_proto()),
//!     ..Default::default()
//! };
//! let action = write_message(&cas, &action).unwrap();
//! let result = sa_exec::execute(&cas, &action, &Default::default()).unwrap();
//! assert_eq!(result.exit_code, 0);
//! assert_eq!(result.output_files[0].digest, Some(input.to_proto()));
//! ```

#![deny(missing_docs)]

mod bots;
mod cleanup;
mod executor;
mod run;
mod sandbox;

pub use bots::{BotError, BotOptions, BotWorker};
pub use cleanup::{ScratchGuard, interrupt, interrupted};
pub use executor::{
    DEFAULT_REMOTE_JOBS, Executor, ExecutorCounters, Failure, Finished, LocalExecutor, Outcome,
    RemoteExecutor, RemoteOptions,
};
pub use run::{
    ExecConfig, ExecError, Execution, OutputParents, check_result, execute, execute_cached,
    result_blobs, write_outputs, write_outputs_in,
};
pub use sandbox::Sandbox;
