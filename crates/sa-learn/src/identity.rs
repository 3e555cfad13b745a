//! An action's identity: what stays the same while its inputs change.

use std::fmt;

use sa_cas::{Cas, CasError, DecodedAction, Digest, read_message};
use sa_proto::reapi::Command;

/// The working directory and the sorted, distinct output paths of an action's Command. A
/// Bazel target's compile of `a.o` and recc's compile of `a.o` are each one identity whatever
/// their inputs; the same command line with other outputs is another identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    /// `Command.working_directory` (relative to the input root; empty for the root).
    pub working_directory: String,
    /// `output_files`, `output_directories` and `output_paths`, sorted, each once.
    pub outputs: Vec<String>,
}

impl Identity {
    /// The identity of an action running `command`.
    #[allow(deprecated)] // output_files and output_directories: what REAPI v2.0 clients (Bazel 4) send
    pub fn of_command(command: &Command) -> Identity {
        let mut outputs: Vec<String> = command
            .output_files
            .iter()
            .chain(&command.output_directories)
            .chain(&command.output_paths)
            .cloned()
            .collect();
        outputs.sort_unstable();
        outputs.dedup();
        Identity { working_directory: command.working_directory.clone(), outputs }
    }

    /// The identity of the Action `action` in `cas` (its Action and Command read and decoded).
    pub fn read(cas: &(impl Cas + ?Sized), action: &Digest) -> Result<Identity, CasError> {
        let decoded = DecodedAction::read(cas, action)?;
        let command = decoded.command().map_err(|e| e.context(format!("Action {action}")))?;
        let command: Command = read_message(cas, &command, "Command")
            .map_err(|e| e.context(format!("the Command of Action {action}")))?;
        Ok(Identity::of_command(&command))
    }
}

impl fmt::Display for Identity {
    /// `a.o` or `out/a.o out/a.d`, after `DIR: ` when the working directory is not the root.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.working_directory.is_empty() {
            write!(f, "{}: ", self.working_directory)?;
        }
        if self.outputs.is_empty() {
            return f.write_str("(no outputs)");
        }
        f.write_str(&self.outputs.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)] // the REAPI v2.0 output lists count too
    fn outputs_of_every_kind_are_sorted_and_listed_once() {
        let command = Command {
            working_directory: "sub".into(),
            output_files: vec!["b.o".into(), "a.d".into()],
            output_directories: vec!["gen".into()],
            output_paths: vec!["a.d".into(), "b.o".into()],
            ..Default::default()
        };
        let identity = Identity::of_command(&command);
        assert_eq!(identity.outputs, ["a.d", "b.o", "gen"]);
        assert_eq!(identity.to_string(), "sub: a.d b.o gen");
        // Arguments, environment and platform are not part of it.
        let other = Command { arguments: vec!["gcc".into(), "-O2".into()], ..command.clone() };
        assert_eq!(Identity::of_command(&other), identity);
        // Other outputs are another identity.
        let renamed = Command { output_paths: vec!["c.o".into()], ..command };
        assert_ne!(Identity::of_command(&renamed), identity);
    }
}
