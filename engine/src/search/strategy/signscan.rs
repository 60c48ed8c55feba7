//! The in-memory hot path: one bit per dimension (the sign of the vector minus the collection
//! mean), scanned with popcount, then the best candidates re-ranked with float32 vectors read
//! straight from the LMDB map. 384 dimensions become 48 bytes per vector.
//!
//! Codes are laid out per partition, contiguously, so an unfiltered partition query is one
//! linear scan; a filtered query scans the same block and skips non-members.

use super::{PartitionQuery, PartitionSearch, Scored, rerank};
use crate::collection::Collection;
use crate::error::Result;
use rayon::prelude::*;
use roaring::RoaringBitmap;
use std::cell::RefCell;

/// One partition's codes: `codes[i * words..]` is the code of `items[i]`.
struct Block {
    items: Vec<u32>,
    codes: Vec<u64>,
}

pub struct SignScan {
    words: usize,
    center: Vec<f32>,
    blocks: Vec<Block>,
}

thread_local! {
    /// Per-thread scratch for Hamming distances, so a query allocates nothing proportional to n.
    static DISTANCES: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

impl SignScan {
    /// Encodes every vector of the collection (all cores).
    pub fn build(collection: &Collection) -> SignScan {
        let dims = collection.manifest().dimensions;
        let n = collection.len() as u32;
        let sums = (0..n)
            .into_par_iter()
            .fold(
                || vec![0.0f64; dims],
                |mut acc, item| {
                    acc.iter_mut().zip(collection.vector(item)).for_each(|(a, x)| *a += *x as f64);
                    acc
                },
            )
            .reduce(|| vec![0.0f64; dims], |a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect());
        let center: Vec<f32> = sums.iter().map(|s| (s / n.max(1) as f64) as f32).collect();
        let words = dims.div_ceil(64);
        let blocks = collection
            .partition_members()
            .iter()
            .map(|members| {
                let items: Vec<u32> = members.iter().collect();
                let mut codes = vec![0u64; items.len() * words];
                codes.par_chunks_mut(words).zip(&items).for_each(|(code, &item)| {
                    encode_into(collection.vector(item), &center, code);
                });
                Block { items, codes }
            })
            .collect();
        SignScan { words, center, blocks }
    }

    pub fn encode(&self, vector: &[f32]) -> Vec<u64> {
        let mut code = vec![0u64; self.words];
        encode_into(vector, &self.center, &mut code);
        code
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.codes.len() * 8 + b.items.len() * 4).sum::<usize>() + self.center.len() * 4
    }

    /// Ids of the `budget` members whose codes are nearest (in Hamming distance) to `code`;
    /// ties at the cut are taken in block order.
    fn candidates(&self, partition: u16, code: &[u64], filter: Option<&RoaringBitmap>, budget: usize) -> Vec<u32> {
        let block = &self.blocks[partition as usize];
        let max = self.words * 64;
        DISTANCES.with_borrow_mut(|distances| {
            distances.clear();
            distances.resize(block.items.len(), 0);
            // Four interleaved histograms, filled during the scan, so consecutive equal
            // distances do not serialize on one counter.
            let mut histograms = vec![[0u32; 4]; max + 1];
            hamming_scan(&block.codes, self.words, code, distances, &mut histograms);
            if let Some(filter) = filter {
                for (i, (d, item)) in distances.iter_mut().zip(&block.items).enumerate() {
                    if !filter.contains(*item) {
                        // Take it back out of the lane the scan counted it in.
                        histograms[*d as usize][i & 3] -= 1;
                        *d = u16::MAX;
                    }
                }
            }
            // The smallest distance that admits `budget` candidates, and how many lie below it.
            let (mut threshold, mut below) = (max as u16, 0usize);
            for (d, h) in histograms.iter().enumerate() {
                let here = h.iter().sum::<u32>() as usize;
                if below + here >= budget {
                    threshold = d as u16;
                    break;
                }
                below += here;
            }
            let mut at_threshold = budget.saturating_sub(below);
            let mut out = Vec::with_capacity(budget);
            for (&d, &item) in distances.iter().zip(&block.items) {
                if d < threshold {
                    out.push(item);
                } else if d == threshold && at_threshold > 0 {
                    at_threshold -= 1;
                    out.push(item);
                }
            }
            out
        })
    }
}

fn encode_into(vector: &[f32], center: &[f32], code: &mut [u64]) {
    code.fill(0);
    for (i, (x, c)) in vector.iter().zip(center).enumerate() {
        if x > c {
            code[i / 64] |= 1 << (i % 64);
        }
    }
}

/// Hamming distances with the code width known at compile time, so the inner loop unrolls.
type Histograms = [[u32; 4]];

#[inline(always)]
fn scan_fixed<const W: usize>(codes: &[u64], query: &[u64], out: &mut [u16], histograms: &mut Histograms) {
    let q: [u64; W] = query.try_into().expect("query code width");
    for (i, (code, d)) in codes.chunks_exact(W).zip(out.iter_mut()).enumerate() {
        let mut sum = 0u32;
        for w in 0..W {
            sum += (code[w] ^ q[w]).count_ones();
        }
        *d = sum as u16;
        histograms[sum as usize][i & 3] += 1;
    }
}

#[inline(always)]
fn scan_any(codes: &[u64], words: usize, query: &[u64], out: &mut [u16], histograms: &mut Histograms) {
    match words {
        1 => scan_fixed::<1>(codes, query, out, histograms),
        2 => scan_fixed::<2>(codes, query, out, histograms),
        4 => scan_fixed::<4>(codes, query, out, histograms),
        6 => scan_fixed::<6>(codes, query, out, histograms),
        8 => scan_fixed::<8>(codes, query, out, histograms),
        12 => scan_fixed::<12>(codes, query, out, histograms),
        16 => scan_fixed::<16>(codes, query, out, histograms),
        _ => {
            for (i, (code, d)) in codes.chunks_exact(words).zip(out.iter_mut()).enumerate() {
                let sum: u32 = code.iter().zip(query).map(|(a, b)| (a ^ b).count_ones()).sum();
                *d = sum as u16;
                histograms[sum as usize][i & 3] += 1;
            }
        }
    }
}

/// Hamming distances of every code to `query` into `out`, counted into `histograms`.
fn hamming_scan(codes: &[u64], words: usize, query: &[u64], out: &mut [u16], histograms: &mut Histograms) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "popcnt")]
        unsafe fn with_popcnt(codes: &[u64], words: usize, query: &[u64], out: &mut [u16], h: &mut Histograms) {
            scan_any(codes, words, query, out, h)
        }
        if std::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU supports popcnt (checked just above).
            return unsafe { with_popcnt(codes, words, query, out, histograms) };
        }
    }
    scan_any(codes, words, query, out, histograms)
}

impl PartitionSearch for SignScan {
    fn search(&self, collection: &Collection, q: &PartitionQuery<'_>) -> Result<Vec<Scored>> {
        let budget = q.quality.max(q.k);
        if q.members.len() as usize <= budget {
            return rerank(collection, q, q.members.iter());
        }
        let code = self.encode(q.vector);
        let filter = q.filtered.then_some(q.members);
        let candidates = self.candidates(q.partition, &code, filter, budget);
        rerank(collection, q, candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encode_sets_bits_above_the_center() {
        let mut code = [0u64; 2];
        let v: Vec<f32> = (0..70).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        encode_into(&v, &[0.0; 70], &mut code);
        assert_eq!(code[0], 0x5555_5555_5555_5555);
        assert_eq!(code[1], 0b01_0101);
    }

    fn scan(items: Vec<u32>, codes: Vec<u64>, words: usize) -> SignScan {
        SignScan { words, center: vec![0.0; words * 64], blocks: vec![Block { items, codes }] }
    }

    #[test]
    fn candidates_respect_budget_order_and_filter() {
        // Item i has i low bits set: Hamming distance i from the zero code.
        let codes: Vec<u64> = (0..64u32).map(|i| if i == 0 { 0 } else { u64::MAX >> (64 - i) }).collect();
        let s = scan((0..64).collect(), codes, 1);
        assert_eq!(s.candidates(0, &[0], None, 5), vec![0, 1, 2, 3, 4]);
        let odd: RoaringBitmap = (0..64).filter(|i| i % 2 == 1).collect();
        assert_eq!(s.candidates(0, &[0], Some(&odd), 3), vec![1, 3, 5]);
    }

    proptest! {
        #[test]
        fn candidates_are_the_nearest_codes(
            words in prop::sample::select(vec![1usize, 2, 3, 6]),
            codes in prop::collection::vec(any::<u64>(), 600),
            query in prop::collection::vec(any::<u64>(), 6),
            budget in 1usize..60,
        ) {
            let n = codes.len() / words;
            let codes = codes[..n * words].to_vec();
            let query = &query[..words];
            let s = scan((0..n as u32).map(|i| i * 3).collect(), codes.clone(), words);
            let got = s.candidates(0, query, None, budget);
            prop_assert_eq!(got.len(), budget.min(n));
            let dist = |item: u32| -> u32 {
                let i = (item / 3) as usize;
                codes[i * words..(i + 1) * words].iter().zip(query).map(|(a, b)| (a ^ b).count_ones()).sum()
            };
            let mut all: Vec<u32> = (0..n as u32).map(|i| dist(i * 3)).collect();
            all.sort();
            let worst_taken = got.iter().map(|&i| dist(i)).max().unwrap();
            // Nothing left out is nearer than something taken.
            prop_assert_eq!(worst_taken, all[got.len() - 1]);
        }
    }
}
