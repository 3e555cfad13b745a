//! Rewriting input trees: only directories on the way to a changing digest are read and
//! spliced, memoized by (directory, path, overlay groups), so equal subtrees are shared.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet as StdHashSet};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use dashmap::DashMap as StdDashMap;
use sa_cas::merkle::{DirEntry, Forest, join};
use sa_cas::{Blob, CasError, Digest, Store};
use sa_generator::InputSkeleton;
use sa_generator::model::{Origin, SuffixChooser, compare_for};

use super::resolve::Effect;
use super::{
    InstantiateError, InstantiatedAction, Instantiator, Overlays, Planned, Resolution, Resolutions,
    RewriteError,
};
use crate::splice;

/// The rewrite's maps are keyed by digests, names and ids, looked up per directory entry on
/// the way to a change: foldhash (seeded per process), not SipHash.
type Fast = foldhash::fast::RandomState;
type HashMap<K, V> = StdHashMap<K, V, Fast>;
type HashSet<K> = StdHashSet<K, Fast>;
type DashMap<K, V> = StdDashMap<K, V, Fast>;

/// A rewritten subtree: the directory, its path, and the action's replacement choices for the
/// changing digests it holds (target, overlay ids). Equal keys rewrite to equal digests.
/// A rewritten directory is shared between actions when its digest, its path and the overlay
/// groups of the changing digests below it are the same.
pub(super) type MemoKey = (Digest, String, Vec<(Digest, u32)>);

/// One action's overlays for one target digest (sorted ids), interned per element so that
/// equal groups share an id (the memo key) and a chooser.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) id: u32,
    /// The same allocation as the group's key in [`ElementWork`]'s interner.
    pub(super) ids: Arc<[u32]>,
    pub(super) chooser: OnceLock<SuffixChooser>,
}

/// Groups with more overlays than this choose through a [`SuffixChooser`].
pub(super) const CHOOSER_THRESHOLD: usize = 8;

/// What one action's rewrite replaces: each changing target with its overlay group, and the
/// changing targets below the input root (in target order, with their groups). Each directory's
/// own list is its parent's, filtered: see [`Instantiator::rewrite`].
pub(super) struct Changes {
    pub(super) groups: HashMap<Digest, Arc<Group>>,
    pub(super) at_root: Vec<(Digest, u32)>,
}

/// What one element's rewrite shares between its actions.
pub(super) struct ElementWork<'f> {
    pub(super) forest: &'f Forest,
    pub(super) overlays: Vec<(Origin, Digest)>,
    pub(super) resolutions: Vec<OnceLock<Resolution>>,
    /// What each overlay's resolution known before the waves does (see [`Effect`]).
    pub(super) effects: Vec<Effect>,
    /// Which directory holds which, and which directories hold each file digest: the
    /// [`InputSkeleton`] the generator wrote (then only the directories on the way to a
    /// changing digest were fetched), or that of the fetched trees. Directories have dense ids
    /// (4 bytes where a digest takes 48: a large element's trees hold millions of entries).
    pub(super) shape: Cow<'f, InputSkeleton>,
    /// Changing digest → ids of every directory whose subtree holds it, sorted.
    pub(super) ancestors: DashMap<Digest, Arc<Vec<u32>>>,
    pub(super) raw_dirs: DashMap<Digest, Bytes>,
    pub(super) memo: DashMap<MemoKey, Digest>,
    pub(super) groups: DashMap<Arc<[u32]>, Arc<Group>>,
    pub(super) next_group: std::sync::atomic::AtomicU32,
    pub(super) written: Mutex<Vec<Blob>>,
}

impl<'s, S: Store + ?Sized> Instantiator<'s, S> {
    pub(super) fn instantiate_one(
        &self,
        element: &str,
        work: &ElementWork<'_>,
        planned: &Planned,
    ) -> Result<InstantiatedAction, InstantiateError> {
        let (mut outcome, changing) = self.resolve_overlays(element, work, planned)?;
        if changing.is_empty() {
            return Ok(outcome);
        }
        let action_error = |source: CasError| InstantiateError::Action {
            element: element.into(),
            action: planned.base,
            source: Box::new(source),
        };
        let Some((base_root, raw)) = &planned.tree else {
            return Err(InstantiateError::InvalidInput(format!(
                "action {} of element {element:?} was planned unchanged but an overlay changes it",
                planned.base
            )));
        };
        let changes = work.changes(&changing, base_root);
        let root = self
            .rewrite(work, &changes, base_root, String::new(), changes.at_root.clone())
            .map_err(|e| match e {
                RewriteError::Store(source) => InstantiateError::Action {
                    element: element.into(),
                    action: planned.base,
                    source,
                },
                RewriteError::Splice(directory, reason) => action_error(
                    CasError::Malformed { what: "Directory", digest: directory, reason }
                        .context(format!("input root {base_root}")),
                ),
            })?;
        if root == *base_root {
            return Ok(outcome);
        }
        let action = splice::rewrite_action(raw, &root).map_err(|reason| {
            action_error(CasError::Malformed { what: "Action", digest: planned.base, reason })
        })?;
        let blob = Blob::new(self.store.digest_function(), action);
        outcome.action = *blob.digest();
        work.written.lock().expect("no panics while holding the lock").push(blob);
        Ok(outcome)
    }

    /// The digest of directory `digest` at `path` after the action's replacements.
    ///
    /// `signature` is the changing targets this subtree holds, with their overlay groups (the
    /// memo key with the digest and path); each child's is computed from it, per target by
    /// whichever is smaller, the target's ancestor set or this directory's children, so the
    /// cost follows what changes, not the product of changes and directories.
    pub(super) fn rewrite(
        &self,
        work: &ElementWork<'_>,
        changes: &Changes,
        digest: &Digest,
        path: String,
        signature: Vec<(Digest, u32)>,
    ) -> Result<Digest, RewriteError> {
        if signature.is_empty() {
            return Ok(*digest);
        }
        let key = (*digest, path, signature);
        if self.config.memoize
            && let Some(done) = work.memo.get(&key)
        {
            return Ok(*done);
        }
        let (digest, path, signature) = key;
        let function = digest.function();
        // Every directory on the way to a changing digest was fetched; a shape that says
        // otherwise is an error, never a panic.
        let directory = work
            .forest
            .get(&digest)
            .ok_or_else(|| RewriteError::Store(Box::new(CasError::NotFound(digest))))?;
        let mut files: HashMap<&str, Digest> = HashMap::default();
        for file in &directory.files {
            let old = file.digest;
            if let Some(group) = changes.groups.get(&old) {
                let chosen = work.choose(group, &join(&path, &file.name));
                if let Some(Resolution::Replace(new)) = work.resolutions[chosen as usize].get()
                    && *new != old
                {
                    files.insert(&*file.name, *new);
                }
            }
        }
        let mut dirs: HashMap<&str, Digest> = HashMap::default();
        let below = work.child_signatures(&directory.directories, &signature);
        for (dir, child_signature) in directory.directories.iter().zip(below) {
            let old = dir.digest;
            let new = self.rewrite(work, changes, &old, join(&path, &dir.name), child_signature)?;
            if new != old {
                dirs.insert(&*dir.name, new);
            }
        }
        let result = if files.is_empty() && dirs.is_empty() {
            digest
        } else {
            let raw = work.raw_directory(self.store, &digest).map_err(RewriteError::Store)?;
            let bytes = splice::rewrite_directory(
                &raw,
                |n| files.get(n).copied(),
                |n| dirs.get(n).copied(),
            )
            .map_err(|reason| RewriteError::Splice(digest, reason))?;
            let blob = Blob::new(function, bytes);
            let new = *blob.digest();
            work.written.lock().expect("no panics while holding the lock").push(blob);
            new
        };
        if self.config.memoize {
            work.memo.insert((digest, path, signature), result);
        }
        Ok(result)
    }
}

impl<'f> ElementWork<'f> {
    /// The work of an element whose input trees were fetched whole (`skeleton: None`), or
    /// only on the way to the digests that may change (their shape in `skeleton`, their bytes
    /// in `raw`, spliced without reading them again).
    pub(super) fn new(
        forest: &'f Forest,
        overlays: Overlays,
        resolutions: Resolutions,
        effects: Vec<Effect>,
        skeleton: Option<&'f InputSkeleton>,
        raw: Vec<(Digest, Bytes)>,
    ) -> Self {
        let shape = match skeleton {
            Some(skeleton) => Cow::Borrowed(skeleton),
            None => Cow::Owned(InputSkeleton::of_forest(forest)),
        };
        ElementWork {
            forest,
            overlays,
            resolutions,
            effects,
            shape,
            ancestors: DashMap::default(),
            raw_dirs: raw.into_iter().collect(),
            memo: DashMap::default(),
            groups: DashMap::default(),
            next_group: std::sync::atomic::AtomicU32::new(0),
            written: Mutex::new(Vec::new()),
        }
    }
}

impl ElementWork<'_> {
    /// An action's changes: each changing target's overlay group (interned), and those its
    /// input root holds.
    pub(super) fn changes(&self, changing: &BTreeMap<Digest, &[u32]>, root: &Digest) -> Changes {
        let mut groups = HashMap::with_capacity_and_hasher(changing.len(), Fast::default());
        let mut at_root = Vec::new();
        for (target, ids) in changing {
            let group = self.intern(ids);
            if self
                .shape
                .id(root)
                .is_some_and(|id| self.ancestors_of(target).binary_search(&id).is_ok())
            {
                at_root.push((*target, group.id));
            }
            groups.insert(*target, group);
        }
        Changes { groups, at_root }
    }

    /// The signature of each of `children` (see [`Instantiator::rewrite`]) from their parent's,
    /// in target order: a target goes to the children in its ancestor set, found by walking the
    /// smaller of that set and the children.
    pub(super) fn child_signatures(
        &self,
        children: &[DirEntry],
        signature: &[(Digest, u32)],
    ) -> Vec<Vec<(Digest, u32)>> {
        let mut out = vec![Vec::new(); children.len()];
        if children.is_empty() {
            return out;
        }
        let ids: Vec<Option<u32>> =
            children.iter().map(|child| self.shape.id(&child.digest)).collect();
        let mut positions: HashMap<u32, Vec<usize>> =
            HashMap::with_capacity_and_hasher(children.len(), Fast::default());
        for (i, id) in ids.iter().enumerate() {
            if let Some(id) = id {
                positions.entry(*id).or_default().push(i);
            }
        }
        for &(target, group) in signature {
            let ancestors = self.ancestors_of(&target);
            if ancestors.len() < children.len() {
                for directory in ancestors.iter() {
                    for &i in positions.get(directory).into_iter().flatten() {
                        out[i].push((target, group));
                    }
                }
            } else {
                for (i, id) in ids.iter().enumerate() {
                    if id.is_some_and(|id| ancestors.binary_search(&id).is_ok()) {
                        out[i].push((target, group));
                    }
                }
            }
        }
        out
    }

    pub(super) fn intern(&self, ids: &[u32]) -> Arc<Group> {
        if let Some(group) = self.groups.get(ids) {
            return group.clone();
        }
        // Ids only tell groups apart (in memo keys): their order does not reach any output.
        let ids: Arc<[u32]> = ids.into();
        self.groups
            .entry(ids.clone())
            .or_insert_with(|| {
                let id = self.next_group.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Arc::new(Group { id, ids, chooser: OnceLock::new() })
            })
            .clone()
    }

    /// The overlay of `group` the rule picks for a file at `path`.
    pub(super) fn choose(&self, group: &Group, path: &str) -> u32 {
        let origin = |id: u32| &self.overlays[id as usize].0;
        if group.ids.len() > CHOOSER_THRESHOLD {
            let chooser = group.chooser.get_or_init(|| SuffixChooser::build(&group.ids, origin));
            return chooser.best(path);
        }
        *group
            .ids
            .iter()
            .min_by(|a, b| compare_for(path, origin(**a), origin(**b)))
            .expect("targets have overlays")
    }

    /// The ids of every directory whose subtree holds a file with this digest, sorted.
    pub(super) fn ancestors_of(&self, target: &Digest) -> Arc<Vec<u32>> {
        if let Some(found) = self.ancestors.get(target) {
            return found.clone();
        }
        let mut seen: HashSet<u32> = HashSet::default();
        let mut stack: Vec<u32> = self.shape.holders(target).to_vec();
        while let Some(dir) = stack.pop() {
            if seen.insert(dir) {
                stack.extend_from_slice(self.shape.parents(dir));
            }
        }
        let mut found: Vec<u32> = seen.into_iter().collect();
        found.sort_unstable();
        let found = Arc::new(found);
        self.ancestors.insert(*target, found.clone());
        found
    }

    pub(super) fn raw_directory<S: Store + ?Sized>(
        &self,
        store: &S,
        digest: &Digest,
    ) -> Result<Bytes, Box<CasError>> {
        if let Some(raw) = self.raw_dirs.get(digest) {
            return Ok(raw.clone());
        }
        let raw = store.read_blob(digest).map_err(Box::new)?;
        self.raw_dirs.insert(*digest, raw.clone());
        Ok(raw)
    }
}
