//! The in-memory hot path: one bit per dimension (the sign of the vector minus the collection
//! mean), scanned with popcount, then the best candidates re-ranked with float32 vectors read
//! straight from the LMDB map. 384 dimensions become 48 bytes per vector.
//!
//! Codes are laid out per partition, contiguously. A partition with coarse lists
//! ([`crate::index::coarse`]) keeps its codes in list order, so a query scans the few lists
//! whose centroids are nearest to it (`probes`), each one contiguous run; without lists (or
//! with probes = 0) it scans the whole partition. A filtered query skips non-members and
//! probes further lists until it has seen enough members to fill its re-rank budget.

use super::rabitq::Rabitq;
use super::scalar::Scalar8;
use super::{PartitionQuery, PartitionSearch, Scored, rerank};
use crate::collection::Collection;
use crate::collection::coarse::CoarseLists;
use crate::distance::Ranking;
use crate::error::Result;
use crate::types::Shortlist;
use rayon::prelude::*;
use roaring::RoaringBitmap;
use std::cell::RefCell;
use std::ops::Range;

/// One partition's codes: `codes[i * words..]` is the code of the partition's `i`-th item, in
/// the order of its coarse lists' items when it has lists, else of `items`.
struct Block {
    /// The partition's members in order; empty when the collection's coarse lists give it.
    items: Vec<u32>,
    codes: Vec<u64>,
}

impl Block {
    /// The partition's items in code order: its coarse lists' items when it has lists, else
    /// `items`. The build encodes in this order and a query maps positions back through it.
    fn order<'a>(&'a self, lists: Option<&'a CoarseLists>) -> &'a [u32] {
        lists.map_or(&self.items, CoarseLists::items)
    }
}

pub struct SignScan {
    words: usize,
    center: Vec<f32>,
    blocks: Vec<Block>,
    /// The shortlist's filter before exact re-ranking (`shortlist: rabitq` or `scalar8`).
    filter: Option<ShortlistFilter>,
}

/// What rules shortlisted items out before exact re-ranking, from an estimate and its bound.
enum ShortlistFilter {
    Rabitq(Rabitq),
    Scalar8(Scalar8),
}

thread_local! {
    /// Per-thread scratch for Hamming distances, so a query allocates nothing proportional to n.
    static DISTANCES: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

impl SignScan {
    /// Encodes every vector of the collection (all cores), in each partition's list order.
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
        let mut blocks = Vec::with_capacity(collection.partition_members().len());
        for (partition, members) in collection.partition_members().iter().enumerate() {
            let lists = collection.coarse_lists(partition as u16);
            let items: Vec<u32> = if lists.is_some() { Vec::new() } else { members.iter().collect() };
            let mut block = Block { items, codes: Vec::new() };
            let order = block.order(lists);
            let mut codes = vec![0u64; order.len() * words];
            codes.par_chunks_mut(words).zip(order).for_each(|(code, &item)| {
                encode_into(collection.vector(item), &center, code);
            });
            block.codes = codes;
            blocks.push(block);
        }
        let orders: Vec<&[u32]> =
            blocks.iter().enumerate().map(|(p, b)| b.order(collection.coarse_lists(p as u16))).collect();
        let filter = match collection.manifest().index.shortlist_stored() {
            Shortlist::Hamming => None,
            Shortlist::Rabitq => Some(ShortlistFilter::Rabitq(Rabitq::build(collection, &center, &orders))),
            Shortlist::Scalar8 => Some(ShortlistFilter::Scalar8(Scalar8::build(collection, &orders))),
        };
        SignScan { words, center, blocks, filter }
    }

    pub fn encode(&self, vector: &[f32]) -> Vec<u64> {
        let mut code = vec![0u64; self.words];
        encode_into(vector, &self.center, &mut code);
        code
    }

    /// Bytes held in memory (the coarse lists' items are the collection's, decoded at its open).
    pub fn memory_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.codes.len() * 8 + b.items.len() * 4).sum::<usize>()
            + self.center.len() * 4
            + match &self.filter {
                None => 0,
                Some(ShortlistFilter::Rabitq(rabitq)) => rabitq.memory_bytes(),
                Some(ShortlistFilter::Scalar8(scalar)) => scalar.memory_bytes(),
            }
    }

    /// The runs of a partition's codes a query scans: the `probes` lists nearest to `vector`
    /// (nearest first; with a filter, every list, nearest first), or the whole partition.
    fn runs(
        collection: &Collection,
        partition: u16,
        vector: &[f32],
        probes: usize,
        filtered: bool,
    ) -> Vec<Range<usize>> {
        let lists = collection.coarse_lists(partition);
        let Some(lists) = lists.filter(|l| probes > 0 && probes < l.len()) else {
            let whole = 0..collection.partition_members()[partition as usize].len() as usize;
            return std::iter::once(whole).collect();
        };
        let kernel = collection.manifest().metric.kernel();
        let mut ranked: Vec<(f32, u32)> =
            (0..lists.len()).map(|l| (kernel(vector, lists.centroid(l)), l as u32)).collect();
        if filtered {
            // A filtered query may need lists beyond `probes`: all of them, nearest first.
            ranked.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        } else {
            ranked.select_nth_unstable_by(probes - 1, |a, b| a.0.total_cmp(&b.0));
            ranked.truncate(probes);
        }
        ranked.into_iter().map(|(_, l)| lists.list(l as usize)).collect()
    }

    /// Positions (into the partition's code order, whose items are `items`) of the `budget`
    /// members whose codes are nearest (in Hamming distance) to `code` among the runs
    /// scanned: the first `probes` runs, then (with a filter) further runs until `budget`
    /// members were seen. Ties at the cut are taken in scan order.
    #[allow(clippy::too_many_arguments)]
    fn candidates(
        &self,
        partition: u16,
        items: &[u32],
        runs: &[Range<usize>],
        probes: usize,
        code: &[u64],
        filter: Option<&RoaringBitmap>,
        budget: usize,
    ) -> Vec<u32> {
        let block = &self.blocks[partition as usize];
        let max = self.words * 64;
        let w = self.words;
        DISTANCES.with_borrow_mut(|distances| {
            distances.clear();
            // Four interleaved histograms, filled during the scan, so consecutive equal
            // distances do not serialize on one counter. Lanes wrap (a filtered-out code is
            // taken back out of lane 0); only their sum is read.
            let mut histograms = vec![[0u32; 4]; max + 1];
            let mut scanned = Vec::with_capacity(runs.len());
            let mut members = 0usize;
            for (i, run) in runs.iter().enumerate() {
                if i >= probes.max(1) && (filter.is_none() || members >= budget) {
                    break;
                }
                let from = distances.len();
                distances.resize(from + run.len(), 0);
                hamming_scan(
                    &block.codes[run.start * w..run.end * w],
                    w,
                    code,
                    &mut distances[from..],
                    &mut histograms,
                );
                if let Some(filter) = filter {
                    for (d, item) in distances[from..].iter_mut().zip(&items[run.clone()]) {
                        if filter.contains(*item) {
                            members += 1;
                        } else {
                            histograms[*d as usize][0] = histograms[*d as usize][0].wrapping_sub(1);
                            *d = u16::MAX;
                        }
                    }
                }
                scanned.push(run.clone());
            }
            // The smallest distance that admits `budget` candidates, and how many lie below it.
            let (mut threshold, mut below) = (max as u16, 0usize);
            for (d, h) in histograms.iter().enumerate() {
                let here = h.iter().fold(0u32, |a, b| a.wrapping_add(*b)) as usize;
                if below + here >= budget {
                    threshold = d as u16;
                    break;
                }
                below += here;
            }
            let mut at_threshold = budget.saturating_sub(below);
            let mut out = Vec::with_capacity(budget);
            let positions = scanned.into_iter().flatten();
            for (&d, position) in distances.iter().zip(positions) {
                if d < threshold {
                    out.push(position as u32);
                } else if d == threshold && at_threshold > 0 {
                    at_threshold -= 1;
                    out.push(position as u32);
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
        // Wrapping: a filtered-out item is taken back from lane 0 (the lanes' sum is right).
        histograms[sum as usize][i & 3] = histograms[sum as usize][i & 3].wrapping_add(1);
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
                histograms[sum as usize][i & 3] = histograms[sum as usize][i & 3].wrapping_add(1);
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
        let runs = SignScan::runs(collection, q.partition, q.vector, q.probes, q.filtered);
        let probes = if q.probes == 0 { runs.len() } else { q.probes };
        let lists = collection.coarse_lists(q.partition);
        let items = self.blocks[q.partition as usize].order(lists);
        let shortlist = self.candidates(q.partition, items, &runs, probes, &code, filter, budget);
        match &self.filter {
            Some(ShortlistFilter::Rabitq(rabitq)) => rabitq.rerank(collection, q, lists, items, &shortlist),
            Some(ShortlistFilter::Scalar8(scalar)) => scalar.rerank(collection, q, items, &shortlist),
            None => rerank(collection, q, shortlist.iter().map(|&p| items[p as usize])),
        }
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
        SignScan { words, center: vec![0.0; words * 64], blocks: vec![Block { items, codes }], filter: None }
    }

    #[test]
    fn candidates_respect_budget_order_and_filter() {
        // Item i has i low bits set: Hamming distance i from the zero code.
        let codes: Vec<u64> = (0..64u32).map(|i| if i == 0 { 0 } else { u64::MAX >> (64 - i) }).collect();
        // Item ids differ from positions (item 3p at position p): the filter reads items, the
        // answer is positions.
        let s = scan((0..64).map(|p| 3 * p).collect(), codes, 1);
        let items = s.blocks[0].items.clone();
        assert_eq!(s.candidates(0, &items, std::slice::from_ref(&(0..64)), 1, &[0], None, 5), vec![0, 1, 2, 3, 4]);
        let odd: RoaringBitmap = (0..64).map(|p| 3 * p).filter(|i| i % 2 == 1).collect();
        assert_eq!(s.candidates(0, &items, std::slice::from_ref(&(0..64)), 1, &[0], Some(&odd), 3), vec![1, 3, 5]);
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
            let items = s.blocks[0].items.clone();
            let got = s.candidates(0, &items, std::slice::from_ref(&(0..n)), 1, query, None, budget);
            prop_assert_eq!(got.len(), budget.min(n));
            let dist = |position: u32| -> u32 {
                let i = position as usize;
                codes[i * words..(i + 1) * words].iter().zip(query).map(|(a, b)| (a ^ b).count_ones()).sum()
            };
            let mut all: Vec<u32> = (0..n as u32).map(dist).collect();
            all.sort();
            let worst_taken = got.iter().map(|&i| dist(i)).max().unwrap();
            // Nothing left out is nearer than something taken.
            prop_assert_eq!(worst_taken, all[got.len() - 1]);
        }
    }
}
