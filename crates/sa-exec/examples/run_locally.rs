//! sa-exec alone: stores an Action that copies a file in an in-memory store, runs it on this
//! machine, and prints the result and the output it stored.
//!
//! `cargo run -p sa-exec --example run_locally`

use sa_cas::{Cas, Digest, DigestFunction, MemoryCas, merkle, write_message};
use sa_exec::{ExecConfig, Executor, LocalExecutor, Outcome};
use sa_proto::reapi::{Action, Command};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let input = cas.write_blob("hello\n".into())?;
    let root = merkle::build_tree(&cas, &[merkle::TreeFile::new("in.txt", input, false)])?;
    let command = Command {
        arguments: vec!["/bin/cp".into(), "in.txt".into(), "out.txt".into()],
        output_paths: vec!["out.txt".into()],
        ..Default::default()
    };
    let action = Action {
        command_digest: Some(write_message(&cas, &command)?.to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    let action = write_message(&cas, &action)?;
    let executor = LocalExecutor::new(&cas, ExecConfig::default(), 1);
    let mut outcome = None;
    executor.execute_all(&[action], &mut |finished| outcome = Some(finished.outcome));
    let Some(Outcome::Executed(result)) = outcome else {
        return Err(format!("action {action}: {outcome:?}").into());
    };
    println!("action {action}: exit code {}", result.exit_code);
    for file in &result.output_files {
        let digest =
            Digest::from_proto(cas.digest_function(), file.digest.as_ref().ok_or("no digest")?)?;
        let content = cas.read_blob(&digest)?;
        println!("{} ({digest}): {:?}", file.path, String::from_utf8_lossy(&content));
    }
    Ok(())
}
