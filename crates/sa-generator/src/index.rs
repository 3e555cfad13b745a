//! The origin index: every file of every origin tree and every subaction output, by digest,
//! with a per-basename index for digests that have many origins (empty files, common stubs).

use std::collections::HashMap;

use sa_cas::Digest;

use crate::model::{Origin, OriginKind, compare_for};

/// Lists longer than this get a per-basename index.
const NAME_INDEX_THRESHOLD: usize = 8;

/// The origins of one digest, sorted by [`Origin`]'s order.
#[derive(Debug, Default)]
pub struct Candidates {
    ids: Vec<u32>,
    has_action: bool,
    by_name: Option<HashMap<String, Vec<u32>>>,
}

impl Candidates {
    /// Whether any candidate is an ACTION origin (its choice then depends on the consumer).
    pub fn has_action(&self) -> bool {
        self.has_action
    }
}

/// Origins by digest: what [`crate::generate`] attributes input files with. Public for the
/// benchmarks of its build and lookups.
#[derive(Debug, Default)]
pub struct OriginIndex {
    origins: Vec<Origin>,
    by_digest: HashMap<Digest, Candidates>,
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl OriginIndex {
    /// Builds the index from `(digest, origin)` pairs (duplicates are merged).
    pub fn build(entries: Vec<(Digest, Origin)>) -> OriginIndex {
        let mut entries = entries;
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        entries.dedup();
        let mut origins = Vec::with_capacity(entries.len());
        let mut by_digest: HashMap<Digest, Candidates> = HashMap::new();
        for (digest, origin) in entries {
            let id = u32::try_from(origins.len()).expect("fewer than 2^32 origins");
            let candidates = by_digest.entry(digest).or_default();
            candidates.has_action |= origin.kind == OriginKind::Action;
            candidates.ids.push(id);
            origins.push(origin);
        }
        for candidates in by_digest.values_mut() {
            if candidates.ids.len() > NAME_INDEX_THRESHOLD {
                let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
                for &id in &candidates.ids {
                    by_name
                        .entry(basename(&origins[id as usize].path).to_owned())
                        .or_default()
                        .push(id);
                }
                candidates.by_name = Some(by_name);
            }
        }
        OriginIndex { origins, by_digest }
    }

    /// The origin with id `id` (from [`OriginIndex::select`]).
    pub fn origin(&self, id: u32) -> &Origin {
        &self.origins[id as usize]
    }

    /// The origins of `digest`, if it has any.
    pub fn candidates(&self, digest: &Digest) -> Option<&Candidates> {
        self.by_digest.get(digest)
    }

    /// How many distinct origins are indexed.
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// The best allowed candidate for an occurrence at `path`: the same answer as
    /// [`crate::model::choose`] over the allowed candidates, found faster for digests with
    /// many origins: only candidates with the occurrence's basename can share a component.
    pub fn select(
        &self,
        path: &str,
        candidates: &Candidates,
        allowed: impl Fn(&Origin) -> bool,
    ) -> Option<u32> {
        let best_of = |ids: &[u32]| {
            ids.iter()
                .copied()
                .filter(|&id| allowed(self.origin(id)))
                .min_by(|&a, &b| compare_for(path, self.origin(a), self.origin(b)))
        };
        if let Some(by_name) = &candidates.by_name {
            // A candidate with the same basename shares at least one component, which beats
            // every candidate with another basename; without one, none shares any.
            if let Some(id) = by_name.get(basename(path)).and_then(|ids| best_of(ids)) {
                return Some(id);
            }
        }
        best_of(&candidates.ids)
    }
}
