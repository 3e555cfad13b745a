//! The actions index: a cache derived from one `SpeculativeActions` blob, holding the same
//! actions and overlays in a form that loads in a fraction of the time (each distinct overlay
//! once, each action's overlays as positions in that table). The blob's wire format is
//! untouched; the index can always be rebuilt from it.
//!
//! An index is stored in the CAS and found through the ActionCache: its key is an Action whose
//! input root holds the `SpeculativeActions` blob (as `speculative-actions`) and whose command
//! is `sa-actions-index v1`; its result's one output file, `actions-index`, is the index. Any
//! REAPI store can keep it, and a store that forgets it costs one rebuild.
//!
//! Whatever the store serves is checked before use: the index must name the blob it is looked
//! up for, be no larger than that blob plus 1 MiB, decode, list its overlays in strictly
//! increasing canonical order and each action's overlays strictly increasing within the table.
//! An index that fails is [`Lookup::Invalid`], never used.

use std::collections::HashMap;

use prost::Message;
use sa_cas::{Blob, CasError, Digest, DigestFunction, Entry, EntryKey, Store};
use sa_proto::buildstream::v2::speculative_actions::{Overlay, SpeculativeAction};
use sa_proto::sa::v1 as wire;

use crate::model::{Origin, OverlayError};

/// The name of the index in its ActionCache entry.
const OUTPUT: &str = "actions-index";

/// How much larger than its `SpeculativeActions` blob an index may be.
const SLACK_BYTES: u64 = 1 << 20;

/// One action of an [`ActionsIndex`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedAction {
    /// The recorded action.
    pub base: Digest,
    /// Its distinct overlays, as ascending positions in [`ActionsIndex::overlays`].
    pub overlays: Vec<u32>,
}

/// The actions of one `SpeculativeActions` blob, with their overlays interned (see the module
/// documentation). Equal blobs give equal indexes, byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionsIndex {
    speculative_actions: Digest,
    overlays: Vec<(Origin, Digest)>,
    actions: Vec<IndexedAction>,
    /// The [`InputSkeleton`](crate::InputSkeleton) of the actions' input trees, where the
    /// generator wrote one and the index is trusted (see [`ActionsIndex::input_skeleton`]).
    input_skeleton: Option<Digest>,
}

/// Why a `SpeculativeActions` blob cannot be indexed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The blob is not a `SpeculativeActions` message.
    #[error("does not decode")]
    Decode(#[source] prost::DecodeError),
    /// An action's base digest is missing or invalid.
    #[error("action {position}: base action digest")]
    Base {
        /// The action's position in the blob.
        position: usize,
        /// What is wrong.
        #[source]
        source: Box<CasError>,
    },
    /// An overlay cannot be used.
    #[error("overlay {index} of action {action}: {source}")]
    Overlay {
        /// The action's base digest.
        action: Digest,
        /// The overlay's position in the action.
        index: usize,
        /// What is wrong.
        #[source]
        source: Box<OverlayError>,
    },
}

/// What [`ActionsIndex::load`] found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid index of the blob.
    Found(ActionsIndex),
    /// No index is stored for the blob.
    Missing,
    /// An index is stored but cannot be used: why, naming the entry or blob.
    Invalid(String),
}

impl ActionsIndex {
    /// An index of `actions` over the overlay table `overlays` (positions into it): the table
    /// is put in canonical order (target digest, then origin), each overlay once, and each
    /// action's positions remapped, sorted and deduplicated; overlays no action names are
    /// dropped. Every constructor goes through here, so equal content gives equal indexes.
    pub fn new(
        speculative_actions: Digest,
        overlays: Vec<(Origin, Digest)>,
        actions: Vec<IndexedAction>,
    ) -> ActionsIndex {
        let mut used = vec![false; overlays.len()];
        for action in &actions {
            for &id in &action.overlays {
                used[id as usize] = true;
            }
        }
        let mut order: Vec<u32> =
            (0..overlays.len() as u32).filter(|&i| used[i as usize]).collect();
        let key = |i: u32| {
            let (origin, target) = &overlays[i as usize];
            (target, origin)
        };
        order.sort_unstable_by(|a, b| key(*a).cmp(&key(*b)));
        let mut remap = vec![u32::MAX; overlays.len()];
        let mut table: Vec<(Origin, Digest)> = Vec::with_capacity(order.len());
        for &old in &order {
            let entry = &overlays[old as usize];
            if table.last() != Some(entry) {
                table.push(entry.clone());
            }
            remap[old as usize] = (table.len() - 1) as u32;
        }
        let actions = actions
            .into_iter()
            .map(|mut action| {
                for id in &mut action.overlays {
                    *id = remap[*id as usize];
                }
                action.overlays.sort_unstable();
                action.overlays.dedup();
                action
            })
            .collect();
        ActionsIndex { speculative_actions, overlays: table, actions, input_skeleton: None }
    }

    /// The index naming `skeleton`, the [`InputSkeleton`](crate::InputSkeleton) of its
    /// actions' input trees.
    pub fn with_input_skeleton(self, skeleton: Digest) -> ActionsIndex {
        ActionsIndex { input_skeleton: Some(skeleton), ..self }
    }

    /// The skeleton of the actions' input trees the generator wrote: only in an index loaded
    /// with [`ActionsIndex::load_named`] (trusted as the graph naming it is), never in one
    /// found through the ActionCache, which nothing can check it against.
    pub fn input_skeleton(&self) -> Option<&Digest> {
        self.input_skeleton.as_ref()
    }

    /// The index of an encoded `SpeculativeActions` (`digest` is its digest), decoded one
    /// action at a time: a large element's blob holds millions of overlays.
    pub fn from_speculative_actions(
        function: DigestFunction,
        digest: Digest,
        blob: &[u8],
    ) -> Result<ActionsIndex, IndexError> {
        let mut interned: HashMap<(Origin, Digest), u32> = HashMap::new();
        let mut overlays: Vec<(Origin, Digest)> = Vec::new();
        let mut actions = Vec::new();
        let decoded = for_each_action(blob, |action| {
            let base = Digest::from_proto_field(
                function,
                action.base_action_digest.as_ref(),
                "SpeculativeAction.base_action_digest",
            )
            .map_err(|source| IndexError::Base {
                position: actions.len(),
                source: Box::new(source),
            })?;
            let mut ids = Vec::with_capacity(action.overlays.len());
            for (index, overlay) in action.overlays.iter().enumerate() {
                let key = Origin::from_overlay(function, overlay).map_err(|source| {
                    IndexError::Overlay { action: base, index, source: Box::new(source) }
                })?;
                let id = match interned.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = u32::try_from(overlays.len()).expect("fewer than 2^32 overlays");
                        interned.insert(key.clone(), id);
                        overlays.push(key);
                        id
                    }
                };
                ids.push(id);
            }
            actions.push(IndexedAction { base, overlays: ids });
            Ok(())
        });
        decoded.map_err(IndexError::Decode)??;
        Ok(ActionsIndex::new(digest, overlays, actions))
    }

    /// The `SpeculativeActions` blob this index was derived from.
    pub fn speculative_actions(&self) -> &Digest {
        &self.speculative_actions
    }

    /// The distinct overlays (origin, target digest), in canonical order.
    pub fn overlays(&self) -> &[(Origin, Digest)] {
        &self.overlays
    }

    /// The actions, in the blob's order.
    pub fn actions(&self) -> &[IndexedAction] {
        &self.actions
    }

    /// The overlays and the actions.
    pub fn into_parts(self) -> (Vec<(Origin, Digest)>, Vec<IndexedAction>) {
        (self.overlays, self.actions)
    }

    /// The index as a blob.
    pub fn to_blob(&self, function: DigestFunction) -> Blob {
        let message = wire::ActionsIndex {
            speculative_actions: Some(self.speculative_actions.to_proto()),
            overlays: self
                .overlays
                .iter()
                .map(|(origin, target)| origin.to_overlay(target))
                .collect(),
            actions: self
                .actions
                .iter()
                .map(|action| {
                    let mut previous = 0;
                    let overlay_deltas = action
                        .overlays
                        .iter()
                        .map(|&id| {
                            let delta = id - previous;
                            previous = id;
                            delta
                        })
                        .collect();
                    wire::IndexedAction {
                        base_action_digest: Some(action.base.to_proto()),
                        overlay_deltas,
                    }
                })
                .collect(),
            input_skeleton: self.input_skeleton.map(|d| d.to_proto()),
        };
        Blob::from_message(function, &message)
    }

    /// Reads an index blob made by [`ActionsIndex::to_blob`] for `expected`, checking
    /// everything (see the module documentation); the error says what is wrong.
    pub fn from_blob(
        function: DigestFunction,
        expected: &Digest,
        data: &[u8],
    ) -> Result<ActionsIndex, String> {
        let message =
            wire::ActionsIndex::decode(data).map_err(|e| format!("does not decode: {e}"))?;
        let named = Digest::from_proto_field(
            function,
            message.speculative_actions.as_ref(),
            "ActionsIndex.speculative_actions",
        )
        .map_err(|e| e.to_string())?;
        if named != *expected {
            return Err(format!("it indexes {named}, not {expected}"));
        }
        let mut overlays: Vec<(Origin, Digest)> = Vec::with_capacity(message.overlays.len());
        for (i, overlay) in message.overlays.iter().enumerate() {
            let (origin, target) =
                Origin::from_overlay(function, overlay).map_err(|e| format!("overlay {i}: {e}"))?;
            if let Some((last_origin, last_target)) = overlays.last()
                && (last_target, last_origin) >= (&target, &origin)
            {
                return Err(format!("overlay {i} is out of order"));
            }
            overlays.push((origin, target));
        }
        let mut actions = Vec::with_capacity(message.actions.len());
        for (i, action) in message.actions.into_iter().enumerate() {
            let base = Digest::from_proto_field(
                function,
                action.base_action_digest.as_ref(),
                "IndexedAction.base_action_digest",
            )
            .map_err(|e| format!("action {i}: {e}"))?;
            let mut ids = Vec::with_capacity(action.overlay_deltas.len());
            let mut previous: Option<u32> = None;
            for delta in action.overlay_deltas {
                let id = match previous {
                    None => Some(delta),
                    Some(_) if delta == 0 => None,
                    Some(p) => p.checked_add(delta),
                };
                match id {
                    Some(id) if (id as usize) < overlays.len() => {
                        ids.push(id);
                        previous = Some(id);
                    }
                    _ => return Err(format!("action {i} ({base}): overlay positions are invalid")),
                }
            }
            actions.push(IndexedAction { base, overlays: ids });
        }
        let input_skeleton = message
            .input_skeleton
            .as_ref()
            .map(|d| Digest::from_proto(function, d))
            .transpose()
            .map_err(|e| format!("ActionsIndex.input_skeleton: {e}"))?;
        Ok(ActionsIndex { speculative_actions: *expected, overlays, actions, input_skeleton })
    }

    /// The ActionCache key of the index of `speculative_actions`, and the blobs that key names
    /// (its Action, Command and input root).
    pub fn key(function: DigestFunction, speculative_actions: &Digest) -> (Digest, Vec<Blob>) {
        let key = ActionsIndex::entry_key(function, speculative_actions);
        (key.digest, key.blobs)
    }

    fn entry_key(function: DigestFunction, speculative_actions: &Digest) -> EntryKey {
        EntryKey::new(
            function,
            &["sa-actions-index", "v1"],
            &[("speculative-actions", speculative_actions)],
            OUTPUT,
        )
    }

    /// Stores the index and its ActionCache entry; returns the index blob's digest.
    pub fn store(&self, store: &(impl Store + ?Sized)) -> Result<Digest, CasError> {
        let function = store.digest_function();
        ActionsIndex::entry_key(function, &self.speculative_actions)
            .store(store, self.to_blob(function))
    }

    /// The index blob `index`, named by a source the caller trusts (the graph `sa generate`
    /// wrote, which binds the index to the blob): read from the CAS, which checks it is that
    /// blob, and checked like any index. Missing or invalid is said, never used.
    pub fn load_named(
        store: &(impl Store + ?Sized),
        speculative_actions: &Digest,
        index: &Digest,
    ) -> Result<Lookup, CasError> {
        let named =
            || format!("the actions index {index} the graph names for {speculative_actions}");
        let limit = speculative_actions.size().saturating_add(SLACK_BYTES);
        if index.size() > limit {
            return Ok(Lookup::Invalid(format!("{} is larger than {limit} bytes", named())));
        }
        let data = match store.read_blob(index) {
            Ok(data) => data,
            Err(CasError::NotFound(_)) => return Ok(Lookup::Missing),
            Err(e @ (CasError::DigestMismatch { .. } | CasError::SizeMismatch { .. })) => {
                return Ok(Lookup::Invalid(format!("{}: {e}", named())));
            }
            Err(e) => return Err(e),
        };
        Ok(match ActionsIndex::from_blob(store.digest_function(), speculative_actions, &data) {
            Ok(index) => Lookup::Found(index),
            Err(reason) => Lookup::Invalid(format!("{}: {reason}", named())),
        })
    }

    /// Checks the index against the encoded `SpeculativeActions` it claims to index: the same
    /// actions (base digests) in the same order, each with as many distinct overlays, found
    /// by walking the blob's fields without decoding an overlay. What an index that someone
    /// with write access to the ActionCache made up must pass before it decides what runs:
    /// a base digest swapped for another Action, an action dropped or added, overlays dropped.
    pub fn check_against(&self, function: DigestFunction, blob: &[u8]) -> Result<(), String> {
        use sa_proto::wire::{
            self, SPECULATIVE_ACTION_BASE_ACTION_DIGEST, SPECULATIVE_ACTION_OVERLAYS,
            SPECULATIVE_ACTIONS_ACTIONS,
        };
        let mut position = 0;
        for field in wire::fields(blob) {
            let field = field.map_err(|e| format!("the blob does not decode: {e}"))?;
            let Some(action) =
                field.bytes().filter(|_| field.number == SPECULATIVE_ACTIONS_ACTIONS)
            else {
                continue;
            };
            let mut base = None;
            let mut overlays = std::collections::HashSet::new();
            for inner in wire::fields(action) {
                let inner = inner.map_err(|e| format!("action {position}: {e}"))?;
                match (inner.number, inner.bytes()) {
                    (SPECULATIVE_ACTION_BASE_ACTION_DIGEST, Some(digest)) => base = Some(digest),
                    (SPECULATIVE_ACTION_OVERLAYS, Some(overlay)) => {
                        overlays.insert(overlay);
                    }
                    _ => {}
                }
            }
            let Some(indexed) = self.actions.get(position) else {
                return Err(format!("the blob has more than the {} actions indexed", position));
            };
            let base = base
                .and_then(|b| sa_proto::reapi::Digest::decode(b).ok())
                .and_then(|b| Digest::from_proto(function, &b).ok())
                .ok_or(format!("action {position} of the blob has no valid base digest"))?;
            if base != indexed.base {
                return Err(format!(
                    "action {position} is {base} in the blob, {} in the index",
                    indexed.base
                ));
            }
            if overlays.len() != indexed.overlays.len() {
                return Err(format!(
                    "action {position} ({base}) has {} distinct overlays in the blob, {} in the \
                     index",
                    overlays.len(),
                    indexed.overlays.len()
                ));
            }
            position += 1;
        }
        if position != self.actions.len() {
            return Err(format!(
                "the blob has {position} actions, the index {}",
                self.actions.len()
            ));
        }
        Ok(())
    }

    /// The stored index of `speculative_actions`. A store that cannot be read is an error;
    /// an entry or index that is missing, corrupt, too large or for another blob is
    /// [`Lookup::Missing`] or [`Lookup::Invalid`] (rebuild it).
    pub fn load(
        store: &(impl Store + ?Sized),
        speculative_actions: &Digest,
    ) -> Result<Lookup, CasError> {
        let function = store.digest_function();
        let key = ActionsIndex::entry_key(function, speculative_actions);
        let what = || format!("the actions index entry of {speculative_actions}");
        let limit = speculative_actions.size().saturating_add(SLACK_BYTES);
        let (digest, data) = match key.load(store, &what, limit)? {
            Entry::Found(digest, data) => (digest, data),
            Entry::Missing => return Ok(Lookup::Missing),
            Entry::Invalid(why) => return Ok(Lookup::Invalid(why)),
        };
        let entry = || format!("{} ({})", what(), key.digest);
        Ok(match ActionsIndex::from_blob(function, speculative_actions, &data) {
            // Whoever can write the ActionCache chose this index: its skeleton is not used.
            Ok(index) => Lookup::Found(ActionsIndex { input_skeleton: None, ..index }),
            Err(reason) => Lookup::Invalid(format!("{}: index {digest}: {reason}", entry())),
        })
    }
}

/// Calls `each` with every `SpeculativeAction` of an encoded `SpeculativeActions`, in order,
/// decoding one at a time. The other fields are checked (artifact overlays decode) and skipped,
/// as a full decode would; a malformed blob is a `DecodeError`.
pub fn for_each_action<E>(
    blob: &[u8],
    mut each: impl FnMut(SpeculativeAction) -> Result<(), E>,
) -> Result<Result<(), E>, prost::DecodeError> {
    use prost::encoding::{DecodeContext, WireType, check_wire_type, decode_key, skip_field};
    use sa_proto::wire::{SPECULATIVE_ACTIONS_ACTIONS, SPECULATIVE_ACTIONS_ARTIFACT_OVERLAYS};
    let mut buf = blob;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            SPECULATIVE_ACTIONS_ACTIONS => {
                check_wire_type(WireType::LengthDelimited, wire_type)?;
                if let Err(err) = each(SpeculativeAction::decode_length_delimited(&mut buf)?) {
                    return Ok(Err(err));
                }
            }
            SPECULATIVE_ACTIONS_ARTIFACT_OVERLAYS => {
                check_wire_type(WireType::LengthDelimited, wire_type)?;
                Overlay::decode_length_delimited(&mut buf)?;
            }
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
        }
    }
    Ok(Ok(()))
}

/// The `artifact_overlays` of an encoded `SpeculativeActions`, each decoded; the actions are
/// checked for framing and skipped undecoded (a large element's actions dwarf its artifact).
pub fn artifact_overlays(blob: &[u8]) -> Result<Vec<Overlay>, prost::DecodeError> {
    use prost::encoding::{DecodeContext, WireType, check_wire_type, decode_key, skip_field};
    use sa_proto::wire::{SPECULATIVE_ACTIONS_ACTIONS, SPECULATIVE_ACTIONS_ARTIFACT_OVERLAYS};
    let mut buf = blob;
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag == SPECULATIVE_ACTIONS_ARTIFACT_OVERLAYS {
            check_wire_type(WireType::LengthDelimited, wire_type)?;
            out.push(Overlay::decode_length_delimited(&mut buf)?);
        } else {
            if tag == SPECULATIVE_ACTIONS_ACTIONS {
                check_wire_type(WireType::LengthDelimited, wire_type)?;
            }
            skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use sa_proto::buildstream::v2::SpeculativeActions;

    use super::*;

    fn bases(blob: &[u8]) -> Result<Vec<u64>, prost::DecodeError> {
        let mut seen = Vec::new();
        for_each_action(blob, |a| {
            seen.push(a.base_action_digest.map_or(0, |d| d.size_bytes as u64));
            Ok::<(), ()>(())
        })?
        .expect("the callback does not fail");
        Ok(seen)
    }

    #[test]
    fn decodes_actions_one_by_one_in_order_and_rejects_malformed_blobs() {
        let action = |size| SpeculativeAction {
            base_action_digest: Some(sa_proto::reapi::Digest {
                hash: "h".into(),
                size_bytes: size,
            }),
            overlays: vec![],
        };
        let message = SpeculativeActions {
            actions: vec![action(1), action(2), action(3)],
            artifact_overlays: vec![Overlay { source_path: "a".into(), ..Default::default() }],
        };
        let mut blob = message.encode_to_vec();
        // A field a newer writer added (number 7, varint) is skipped.
        blob.extend([7 << 3, 42]);
        assert_eq!(bases(&blob).expect("valid"), [1, 2, 3]);
        assert_eq!(artifact_overlays(&blob).expect("valid"), message.artifact_overlays);
        // Truncated in the middle of an action.
        assert!(bases(&blob[..blob.len() / 2]).is_err());
        assert!(artifact_overlays(&blob[..blob.len() / 2]).is_err());
        // Field 1 with the varint wire type.
        assert!(bases(&[1 << 3, 5]).is_err());
        assert!(artifact_overlays(&[1 << 3, 5]).is_err());
        // A callback error stops the walk and is returned as is.
        let outcome = for_each_action(&blob, |_| Err("stop")).expect("decodes");
        assert_eq!(outcome, Err("stop"));
    }
}
