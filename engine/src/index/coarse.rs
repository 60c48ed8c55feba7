//! Coarse lists (an IVF coarse quantizer): each partition's items grouped around k-means
//! centroids trained on a sample at build time, so a query scans the codes of the lists
//! nearest to it instead of every code ([`crate::search::strategy::signscan`]).
//!
//! Stored ([`crate::collection::coarse`]) in the collection's `coarse` database, one value per
//! partition: the centroids, the list boundaries and the items grouped by list. Small (4 B per
//! item plus the centroids), so it is read whole when the sign codes are built and laid out in
//! list order in memory.

use crate::collection::Collection;
use crate::collection::coarse::CoarseLists;
use crate::collection::lmdb::CoarseDatabase;
use crate::distance::Ranking;
use crate::error::Result;
use crate::types::Metric;
use heed::RwTxn;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use roaring::RoaringBitmap;

/// Partitions smaller than this are scanned whole: at 20k codes the scan takes ~0.06 ms.
pub const MIN_ITEMS: u64 = 20_000;
/// k-means trains on this many sampled items per list (faiss warns below 39).
const SAMPLE_PER_LIST: usize = 40;
/// Lloyd iterations; the assignment barely changes after ~10 on embedding-like data.
const ITERATIONS: usize = 10;

/// How many lists a partition of `n` items gets when the spec does not say: about `sqrt(n)`,
/// so a list and the centroid table are both ~sqrt(n) long; none for a small partition.
pub fn auto_lists(n: u64) -> usize {
    if n < MIN_ITEMS { 0 } else { (n as f64).sqrt().round() as usize }
}

/// Trains `lists` centroids on a sample of `members` and assigns every member to its
/// nearest one (all cores).
pub fn train(collection: &Collection, members: &RoaringBitmap, lists: usize, seed: u64) -> CoarseLists {
    let manifest = collection.manifest();
    let dims = manifest.dimensions;
    let kernel = manifest.metric.kernel();
    let normalize = matches!(manifest.metric, Metric::Cosine | Metric::BinaryQuantizedCosine);
    let all: Vec<u32> = members.iter().collect();
    let lists = lists.clamp(1, all.len().max(1));
    let mut rng = StdRng::seed_from_u64(seed);
    let sample: Vec<u32> = rand::seq::index::sample(&mut rng, all.len(), (lists * SAMPLE_PER_LIST).min(all.len()))
        .into_iter()
        .map(|i| all[i])
        .collect();
    // Random initial centroids: the first `lists` sampled items (the sample is shuffled).
    let mut centroids: Vec<f32> = sample[..lists].iter().flat_map(|&item| collection.vector(item)).copied().collect();
    let nearest = |centroids: &[f32], v: &[f32]| -> u32 {
        let mut best = (f32::INFINITY, 0u32);
        for (list, c) in centroids.chunks_exact(dims).enumerate() {
            let score = kernel(v, c);
            if score < best.0 {
                best = (score, list as u32);
            }
        }
        best.1
    };
    for _ in 0..ITERATIONS {
        let assigned: Vec<u32> = sample.par_iter().map(|&item| nearest(&centroids, collection.vector(item))).collect();
        let mut sums = vec![0.0f64; lists * dims];
        let mut counts = vec![0u32; lists];
        for (&item, &list) in sample.iter().zip(&assigned) {
            counts[list as usize] += 1;
            let sum = &mut sums[list as usize * dims..(list as usize + 1) * dims];
            sum.iter_mut().zip(collection.vector(item)).for_each(|(s, x)| *s += *x as f64);
        }
        for list in 0..lists {
            let centroid = &mut centroids[list * dims..(list + 1) * dims];
            if counts[list] == 0 {
                // An empty list starts again from a random sampled item.
                let item = sample[rng.random_range(0..sample.len())];
                centroid.copy_from_slice(collection.vector(item));
                continue;
            }
            let sum = &sums[list * dims..(list + 1) * dims];
            centroid.iter_mut().zip(sum).for_each(|(c, s)| *c = (s / counts[list] as f64) as f32);
            if normalize {
                crate::distance::normalize(centroid);
            }
        }
    }
    let assigned: Vec<u32> = all.par_iter().map(|&item| nearest(&centroids, collection.vector(item))).collect();
    let mut offsets = vec![0u32; lists + 1];
    for &list in &assigned {
        offsets[list as usize + 1] += 1;
    }
    for list in 0..lists {
        offsets[list + 1] += offsets[list];
    }
    let mut next = offsets.clone();
    let mut items = vec![0u32; all.len()];
    for (&item, &list) in all.iter().zip(&assigned) {
        items[next[list as usize] as usize] = item;
        next[list as usize] += 1;
    }
    CoarseLists::new(dims, centroids, offsets, items)
}

/// Trains and stores every partition's lists: `lists` per partition, or [`auto_lists`] when
/// `None`; `Some(0)` stores none, and the partition is scanned whole.
pub fn build(
    wtxn: &mut RwTxn,
    db: CoarseDatabase,
    collection: &Collection,
    lists: Option<usize>,
    seed: u64,
) -> Result<()> {
    for (partition, members) in collection.partition_members().iter().enumerate() {
        let count = lists.unwrap_or_else(|| auto_lists(members.len()));
        if count == 0 || members.is_empty() {
            continue;
        }
        let trained = train(collection, members, count, seed.wrapping_add(partition as u64));
        db.put(wtxn, &(partition as u16), &trained.encode())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_partitions_get_no_lists_and_large_ones_about_sqrt_n() {
        assert_eq!(auto_lists(MIN_ITEMS - 1), 0);
        assert_eq!(auto_lists(1_000_000), 1000);
    }
}
