//! Bounded top-k selection and the merge of per-partition results.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Copy, PartialEq)]
struct Entry(f32, u32);

impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Ties break on the item id so results are deterministic across partitions and runs.
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Keeps the `k` lowest scores seen (a max-heap of the current best).
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK { k, heap: BinaryHeap::with_capacity(k + 1) }
    }

    #[inline]
    pub fn push(&mut self, item: u32, score: f32) {
        let entry = Entry(score, item);
        if self.heap.len() < self.k {
            self.heap.push(entry);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && entry < *worst
        {
            *worst = entry;
        }
    }

    /// The k-th lowest score seen, once k scores were.
    pub fn worst(&self) -> Option<f32> {
        if self.heap.len() < self.k { None } else { self.heap.peek().map(|e| e.0) }
    }

    /// Results ascending by score.
    pub fn into_sorted(self) -> Vec<(u32, f32)> {
        self.heap.into_sorted_vec().into_iter().map(|Entry(s, i)| (i, s)).collect()
    }
}

/// Merges per-partition result lists (each item in at most one list) into one top-k.
pub fn merge(lists: impl IntoIterator<Item = Vec<(u32, f32)>>, k: usize) -> Vec<(u32, f32)> {
    let mut top = TopK::new(k);
    for (item, score) in lists.into_iter().flatten() {
        top.push(item, score);
    }
    top.into_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn merge_equals_sorting_the_concatenation(
            scores in prop::collection::vec(-100.0f32..100.0, 0..300),
            splits in 1usize..8,
            k in 1usize..50,
        ) {
            let items: Vec<(u32, f32)> = scores.iter().enumerate().map(|(i, s)| (i as u32, *s)).collect();
            let lists: Vec<Vec<(u32, f32)>> = (0..splits)
                .map(|p| items.iter().copied().filter(|(i, _)| *i as usize % splits == p).collect())
                .collect();
            let mut expected = items.clone();
            expected.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            expected.truncate(k);
            prop_assert_eq!(merge(lists, k), expected);
        }
    }
}
