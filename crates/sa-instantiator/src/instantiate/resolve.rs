//! Resolving overlays: SOURCE against the current sources, ARTIFACT against the current
//! artifact or (a dependency not built yet) its previous `artifact_overlays`, ACTION against
//! the instantiated producer's result.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use sa_cas::merkle::{self};
use sa_cas::{CasError, Digest, Store};
use sa_generator::model::{Origin, OriginKind, compare_for};

use super::error::StoreStep;
use super::{
    ElementState, ElementWork, InstantiateError, InstantiatedAction, Instantiator, Planned,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Resolution {
    Replace(Digest),
    Skip,
    Unresolved(String),
}

/// What an overlay's resolution, where it is known before the waves, does to its target: one
/// byte per overlay, from which an action that changes nothing is counted without touching its
/// resolutions (most actions of a small edit change nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    Unchanged = 0,
    Skipped = 1,
    Changes = 2,
    Unresolved = 3,
    /// Resolved during the waves (its producer is one of the element's own actions).
    Pending = 4,
}

impl Effect {
    /// Whether an overlay with this effect may change its action.
    pub(super) fn may_change(self) -> bool {
        matches!(self, Effect::Changes | Effect::Pending)
    }
}

/// Each overlay's [`Effect`], by id.
pub(super) fn effects(
    overlays: &[(Origin, Digest)],
    resolutions: &[OnceLock<Resolution>],
) -> Vec<Effect> {
    overlays
        .par_iter()
        .zip(resolutions)
        .map(|((_, target), resolution)| match resolution.get() {
            None => Effect::Pending,
            Some(Resolution::Replace(new)) if new != target => Effect::Changes,
            Some(Resolution::Replace(_)) => Effect::Unchanged,
            Some(Resolution::Skip) => Effect::Skipped,
            Some(Resolution::Unresolved(_)) => Effect::Unresolved,
        })
        .collect()
}

impl<'s, S: Store + ?Sized> Instantiator<'s, S> {
    /// Resolves the action's overlays (each distinct one once per element) and counts them;
    /// returns the outcome so far and the targets that change, each with its overlays.
    pub(super) fn resolve_overlays<'w>(
        &self,
        element: &str,
        work: &ElementWork<'_>,
        planned: &'w Planned,
    ) -> Result<(InstantiatedAction, BTreeMap<Digest, &'w [u32]>), InstantiateError> {
        let mut outcome = InstantiatedAction {
            base: planned.base,
            action: planned.base,
            complete: true,
            applied: 0,
            unchanged: 0,
            skipped: 0,
            unresolved: 0,
            unresolved_reasons: Vec::new(),
            unresolved_targets: Vec::new(),
        };
        let mut changing: BTreeMap<Digest, &[u32]> = BTreeMap::new();
        // An action none of whose overlays changes anything (known ahead): counted from the
        // effects alone.
        let mut counts = [0usize; 5];
        for &id in &planned.overlay_ids {
            counts[work.effects[id as usize] as usize] += 1;
        }
        if counts[Effect::Changes as usize] == 0
            && counts[Effect::Unresolved as usize] == 0
            && counts[Effect::Pending as usize] == 0
        {
            outcome.unchanged = counts[Effect::Unchanged as usize];
            outcome.skipped = counts[Effect::Skipped as usize];
            return Ok((outcome, changing));
        }
        let same_target =
            |a: &u32, b: &u32| work.overlays[*a as usize].1 == work.overlays[*b as usize].1;
        for ids in planned.overlay_ids.chunk_by(same_target) {
            let target = &work.overlays[ids[0] as usize].1;
            for &id in ids {
                let resolution = match work.resolutions[id as usize].get() {
                    Some(r) => r.clone(),
                    None => {
                        let (origin, target) = &work.overlays[id as usize];
                        let r = self.resolve(element, origin, target, 0)?;
                        work.resolutions[id as usize].get_or_init(|| r).clone()
                    }
                };
                match resolution {
                    Resolution::Replace(new) if new != *target => {
                        outcome.applied += 1;
                        changing.insert(*target, ids);
                    }
                    Resolution::Replace(_) => outcome.unchanged += 1,
                    Resolution::Skip => outcome.skipped += 1,
                    Resolution::Unresolved(reason) => {
                        outcome.unresolved += 1;
                        let kind = work.overlays[id as usize].0.kind;
                        outcome.unresolved_targets.push((kind, *target));
                        if outcome.unresolved_reasons.len() < 3 {
                            outcome.unresolved_reasons.push(reason);
                        }
                    }
                }
            }
        }
        outcome.complete = outcome.unresolved == 0;
        outcome.unresolved_targets.sort_unstable();
        outcome.unresolved_targets.dedup();
        Ok((outcome, changing))
    }

    /// Resolves one overlay in the context of `element` (whose "" it means).
    pub(super) fn resolve(
        &self,
        element: &str,
        origin: &Origin,
        target: &Digest,
        depth: usize,
    ) -> Result<Resolution, InstantiateError> {
        if depth > 32 {
            return Ok(Resolution::Unresolved(format!(
                "artifact overlays of {element:?} nest deeper than 32"
            )));
        }
        let owner = if origin.element.is_empty() { element } else { origin.element.as_str() };
        let Some(state) = self.elements.get(owner) else {
            return Ok(Resolution::Unresolved(format!("unknown element {owner:?}")));
        };
        if owner != element && state.unchanged() && origin.kind != OriginKind::Action {
            return Ok(Resolution::Skip);
        }
        match origin.kind {
            OriginKind::Source => match state.sources {
                None => Ok(Resolution::Unresolved(format!("element {owner:?} has no sources"))),
                Some(root) => self.lookup(owner, "sources", &root, &origin.path),
            },
            OriginKind::Artifact => match state.artifact {
                Some(root) => self.lookup(owner, "artifact", &root, &origin.path),
                None => self.trace_unbuilt(owner, state, origin, target, depth),
            },
            OriginKind::Action => self.producer_output(origin),
        }
    }

    /// An ARTIFACT overlay of a dependency not built yet, traced through its previous
    /// `artifact_overlays` to where that file comes from now.
    pub(super) fn trace_unbuilt(
        &self,
        owner: &str,
        state: &ElementState,
        origin: &Origin,
        target: &Digest,
        depth: usize,
    ) -> Result<Resolution, InstantiateError> {
        let Some(previous) = state.previous_speculative_actions else {
            return Ok(Resolution::Unresolved(format!(
                "{owner:?} is not built and has no previous SpeculativeActions"
            )));
        };
        let traces = self.previous_artifact_overlays(owner, &previous)?;
        let chosen = traces.get(target).and_then(|candidates| {
            candidates.iter().min_by(|a, b| compare_for(&origin.path, a, b))
        });
        match chosen {
            Some(traced) => self.resolve(owner, traced, target, depth + 1),
            None => Ok(Resolution::Unresolved(format!(
                "{owner:?} is not built and its artifact overlays do not trace {}",
                origin.path
            ))),
        }
    }

    /// An ACTION overlay: the output of the producer's instantiated action, once it has a
    /// result.
    pub(super) fn producer_output(&self, origin: &Origin) -> Result<Resolution, InstantiateError> {
        let producer = origin.producer.expect("ACTION origins have a producer");
        let Some(adapted) = self.instantiated(&producer) else {
            return Ok(Resolution::Unresolved(format!(
                "producer {producer} is not instantiated completely"
            )));
        };
        let result =
            self.store.get_action_result(&adapted).map_err(|source| InstantiateError::Store {
                element: origin.element.to_string(),
                step: Box::new(StoreStep::ReadingResult { adapted, producer }),
                source: Box::new(source),
            })?;
        let Some(result) = result else {
            return Ok(Resolution::Unresolved(format!("producer {adapted} has no result yet")));
        };
        let function = self.store.digest_function();
        match result.output_files.iter().find(|f| f.path == origin.path) {
            Some(file) => {
                let digest =
                    Digest::from_proto_field(function, file.digest.as_ref(), "OutputFile.digest")
                        .map_err(|source| InstantiateError::Store {
                        element: origin.element.to_string(),
                        step: Box::new(StoreStep::ReadingResult { adapted, producer }),
                        source: Box::new(source),
                    })?;
                Ok(Resolution::Replace(digest))
            }
            None => Ok(Resolution::Unresolved(format!(
                "producer {adapted} has no output {}",
                origin.path
            ))),
        }
    }

    pub(super) fn lookup(
        &self,
        owner: &str,
        what: &'static str,
        root: &Digest,
        path: &str,
    ) -> Result<Resolution, InstantiateError> {
        let index = self.path_index(owner, what, root)?;
        Ok(match index.get(path) {
            Some(digest) => Resolution::Replace(*digest),
            None => Resolution::Unresolved(format!("no file {path} in the {what} of {owner:?}")),
        })
    }

    pub(super) fn path_index(
        &self,
        owner: &str,
        what: &'static str,
        root: &Digest,
    ) -> Result<Arc<HashMap<String, Digest>>, InstantiateError> {
        let cell = self.path_indexes.entry(*root).or_default().clone();
        let result = cell.get_or_init(|| {
            let forest = merkle::fetch_tree(self.store, root, &self.config.limits)?;
            let files = forest.files(root)?;
            Ok(Arc::new(files.into_iter().map(|file| (file.path, file.digest)).collect()))
        });
        result.clone().map_err(|source| InstantiateError::Tree {
            element: owner.into(),
            what,
            root: *root,
            source,
        })
    }

    pub(super) fn previous_artifact_overlays(
        &self,
        owner: &str,
        digest: &Digest,
    ) -> Result<Arc<HashMap<Digest, Vec<Origin>>>, InstantiateError> {
        let function = self.store.digest_function();
        let cell = self.artifact_overlays.entry(*digest).or_default().clone();
        let result = cell.get_or_init(|| {
            let blob = self.store.read_blob(digest)?;
            let overlays =
                sa_generator::actions_index::artifact_overlays(&blob).map_err(|source| {
                    CasError::Decode { what: "SpeculativeActions", digest: *digest, source }
                })?;
            let mut map: HashMap<Digest, Vec<Origin>> = HashMap::new();
            for (i, overlay) in overlays.iter().enumerate() {
                let (origin, target) = Origin::from_overlay(function, overlay).map_err(|err| {
                    CasError::InvalidDigest {
                        input: format!("artifact overlay {i}"),
                        reason: err.to_string(),
                    }
                })?;
                map.entry(target).or_default().push(origin);
            }
            Ok(Arc::new(map))
        });
        result.clone().map_err(|source| InstantiateError::Tree {
            element: owner.into(),
            what: "previous SpeculativeActions",
            root: *digest,
            source,
        })
    }
}
