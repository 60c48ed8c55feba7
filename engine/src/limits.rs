//! Bounds on every size a caller controls, in one place: a request is checked (or clamped)
//! here before any allocation or work, so no single call can take a process down or pin it.
//!
//! Sizes that only make a call slower are clamped (the quality knob); sizes that would change
//! what a call means are refused with the field and value (k, sample, query counts).

use crate::error::RequestError;

/// Partitions per collection (each is an arroy index, `u16`).
pub const MAX_PARTITIONS: usize = 1024;
/// Largest vector dimension accepted (imports, Ingest streams, files' headers).
pub const MAX_DIMENSIONS: usize = 4096;
/// The largest k a query may ask for.
pub const MAX_K: usize = 10_000;
/// The quality knob (re-ranked candidates, arroy's `search_k`, hannoy's `ef`) is clamped to
/// this many times k: beyond it no strategy finds more, it only works longer.
pub const QUALITY_PER_K: usize = 4_000;
/// ... and to this absolute bound, whatever k is.
pub const MAX_QUALITY: usize = 1_000_000;
/// Queries one verification may run (sampled or given).
pub const MAX_VERIFY_QUERIES: usize = 10_000;
/// Queries one warm-up may run.
pub const MAX_WARMUP_QUERIES: usize = 20_000;
/// Queries in one BatchSearch call.
pub const MAX_BATCH_QUERIES: usize = 1_024;
/// Hits one BatchSearch call may ask for in all (the sum of its queries' k).
pub const MAX_BATCH_HITS: usize = 100_000;
/// Partitions or tags named in one query.
pub const MAX_FILTER_NAMES: usize = 1_024;
/// Largest Admin or Snapshot request message; only Ingest carries bulk data in. Their messages
/// have no repeated fields but Verify's queries (packed floats, decoded at their size).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest Search or BatchSearch message. A valid Search is at most ~300 KiB (4096 dimensions,
/// 1024 partition and tag names of 128 bytes); a BatchSearch of 384-d queries fits ~680. The
/// bound is tighter than Admin's because decoding amplifies: an empty repeated string costs 2
/// bytes on the wire and a 24-byte `String` decoded (12x), an empty query of a batch 2 bytes
/// and ~130 (64x). So decoding alone takes at most 256 calls x 1 MiB x 12 = 3 GiB for Search at
/// the default in-flight bound, and 8 x 1 MiB x 64 = 512 MiB for BatchSearch (heavy).
pub const MAX_SEARCH_REQUEST_BYTES: usize = 1 << 20;
/// Concurrent HTTP/2 streams one client connection may open (below the in-flight bound, so
/// one connection cannot take every slot).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Calls one process serves at once by default; more are refused with RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Calls carrying bulk data or long work (BatchSearch, Verify, Warmup, Ingest) at once.
pub const MAX_HEAVY_IN_FLIGHT: usize = 8;

/// `k` of a query: 1..=[`MAX_K`].
pub fn check_k(k: usize) -> Result<usize, RequestError> {
    if k == 0 || k > MAX_K {
        return Err(RequestError::new("k", k, format!("must be between 1 and {MAX_K}")));
    }
    Ok(k)
}

/// The quality knob actually used: at least k, at most [`QUALITY_PER_K`] x k, [`MAX_QUALITY`]
/// and (when it is larger than k) the number of items the query can reach.
pub fn clamp_quality(quality: usize, k: usize, reachable: u64) -> usize {
    let reachable = usize::try_from(reachable).unwrap_or(usize::MAX).max(k);
    quality.min(k.saturating_mul(QUALITY_PER_K)).min(MAX_QUALITY).min(reachable)
}

/// A count a caller asked for, at most `max`.
pub fn check_count(field: &str, value: usize, max: usize) -> Result<usize, RequestError> {
    if value > max {
        return Err(RequestError::new(field, value, format!("at most {max} allowed")));
    }
    Ok(value)
}

/// The shape of a BatchSearch: at most [`MAX_BATCH_QUERIES`] queries asking for at most
/// [`MAX_BATCH_HITS`] hits in all.
pub fn check_batch(ks: impl ExactSizeIterator<Item = usize>) -> Result<(), RequestError> {
    check_count("queries", ks.len(), MAX_BATCH_QUERIES)?;
    let hits = ks.fold(0usize, |sum, k| sum.saturating_add(k));
    if hits > MAX_BATCH_HITS {
        return Err(RequestError::new("queries[].k", format!("{hits} in all"), format!("at most {MAX_BATCH_HITS}")));
    }
    Ok(())
}

/// Names without repeats, first occurrence first, at most [`MAX_FILTER_NAMES`].
pub fn distinct_names(field: &str, names: &[String]) -> Result<Vec<String>, RequestError> {
    check_count(field, names.len(), MAX_FILTER_NAMES)?;
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    Ok(names.iter().filter(|n| seen.insert(n.as_str())).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_is_clamped_by_k_and_reach() {
        assert_eq!(clamp_quality(200, 10, 50_000), 200);
        assert_eq!(clamp_quality(u32::MAX as usize, 10, u64::MAX), 40_000);
        assert_eq!(clamp_quality(usize::MAX, MAX_K, u64::MAX), MAX_QUALITY);
        assert_eq!(clamp_quality(5_000, 10, 300), 300);
        // Never below k, so a small partition still returns k candidates to re-rank.
        assert_eq!(clamp_quality(5_000, 10, 3), 10);
        assert_eq!(clamp_quality(0, 10, 100), 0);
    }

    #[test]
    fn counts_name_the_field() {
        let e = check_count("sample", u32::MAX as usize, MAX_VERIFY_QUERIES).unwrap_err().to_string();
        assert!(e.contains("`sample` = 4294967295") && e.contains("10000"), "{e}");
        assert!(check_k(0).unwrap_err().to_string().contains("`k` = 0"));
        assert!(check_batch([10; 2000].into_iter()).unwrap_err().to_string().contains("`queries` = 2000"));
        assert!(check_batch([MAX_K; 20].into_iter()).unwrap_err().to_string().contains("200000 in all"));
        assert!(check_batch([10; 100].into_iter()).is_ok());
        assert_eq!(distinct_names("partitions", &["a".into(), "b".into(), "a".into()]).unwrap(), ["a", "b"]);
    }
}
