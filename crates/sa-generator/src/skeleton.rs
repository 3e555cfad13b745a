//! The input skeleton: the shape of one `SpeculativeActions` blob's input trees without
//! names (which directory holds which, which directories hold each file digest), so that an
//! instantiation finds the directories on the way to a changing file without reading the
//! trees, and reads only those.
//!
//! The generator writes it beside the [`ActionsIndex`](crate::ActionsIndex), which names it.
//! It cannot be checked without the trees it describes, so it is used only where the index is
//! trusted: named by the build graph `sa generate` wrote. A skeleton is still decoded as
//! untrusted bytes: every id in range, every list ascending, or it is refused, naming it.

use std::collections::{HashMap, HashSet};

use prost::Message;
use rayon::prelude::*;
use sa_cas::merkle::{Forest, TreeLimits};
use sa_cas::{Blob, CasError, Digest, DigestFunction, Store};
use sa_proto::sa::v1 as wire;

/// The shape of a set of input trees (see the module documentation). Directory ids are
/// positions in the ascending list of the trees' distinct directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputSkeleton {
    directories: Vec<Digest>,
    /// `parents[parent_offsets[id]..parent_offsets[id + 1]]`: the directories holding `id`.
    parent_offsets: Vec<u32>,
    parents: Vec<u32>,
    files: Vec<Digest>,
    /// `holders[holder_offsets[i]..holder_offsets[i + 1]]`: the directories holding file `i`.
    holder_offsets: Vec<u32>,
    holders: Vec<u32>,
}

impl InputSkeleton {
    /// The skeleton of the trees below `roots`, every directory of which `forest` holds.
    pub fn from_forest<'r>(
        forest: &Forest,
        roots: impl IntoIterator<Item = &'r Digest>,
    ) -> Result<InputSkeleton, CasError> {
        // (foldhash: a lookup per edge of every tree; seeded per process.)
        let mut seen: HashSet<Digest, _> =
            HashSet::with_hasher(foldhash::fast::RandomState::default());
        let mut stack: Vec<Digest> = Vec::new();
        for root in roots {
            if seen.insert(*root) {
                stack.push(*root);
            }
        }
        while let Some(digest) = stack.pop() {
            let directory = forest.get(&digest).ok_or(CasError::NotFound(digest))?;
            for child in &directory.directories {
                if seen.insert(child.digest) {
                    stack.push(child.digest);
                }
            }
        }
        Ok(InputSkeleton::of_directories(forest, seen.into_iter().collect()))
    }

    /// The skeleton of every tree `forest` holds whole.
    pub fn of_forest(forest: &Forest) -> InputSkeleton {
        InputSkeleton::of_directories(forest, forest.directories().keys().copied().collect())
    }

    /// The skeleton of `directories`, which `forest` holds with every directory below them.
    fn of_directories(forest: &Forest, mut directories: Vec<Digest>) -> InputSkeleton {
        directories.par_sort_unstable();
        let get = |digest: &Digest| forest.get(digest).expect("the forest holds it");
        // Distinct file digests, by dense id (a pair costs 8 bytes where a digest takes 48).
        // (foldhash: millions of lookups; seeded per process, as hashbrown's default.)
        let state = foldhash::fast::RandomState::default();
        let distinct: HashSet<Digest, _> = directories
            .par_iter()
            .fold(
                || HashSet::with_hasher(state),
                |mut set, digest| {
                    set.extend(get(digest).files.iter().map(|f| f.digest));
                    set
                },
            )
            .reduce(
                || HashSet::with_hasher(state),
                |mut a, b| {
                    a.extend(b);
                    a
                },
            );
        let mut files: Vec<Digest> = distinct.into_iter().collect();
        files.par_sort_unstable();
        let mut file_ids: HashMap<Digest, u32, _> =
            HashMap::with_capacity_and_hasher(files.len(), state);
        file_ids.extend(files.iter().enumerate().map(|(i, d)| (*d, i as u32)));
        // A map, not a binary search of the sorted list: on a million directories each step
        // of the search is a cache miss (on xlarge this step grew 11 to 19× for 10×).
        let mut dir_ids: HashMap<Digest, u32, _> =
            HashMap::with_capacity_and_hasher(directories.len(), state);
        dir_ids.extend(directories.iter().enumerate().map(|(i, d)| (*d, i as u32)));
        let dir_id = |digest: &Digest| *dir_ids.get(digest).expect("every child was seen");
        // Each directory's children and files, as ids.
        let held: Vec<(Vec<u32>, Vec<u32>)> = directories
            .par_iter()
            .map(|digest| {
                let directory = get(digest);
                let mut children: Vec<u32> =
                    directory.directories.iter().map(|d| dir_id(&d.digest)).collect();
                children.sort_unstable();
                children.dedup();
                let mut held: Vec<u32> =
                    directory.files.iter().map(|f| file_ids[&f.digest]).collect();
                held.sort_unstable();
                held.dedup();
                (children, held)
            })
            .collect();
        let (parent_offsets, parents) =
            invert(directories.len(), held.iter().map(|(children, _)| children.as_slice()));
        let (holder_offsets, holders) =
            invert(files.len(), held.iter().map(|(_, files)| files.as_slice()));
        InputSkeleton { directories, parent_offsets, parents, files, holder_offsets, holders }
    }

    /// How many distinct directories the trees have.
    pub fn len(&self) -> usize {
        self.directories.len()
    }

    /// Whether the trees have no directory.
    pub fn is_empty(&self) -> bool {
        self.directories.is_empty()
    }

    /// The id of directory `digest`, if the trees have it.
    pub fn id(&self, digest: &Digest) -> Option<u32> {
        self.directories.binary_search(digest).ok().map(|i| i as u32)
    }

    /// The directory with id `id`.
    pub fn directory(&self, id: u32) -> &Digest {
        &self.directories[id as usize]
    }

    /// The directories that hold directory `id`, ascending.
    pub fn parents(&self, id: u32) -> &[u32] {
        let id = id as usize;
        &self.parents[self.parent_offsets[id] as usize..self.parent_offsets[id + 1] as usize]
    }

    /// The directories that hold a file with this digest directly, ascending.
    pub fn holders(&self, file: &Digest) -> &[u32] {
        match self.files.binary_search(file) {
            Ok(i) => {
                &self.holders[self.holder_offsets[i] as usize..self.holder_offsets[i + 1] as usize]
            }
            Err(_) => &[],
        }
    }

    /// The ids of every directory whose subtree holds a file with one of these digests,
    /// ascending.
    pub fn ancestors<'d>(&self, files: impl IntoIterator<Item = &'d Digest>) -> Vec<u32> {
        let mut seen = vec![false; self.directories.len()];
        let mut stack: Vec<u32> =
            files.into_iter().flat_map(|f| self.holders(f)).copied().collect();
        while let Some(id) = stack.pop() {
            if !std::mem::replace(&mut seen[id as usize], true) {
                stack.extend_from_slice(self.parents(id));
            }
        }
        (0..self.directories.len() as u32).filter(|&id| seen[id as usize]).collect()
    }

    /// The skeleton as a blob.
    pub fn to_blob(&self, function: DigestFunction) -> Blob {
        fn deltas(offsets: &[u32], ids: &[u32]) -> Vec<u32> {
            let mut out = Vec::with_capacity(ids.len());
            for range in offsets.windows(2) {
                let mut previous = 0;
                for &id in &ids[range[0] as usize..range[1] as usize] {
                    out.push(id - previous);
                    previous = id;
                }
            }
            out
        }
        let counts = |offsets: &[u32]| offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let message = wire::InputSkeleton {
            directories: self.directories.iter().map(Digest::to_proto).collect(),
            parent_counts: counts(&self.parent_offsets),
            parent_deltas: deltas(&self.parent_offsets, &self.parents),
            files: self.files.iter().map(Digest::to_proto).collect(),
            holder_counts: counts(&self.holder_offsets),
            holder_deltas: deltas(&self.holder_offsets, &self.holders),
        };
        Blob::from_message(function, &message)
    }

    /// Reads the skeleton blob `digest`, checking everything (at most `limits.max_directories`
    /// directories); a skeleton that fails is an error naming it.
    pub fn load(
        store: &(impl Store + ?Sized),
        digest: &Digest,
        limits: &TreeLimits,
    ) -> Result<InputSkeleton, CasError> {
        let data = store.read_blob(digest)?;
        let malformed =
            |reason: String| CasError::Malformed { what: "InputSkeleton", digest: *digest, reason };
        let message = wire::InputSkeleton::decode(data).map_err(|source| CasError::Decode {
            what: "InputSkeleton",
            digest: *digest,
            source,
        })?;
        let function = store.digest_function();
        if message.directories.len() > limits.max_directories {
            return Err(malformed(format!(
                "more than {} directories ({})",
                limits.max_directories,
                message.directories.len()
            )));
        }
        let digests = |list: &[sa_proto::reapi::Digest], what: &str| {
            let mut out: Vec<Digest> = Vec::with_capacity(list.len());
            for (i, proto) in list.iter().enumerate() {
                let digest = Digest::from_proto(function, proto)
                    .map_err(|e| malformed(format!("{what} {i}: {e}")))?;
                if out.last().is_some_and(|last| *last >= digest) {
                    return Err(malformed(format!("{what} {i} is out of order")));
                }
                out.push(digest);
            }
            Ok(out)
        };
        let directories = digests(&message.directories, "directory")?;
        let files = digests(&message.files, "file")?;
        let n = directories.len() as u32;
        let lists = |counts: &[u32], deltas: &[u32], of: usize, what: &str| {
            if counts.len() != of {
                return Err(malformed(format!("{} {what} counts for {of} entries", counts.len())));
            }
            let mut offsets = Vec::with_capacity(of + 1);
            let mut ids = Vec::with_capacity(deltas.len());
            let mut next = deltas.iter();
            for (i, &count) in counts.iter().enumerate() {
                offsets.push(ids.len() as u32);
                let mut previous: Option<u32> = None;
                for _ in 0..count {
                    let delta = *next.next().ok_or_else(|| {
                        malformed(format!("the {what} lists end before entry {i}'s"))
                    })?;
                    let id = match previous {
                        None => Some(delta),
                        Some(_) if delta == 0 => None,
                        Some(p) => p.checked_add(delta),
                    };
                    match id {
                        Some(id) if id < n => {
                            ids.push(id);
                            previous = Some(id);
                        }
                        _ => return Err(malformed(format!("entry {i}: {what} ids are invalid"))),
                    }
                }
            }
            if next.next().is_some() {
                return Err(malformed(format!("the {what} lists are longer than their counts")));
            }
            offsets.push(ids.len() as u32);
            Ok((offsets, ids))
        };
        let (parent_offsets, parents) =
            lists(&message.parent_counts, &message.parent_deltas, directories.len(), "parent")?;
        let (holder_offsets, holders) =
            lists(&message.holder_counts, &message.holder_deltas, files.len(), "holder")?;
        Ok(InputSkeleton { directories, parent_offsets, parents, files, holder_offsets, holders })
    }
}

/// Inverts `lists` (for each holder, in id order, the ids it holds, each once): for each of
/// `n` ids, the holders holding it, ascending, as offsets and one list (a counting sort).
fn invert<'l>(n: usize, lists: impl Iterator<Item = &'l [u32]> + Clone) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; n + 1];
    for list in lists.clone() {
        for &id in list {
            offsets[id as usize + 1] += 1;
        }
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    let mut next: Vec<u32> = offsets[..n].to_vec();
    let mut out = vec![0u32; offsets[n] as usize];
    for (holder, list) in lists.enumerate() {
        for &id in list {
            out[next[id as usize] as usize] = holder as u32;
            next[id as usize] += 1;
        }
    }
    (offsets, out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants
mod tests {
    use sa_cas::merkle::{self, TreeLimits};
    use sa_cas::{Cas, DigestFunction, MemoryCas};

    use super::*;

    fn tree(cas: &MemoryCas, files: &[(&str, &str)]) -> Digest {
        let files: Vec<merkle::TreeFile> = files
            .iter()
            .map(|(path, content)| {
                merkle::TreeFile::new(
                    *path,
                    cas.write_blob(content.to_string().into()).unwrap(),
                    false,
                )
            })
            .collect();
        merkle::build_tree(cas, &files).unwrap()
    }

    #[test]
    fn a_skeleton_finds_every_directory_on_the_way_to_a_file_and_round_trips() {
        let cas = MemoryCas::new(DigestFunction::Sha256);
        let a = tree(&cas, &[("lib/include/l.h", "l"), ("src/a.c", "a"), ("src/same.h", "s")]);
        let b = tree(&cas, &[("lib/include/l.h", "l"), ("src/b.c", "b"), ("x/same.h", "s")]);
        let limits = TreeLimits::default();
        let forest = merkle::fetch_forest(&cas, &[a, b], &limits).unwrap();
        let skeleton = InputSkeleton::from_forest(&forest, &[a, b]).unwrap();
        // a, b, lib (shared), lib/include (shared), a's src, b's src, x.
        assert_eq!(skeleton.len(), 7);
        let digest = |content: &str| DigestFunction::Sha256.hash_bytes(content.as_bytes());
        let on_the_way: HashSet<Digest> = skeleton
            .ancestors([&digest("l")])
            .into_iter()
            .map(|id| *skeleton.directory(id))
            .collect();
        let lib =
            forest.get(&a).unwrap().directories.iter().find(|d| &*d.name == "lib").unwrap().digest;
        let include = forest.get(&lib).unwrap().directories[0].digest;
        assert_eq!(on_the_way, HashSet::from([a, b, lib, include]));
        assert_eq!(skeleton.holders(&digest("s")).len(), 2, "two directories hold same.h");
        assert!(skeleton.holders(&digest("nowhere")).is_empty());

        let blob = skeleton.to_blob(DigestFunction::Sha256);
        let stored = cas.write_blob(blob.data().clone()).unwrap();
        assert_eq!(InputSkeleton::load(&cas, &stored, &limits).unwrap(), skeleton);
        // The same trees give the same bytes.
        let again = InputSkeleton::from_forest(&forest, &[b, a, b]).unwrap();
        assert_eq!(again.to_blob(DigestFunction::Sha256).digest(), blob.digest());
    }

    #[test]
    fn a_malformed_skeleton_is_refused_naming_what_is_wrong() {
        let cas = MemoryCas::new(DigestFunction::Sha256);
        let f = DigestFunction::Sha256;
        let d = |n: u8| f.hash_bytes(&[n]).to_proto();
        let mut sorted = [f.hash_bytes(&[1]), f.hash_bytes(&[2])];
        sorted.sort();
        let good = wire::InputSkeleton {
            directories: sorted.iter().map(Digest::to_proto).collect(),
            parent_counts: vec![0, 1],
            parent_deltas: vec![0],
            files: vec![d(3)],
            holder_counts: vec![1],
            holder_deltas: vec![1],
        };
        let limits = TreeLimits::default();
        let load = |message: &wire::InputSkeleton| {
            let digest = cas.write_blob(message.encode_to_vec().into()).unwrap();
            InputSkeleton::load(&cas, &digest, &limits).map_err(|e| sa_cas::error_chain(&e))
        };
        assert!(load(&good).is_ok());
        let cases: Vec<(wire::InputSkeleton, &str)> = vec![
            (
                wire::InputSkeleton { parent_deltas: vec![2], ..good.clone() },
                "parent ids are invalid",
            ),
            (wire::InputSkeleton { holder_counts: vec![2], ..good.clone() }, "end before"),
            (wire::InputSkeleton { holder_deltas: vec![1, 0], ..good.clone() }, "longer than"),
            (
                wire::InputSkeleton { parent_counts: vec![0], ..good.clone() },
                "1 parent counts for 2",
            ),
            (
                wire::InputSkeleton {
                    directories: good.directories.iter().rev().cloned().collect(),
                    ..good.clone()
                },
                "directory 1 is out of order",
            ),
            (
                wire::InputSkeleton {
                    parent_counts: vec![0, 2],
                    parent_deltas: vec![1, 0],
                    ..good.clone()
                },
                "parent ids are invalid",
            ),
        ];
        for (message, expected) in cases {
            let err = load(&message).unwrap_err();
            assert!(err.contains("InputSkeleton") && err.contains(expected), "{expected}: {err}");
        }
    }
}
