//! The origin index: every file of every origin tree and every subaction output, by digest,
//! with a suffix trie for digests that have many origins (empty files, common stubs), so a
//! digest with N origins and N occurrences costs O(N × path depth), not O(N²).

use std::collections::HashMap;

use sa_cas::Digest;

use crate::model::{Origin, OriginKind, SuffixChooser, compare_for, overlay_order};

/// Lists longer than this get a suffix trie.
const TRIE_THRESHOLD: usize = 8;

/// The origins of one digest, sorted by [`Origin`]'s order.
#[derive(Debug, Default)]
pub struct Candidates {
    ids: Vec<u32>,
    has_action: bool,
    trie: Option<SuffixChooser>,
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
    digests: Vec<Digest>,
    /// Each origin's position in [`overlay_order`] (with its own digest as the target).
    ranks: Vec<u32>,
    /// foldhash: one lookup per input file reference (millions), keyed by digests.
    by_digest: HashMap<Digest, Candidates, foldhash::fast::RandomState>,
}

impl OriginIndex {
    /// Builds the index from `(digest, origin)` pairs (duplicates are merged).
    pub fn build(entries: Vec<(Digest, Origin)>) -> OriginIndex {
        let mut entries = entries;
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        entries.dedup();
        let mut origins = Vec::with_capacity(entries.len());
        let mut digests = Vec::with_capacity(entries.len());
        let mut by_digest: HashMap<Digest, Candidates, _> = HashMap::default();
        for (digest, origin) in entries {
            let id = u32::try_from(origins.len()).expect("fewer than 2^32 origins");
            let candidates = by_digest.entry(digest).or_default();
            candidates.has_action |= origin.kind == OriginKind::Action;
            candidates.ids.push(id);
            origins.push(origin);
            digests.push(digest);
        }
        for candidates in by_digest.values_mut() {
            if candidates.ids.len() > TRIE_THRESHOLD {
                candidates.trie =
                    Some(SuffixChooser::build(&candidates.ids, |id| &origins[id as usize]));
            }
        }
        let mut order: Vec<u32> = (0..origins.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let key = |id: u32| (digests[id as usize], &origins[id as usize]);
            overlay_order(&key(a), &key(b))
        });
        let mut ranks = vec![0u32; order.len()];
        for (rank, id) in order.into_iter().enumerate() {
            ranks[id as usize] = rank as u32;
        }
        OriginIndex { origins, digests, ranks, by_digest }
    }

    /// The origin with id `id` (from [`OriginIndex::select`]).
    pub fn origin(&self, id: u32) -> &Origin {
        &self.origins[id as usize]
    }

    /// The position of the overlay of origin `id` (targeting its own digest) in
    /// [`overlay_order`]: sorting by it sorts by that order without comparing strings.
    pub fn rank(&self, id: u32) -> u32 {
        self.ranks[id as usize]
    }

    /// The digest of the origin with id `id`.
    pub fn digest(&self, id: u32) -> &Digest {
        &self.digests[id as usize]
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
    /// [`crate::model::choose`] over the allowed candidates, found in time proportional to the
    /// path's depth for digests with many origins (the best of all candidates, when it is
    /// allowed, is the best allowed one). Only an ACTION origin can be disallowed (a producer
    /// that runs later); when the best one is, the candidates are compared one by one.
    pub fn select(
        &self,
        path: &str,
        candidates: &Candidates,
        allowed: impl Fn(&Origin) -> bool,
    ) -> Option<u32> {
        if let Some(trie) = &candidates.trie {
            let best = trie.best(path);
            if allowed(self.origin(best)) {
                return Some(best);
            }
        }
        candidates
            .ids
            .iter()
            .copied()
            .filter(|&id| allowed(self.origin(id)))
            .min_by(|&a, &b| compare_for(path, self.origin(a), self.origin(b)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sa_cas::DigestFunction;

    use super::*;
    use crate::model::choose;

    /// Paths from a small vocabulary, so that many share suffixes and basenames.
    fn path() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("__init__.py")], 1..5)
            .prop_map(|parts| parts.join("/"))
    }

    fn origin() -> impl Strategy<Value = Origin> {
        let kind = prop_oneof![
            Just(OriginKind::Source),
            Just(OriginKind::Action),
            Just(OriginKind::Artifact)
        ];
        (kind, prop_oneof![Just(""), Just("d")], path(), 0u8..3).prop_map(
            |(kind, element, path, producer)| Origin {
                kind,
                element: element.into(),
                path,
                producer: (kind == OriginKind::Action)
                    .then(|| DigestFunction::Sha256.hash_bytes(&[producer])),
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The trie's answer is the rule's, for every occurrence path and with producers
        /// disallowed at random.
        #[test]
        fn select_is_choose_over_the_allowed_candidates(
            origins in proptest::collection::vec(origin(), 1..40),
            paths in proptest::collection::vec(path(), 1..8),
            refused in 0u8..4,
        ) {
            let digest = DigestFunction::Sha256.hash_bytes(b"same content");
            let index = OriginIndex::build(origins.iter().map(|o| (digest, o.clone())).collect());
            let candidates = index.candidates(&digest).expect("every origin is indexed");
            let refused = DigestFunction::Sha256.hash_bytes(&[refused]);
            let allowed = |o: &Origin| o.producer != Some(refused);
            for path in &paths {
                let expected = choose(path, origins.iter().filter(|o| allowed(o)));
                let selected = index.select(path, candidates, allowed).map(|id| index.origin(id));
                prop_assert_eq!(selected, expected, "occurrence {}", path);
            }
        }
    }
}
