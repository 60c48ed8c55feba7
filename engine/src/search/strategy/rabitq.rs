//! RaBitQ codes (Gao and Long, "RaBitQ: Quantizing High-Dimensional Vectors with a Theoretical
//! Error Bound for Approximate Nearest Neighbor Search", SIGMOD 2024): the filter between the
//! sign-code scan's shortlist and exact re-ranking ([`super::signscan`], `shortlist: rabitq`).
//!
//! An item's code is the signs of its residual to its coarse list's centroid after a random
//! rotation, with three numbers: the residual's squared length, `scale` (the length over how
//! well the signs point along the residual, the paper's <o_bar, o>) and the signs' inner
//! product with the rotated centroid. A query is rotated and quantized to [`QUERY_BITS`] bits
//! per dimension once, so the inner product of an item's signs with its residual is a handful
//! of popcounts less that stored product. That gives the item's distance estimate and,
//! from the paper's bound, how far the true distance can lie from it: re-ranking skips every
//! item whose estimate, less its bound, is already worse than the k-th exact score found.

use super::{PartitionQuery, Scored, prefetch, rerank_estimated};
use crate::collection::Collection;
use crate::collection::coarse::CoarseLists;
use crate::datagen::gaussian;
use crate::distance::dot;
use crate::error::Result;
use crate::types::Metric;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;
use std::ops::Range;

/// Bits per dimension of a quantized query. The paper's 4 left the rounding term the larger
/// half of the bound at 384 dimensions (the whole rotated query is quantized once, not each
/// residual), so fewer items were ruled out; 8 cost four more bit planes (24 more popcounts
/// per item at 384 dimensions) and measured faster at 1M (BENCHMARKS.md).
const QUERY_BITS: usize = 8;
/// The bound's confidence constant: an estimate of <o, q> lies within
/// `EPSILON_0 * sqrt(1 - f^2) / f / sqrt(D - 1)` of it (f = <o_bar, o>, q of unit length) for
/// all but a small share of items. The paper's 1.9 left ~5 % of estimates outside (about 2.5 %
/// on the side that rules an item out) and lost a neighbour in 3,000 at 1M; 2.5 lost none
/// there at the same speed (BENCHMARKS.md).
const EPSILON_0: f32 = 2.5;
/// Rounding the query to [`QUERY_BITS`] moves each coordinate by at most half a step; summed
/// over D dimensions with the signs' 1/sqrt(D) weights, Hoeffding bounds the change by this
/// many steps for all but one item in a thousand (sqrt(ln(2 / 0.001) / 2)).
const ROUNDING_STEPS: f32 = 1.95;
/// The rotation: up to this many dimensions, one random orthogonal matrix (uniform, as the
/// paper's bound assumes); beyond, [`ROTATION_ROUNDS`] rounds of a random permutation then one
/// random orthogonal matrix per block of at most this many dimensions, so building and applying
/// it grows with D x 512, not D^2 (a dense 4096 x 4096 matrix would take a minute to make at
/// every open).
const ROTATION_BLOCK: usize = 512;
/// Rounds of (permutation, block rotations) above [`ROTATION_BLOCK`] dimensions. One round
/// keeps each block's share of a vector's energy, so a residual and a query that lean into
/// different blocks get a biased estimate; after a second round every output block mixes
/// every input block, and a third evens out what the second left.
const ROTATION_ROUNDS: usize = 3;
/// Fixed, so every replica that opens a collection builds the same codes.
const ROTATION_SEED: u64 = 0x5241_4249_5451;
/// Relative slack added to every error bound, for f32 rounding in the estimate's terms (the
/// rotation, the centroid's residual) that the bound itself does not count.
const F32_SLACK: f32 = 1e-5;
/// How many shortlisted records ahead a record is prefetched.
const PREFETCH_AHEAD: usize = 8;
/// Items encoded per matrix product at build.
const ENCODE_CHUNK: usize = 256;

/// A random orthogonal transform: rounds of a permutation of the dimensions, then a random
/// rotation of each block of consecutive dimensions.
struct Rotation {
    dims: usize,
    /// (first dimension, length) of each block.
    blocks: Vec<(usize, usize)>,
    rounds: Vec<Round>,
}

struct Round {
    /// Output position -> input dimension.
    permutation: Vec<u32>,
    /// One row-major `len x len` orthonormal matrix per block.
    matrices: Vec<Vec<f32>>,
}

impl Rotation {
    fn new(dims: usize) -> Rotation {
        Rotation::with_blocks_of(dims, ROTATION_BLOCK)
    }

    /// Blocks of at most `block` dimensions (tests use small ones: making a 512-dimension
    /// block is slow in a debug build).
    fn with_blocks_of(dims: usize, block: usize) -> Rotation {
        let mut rng = StdRng::seed_from_u64(ROTATION_SEED ^ dims as u64);
        let count = dims.div_ceil(block).max(1);
        let blocks: Vec<(usize, usize)> =
            (0..count).map(|b| (b * dims / count, (b + 1) * dims / count - b * dims / count)).collect();
        let rounds = if count == 1 { 1 } else { ROTATION_ROUNDS };
        let rounds = (0..rounds)
            .map(|_| Round {
                permutation: rand::seq::index::sample(&mut rng, dims, dims).into_iter().map(|i| i as u32).collect(),
                matrices: blocks.iter().map(|&(_, len)| orthonormal(len, &mut rng)).collect(),
            })
            .collect();
        Rotation { dims, blocks, rounds }
    }

    /// `out = R x`.
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        let mut current = x.to_vec();
        for round in &self.rounds {
            let permuted: Vec<f32> = round.permutation.iter().map(|&i| current[i as usize]).collect();
            for (&(start, len), matrix) in self.blocks.iter().zip(&round.matrices) {
                let input = &permuted[start..start + len];
                for (row, o) in matrix.chunks_exact(len).zip(&mut current[start..start + len]) {
                    *o = dot(row, input);
                }
            }
        }
        out.copy_from_slice(&current);
    }

    /// `out = R x` for vectors laid out one after another.
    fn apply_many(&self, xs: &[f32], out: &mut [f32]) {
        let d = self.dims;
        assert_eq!(xs.len(), out.len());
        assert_eq!(xs.len() % d.max(1), 0);
        if xs.is_empty() {
            return;
        }
        let n = xs.len() / d;
        out.copy_from_slice(xs);
        let mut permuted = vec![0.0f32; xs.len()];
        for round in &self.rounds {
            for (x, p) in out.chunks_exact(d).zip(permuted.chunks_exact_mut(d)) {
                p.iter_mut().zip(&round.permutation).for_each(|(p, &i)| *p = x[i as usize]);
            }
            for (&(start, len), matrix) in self.blocks.iter().zip(&round.matrices) {
                // out[:, block] (n x len) = permuted[:, block] (n x len) . matrix^T (len x len).
                // SAFETY: every pointer and stride addresses inside `permuted`, `matrix` and
                // `out` (both n x d, not empty): rows are `d` apart and each block's columns lie
                // within a row (start + len <= d).
                unsafe {
                    matrixmultiply::sgemm(
                        n,
                        len,
                        len,
                        1.0,
                        permuted.as_ptr().add(start),
                        d as isize,
                        1,
                        matrix.as_ptr(),
                        1,
                        len as isize,
                        0.0,
                        out.as_mut_ptr().add(start),
                        d as isize,
                        1,
                    );
                }
            }
        }
    }
}

/// A random `n x n` orthonormal matrix, row-major (Gram-Schmidt over Gaussian rows, in f64).
fn orthonormal(n: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut rows: Vec<Vec<f64>> = (0..n).map(|_| (0..n).map(|_| gaussian(rng) as f64).collect()).collect();
    for i in 0..n {
        let (done, rest) = rows.split_at_mut(i);
        let row = &mut rest[0];
        for previous in done.iter() {
            let along: f64 = row.iter().zip(previous).map(|(a, b)| a * b).sum();
            row.iter_mut().zip(previous).for_each(|(a, b)| *a -= along * b);
        }
        let norm = row.iter().map(|a| a * a).sum::<f64>().sqrt();
        row.iter_mut().for_each(|a| *a /= norm);
    }
    rows.into_iter().flatten().map(|x| x as f32).collect()
}

/// One partition's codes, in the sign codes' order.
struct Block {
    /// [`record_words`] per item, so a shortlisted item costs one cache line or two:
    /// `words` of signs (bit i set when the rotated residual's coordinate i is positive), then
    /// the residual's squared length and its scale (0: the item is its centroid), then the
    /// signs' inner product with the rotated centroid, <o_bar, P c>, as f32 bits.
    records: Vec<u64>,
    /// Rotated centroids, one per list (one, the collection's mean, without lists).
    centroids: Vec<f32>,
}

/// u64 words per item: the sign words, then two of numbers (see [`Block::records`]).
fn record_words(words: usize) -> usize {
    words + 2
}

fn pack(low: f32, high: f32) -> u64 {
    low.to_bits() as u64 | (high.to_bits() as u64) << 32
}

fn unpack(word: u64) -> (f32, f32) {
    (f32::from_bits(word as u32), f32::from_bits((word >> 32) as u32))
}

pub struct Rabitq {
    dims: usize,
    words: usize,
    metric: Metric,
    rotation: Rotation,
    blocks: Vec<Block>,
}

/// A rotated query, quantized once: <o_bar, P q> of any item is then a handful of popcounts.
/// An item's residual term is that less the item's stored <o_bar, P c>, so no list needs its
/// own quantized query.
struct Query {
    rotated: Vec<f32>,
    /// [`QUERY_BITS`] planes of `words`: plane j holds bit j of each quantized coordinate.
    planes: Vec<u64>,
    low: f32,
    step: f32,
    /// Sum of the quantized coordinates.
    sum: f32,
    norm_sq: f32,
}

/// A partition's shortlist as [`Rabitq::estimates`] reads it: positions into the code order of
/// a partition of `members` items, with the partition's records and lists and the query.
#[derive(Clone, Copy)]
struct Shortlisted<'a> {
    block: &'a Block,
    query: &'a Query,
    lists: Option<&'a CoarseLists>,
    members: usize,
    positions: &'a [u32],
}

/// What turns an item's estimated inner product into a score and an error bound, for one list.
struct ListTerms {
    /// score = base + rho_weight * rho_sq + ip_weight * scale * <o_bar, v>.
    base: f32,
    /// error = shape_error * sqrt(scale^2 - rho_sq) + rounding_error * scale.
    shape_error: f32,
}

impl Rabitq {
    /// Encodes every item of the collection (all cores), in the order `orders[p]` gives
    /// partition p's sign codes; `center` stands in for the centroid of a partition without
    /// lists.
    pub fn build(collection: &Collection, center: &[f32], orders: &[&[u32]]) -> Rabitq {
        let manifest = collection.manifest();
        let dims = manifest.dimensions;
        let words = dims.div_ceil(64);
        let rotation = Rotation::new(dims);
        let blocks = orders
            .par_iter()
            .enumerate()
            .map(|(partition, order)| {
                let lists = collection.coarse_lists(partition as u16);
                let raw: Vec<f32> = match lists {
                    Some(l) => (0..l.len()).flat_map(|i| l.centroid(i)).copied().collect(),
                    None => center.to_vec(),
                };
                let mut centroids = vec![0.0f32; raw.len()];
                rotation.apply_many(&raw, &mut centroids);
                let mut records = vec![0u64; order.len() * record_words(words)];
                records
                    .par_chunks_mut(ENCODE_CHUNK * record_words(words))
                    .zip(order.par_chunks(ENCODE_CHUNK))
                    .enumerate()
                    .for_each(|(chunk, (records, items))| {
                        let raw: Vec<f32> = items.iter().flat_map(|&item| collection.vector(item)).copied().collect();
                        let list_of = |i: usize| lists.map_or(0, |l| l.list_of(chunk * ENCODE_CHUNK + i));
                        encode_chunk(&rotation, &centroids, list_of, &raw, records);
                    });
                Block { records, centroids }
            })
            .collect();
        Rabitq { dims, words, metric: manifest.metric, rotation, blocks }
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        let rotation: usize = self
            .rotation
            .rounds
            .iter()
            .map(|r| r.permutation.len() + r.matrices.iter().map(Vec::len).sum::<usize>())
            .sum();
        let blocks: usize = self.blocks.iter().map(|b| b.records.len() * 8 + b.centroids.len() * 4).sum();
        blocks + rotation * 4
    }

    /// The `q.k` nearest of the shortlisted `positions` (into the partition's code order,
    /// whose items are `items`), re-ranking exactly only the items the estimates cannot rule
    /// out.
    pub fn rerank(
        &self,
        collection: &Collection,
        q: &PartitionQuery<'_>,
        lists: Option<&CoarseLists>,
        items: &[u32],
        positions: &[u32],
    ) -> Result<Vec<Scored>> {
        let block = &self.blocks[q.partition as usize];
        let query = self.quantize(q.vector);
        let estimates = self.estimates(Shortlisted { block, query: &query, lists, members: items.len(), positions });
        rerank_estimated(collection, q, items, estimates)
    }

    fn quantize(&self, vector: &[f32]) -> Query {
        let mut rotated = vec![0.0f32; self.dims];
        self.rotation.apply(vector, &mut rotated);
        let low = rotated.iter().copied().fold(f32::INFINITY, f32::min);
        let high = rotated.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let levels = ((1u32 << QUERY_BITS) - 1) as f32;
        // A step too small to invert (a query of ~1e-36) quantizes every coordinate to `low`.
        let step = if (high - low) / levels >= f32::MIN_POSITIVE { (high - low) / levels } else { 0.0 };
        let inverse = if step > 0.0 { 1.0 / step } else { 0.0 };
        let mut planes = vec![0u64; QUERY_BITS * self.words];
        let mut total = 0u32;
        for (word, chunk) in rotated.chunks(64).enumerate() {
            for (i, x) in chunk.iter().enumerate() {
                // Nearest level: (x - low) / step is in 0..=levels, so +0.5 then truncation.
                let level = (((x - low) * inverse + 0.5) as u32).min(levels as u32);
                total += level;
                for (bit, plane) in planes.chunks_exact_mut(self.words).enumerate() {
                    plane[word] |= ((level >> bit & 1) as u64) << i;
                }
            }
        }
        let norm_sq = dot(&rotated, &rotated);
        Query { rotated, planes, low, step, sum: self.dims as f32 * low + step * total as f32, norm_sq }
    }

    fn terms(&self, block: &Block, list: usize, query: &Query) -> ListTerms {
        let d = self.dims;
        let centroid = &block.centroids[list * d..(list + 1) * d];
        // v: the query's residual to the centroid (for dot products, the query itself).
        let (v_norm_sq, base) = match self.metric {
            Metric::Dot => (query.norm_sq, -dot(centroid, &query.rotated)),
            _ => {
                // Directly, not |q|^2 - 2 <q, c> + |c|^2, which cancels when q is near c.
                let v_norm_sq = (crate::distance::kernels().l2_squared)(centroid, &query.rotated);
                match self.metric {
                    // Unit vectors: 1 - <x, q> = |x - q|^2 / 2.
                    Metric::Cosine | Metric::BinaryQuantizedCosine => (v_norm_sq, v_norm_sq / 2.0),
                    _ => (v_norm_sq, v_norm_sq),
                }
            }
        };
        let (_, ip_weight) = self.weights();
        let shape_error = ip_weight.abs() * EPSILON_0 * v_norm_sq.sqrt() / ((d.max(2) - 1) as f32).sqrt();
        ListTerms { base, shape_error }
    }

    /// (rho_weight, ip_weight) of this metric's score.
    fn weights(&self) -> (f32, f32) {
        match self.metric {
            Metric::Euclidean => (1.0, -2.0),
            Metric::Cosine | Metric::BinaryQuantizedCosine => (0.5, -1.0),
            Metric::Dot => (0.0, -1.0),
        }
    }

    /// (estimate, error bound, position) of each shortlisted position, with the CPU's
    /// popcount instruction where it has one.
    fn estimates(&self, shortlist: Shortlisted<'_>) -> Vec<(f32, f32, u32)> {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "popcnt")]
            fn with_popcnt(rabitq: &Rabitq, shortlist: Shortlisted<'_>) -> Vec<(f32, f32, u32)> {
                rabitq.estimates_portable(shortlist)
            }
            if std::is_x86_feature_detected!("popcnt") {
                // SAFETY: the CPU supports popcnt (checked just above).
                return unsafe { with_popcnt(self, shortlist) };
            }
        }
        self.estimates_portable(shortlist)
    }

    #[inline(always)]
    fn estimates_portable(&self, shortlist: Shortlisted<'_>) -> Vec<(f32, f32, u32)> {
        let Shortlisted { block, query, lists, members, positions } = shortlist;
        let mut estimates = Vec::with_capacity(positions.len());
        let r = record_words(self.words);
        // The shortlist comes run by run, each run a list (or the whole partition), so the
        // terms are worked out once per list it reaches.
        let mut current: Option<(Range<usize>, ListTerms)> = None;
        for (i, &position) in positions.iter().enumerate() {
            // The shortlist is scattered over the partition's records: ask for the record a
            // few items ahead while this one is worked out.
            if let Some(&ahead) = positions.get(i + PREFETCH_AHEAD) {
                // Every cache line the record touches (it need not start one).
                let record = &block.records[ahead as usize * r..(ahead as usize + 1) * r];
                record.iter().step_by(8).for_each(prefetch);
                prefetch(&record[r - 1]);
            }
            let position = position as usize;
            let terms = match &current {
                Some((range, terms)) if range.contains(&position) => terms,
                _ => {
                    let (list, range) = match lists {
                        Some(l) => (l.list_of(position), l.list(l.list_of(position))),
                        None => (0, 0..members),
                    };
                    &current.insert((range, self.terms(block, list, query))).1
                }
            };
            let (estimate, error) = self.estimate(block, query, terms, position);
            estimates.push((estimate, error, position as u32));
        }
        estimates
    }

    /// The estimated score of the item at `position` and the bound on its error.
    #[inline(always)]
    fn estimate(&self, block: &Block, query: &Query, terms: &ListTerms, position: usize) -> (f32, f32) {
        let (w, r) = (self.words, record_words(self.words));
        let record = &block.records[position * r..(position + 1) * r];
        let (set, weighted) = popcounts(&record[..w], &query.planes, w);
        // <o_bar, P q_hat>: o_bar is +-1/sqrt(D) by sign, so it is (2 * the sum of q_hat over
        // the set bits - the sum of all of q_hat) / sqrt(D).
        let over_set = query.low * set as f32 + query.step * weighted as f32;
        let mut ip = (2.0 * over_set - query.sum) / (self.dims as f32).sqrt();
        let (rho_sq, scale) = unpack(record[w]);
        let (centroid_ip, _) = unpack(record[w + 1]);
        if self.metric != Metric::Dot {
            ip -= centroid_ip;
        }
        let (rho_weight, ip_weight) = self.weights();
        let estimate = terms.base + rho_weight * rho_sq + ip_weight * scale * ip;
        let rounding_error = ip_weight.abs() * ROUNDING_STEPS * query.step;
        // Plus a slack of a few ulps of the terms summed: an item at its centroid has no shape or
        // rounding error, and its f32 estimate may still miss an exact score it ties.
        let terms_sum = terms.base.abs() + (rho_weight * rho_sq).abs() + (ip_weight * scale * ip).abs();
        let error = terms.shape_error * (scale * scale - rho_sq).max(0.0).sqrt()
            + rounding_error * scale
            + F32_SLACK * terms_sum;
        (estimate, error)
    }
}

/// The set bits of `bits`, and the sum over planes j of 2^j x the bits set in both `bits` and
/// plane j.
#[inline(always)]
fn popcounts(bits: &[u64], planes: &[u64], words: usize) -> (u32, u32) {
    let set: u32 = bits.iter().map(|b| b.count_ones()).sum();
    let mut weighted = 0u32;
    for (j, plane) in planes.chunks_exact(words).enumerate() {
        let both: u32 = bits.iter().zip(plane).map(|(b, p)| (b & p).count_ones()).sum();
        weighted += both << j;
    }
    (set, weighted)
}

/// Writes into `records` the records of the vectors `raw` (one after another); the i-th
/// belongs to list `list_of(i)`, whose rotated centroid is in `centroids`.
fn encode_chunk(
    rotation: &Rotation,
    centroids: &[f32],
    list_of: impl Fn(usize) -> usize,
    raw: &[f32],
    records: &mut [u64],
) {
    let d = rotation.dims;
    let words = d.div_ceil(64);
    let mut rotated = vec![0.0f32; raw.len()];
    rotation.apply_many(raw, &mut rotated);
    for (i, (x, record)) in rotated.chunks_exact_mut(d).zip(records.chunks_exact_mut(record_words(words))).enumerate() {
        let list = list_of(i);
        let centroid = &centroids[list * d..(list + 1) * d];
        x.iter_mut().zip(centroid).for_each(|(x, c)| *x -= c);
        let (rho_sq, scale) = encode(x, &mut record[..words]);
        let signed: f32 = centroid.iter().enumerate().map(|(j, c)| if x[j] > 0.0 { *c } else { -*c }).sum();
        record[words] = pack(rho_sq, scale);
        record[words + 1] = pack(signed / (d as f32).sqrt(), 0.0);
    }
}

/// Sets `code`'s bits from the signs of the rotated residual `r`; returns |r|^2 and the scale
/// |r| / <o_bar, o> (o = r / |r|, o_bar = sign(r) / sqrt(D)), which is |r|^2 sqrt(D) / sum |r_i|.
fn encode(r: &[f32], code: &mut [u64]) -> (f32, f32) {
    code.fill(0);
    let (mut norm_sq, mut abs_sum) = (0.0f32, 0.0f32);
    for (i, &x) in r.iter().enumerate() {
        if x > 0.0 {
            code[i / 64] |= 1 << (i % 64);
        }
        norm_sq += x * x;
        abs_sum += x.abs();
    }
    if abs_sum == 0.0 {
        return (0.0, 0.0);
    }
    (norm_sq, norm_sq * (r.len() as f32).sqrt() / abs_sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Ranking;
    use crate::search::strategy::keep_nearest;
    use crate::search::topk::TopK;

    #[test]
    fn the_rotation_keeps_lengths_and_angles() {
        for (dims, block) in [(3, 512), (64, 512), (384, 512), (300, 64)] {
            let rotation = Rotation::with_blocks_of(dims, block);
            let mut rng = StdRng::seed_from_u64(1);
            let xs: Vec<f32> = (0..2 * dims).map(|_| gaussian(&mut rng)).collect();
            let mut one = vec![0.0; 2 * dims];
            rotation.apply_many(&xs, &mut one);
            let (a, b) = xs.split_at(dims);
            let (ra, rb) = one.split_at(dims);
            let close = |x: f32, y: f32| (x - y).abs() <= 1e-3 * x.abs().max(1.0);
            assert!(close(dot(a, b), dot(ra, rb)), "{dims}: {} vs {}", dot(a, b), dot(ra, rb));
            assert!(close(dot(a, a), dot(ra, ra)), "{dims}");
            // One vector at a time gives what the matrix product gives.
            let mut single = vec![0.0; dims];
            rotation.apply(a, &mut single);
            assert!(single.iter().zip(ra).all(|(x, y)| close(*x, *y)), "{dims}");
            // It is not the identity.
            assert!(!close(a[0], ra[0]) || !close(a[1], ra[1]), "{dims}");
        }
    }

    /// A one-partition, one-list index over `vectors` (centred on their mean), as the build
    /// makes it.
    fn index(metric: Metric, dims: usize, block: usize, vectors: &[f32]) -> Rabitq {
        let rotation = Rotation::with_blocks_of(dims, block);
        let n = vectors.len() / dims;
        let mut mean = vec![0.0f32; dims];
        vectors.chunks_exact(dims).for_each(|v| mean.iter_mut().zip(v).for_each(|(m, x)| *m += x / n as f32));
        let mut centroids = vec![0.0; dims];
        rotation.apply_many(&mean, &mut centroids);
        let words = dims.div_ceil(64);
        let mut records = vec![0u64; n * record_words(words)];
        encode_chunk(&rotation, &centroids, |_| 0, vectors, &mut records);
        Rabitq { dims, words, metric, rotation, blocks: vec![Block { records, centroids }] }
    }

    /// Clustered vectors; `lopsided` shrinks all but each vector's first 50 coordinates
    /// tenfold, so residuals and queries lean into some rotation blocks.
    fn clustered(dims: usize, n: usize, stream: u64, lopsided: bool, metric: Metric) -> Vec<f32> {
        let mut v = crate::datagen::Clustered::new(dims, 11).generate(n, stream);
        if lopsided {
            v.chunks_exact_mut(dims).for_each(|x| x[50..].iter_mut().for_each(|c| *c *= 0.1));
        }
        if metric == Metric::Cosine {
            v.chunks_exact_mut(dims).for_each(|x| {
                crate::distance::normalize(x);
            });
        }
        v
    }

    /// Among each query's 100 nearest items (the ones re-ranking decides about), few exact
    /// scores are better than their estimate less the bound; and the estimates order items well
    /// enough that the exact top 10 is in their top 100. Also with more than one rotation block
    /// (blocks of 64 here, as of 512 for more than 512 dimensions), vectors leaning into some.
    #[test]
    fn estimates_hold_their_error_bound_and_find_the_nearest() {
        let cases = [
            (Metric::Cosine, 128, 512, false),
            (Metric::Euclidean, 100, 512, false),
            (Metric::Dot, 64, 512, false),
            (Metric::Cosine, 384, 64, true),
            (Metric::Euclidean, 256, 64, true),
        ];
        for (metric, dims, block, lopsided) in cases {
            let vectors = clustered(dims, 2000, 0, lopsided, metric);
            let queries = clustered(dims, 20, 1, lopsided, metric);
            let index = index(metric, dims, block, &vectors);
            let kernel = metric.kernel();
            let (mut outside, mut pairs, mut found) = (0usize, 0usize, 0usize);
            for q in queries.chunks_exact(dims) {
                let query = index.quantize(q);
                let terms = index.terms(&index.blocks[0], 0, &query);
                // (estimate, error, exact, item)
                let mut scored: Vec<(f32, f32, f32, usize)> = vectors
                    .chunks_exact(dims)
                    .enumerate()
                    .map(|(i, v)| {
                        let (estimate, error) = index.estimate(&index.blocks[0], &query, &terms, i);
                        (estimate, error, kernel(q, v), i)
                    })
                    .collect();
                scored.sort_by(|a, b| a.2.total_cmp(&b.2));
                for (estimate, error, exact, _) in &scored[..100] {
                    pairs += 1;
                    outside += usize::from(*exact < estimate - error);
                }
                let truth: Vec<usize> = scored[..10].iter().map(|s| s.3).collect();
                scored.sort_by(|a, b| a.0.total_cmp(&b.0));
                found += scored[..100].iter().filter(|s| truth.contains(&s.3)).count();
            }
            let outside = outside as f64 / pairs as f64;
            let recall = found as f64 / 200.0;
            assert!(outside < 0.01, "{metric:?} {dims}: {outside} of the exact scores lie below their bound");
            assert!(recall > 0.9, "{metric:?} {dims}: the estimates' top 100 hold {recall} of the exact top 10");
        }
    }

    /// Skipping what the bound rules out keeps the exact top k of the whole shortlist and
    /// scores fewer items exactly.
    #[test]
    fn the_bound_cuts_exact_scoring_and_keeps_the_top_k() {
        let dims = 128;
        let vectors = clustered(dims, 2000, 0, false, Metric::Cosine);
        let queries = clustered(dims, 20, 1, false, Metric::Cosine);
        let index = index(Metric::Cosine, dims, 512, &vectors);
        let kernel = Metric::Cosine.kernel();
        let positions: Vec<u32> = (0..500).collect();
        let (mut scored, mut kept) = (0usize, 0usize);
        for q in queries.chunks_exact(dims) {
            let query = index.quantize(q);
            let shortlist = Shortlisted {
                block: &index.blocks[0],
                query: &query,
                lists: None,
                members: 2000,
                positions: &positions,
            };
            let estimates = index.estimates(shortlist);
            let exact = |p: u32| kernel(q, &vectors[p as usize * dims..(p as usize + 1) * dims]);
            let mut calls = 0;
            let top = keep_nearest(
                estimates,
                10,
                |p| {
                    calls += 1;
                    Ok((p, exact(p)))
                },
                || Ok(()),
            )
            .unwrap();
            let mut all = TopK::new(10);
            positions.iter().for_each(|&p| all.push(p, exact(p)));
            let all = all.into_sorted();
            kept += top.iter().filter(|t| all.contains(t)).count();
            scored += calls;
        }
        assert!(kept >= 199, "{kept} of 200 of the shortlist's exact top 10 kept");
        assert!(scored < 20 * 500 / 2, "{scored} of {} shortlisted items scored exactly", 20 * 500);
    }

    #[test]
    fn an_item_at_its_centroid_has_no_scale() {
        let mut code = [0u64; 1];
        assert_eq!(encode(&[0.0; 8], &mut code), (0.0, 0.0));
        // A residual along the signs: <o_bar, o> = 1, so the scale is its length.
        let (rho_sq, scale) = encode(&[0.5, -0.5, 0.5, -0.5], &mut code);
        assert_eq!(code[0], 0b0101);
        assert!((rho_sq - 1.0).abs() < 1e-6 && (scale - 1.0).abs() < 1e-6);
    }
}
