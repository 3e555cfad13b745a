//! Planning an element: its actions index (trusted from the graph, checked from the
//! ActionCache, or built from the blob), the overlays resolved ahead, the actions an overlay
//! may change (only their Actions and input trees are read), and the waves they run in.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use bytes::Bytes;
use rayon::prelude::*;
use sa_cas::merkle::{self, Forest};
use sa_cas::{CasError, DecodedAction, Digest, Store};
use sa_generator::actions_index::{IndexError, Lookup};
use sa_generator::{ActionsIndex, IndexedAction, InputSkeleton, Progress};

use super::error::StoreStep;
use super::resolve::Effect;
use super::{
    ElementWork, IndexStats, InstantiateError, InstantiatedAction, Instantiator, Overlays,
    Resolutions,
};

/// What [`Instantiator::fetch_on_the_way`] read: the directories on the way to a change,
/// decoded and as bytes (each is spliced), and the skeleton that named them.
pub(super) struct OnTheWay {
    pub(super) forest: Forest,
    pub(super) raw: Vec<(Digest, Bytes)>,
    pub(super) skeleton: InputSkeleton,
}

pub(super) struct Planned {
    pub(super) base: Digest,
    /// Overlay ids (into the element's interned overlays), sorted by target digest then id:
    /// each id names its target, so runs of equal targets are the groups (4 bytes an overlay,
    /// where a map per action cost a hundred on large elements).
    pub(super) overlay_ids: Vec<u32>,
    /// The input root and the Action blob; `None` for an action no overlay can change (see
    /// [`Instantiator::resolve_ahead`]), whose Action and tree are never read.
    pub(super) tree: Option<(Digest, Bytes)>,
    /// Producers (base digests) of this element this action waits for.
    pub(super) producers: Vec<usize>,
}

/// The wave of each action: one more than the latest wave of the producers it waits for
/// (`producers[i]`, positions in the same list; an action naming itself is ignored), whatever
/// their order in the blob (a generator writes producers first, but nothing read from a store
/// is taken on trust). Actions in a cycle, or waiting on one, go to one wave after all the
/// others, where their producers have no result; returns the levels and how many that is.
fn wave_levels(producers: &[&[usize]]) -> (Vec<usize>, usize) {
    let n = producers.len();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting = vec![0usize; n];
    for (i, list) in producers.iter().enumerate() {
        let mut distinct: Vec<usize> = list.iter().copied().filter(|&p| p != i && p < n).collect();
        distinct.sort_unstable();
        distinct.dedup();
        waiting[i] = distinct.len();
        for p in distinct {
            consumers[p].push(i);
        }
    }
    let mut level = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut placed = 0;
    while let Some(i) = ready.pop() {
        placed += 1;
        for &c in &consumers[i] {
            level[c] = level[c].max(level[i] + 1);
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push(c);
            }
        }
    }
    let last = level.iter().copied().max().map_or(0, |m| m + 1);
    for i in (0..n).filter(|&i| waiting[i] > 0) {
        level[i] = last;
    }
    (level, n - placed)
}

impl<'s, S: Store + ?Sized> Instantiator<'s, S> {
    /// The element's `SpeculativeActions` as an [`ActionsIndex`]: the stored one (with
    /// [`InstantiateConfig::index`]), or one decoded from the blob, one action at a time (a large
    /// element's blob holds millions of overlays), then stored for the next run.
    pub(super) fn actions_index(
        &self,
        element: &str,
        speculative_actions: &Digest,
    ) -> Result<ActionsIndex, InstantiateError> {
        let function = self.store.digest_function();
        let sa_error = |source| InstantiateError::SpeculativeActions {
            element: element.into(),
            digest: *speculative_actions,
            source: Box::new(source),
        };
        let store_error = |step, source| InstantiateError::Store {
            element: element.into(),
            step: Box::new(step),
            source: Box::new(source),
        };
        let mut rebuilding = false;
        let mut blob = None;
        if self.config.index {
            let named = self
                .elements
                .get(element)
                .filter(|state| state.previous_speculative_actions == Some(*speculative_actions))
                .and_then(|state| state.previous_actions_index);
            let lookup = match named {
                // The graph binds it to the blob: used as it is.
                Some(index) => ActionsIndex::load_named(self.store, speculative_actions, &index),
                // Whoever can write the ActionCache chooses this one: checked against the blob.
                None => ActionsIndex::load(self.store, speculative_actions),
            }
            .map_err(|source| store_error(StoreStep::LookingUpIndex, source))?;
            let lookup = match (lookup, named) {
                (Lookup::Found(index), None) => {
                    let data = self.store.read_blob(speculative_actions).map_err(sa_error)?;
                    let checked = index.check_against(function, &data);
                    blob = Some(data);
                    match checked {
                        Ok(()) => Lookup::Found(index),
                        Err(reason) => Lookup::Invalid(format!(
                            "the actions index in the ActionCache for {speculative_actions} does \
                             not match the blob: {reason}"
                        )),
                    }
                }
                (lookup, _) => lookup,
            };
            match lookup {
                Lookup::Found(index) => {
                    self.count_index(|stats| stats.loaded += 1);
                    return Ok(index);
                }
                Lookup::Missing => {}
                Lookup::Invalid(reason) => {
                    tracing::warn!("element {element:?}: {reason}; rebuilding it");
                    rebuilding = true;
                }
            }
        }
        let blob = match blob {
            Some(blob) => blob,
            None => self.store.read_blob(speculative_actions).map_err(sa_error)?,
        };
        let index = ActionsIndex::from_speculative_actions(function, *speculative_actions, &blob)
            .map_err(|err| match err {
            IndexError::Decode(source) => sa_error(CasError::Decode {
                what: "SpeculativeActions",
                digest: *speculative_actions,
                source,
            }),
            IndexError::Base { source, .. } => sa_error(*source),
            IndexError::Overlay { action, index, source } => {
                InstantiateError::Overlay { element: element.into(), action, index, source }
            }
        })?;
        if self.config.index {
            index
                .store(self.store)
                .map_err(|source| store_error(StoreStep::StoringIndex, source))?;
            self.count_index(
                |stats| if rebuilding { stats.rebuilt += 1 } else { stats.built += 1 },
            );
        }
        Ok(index)
    }

    pub(super) fn count_index(&self, count: impl FnOnce(&mut IndexStats)) {
        count(&mut self.index_stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Resolves, before any tree is read, every overlay that does not wait for a producer of
    /// this element (those resolve in [`Instantiator::run_waves`], after their producer). An
    /// action none of whose overlays replaces a digest, and none waiting, is then known to be
    /// unchanged: [`Instantiator::plan`] reads neither its Action nor its input tree, so a
    /// one-file edit costs what the actions holding that file cost.
    pub(super) fn resolve_ahead(
        &self,
        element: &str,
        overlays: &Overlays,
        actions: &[IndexedAction],
    ) -> Result<Resolutions, InstantiateError> {
        let bases: HashSet<Digest> = actions.iter().map(|a| a.base).collect();
        let resolutions: Resolutions = (0..overlays.len()).map(|_| OnceLock::new()).collect();
        let outcomes: Vec<Result<(), InstantiateError>> = overlays
            .par_iter()
            .zip(&resolutions)
            .map(|((origin, target), cell)| {
                if origin.producer.is_some_and(|p| bases.contains(&p)) {
                    return Ok(());
                }
                let resolution = self.resolve(element, origin, target, 0)?;
                let _ = cell.set(resolution);
                Ok(())
            })
            .collect();
        outcomes.into_iter().collect::<Result<(), _>>()?;
        Ok(resolutions)
    }

    /// Each action's sorted overlay ids and the producers it waits for; and, for an action an
    /// overlay may change, its base Action (read in batches) and input root.
    pub(super) fn plan(
        &self,
        element: &str,
        overlays: &Overlays,
        actions: Vec<IndexedAction>,
        effects: &[Effect],
    ) -> Result<Vec<Planned>, InstantiateError> {
        let may_change = |action: &IndexedAction| {
            action.overlays.iter().any(|&id| effects[id as usize].may_change())
        };
        let changing: Vec<bool> = actions.par_iter().map(may_change).collect();
        let to_read: Vec<Digest> =
            actions.iter().zip(&changing).filter(|(_, c)| **c).map(|(a, _)| a.base).collect();
        let mut raws = merkle::read_each(self.store, &to_read).into_iter();
        let position: HashMap<Digest, usize> =
            actions.iter().enumerate().map(|(i, a)| (a.base, i)).collect();
        let mut planned = Vec::with_capacity(actions.len());
        for (action, changing) in actions.into_iter().zip(changing) {
            // Ascending ids are already in (target, id) order: the index's table is sorted by
            // target first.
            let IndexedAction { base, overlays: overlay_ids } = action;
            debug_assert!(overlay_ids.windows(2).all(|w| {
                (overlays[w[0] as usize].1, w[0]) < (overlays[w[1] as usize].1, w[1])
            }));
            let mut producers: Vec<usize> = overlay_ids
                .iter()
                .filter_map(|id| overlays[*id as usize].0.producer)
                .filter_map(|p| position.get(&p).copied())
                .collect();
            producers.sort_unstable();
            producers.dedup();
            let tree = if changing {
                let raw = raws.next().expect("one read per action that may change");
                Some(self.input_root(element, &base, raw)?)
            } else {
                None
            };
            planned.push(Planned { base, overlay_ids, tree, producers });
        }
        Ok(planned)
    }

    /// An Action read for rewriting: its input root and its bytes.
    pub(super) fn input_root(
        &self,
        element: &str,
        base: &Digest,
        raw: Result<Bytes, CasError>,
    ) -> Result<(Digest, Bytes), InstantiateError> {
        let action_error = |source| InstantiateError::Action {
            element: element.into(),
            action: *base,
            source: Box::new(source),
        };
        let raw = raw.map_err(action_error)?;
        let root = DecodedAction::decode(self.store.digest_function(), base, raw.clone())
            .map_err(action_error)?
            .input_root;
        Ok((root, raw))
    }

    /// Every input tree of the element's actions, fetched at once, and bounded: each action's
    /// rewrite may walk its whole input root, so the total over the element's actions, and over
    /// the run (each element counted once, whatever the waves), is checked.
    pub(super) fn fetch_input_trees(
        &self,
        element: &str,
        planned: &[Planned],
    ) -> Result<Forest, InstantiateError> {
        let read: Vec<(&Planned, Digest)> =
            planned.iter().filter_map(|p| p.tree.as_ref().map(|(root, _)| (p, *root))).collect();
        let roots: Vec<Digest> = read.iter().map(|(_, root)| *root).collect();
        let fetched = merkle::fetch_forest_partial(self.store, &roots, &self.config.limits)
            .map_err(|source| InstantiateError::Store {
                element: element.into(),
                step: Box::new(StoreStep::FetchingInputTrees),
                source: Box::new(source),
            })?;
        if let Some((position, source)) = fetched.broken.into_iter().next() {
            let base = read[position].0.base;
            return Err(InstantiateError::Action {
                element: element.into(),
                action: base,
                source: Box::new(source.context(format!("input root of Action {base}"))),
            });
        }
        let forest = fetched.forest;
        let expanded =
            roots.iter().fold(0u64, |sum, root| sum.saturating_add(forest.expansion(root).entries));
        let run_total = {
            let mut counted = self.expanded.lock().unwrap_or_else(|e| e.into_inner());
            counted.insert(element.to_owned(), expanded);
            counted.values().fold(0u64, |sum, n| sum.saturating_add(*n))
        };
        let describe =
            || format!("the input roots of element {element:?} ({} actions)", roots.len());
        self.config
            .limits
            .check_expanded(expanded, describe)
            .and_then(|()| {
                self.config.limits.check_expanded(run_total, || {
                    format!("the input roots of this run's elements (up to {element:?})")
                })
            })
            .map_err(|source| InstantiateError::Store {
                element: element.into(),
                step: Box::new(StoreStep::FetchingInputTrees),
                source: Box::new(source),
            })?;
        Ok(forest)
    }

    /// With the [`InputSkeleton`] the generator wrote (`skeleton`, named by a trusted index):
    /// only the directories on the way to a digest that may change, fetched alone, and the
    /// skeleton; `None` (the trees are then fetched whole) when the store lacks the skeleton
    /// or it does not hold a changing action's input root.
    pub(super) fn fetch_on_the_way(
        &self,
        element: &str,
        skeleton: &Digest,
        overlays: &Overlays,
        effects: &[Effect],
        planned: &[Planned],
    ) -> Result<Option<OnTheWay>, InstantiateError> {
        let store_error = |step, source| InstantiateError::Store {
            element: element.into(),
            step: Box::new(step),
            source: Box::new(source),
        };
        let digest = *skeleton;
        let started = std::time::Instant::now();
        let skeleton = match InputSkeleton::load(self.store, &digest, &self.config.limits) {
            Ok(skeleton) => skeleton,
            // A cache the store may have evicted (as an LRU store does): the trees, whole.
            Err(CasError::NotFound(_)) => {
                tracing::warn!(
                    "element {element:?}: the input skeleton {digest} is not in the store; \
                     fetching the input trees whole"
                );
                return Ok(None);
            }
            Err(source) => return Err(store_error(StoreStep::ReadingSkeleton(digest), source)),
        };
        tracing::debug!(
            element,
            "instantiate: read the input skeleton: {:.3}s",
            started.elapsed().as_secs_f64()
        );
        let roots = planned.iter().filter_map(|p| p.tree.as_ref().map(|(root, _)| root));
        if let Some(root) = roots.clone().find(|root| skeleton.id(root).is_none()) {
            tracing::warn!(
                "element {element:?}: the input skeleton {digest} does not hold the input root \
                 {root}; fetching the input trees whole"
            );
            return Ok(None);
        }
        let changing = overlays
            .iter()
            .zip(effects)
            .filter(|(_, effect)| effect.may_change())
            .map(|((_, target), _)| target);
        let wanted: Vec<Digest> =
            skeleton.ancestors(changing).into_iter().map(|id| *skeleton.directory(id)).collect();
        tracing::debug!(
            "element {element:?}: {} of the {} directories of its input trees are on the way to \
             a change",
            wanted.len(),
            skeleton.len()
        );
        let (forest, raw) = merkle::fetch_directories(self.store, &wanted, &self.config.limits)
            .map_err(|source| store_error(StoreStep::FetchingInputTrees, source))?;
        Ok(Some(OnTheWay { forest, raw, skeleton }))
    }

    /// Rewrites the actions in waves: an action runs after the producers it names (ACTION
    /// overlays) have run; each wave's blobs are stored before the next.
    pub(super) fn run_waves(
        &self,
        element: &str,
        work: &ElementWork<'_>,
        planned: &[Planned],
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Vec<InstantiatedAction>, InstantiateError> {
        let producers: Vec<&[usize]> = planned.iter().map(|p| p.producers.as_slice()).collect();
        let (level, in_cycles) = wave_levels(&producers);
        if in_cycles > 0 {
            // Only a blob no generator wrote has a cycle of ACTION overlays: its actions run
            // last, where their producers have no result, and are reported incomplete.
            tracing::warn!(
                "element {element:?}: {in_cycles} actions wait for each other (a cycle of ACTION \
                 overlays): they cannot be instantiated"
            );
        }
        let waves = level.iter().copied().max().map_or(0, |m| m + 1);
        let mut outcomes: Vec<Option<InstantiatedAction>> = vec![None; planned.len()];
        for wave in 0..waves {
            let members: Vec<usize> = (0..planned.len()).filter(|&i| level[i] == wave).collect();
            let results: Vec<Result<InstantiatedAction, InstantiateError>> = members
                .par_iter()
                .map(|&i| {
                    let outcome = self.instantiate_one(element, work, &planned[i]);
                    progress(Progress::Done(1));
                    outcome
                })
                .collect();
            self.flush(element, work)?;
            for (&i, result) in members.iter().zip(results) {
                let outcome = result?;
                if outcome.complete {
                    self.instantiated.insert(outcome.base, outcome.action);
                }
                outcomes[i] = Some(outcome);
            }
        }
        Ok(outcomes.into_iter().map(|o| o.expect("every action is in one wave")).collect())
    }

    /// Writes the blobs the element's rewrites produced that the store lacks.
    pub(super) fn flush(
        &self,
        element: &str,
        work: &ElementWork<'_>,
    ) -> Result<(), InstantiateError> {
        let mut blobs =
            std::mem::take(&mut *work.written.lock().expect("no panics while holding the lock"));
        if blobs.is_empty() {
            return Ok(());
        }
        blobs.sort_unstable_by(|a, b| a.digest().cmp(b.digest()));
        blobs.dedup_by(|a, b| a.digest() == b.digest());
        let store_error = |source| InstantiateError::Store {
            element: element.into(),
            step: Box::new(StoreStep::StoringActions),
            source: Box::new(source),
        };
        let digests: Vec<Digest> = blobs.iter().map(|b| *b.digest()).collect();
        let missing: HashSet<Digest> =
            self.store.find_missing(&digests).map_err(store_error)?.into_iter().collect();
        blobs.retain(|b| missing.contains(b.digest()));
        merkle::write_in_batches(self.store, &blobs).map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::wave_levels;

    #[test]
    fn waves_follow_producers_whatever_their_order_in_the_blob() {
        // A chain written consumer first: 0 waits for 1, 1 for 2.
        assert_eq!(wave_levels(&[&[1], &[2], &[]]), (vec![2, 1, 0], 0));
        // Producers first (what a generator writes), self-references ignored.
        assert_eq!(wave_levels(&[&[], &[0, 1], &[0, 1, 1]]), (vec![0, 1, 2], 0));
        // Independent actions share the first wave.
        assert_eq!(wave_levels(&[&[], &[], &[]]), (vec![0, 0, 0], 0));
    }

    #[test]
    fn actions_in_or_behind_a_cycle_go_last_and_are_counted() {
        // 0 and 1 wait for each other, 2 waits for 1, 3 is free.
        let (levels, in_cycles) = wave_levels(&[&[1], &[0], &[1], &[]]);
        assert_eq!(in_cycles, 3);
        assert_eq!(levels, vec![1, 1, 1, 0]);
        // Out-of-range positions are ignored, not a panic.
        assert_eq!(wave_levels(&[&[7]]), (vec![0], 0));
    }
}
