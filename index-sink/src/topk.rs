//! Top-k selection with one total order used everywhere: higher score first, ties broken by
//! the smaller item id. Hot, main and the global merge all rank with it, so a result list
//! never depends on thread timing or on which part an item came from.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::types::Hit;

/// A scored item, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scored<'a> {
    pub(crate) score: f32,
    pub(crate) id: &'a str,
}

/// `Less` means better.
pub(crate) fn rank(a: (f32, &str), b: (f32, &str)) -> Ordering {
    b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
}

impl PartialEq for Scored<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored<'_> {}
impl PartialOrd for Scored<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        rank((self.score, self.id), (other.score, other.id))
    }
}

/// Keeps the best `k` of what it is offered.
#[derive(Debug)]
pub(crate) struct TopK<'a> {
    k: usize,
    // Max-heap by `rank`, so the top is the worst kept entry.
    heap: BinaryHeap<Scored<'a>>,
}

impl<'a> TopK<'a> {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(crate) fn offer(&mut self, score: f32, id: &'a str) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Scored { score, id });
        } else if let Some(worst) = self.heap.peek()
            && rank((score, id), (worst.score, worst.id)) == Ordering::Less
        {
            self.heap.pop();
            self.heap.push(Scored { score, id });
        }
    }

    /// The worst kept score once `k` are kept.
    pub(crate) fn worst_when_full(&self) -> Option<f32> {
        (self.heap.len() == self.k).then(|| self.heap.peek().map(|s| s.score))?
    }

    /// Best first.
    pub(crate) fn into_hits(self) -> Vec<Hit> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|s| Hit {
                item_id: s.id.to_owned(),
                score: s.score,
            })
            .collect()
    }
}

/// Merges ranked lists into the global top `k`, best first.
pub(crate) fn merge(lists: Vec<Vec<Hit>>, k: usize) -> Vec<Hit> {
    let mut all: Vec<Hit> = lists.into_iter().flatten().collect();
    all.sort_by(|a, b| rank((a.score, &a.item_id), (b.score, &b.item_id)));
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_best_with_id_tie_break() {
        let mut t = TopK::new(3);
        for (s, id) in [
            (0.5, "e"),
            (0.9, "b"),
            (0.9, "a"),
            (0.1, "z"),
            (0.5, "c"),
            (0.7, "d"),
        ] {
            t.offer(s, id);
        }
        let ids: Vec<_> = t.into_hits().into_iter().map(|h| h.item_id).collect();
        assert_eq!(ids, ["a", "b", "d"]);
    }

    #[test]
    fn merge_is_order_independent() {
        let h = |s, id: &str| Hit {
            item_id: id.into(),
            score: s,
        };
        let a = vec![h(0.8, "x"), h(0.2, "y")];
        let b = vec![h(0.8, "w"), h(0.5, "v")];
        let m1 = merge(vec![a.clone(), b.clone()], 3);
        let m2 = merge(vec![b, a], 3);
        assert_eq!(m1, m2);
        assert_eq!(
            m1.iter().map(|h| h.item_id.as_str()).collect::<Vec<_>>(),
            ["w", "x", "v"]
        );
    }
}
