//! Entries `sa` keeps for itself in a store's ActionCache: a derived blob (the actions index
//! of a `SpeculativeActions` blob, a project's learned state) found by a stable key, so any
//! REAPI store, local or remote, can keep it.
//!
//! The key is an Action no one executes: its command is `arguments` (`sa-actions-index v1`,
//! `sa-learned-state v1`), its input root a Directory of named files (what the entry is about).
//! Its result's one output file, named `output`, is the blob. A store that forgets an entry
//! loses a cache; whatever a store serves as one is checked before use ([`load`]): the result
//! must list exactly that one output, with a valid digest within a size limit, and the blob
//! must be in the CAS and hash to it.

use bytes::Bytes;
use sa_proto::reapi::{Action, ActionResult, Command, OutputFile};

use crate::merkle::{self, DirectoryBuilder};
use crate::{Blob, CasError, Digest, DigestFunction, Store};

/// The ActionCache key of an entry, with the blobs it names (Action, Command, input root).
#[derive(Clone, Debug)]
pub struct EntryKey {
    /// The key: the Action's digest.
    pub digest: Digest,
    /// The Action, its Command and its input root, written beside the entry.
    pub blobs: Vec<Blob>,
    /// The output file's name.
    pub output: &'static str,
}

impl EntryKey {
    /// The key whose Action runs `arguments` over a root holding `files` (name, digest; the
    /// names must be valid and distinct, which callers pass as constants) and whose result's
    /// one output is `output`.
    pub fn new(
        function: DigestFunction,
        arguments: &[&str],
        files: &[(&str, &Digest)],
        output: &'static str,
    ) -> EntryKey {
        let command = Blob::from_message(
            function,
            &Command {
                arguments: arguments.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        );
        let mut root = DirectoryBuilder::new();
        for (name, digest) in files {
            root = root.file(name, digest, false);
        }
        let root = root.build(function).expect("the caller's constant names are valid");
        let root = merkle::directory_blob(function, &root);
        let action = Blob::from_message(
            function,
            &Action {
                command_digest: Some(command.digest().to_proto()),
                input_root_digest: Some(root.digest().to_proto()),
                ..Default::default()
            },
        );
        EntryKey { digest: *action.digest(), blobs: vec![action, command, root], output }
    }

    /// Stores `blob` as the entry (the key's blobs first, only those missing).
    pub fn store(&self, store: &(impl Store + ?Sized), blob: Blob) -> Result<Digest, CasError> {
        let digest = *blob.digest();
        let mut blobs = self.blobs.clone();
        blobs.push(blob);
        merkle::write_in_batches(store, &blobs)?;
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: self.output.into(),
                digest: Some(digest.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        store.update_action_result(&self.digest, &result)?;
        Ok(digest)
    }

    /// The entry's blob, checked: `what` names the entry in reasons (`the actions index entry
    /// of X`). A store that cannot be read is an error; anything else wrong is
    /// [`Entry::Invalid`].
    pub fn load(
        &self,
        store: &(impl Store + ?Sized),
        what: &dyn Fn() -> String,
        max_bytes: u64,
    ) -> Result<Entry, CasError> {
        let function = store.digest_function();
        let Some(result) = store.get_action_result(&self.digest)? else {
            return Ok(Entry::Missing);
        };
        let entry = || format!("{} ({})", what(), self.digest);
        let [file] = result.output_files.as_slice() else {
            return Ok(Entry::Invalid(format!("{} lists no single output", entry())));
        };
        if file.path != self.output {
            return Ok(Entry::Invalid(format!("{} names output {:?}", entry(), file.path)));
        }
        let digest =
            match Digest::from_proto_field(function, file.digest.as_ref(), "OutputFile.digest") {
                Ok(digest) => digest,
                Err(e) => return Ok(Entry::Invalid(format!("{}: {e}", entry()))),
            };
        if digest.size() > max_bytes {
            return Ok(Entry::Invalid(format!(
                "{}: {} {digest} is larger than {max_bytes} bytes",
                entry(),
                self.output
            )));
        }
        match store.read_blob(&digest) {
            Ok(data) => Ok(Entry::Found(digest, data)),
            Err(
                e @ (CasError::NotFound(_)
                | CasError::DigestMismatch { .. }
                | CasError::SizeMismatch { .. }),
            ) => Ok(Entry::Invalid(format!("{}: {} {digest}: {e}", entry(), self.output))),
            Err(e) => Err(e),
        }
    }
}

/// What [`EntryKey::load`] found.
#[derive(Clone, Debug)]
pub enum Entry {
    /// The blob, read and verified, with its digest.
    Found(Digest, Bytes),
    /// No entry is stored.
    Missing,
    /// An entry is stored but cannot be used: why, naming the entry.
    Invalid(String),
}
