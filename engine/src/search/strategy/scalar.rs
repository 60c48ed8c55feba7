//! 8-bit scalar codes (`shortlist: scalar8`): the filter between the sign-code scan's shortlist
//! and exact re-ranking, as [`super::rabitq`] is, but with a bound that holds for every item,
//! not for all but a few. Each dimension's range over the collection is cut into 255 steps,
//! and an item's code is the nearest step of each of its coordinates: every decoded coordinate
//! lies within half a step of the true one, so a query's inner product with the decoded vector
//! lies within `sum_d |q_d| step_d / 2` of the true one, and the decoded vector within
//! `sqrt(sum_d step_d^2) / 2` of the true one (for Euclidean distances, estimated as faiss's
//! scalar quantizer does, `sum_d step_d^2 (code_d - q'_d)^2` with `q'_d = (q_d - low_d) / step_d`:
//! a sum of squares, which no cancellation spoils). One byte per dimension per item (384 at
//! 384 dimensions, where RaBitQ keeps 64).

use super::{CANCEL_EVERY, PartitionQuery, Scored, prefetch, rerank_estimated};
use crate::collection::Collection;
use crate::distance::dot;
use crate::error::Result;
use crate::types::Metric;
use rayon::prelude::*;

/// Steps of a dimension's range: the largest code.
const LEVELS: f32 = 255.0;
/// Rounding the bound itself does not count (the encoding, the estimate's sums, the exact
/// kernel's own), as a multiple of f32's epsilon times the magnitude of what is summed: a sum
/// of D terms in eight lanes rounds by at most about (D / 8 + 3) epsilons of the sum of their
/// magnitudes, the kernel's by at most D; this allows D + 16 for both, plus [`ABSOLUTE_SLACK`]
/// for a score of the form 1 - x.
fn slack_epsilons(dims: usize) -> f32 {
    (dims as f32 + 16.0) * f32::EPSILON
}
/// `1 - ip` and the cosine kernel's own `1 - dot` each round by up to an epsilon of 1.
const ABSOLUTE_SLACK: f32 = 4.0 * f32::EPSILON;
/// How many shortlisted codes ahead a code is prefetched.
const PREFETCH_AHEAD: usize = 8;

pub struct Scalar8 {
    dims: usize,
    metric: Metric,
    /// Each dimension's smallest value over the collection, and its step.
    low: Vec<f32>,
    step: Vec<f32>,
    /// The largest magnitude of each dimension: what the f32 slack is a share of.
    magnitude: Vec<f32>,
    /// Per partition, in the sign codes' order: `dims` bytes per item.
    codes: Vec<Vec<u8>>,
}

impl Scalar8 {
    /// Encodes every item of the collection (all cores), partition p in the order `orders[p]`
    /// gives its sign codes.
    pub fn build(collection: &Collection, orders: &[&[u32]]) -> Scalar8 {
        let manifest = collection.manifest();
        let (dims, metric) = (manifest.dimensions, manifest.metric);
        let n = collection.len() as u32;
        let (low, high) = (0..n)
            .into_par_iter()
            .fold(
                || (vec![f32::INFINITY; dims], vec![f32::NEG_INFINITY; dims]),
                |(mut low, mut high), item| {
                    for ((l, h), x) in low.iter_mut().zip(&mut high).zip(collection.vector(item)) {
                        (*l, *h) = (l.min(*x), h.max(*x));
                    }
                    (low, high)
                },
            )
            .reduce(
                || (vec![f32::INFINITY; dims], vec![f32::NEG_INFINITY; dims]),
                |(a_low, a_high), (b_low, b_high)| {
                    let low = a_low.iter().zip(&b_low).map(|(a, b)| a.min(*b)).collect();
                    let high = a_high.iter().zip(&b_high).map(|(a, b)| a.max(*b)).collect();
                    (low, high)
                },
            );
        let mut scalar = Scalar8::of_ranges(metric, low, high);
        for order in orders {
            let mut codes = vec![0u8; order.len() * dims];
            codes.par_chunks_mut(dims.max(1)).zip(*order).for_each(|(code, &item)| {
                scalar.encode(collection.vector(item), code);
            });
            scalar.codes.push(codes);
        }
        scalar
    }

    /// A coder of values from `low` to `high` in each dimension, with no codes yet.
    fn of_ranges(metric: Metric, low: Vec<f32>, high: Vec<f32>) -> Scalar8 {
        // An empty collection has no range: every step 0.
        let low: Vec<f32> = low.iter().map(|l| if l.is_finite() { *l } else { 0.0 }).collect();
        let high: Vec<f32> = high.iter().zip(&low).map(|(h, l)| if h.is_finite() { *h } else { *l }).collect();
        let step: Vec<f32> = low.iter().zip(&high).map(|(l, h)| (h - l) / LEVELS).collect();
        let magnitude = low.iter().zip(&high).map(|(l, h)| l.abs().max(h.abs())).collect();
        Scalar8 { dims: low.len(), metric, low, step, magnitude, codes: Vec::new() }
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.codes.iter().map(Vec::len).sum::<usize>() + self.dims * 12
    }

    fn encode(&self, vector: &[f32], code: &mut [u8]) {
        for (((c, x), low), step) in code.iter_mut().zip(vector).zip(&self.low).zip(&self.step) {
            *c = if *step > 0.0 { ((x - low) / step + 0.5).clamp(0.0, LEVELS) as u8 } else { 0 };
        }
    }

    /// `vector`, ready for the estimates of this collection's metric.
    fn prepare(&self, vector: &[f32]) -> Prepared {
        let slack = slack_epsilons(self.dims);
        // Inner products: <q, decoded> = <q, low> + sum_d (q_d step_d) code_d.
        // Euclidean: |decoded - q|^2 = fixed + sum_d step_d^2 (code_d - q'_d)^2, `fixed` from
        // the dimensions without range (whose code says nothing).
        let (weights, shifted, fixed, off_by) = match self.metric {
            Metric::Euclidean => {
                let terms = vector.iter().zip(&self.low).zip(&self.step);
                let fixed = terms.clone().filter(|(_, s)| **s == 0.0).map(|((x, l), _)| (x - l).powi(2)).sum();
                let shifted: Vec<f32> = terms.map(|((x, l), s)| if *s > 0.0 { (x - l) / s } else { 0.0 }).collect();
                // The decoded vector lies within half a step of the item in each dimension, but
                // the encoding's `(x - low) / step` rounds by a few epsilons of up to 256 steps,
                // which can move an item on a half step to the farther code; and `q'` rounds by
                // a few epsilons of its own size in steps. Both widen the radius the bound
                // allows, so an item on a half step is never ruled out by rounding.
                let item = self.step.iter().map(|s| s * s).sum::<f32>().sqrt() / 2.0 * (1.0 + 2048.0 * f32::EPSILON);
                let query = 4.0
                    * f32::EPSILON
                    * (self.step.iter().zip(&shifted)).map(|(s, q)| (s * (q.abs() + 1.0)).powi(2)).sum::<f32>().sqrt();
                (self.step.iter().map(|s| s * s).collect(), shifted, fixed, item + query)
            }
            _ => (vector.iter().zip(&self.step).map(|(x, s)| x * s).collect(), Vec::new(), 0.0, 0.0),
        };
        Prepared {
            metric: self.metric,
            offset: dot(vector, &self.low),
            ip_bound: vector.iter().zip(&self.step).map(|(x, s)| (x * s).abs()).sum::<f32>() / 2.0,
            ip_slack: slack * vector.iter().zip(&self.magnitude).map(|(x, m)| x.abs() * m).sum::<f32>(),
            off_by,
            slack,
            weights,
            shifted,
            fixed,
        }
    }

    /// The `q.k` nearest of the shortlisted `positions` (into the partition's code order,
    /// whose items are `items`), re-ranking exactly only the items the estimates cannot rule
    /// out.
    pub fn rerank(
        &self,
        collection: &Collection,
        q: &PartitionQuery<'_>,
        items: &[u32],
        positions: &[u32],
    ) -> Result<Vec<Scored>> {
        let prepared = self.prepare(q.vector);
        let estimates = prepared.estimates(&self.codes[q.partition as usize], self.dims.max(1), positions, q)?;
        rerank_estimated(collection, q, items, estimates)
    }
}

/// A query ready for [`Prepared::estimate`].
struct Prepared {
    metric: Metric,
    /// Inner products: `q_d step_d`; Euclidean: `step_d^2`.
    weights: Vec<f32>,
    /// Euclidean: `q'_d`.
    shifted: Vec<f32>,
    /// Euclidean: the dimensions without range.
    fixed: f32,
    /// `<q, low>`.
    offset: f32,
    ip_bound: f32,
    ip_slack: f32,
    /// Euclidean: how far any decoded vector lies from its true one, as this query sees it
    /// (rounding included).
    off_by: f32,
    /// [`slack_epsilons`].
    slack: f32,
}

impl Prepared {
    /// (estimate, error bound, position) of each shortlisted position of `codes` (`dims`
    /// bytes each), the whole loop compiled for AVX2 where the CPU has it, so the sums
    /// inline into it at that width.
    fn estimates(
        &self,
        codes: &[u8],
        dims: usize,
        positions: &[u32],
        q: &PartitionQuery<'_>,
    ) -> Result<Vec<(f32, f32, u32)>> {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            fn with_avx2(
                prepared: &Prepared,
                codes: &[u8],
                dims: usize,
                positions: &[u32],
                q: &PartitionQuery<'_>,
            ) -> Result<Vec<(f32, f32, u32)>> {
                prepared.estimates_portable(codes, dims, positions, q)
            }
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { with_avx2(self, codes, dims, positions, q) };
            }
        }
        self.estimates_portable(codes, dims, positions, q)
    }

    #[inline(always)]
    fn estimates_portable(
        &self,
        codes: &[u8],
        d: usize,
        positions: &[u32],
        q: &PartitionQuery<'_>,
    ) -> Result<Vec<(f32, f32, u32)>> {
        let mut estimates = Vec::with_capacity(positions.len());
        for (i, &position) in positions.iter().enumerate() {
            if i % CANCEL_EVERY == 0 {
                q.cancel.check("search")?;
            }
            if let Some(&ahead) = positions.get(i + PREFETCH_AHEAD) {
                let code = &codes[ahead as usize * d..(ahead as usize + 1) * d];
                code.iter().step_by(64).for_each(prefetch);
                prefetch(&code[d - 1]);
            }
            let (estimate, error) = self.estimate(&codes[position as usize * d..(position as usize + 1) * d]);
            estimates.push((estimate, error, position));
        }
        Ok(estimates)
    }

    /// The estimated score of the item whose code is `code`, and a bound on its error.
    #[inline(always)]
    fn estimate(&self, code: &[u8]) -> (f32, f32) {
        match self.metric {
            Metric::Dot => (-(self.offset + inner_sum(&self.weights, code)), self.ip_bound + self.ip_slack),
            Metric::Cosine | Metric::BinaryQuantizedCosine => {
                (1.0 - (self.offset + inner_sum(&self.weights, code)), self.ip_bound + self.ip_slack + ABSOLUTE_SLACK)
            }
            Metric::Euclidean => {
                let estimate = self.fixed + squares_sum(&self.weights, &self.shifted, code);
                // |x - q| >= |decoded - q| - off_by; every term summed is positive.
                let nearest = (estimate.sqrt() - self.off_by).max(0.0);
                (estimate, estimate - nearest * nearest + self.slack * (estimate + self.off_by * self.off_by))
            }
        }
    }
}

// Eight lanes summed apart, so the additions need not wait on each other; over exact chunks
// of eight, so the loops vectorize without bounds checks.

#[inline(always)]
fn inner_sum(weights: &[f32], code: &[u8]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (w_chunks, c_chunks) = (weights.chunks_exact(8), code.chunks_exact(8));
    let tail: f32 = w_chunks.remainder().iter().zip(c_chunks.remainder()).map(|(w, c)| w * *c as f32).sum();
    for (w, c) in w_chunks.zip(c_chunks) {
        for j in 0..8 {
            lanes[j] += w[j] * c[j] as f32;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn squares_sum(weights: &[f32], shifted: &[f32], code: &[u8]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (w_chunks, s_chunks, c_chunks) = (weights.chunks_exact(8), shifted.chunks_exact(8), code.chunks_exact(8));
    let tail: f32 = (w_chunks.remainder().iter().zip(s_chunks.remainder()).zip(c_chunks.remainder()))
        .map(|((w, s), c)| w * (*c as f32 - s) * (*c as f32 - s))
        .sum();
    for ((w, s), c) in w_chunks.zip(s_chunks).zip(c_chunks) {
        for j in 0..8 {
            let d = c[j] as f32 - s[j];
            lanes[j] += w[j] * d * d;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Ranking;
    use proptest::prelude::*;

    /// A coder over `points` (one after another, `dims` each), as a build makes one.
    fn coder(metric: Metric, points: &[f32], dims: usize) -> Scalar8 {
        let low = (0..dims).map(|d| points.iter().skip(d).step_by(dims).copied().fold(f32::INFINITY, f32::min));
        let high = (0..dims).map(|d| points.iter().skip(d).step_by(dims).copied().fold(f32::NEG_INFINITY, f32::max));
        Scalar8::of_ranges(metric, low.collect(), high.collect())
    }

    proptest! {
        /// Every estimate lies within its bound of the exact kernel's score, for every metric,
        /// with data far from the origin, ranges from narrow to wide, and queries inside or
        /// outside the data's span. A collection whose items are all one point has no range
        /// at all: its bound is the rounding slack alone, which the kernel's and the estimate's
        /// different orders of summing must stay within.
        #[test]
        fn estimates_lie_within_their_bound(
            unit in prop::collection::vec(-1.0f32..1.0, 64 * 40),
            widths in prop::collection::vec(0.0f32..100.0, 64),
            offset in -1000.0f32..1000.0,
            query in prop::collection::vec(-1.5f32..1.5, 64),
            metric in prop::sample::select(vec![Metric::Dot, Metric::Euclidean, Metric::Cosine]),
            one_point in any::<bool>(),
        ) {
            let dims = 64;
            let scale = |v: &[f32]| -> Vec<f32> {
                v.iter().enumerate().map(|(i, x)| offset + x * widths[i % dims]).collect()
            };
            let (mut points, mut q) = (scale(&unit), scale(&query));
            if one_point {
                let first = points[..dims].to_vec();
                points.chunks_exact_mut(dims).for_each(|p| p.copy_from_slice(&first));
            }
            if metric == Metric::Cosine {
                // Cosine collections hold unit vectors, and queries are normalised.
                for v in points.chunks_exact_mut(dims).chain(std::iter::once(&mut q[..])) {
                    let norm = dot(v, v).sqrt().max(f32::MIN_POSITIVE);
                    v.iter_mut().for_each(|x| *x /= norm);
                }
            }
            let s = coder(metric, &points, dims);
            let prepared = s.prepare(&q);
            let kernel = metric.kernel();
            for x in points.chunks_exact(dims) {
                let mut code = vec![0u8; dims];
                s.encode(x, &mut code);
                let (estimate, bound) = prepared.estimate(&code);
                let exact = kernel(&q, x);
                // What the re-ranking relies on: no item scores better than its estimate
                // minus its bound. Inner products are bounded on both sides as well.
                prop_assert!(exact >= estimate - bound, "{metric:?}: {estimate} vs {exact} (bound {bound})");
                if metric != Metric::Euclidean {
                    prop_assert!(exact <= estimate + bound, "{metric:?}: {estimate} vs {exact} (bound {bound})");
                }
            }
        }

        /// Items a few ulps around a half step, where the encoding's rounding may pick the
        /// farther code, with queries a few steps away on either side: the Euclidean bound
        /// still never rules out what the exact distance keeps.
        #[test]
        fn items_on_half_steps_keep_their_euclidean_bound(
            dims in 1usize..20,
            low in -1000.0f32..1000.0,
            width in 1e-3f32..1e3,
            halves in prop::collection::vec(0u8..255, 20),
            nudges in prop::collection::vec(-3i32..=3, 20),
            toward in prop::collection::vec(-3.0f32..3.0, 20),
        ) {
            let s = Scalar8::of_ranges(Metric::Euclidean, vec![low; dims], vec![low + width; dims]);
            let step = s.step[0];
            let x: Vec<f32> = (0..dims)
                .map(|d| {
                    let half = low + (halves[d] as f32 + 0.5) * step;
                    f32::from_bits((half.to_bits() as i32 + nudges[d]) as u32).clamp(low, low + width)
                })
                .collect();
            let q: Vec<f32> = x.iter().zip(&toward).map(|(x, t)| x + t * step).collect();
            let mut code = vec![0u8; dims];
            s.encode(&x, &mut code);
            let (estimate, bound) = s.prepare(&q).estimate(&code);
            let exact = Metric::Euclidean.kernel()(&q, &x);
            prop_assert!(exact >= estimate - bound, "{estimate} vs {exact} (bound {bound})");
        }
    }

    #[test]
    fn a_dimension_without_range_decodes_exactly() {
        let s = coder(Metric::Euclidean, &[0.5, -1.0, 0.5, 1.0], 2);
        let mut code = [9u8; 2];
        s.encode(&[0.5, 1.0], &mut code);
        assert_eq!(code, [0, 255]);
        let (estimate, _) = s.prepare(&[1.5, 1.0]).estimate(&code);
        assert!((estimate - 1.0).abs() < 1e-5, "{estimate}");
    }

    #[test]
    fn the_vector_sums_are_the_plain_ones() {
        let weights: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let shifted: Vec<f32> = (0..37).map(|i| i as f32 * 3.5).collect();
        let code: Vec<u8> = (0..37).map(|i| (i * 7 % 256) as u8).collect();
        let inner: f32 = weights.iter().zip(&code).map(|(w, c)| w * *c as f32).sum();
        let squares: f32 = weights.iter().zip(&shifted).zip(&code).map(|((w, s), c)| w * (*c as f32 - s).powi(2)).sum();
        assert!((inner_sum(&weights, &code) - inner).abs() <= 1e-3 * inner.abs().max(1.0));
        assert!((squares_sum(&weights, &shifted, &code) - squares).abs() <= 1e-3 * squares.abs().max(1.0));
    }
}
