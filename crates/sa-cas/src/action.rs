//! The one reader of an Action: decoded, its command and input-root digests parsed and checked
//! against the store's function once, here.

use bytes::Bytes;
use prost::Message;
use sa_proto::reapi::Action;

use crate::{Cas, CasError, Digest, DigestFunction};

/// An Action with its two digests parsed.
#[derive(Clone, Debug)]
pub struct DecodedAction {
    /// The message as decoded (timeouts, platform, `do_not_cache`, …).
    pub action: Action,
    /// `command_digest`, when present (an Action to run needs one: [`DecodedAction::command`];
    /// one that is only rewritten or attributed does not).
    pub command: Option<Digest>,
    /// `input_root_digest`.
    pub input_root: Digest,
}

impl DecodedAction {
    /// Decodes the Action stored under `digest`: a blob that is not an Action is `Decode`, a
    /// missing or invalid digest field names the field; both name the Action.
    pub fn decode(
        function: DigestFunction,
        digest: &Digest,
        data: impl bytes::Buf,
    ) -> Result<DecodedAction, CasError> {
        let action = Action::decode(data).map_err(|source| CasError::Decode {
            what: "Action",
            digest: *digest,
            source,
        })?;
        let field = |proto, name| {
            Digest::from_proto_field(function, proto, name)
                .map_err(|err| err.context(format!("Action {digest}")))
        };
        let command = match action.command_digest {
            Some(_) => Some(field(action.command_digest.as_ref(), "Action.command_digest")?),
            None => None,
        };
        let input_root = field(action.input_root_digest.as_ref(), "Action.input_root_digest")?;
        Ok(DecodedAction { action, command, input_root })
    }

    /// The command digest of an Action to run: missing is `MissingField`.
    pub fn command(&self) -> Result<Digest, CasError> {
        self.command.ok_or(CasError::MissingField("Action.command_digest"))
    }

    /// Reads and decodes the Action `digest` from `cas`.
    pub fn read(cas: &(impl Cas + ?Sized), digest: &Digest) -> Result<DecodedAction, CasError> {
        let data: Bytes = cas.read_blob(digest)?;
        DecodedAction::decode(cas.digest_function(), digest, data)
    }
}
