//! Coarse lists (an IVF coarse quantizer): each partition's items grouped around k-means
//! centroids trained on a sample at build time, so a query scans the codes of the lists
//! nearest to it instead of every code ([`crate::search::strategy::signscan`]).
//!
//! Stored in the collection's `coarse` database, one value per partition: the centroids, the
//! list boundaries and the items grouped by list. Small (4 B per item plus the centroids), so
//! it is read whole when the sign codes are built and laid out in list order in memory.

use crate::collection::Collection;
use crate::collection::lmdb::CoarseDatabase;
use crate::distance::Ranking;
use crate::error::Result;
use crate::types::Metric;
use heed::RwTxn;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use roaring::RoaringBitmap;
use std::ops::Range;

/// Partitions smaller than this are scanned whole: at 20k codes the scan takes ~0.06 ms.
pub const MIN_ITEMS: u64 = 20_000;
/// k-means trains on this many sampled items per list (faiss warns below 39).
const SAMPLE_PER_LIST: usize = 40;
/// Lloyd iterations; the assignment barely changes after ~10 on embedding-like data.
const ITERATIONS: usize = 10;
const MAGIC: &[u8; 4] = b"QIVF";
const VERSION: u32 = 1;
const HEADER: usize = 20;

/// The lists of one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct CoarseLists {
    dims: usize,
    /// `lists * dims` floats.
    centroids: Vec<f32>,
    /// `lists + 1` boundaries into `items`.
    offsets: Vec<u32>,
    /// The partition's items, grouped by list.
    items: Vec<u32>,
}

/// How many lists a partition of `n` items gets when the spec does not say: about `sqrt(n)`,
/// so a list and the centroid table are both ~sqrt(n) long; none for a small partition.
pub fn auto_lists(n: u64) -> usize {
    if n < MIN_ITEMS { 0 } else { (n as f64).sqrt().round() as usize }
}

impl CoarseLists {
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn centroid(&self, list: usize) -> &[f32] {
        &self.centroids[list * self.dims..(list + 1) * self.dims]
    }

    /// Positions of a list's items in [`CoarseLists::items`].
    pub fn list(&self, list: usize) -> Range<usize> {
        self.offsets[list] as usize..self.offsets[list + 1] as usize
    }

    pub fn items(&self) -> &[u32] {
        &self.items
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
        CoarseLists { dims, centroids, offsets, items }
    }

    /// The stored form: a header, then the centroids, boundaries and items, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER + 4 * (self.centroids.len() + self.offsets.len() + self.items.len()));
        bytes.extend_from_slice(MAGIC);
        for word in [VERSION, self.dims as u32, self.len() as u32, self.items.len() as u32] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        self.centroids.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
        self.offsets.iter().chain(&self.items).for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
        bytes
    }

    /// Reads the stored form back, checking that it is whole and lists exactly `members`.
    pub fn decode(bytes: &[u8], dims: usize, members: &RoaringBitmap) -> Result<CoarseLists, String> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(format!("not coarse lists ({} bytes, no {:?} header)", bytes.len(), "QIVF"));
        }
        let word = |i: usize| u32::from_le_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize;
        let (version, stored_dims, lists, n) = (word(0), word(1), word(2), word(3));
        if version != VERSION as usize {
            return Err(format!("coarse lists version {version} (this quiver reads {VERSION})"));
        }
        if stored_dims != dims {
            return Err(format!("coarse lists of {stored_dims} dimensions in a collection of {dims}"));
        }
        let expected = lists
            .checked_mul(dims)
            .and_then(|c| c.checked_add(lists + 1 + n))
            .and_then(|w| w.checked_mul(4))
            .and_then(|b| b.checked_add(HEADER));
        if expected != Some(bytes.len()) {
            return Err(format!("coarse lists of {lists} lists and {n} items cannot be {} bytes", bytes.len()));
        }
        let body = &bytes[HEADER..];
        let (centroids, rest) = body.split_at(lists * dims * 4);
        let (offsets, items) = rest.split_at((lists + 1) * 4);
        let words = |b: &[u8]| -> Vec<u32> {
            b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
        };
        let centroids: Vec<f32> = words(centroids).into_iter().map(f32::from_bits).collect();
        let (offsets, items) = (words(offsets), words(items));
        if centroids.iter().any(|x| !x.is_finite()) {
            return Err("a coarse centroid is not finite".into());
        }
        if offsets[0] != 0 || offsets[lists] as usize != n || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err("coarse list boundaries are out of order".into());
        }
        let listed: RoaringBitmap = items.iter().copied().collect();
        if listed.len() != n as u64 || &listed != members {
            return Err(format!(
                "coarse lists hold {} distinct items of {n}; the partition has {} members",
                listed.len(),
                members.len()
            ));
        }
        Ok(CoarseLists { dims, centroids, offsets, items })
    }
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
        let trained = CoarseLists::train(collection, members, count, seed.wrapping_add(partition as u64));
        db.put(wtxn, &(partition as u16), &trained.encode())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> CoarseLists {
        CoarseLists { dims: 2, centroids: vec![0.0, 1.0, 1.0, 0.0], offsets: vec![0, 2, 3], items: vec![4, 0, 7] }
    }

    #[test]
    fn the_stored_form_reads_back() {
        let members: RoaringBitmap = [0, 4, 7].into_iter().collect();
        assert_eq!(CoarseLists::decode(&lists().encode(), 2, &members).unwrap(), lists());
    }

    #[test]
    fn a_damaged_stored_form_is_refused_with_its_reason() {
        let members: RoaringBitmap = [0, 4, 7].into_iter().collect();
        let bytes = lists().encode();
        let err = |b: &[u8], dims: usize, m: &RoaringBitmap| CoarseLists::decode(b, dims, m).unwrap_err();
        assert!(err(&bytes[..bytes.len() - 1], 2, &members).contains("cannot be"));
        assert!(err(&bytes, 3, &members).contains("2 dimensions in a collection of 3"));
        let other: RoaringBitmap = [0, 4, 8].into_iter().collect();
        assert!(err(&bytes, 2, &other).contains("the partition has 3 members"));
        let mut twice = bytes.clone();
        let last = twice.len() - 4;
        twice[last..].copy_from_slice(&4u32.to_le_bytes());
        assert!(err(&twice, 2, &members).contains("2 distinct items of 3"));
        let mut disorder = bytes.clone();
        disorder[HEADER + 16 + 4..HEADER + 16 + 8].copy_from_slice(&9u32.to_le_bytes());
        assert!(err(&disorder, 2, &members).contains("out of order"));
        let mut huge = bytes;
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&huge, 2, &members).contains("cannot be"));
    }

    #[test]
    fn small_partitions_get_no_lists_and_large_ones_about_sqrt_n() {
        assert_eq!(auto_lists(MIN_ITEMS - 1), 0);
        assert_eq!(auto_lists(1_000_000), 1000);
    }
}
