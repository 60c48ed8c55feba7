//! The in-memory hot path: one bit per dimension (the sign of the vector minus the collection
//! mean), scanned with popcount, then the best candidates re-ranked with float32 vectors read
//! straight from the LMDB map. 384 dimensions become 48 bytes per vector.

use super::{AnnIndex, PartitionQuery, Scored, rerank};
use crate::collection::Collection;
use crate::error::Result;
use rayon::prelude::*;

pub struct SignScan {
    words: usize,
    center: Vec<f32>,
    /// Item-major codes: item `i` owns `codes[i * words..(i + 1) * words]`.
    codes: Vec<u64>,
}

impl SignScan {
    /// Encodes every vector of the collection (all cores).
    pub fn build(collection: &Collection) -> SignScan {
        let dims = collection.manifest().dimensions;
        let n = collection.len() as usize;
        let mut center = vec![0.0f64; dims];
        for item in 0..n as u32 {
            for (c, x) in center.iter_mut().zip(collection.vector(item)) {
                *c += *x as f64;
            }
        }
        let center: Vec<f32> = center.iter().map(|c| (c / n.max(1) as f64) as f32).collect();
        let words = dims.div_ceil(64);
        let mut codes = vec![0u64; n * words];
        codes.par_chunks_mut(words).enumerate().for_each(|(item, code)| {
            encode_into(collection.vector(item as u32), &center, code);
        });
        SignScan { words, center, codes }
    }

    pub fn encode(&self, vector: &[f32]) -> Vec<u64> {
        let mut code = vec![0u64; self.words];
        encode_into(vector, &self.center, &mut code);
        code
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.codes.len() * 8 + self.center.len() * 4
    }

    /// Ids of the `budget` members whose codes are nearest (in Hamming distance) to `code`.
    fn candidates(&self, code: &[u64], members: &roaring::RoaringBitmap, budget: usize) -> Vec<u32> {
        let mut scored: Vec<(u16, u32)> = Vec::with_capacity(members.len() as usize);
        let mut histogram = vec![0u32; self.words * 64 + 1];
        hamming_scan(&self.codes, self.words, code, members, &mut scored, &mut histogram);
        // Smallest threshold that admits at least `budget` candidates; ties at the threshold
        // are admitted in id order until the budget is filled.
        let mut admitted = 0usize;
        let mut threshold = 0usize;
        for (d, count) in histogram.iter().enumerate() {
            if admitted + *count as usize >= budget {
                threshold = d;
                break;
            }
            admitted += *count as usize;
            threshold = d;
        }
        let mut at_threshold = budget.saturating_sub(admitted);
        let mut out = Vec::with_capacity(budget);
        for (d, item) in scored {
            let d = d as usize;
            if d < threshold {
                out.push(item);
            } else if d == threshold && at_threshold > 0 {
                at_threshold -= 1;
                out.push(item);
            }
        }
        out
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

#[inline(always)]
fn hamming_scan_body(
    codes: &[u64],
    words: usize,
    query: &[u64],
    members: &roaring::RoaringBitmap,
    out: &mut Vec<(u16, u32)>,
    histogram: &mut [u32],
) {
    for item in members {
        let start = item as usize * words;
        let code = &codes[start..start + words];
        let d: u32 = code.iter().zip(query).map(|(a, b)| (a ^ b).count_ones()).sum();
        histogram[d as usize] += 1;
        out.push((d as u16, item));
    }
}

fn hamming_scan(
    codes: &[u64],
    words: usize,
    query: &[u64],
    members: &roaring::RoaringBitmap,
    out: &mut Vec<(u16, u32)>,
    histogram: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "popcnt")]
        unsafe fn with_popcnt(
            codes: &[u64],
            words: usize,
            query: &[u64],
            members: &roaring::RoaringBitmap,
            out: &mut Vec<(u16, u32)>,
            histogram: &mut [u32],
        ) {
            hamming_scan_body(codes, words, query, members, out, histogram)
        }
        if std::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU supports popcnt (checked just above).
            return unsafe { with_popcnt(codes, words, query, members, out, histogram) };
        }
    }
    hamming_scan_body(codes, words, query, members, out, histogram)
}

impl AnnIndex for SignScan {
    fn search(&self, collection: &Collection, q: &PartitionQuery<'_>) -> Result<Vec<Scored>> {
        let budget = q.quality.max(q.k);
        if q.members.len() as usize <= budget {
            return Ok(rerank(collection, q.vector, q.members.iter(), q.k));
        }
        let code = self.encode(q.vector);
        let candidates = self.candidates(&code, q.members, budget);
        Ok(rerank(collection, q.vector, candidates, q.k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_sets_bits_above_the_center() {
        let mut code = [0u64; 2];
        let v: Vec<f32> = (0..70).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        encode_into(&v, &vec![0.0; 70], &mut code);
        assert_eq!(code[0], 0x5555_5555_5555_5555);
        assert_eq!(code[1], 0b01_0101);
    }

    #[test]
    fn candidates_respect_budget_and_order() {
        let words = 1;
        // Item i has i low bits set: Hamming distance i from the zero code.
        let codes: Vec<u64> = (0..64u32).map(|i| if i == 0 { 0 } else { u64::MAX >> (64 - i) }).collect();
        let scan = SignScan { words, center: vec![0.0; 64], codes };
        let members: roaring::RoaringBitmap = (0..64).collect();
        let got = scan.candidates(&[0], &members, 5);
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        let odd: roaring::RoaringBitmap = (0..64).filter(|i| i % 2 == 1).collect();
        assert_eq!(scan.candidates(&[0], &odd, 3), vec![1, 3, 5]);
    }
}
