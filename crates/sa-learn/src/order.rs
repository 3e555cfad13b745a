//! Producers before consumers: the order generation needs (an ACTION overlay names an earlier
//! action).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use sa_cas::merkle::{self, TreeLimits};
use sa_cas::{CasError, DecodedAction, Digest, Store};

/// Actions in producer order, and those of them without a result in the ActionCache (which
/// therefore produce nothing that is known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ordered {
    /// Every action once, producers before their consumers.
    pub actions: Vec<Digest>,
    /// The actions the ActionCache has no result for.
    pub without_result: Vec<Digest>,
}

/// Reads each action's input tree and result and orders them with [`producer_order`]. Errors
/// name the action.
pub fn in_producer_order(
    store: &(impl Store + ?Sized),
    actions: &[Digest],
    limits: &TreeLimits,
) -> Result<Ordered, CasError> {
    let function = store.digest_function();
    let mut roots = Vec::with_capacity(actions.len());
    let mut outputs = Vec::with_capacity(actions.len());
    let mut without_result = Vec::new();
    for action in actions {
        let context = |e: CasError| e.context(format!("recorded action {action}"));
        roots.push(DecodedAction::read(store, action).map_err(context)?.input_root);
        let Some(result) = store.get_action_result(action).map_err(context)? else {
            without_result.push(*action);
            outputs.push(Vec::new());
            continue;
        };
        let files = result
            .output_files
            .iter()
            .map(|f| Digest::from_proto_field(function, f.digest.as_ref(), "OutputFile.digest"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.context(format!("ActionResult of {action}")))?;
        outputs.push(files);
    }
    let forest = merkle::fetch_forest(store, &roots, limits)
        .map_err(|e| e.context("fetching the recorded input roots"))?;
    let expanded =
        roots.iter().fold(0u64, |sum, root| sum.saturating_add(forest.expansion(root).entries));
    limits.check_expanded(expanded, || {
        format!("the input roots of the {} recorded actions", roots.len())
    })?;
    let inputs = roots
        .iter()
        .map(|root| Ok(forest.files(root)?.into_iter().map(|file| file.digest).collect()))
        .collect::<Result<Vec<HashSet<Digest>>, CasError>>()?;
    let order = producer_order(actions, &inputs, &outputs);
    Ok(Ordered { actions: order.iter().map(|&i| actions[i]).collect(), without_result })
}

/// Orders `actions` so every producer precedes its consumers: P produces for C when an output
/// file of P's result is an input file of C (the empty blob excepted). Among actions free to
/// go, the earliest recorded goes first; a cycle (identical outputs) is broken the same way.
pub fn producer_order(
    actions: &[Digest],
    inputs: &[HashSet<Digest>],
    outputs: &[Vec<Digest>],
) -> Vec<usize> {
    let mut producers: HashMap<Digest, Vec<usize>> = HashMap::new();
    for (i, files) in outputs.iter().enumerate() {
        for digest in files.iter().filter(|d| !d.is_empty_blob()) {
            producers.entry(*digest).or_default().push(i);
        }
    }
    let mut before: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); actions.len()];
    for (consumer, files) in inputs.iter().enumerate() {
        for digest in files {
            for &producer in producers.get(digest).into_iter().flatten() {
                if producer != consumer {
                    before[consumer].insert(producer);
                }
            }
        }
    }
    let mut waiting: Vec<usize> = before.iter().map(BTreeSet::len).collect();
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); actions.len()];
    for (consumer, producers) in before.iter().enumerate() {
        for &producer in producers {
            after[producer].push(consumer);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..actions.len()).filter(|&i| waiting[i] == 0).map(Reverse).collect();
    let mut placed = vec![false; actions.len()];
    let mut order = Vec::with_capacity(actions.len());
    while order.len() < actions.len() {
        let next = match ready.pop() {
            Some(Reverse(i)) => i,
            // A cycle: the earliest recorded of what is left goes first.
            None => (0..actions.len()).find(|&i| !placed[i]).expect("something is left"),
        };
        if placed[next] {
            continue;
        }
        placed[next] = true;
        order.push(next);
        for &consumer in &after[next] {
            waiting[consumer] = waiting[consumer].saturating_sub(1);
            if waiting[consumer] == 0 && !placed[consumer] {
                ready.push(Reverse(consumer));
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        sa_cas::DigestFunction::Sha256.hash_bytes(&[n])
    }

    #[test]
    fn producers_come_before_consumers_else_recorded_order() {
        // 0 links what 2 compiles; 1 is independent; 2 compiles a header 3 generates.
        let actions = [d(10), d(11), d(12), d(13)];
        let outputs = vec![vec![d(1)], vec![d(2)], vec![d(3)], vec![d(4)]];
        let inputs: Vec<HashSet<Digest>> = vec![
            [d(3)].into_iter().collect(),
            HashSet::new(),
            [d(4)].into_iter().collect(),
            HashSet::new(),
        ];
        assert_eq!(producer_order(&actions, &inputs, &outputs), vec![1, 3, 2, 0]);
        // A cycle (two actions producing what the other reads) keeps recorded order.
        let inputs: Vec<HashSet<Digest>> =
            vec![[d(2)].into_iter().collect(), [d(1)].into_iter().collect()];
        assert_eq!(producer_order(&actions[..2], &inputs, &outputs[..2]), vec![0, 1]);
    }
}
