//! The data model shared by the generator and the instantiator: where a file came from
//! ([`Origin`]), the one rule that picks an origin for a file occurrence ([`choose`]), the
//! overlay order, and conversion to and from the wire `Overlay`.

use std::cmp::Ordering;
use std::collections::HashMap;

use sa_cas::{CasError, Digest, DigestFunction};
use sa_proto::buildstream::v2::speculative_actions::Overlay;
use sa_proto::buildstream::v2::speculative_actions::overlay::OverlayType;

/// The kind of an origin, in priority order: SOURCE, then ACTION, then ARTIFACT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OriginKind {
    /// A file of an element's sources.
    Source,
    /// An output of an earlier subaction.
    Action,
    /// A file of a dependency's artifact.
    Artifact,
}

impl OriginKind {
    /// The wire enum value.
    pub fn to_proto(self) -> OverlayType {
        match self {
            OriginKind::Source => OverlayType::Source,
            OriginKind::Action => OverlayType::Action,
            OriginKind::Artifact => OverlayType::Artifact,
        }
    }
}

/// Where a file's content can be found: the kind, the element ("" for the element itself),
/// the path (in the source tree, the artifact, or the producer's `output_files`), and for
/// ACTION origins the producing subaction's base action digest.
///
/// Origins order by priority, then element, path and producer: the tie-break of [`choose`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// The kind.
    pub kind: OriginKind,
    /// The element holding the file; "" for the element itself.
    pub element: String,
    /// The path within the tree, or the output path of the producer.
    pub path: String,
    /// For ACTION origins, the producer's base action digest.
    pub producer: Option<Digest>,
}

impl Origin {
    /// The wire overlay replacing `target` from this origin.
    pub fn to_overlay(&self, target: &Digest) -> Overlay {
        Overlay {
            r#type: self.kind.to_proto() as i32,
            source_element: self.element.clone(),
            source_action_digest: self.producer.map(|d| d.to_proto()),
            source_path: self.path.clone(),
            target_digest: Some(target.to_proto()),
        }
    }

    /// Reads a wire overlay: its origin and target digest. Fails naming what is wrong.
    pub fn from_overlay(
        function: DigestFunction,
        overlay: &Overlay,
    ) -> Result<(Origin, Digest), OverlayError> {
        let kind = match OverlayType::try_from(overlay.r#type) {
            Ok(OverlayType::Source) => OriginKind::Source,
            Ok(OverlayType::Action) => OriginKind::Action,
            Ok(OverlayType::Artifact) => OriginKind::Artifact,
            Err(_) => return Err(OverlayError::UnknownType(overlay.r#type)),
        };
        let target = Digest::from_proto_field(
            function,
            overlay.target_digest.as_ref(),
            "Overlay.target_digest",
        )?;
        let producer = match kind {
            OriginKind::Action => Some(Digest::from_proto_field(
                function,
                overlay.source_action_digest.as_ref(),
                "Overlay.source_action_digest",
            )?),
            _ => None,
        };
        if overlay.source_path.is_empty() {
            return Err(OverlayError::Field(CasError::MissingField("Overlay.source_path")));
        }
        let origin = Origin {
            kind,
            element: overlay.source_element.clone(),
            path: overlay.source_path.clone(),
            producer,
        };
        Ok((origin, target))
    }
}

/// A wire overlay that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// An `OverlayType` this version does not know.
    #[error("unknown overlay type {0}")]
    UnknownType(i32),
    /// A missing or invalid field.
    #[error(transparent)]
    Field(#[from] CasError),
}

/// How many trailing path components `a` and `b` share (`/`-separated).
pub fn common_suffix(a: &str, b: &str) -> usize {
    a.rsplit('/').zip(b.rsplit('/')).take_while(|(x, y)| x == y).count()
}

/// Compares two candidate origins for a file occurrence at `path`: the better one is `Less`.
/// The rule, in order:
/// 1. the longest common suffix of path components with `path`;
/// 2. priority: SOURCE, then ACTION, then ARTIFACT;
/// 3. the element;
/// 4. the fewest leading components of the origin's path left unmatched (for `x.h`, the
///    origin `x.h` beats an identical `a/x.h`);
/// 5. the path, then the producer.
pub fn compare_for(path: &str, a: &Origin, b: &Origin) -> Ordering {
    let (sa, sb) = (common_suffix(path, &a.path), common_suffix(path, &b.path));
    sb.cmp(&sa)
        .then_with(|| a.kind.cmp(&b.kind))
        .then_with(|| a.element.cmp(&b.element))
        .then_with(|| (components(&a.path) - sa).cmp(&(components(&b.path) - sb)))
        .then_with(|| a.cmp(b))
}

fn components(path: &str) -> usize {
    path.split('/').count()
}

/// The best origin for a file occurrence at `path` among `candidates`, by [`compare_for`].
/// The generator and the instantiator both use this rule, so an instantiated action replaces
/// each occurrence from the origin the generator attributed it to.
pub fn choose<'a>(
    path: &str,
    candidates: impl IntoIterator<Item = &'a Origin>,
) -> Option<&'a Origin> {
    candidates.into_iter().min_by(|a, b| compare_for(path, a, b))
}

/// The overlay order within an action and in `artifact_overlays`: type priority, target
/// digest, element, path, producer.
pub fn overlay_order(a: &(Digest, &Origin), b: &(Digest, &Origin)) -> Ordering {
    a.1.kind
        .cmp(&b.1.kind)
        .then_with(|| a.0.cmp(&b.0))
        .then_with(|| a.1.element.cmp(&b.1.element))
        .then_with(|| a.1.path.cmp(&b.1.path))
        .then_with(|| a.1.producer.cmp(&b.1.producer))
}

/// [`choose`] made fast for many candidates of one content: a trie of the candidates' reversed
/// path components. Once the longest common suffix with an occurrence's path is fixed (the
/// deepest node its components reach), [`compare_for`] orders the candidates below that node by
/// kind, element, number of components and then the origin itself, whatever the occurrence: so
/// each node keeps the best candidate below it by that order, and a lookup is a walk down the
/// occurrence's components. Building is linear in the candidates' components; a lookup, in the
/// occurrence's. The generator's index and the instantiator's rewrite both use it.
#[derive(Debug)]
pub struct SuffixChooser {
    /// Node 0 is the root (the empty suffix, every candidate).
    nodes: Vec<TrieNode>,
}

#[derive(Debug)]
struct TrieNode {
    children: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    best: u32,
}

impl SuffixChooser {
    /// A chooser among the candidates `ids` (at least one), `origin` giving each one's origin.
    pub fn build<'o>(ids: &[u32], origin: impl Fn(u32) -> &'o Origin) -> SuffixChooser {
        // The order below a fixed suffix (the tail of `compare_for`).
        let better = |a: u32, b: u32| {
            let (a, b) = (origin(a), origin(b));
            a.kind
                .cmp(&b.kind)
                .then_with(|| a.element.cmp(&b.element))
                .then_with(|| components(&a.path).cmp(&components(&b.path)))
                .then_with(|| a.cmp(b))
                .is_lt()
        };
        let mut nodes = vec![TrieNode { children: HashMap::default(), best: ids[0] }];
        for &id in ids {
            let mut node = 0usize;
            if better(id, nodes[0].best) {
                nodes[0].best = id;
            }
            for component in origin(id).path.rsplit('/') {
                let next = match nodes[node].children.get(component) {
                    Some(&child) => child as usize,
                    None => {
                        let child = nodes.len();
                        nodes.push(TrieNode { children: HashMap::default(), best: id });
                        let index = u32::try_from(child).expect("fewer than 2^32 trie nodes");
                        nodes[node].children.insert(component.into(), index);
                        child
                    }
                };
                if better(id, nodes[next].best) {
                    nodes[next].best = id;
                }
                node = next;
            }
        }
        SuffixChooser { nodes }
    }

    /// The best candidate for an occurrence at `path`, by [`compare_for`].
    pub fn best(&self, path: &str) -> u32 {
        let mut node = &self.nodes[0];
        for component in path.rsplit('/') {
            match node.children.get(component) {
                Some(&child) => node = &self.nodes[child as usize],
                None => break,
            }
        }
        node.best
    }
}
