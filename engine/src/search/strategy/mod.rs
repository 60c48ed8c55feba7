//! Ways to answer one partition's share of a query, behind one small trait: the exact scan
//! (the reference for recall), the sign-code scan with exact re-ranking (built in memory when
//! a collection is preloaded) and the collection's durable index (arroy or hannoy, see
//! [`crate::index`]), each re-ranked exactly.

pub mod durable;
pub mod exact;
pub mod rabitq;
pub mod scalar;
pub mod signscan;

use crate::cancel::Cancel;
use crate::collection::Collection;
use crate::distance::Ranking;
use crate::error::Result;
use roaring::RoaringBitmap;

/// One partition's share of a query.
pub struct PartitionQuery<'a> {
    pub partition: u16,
    /// Items to consider: the partition's members, already intersected with any tag filter.
    pub members: &'a RoaringBitmap,
    /// Whether `members` was narrowed by a filter (the index must then be told).
    pub filtered: bool,
    /// The prepared query (normalised for cosine).
    pub vector: &'a [f32],
    pub k: usize,
    pub quality: usize,
    /// Coarse lists the sign-code scan probes; 0: all of them.
    pub probes: usize,
    /// Checked by work that may scan the whole partition (the exact scan), so a call that is
    /// gone stops it within one chunk instead of one query.
    pub cancel: &'a Cancel,
}

/// An item and its ranking score (see [`crate::distance::Ranking::kernel`]).
pub type Scored = (u32, f32);

/// Answers one partition's share of a query. Results hold exact scores, ascending, at most k.
pub trait PartitionSearch: Send + Sync {
    fn search(&self, collection: &Collection, query: &PartitionQuery<'_>) -> Result<Vec<Scored>>;
}

/// Items scored between two looks at the cancel flag: a few milliseconds of work.
const CANCEL_EVERY: usize = 65_536;

/// Re-scores candidate items exactly and keeps the best `q.k`; a long list (a filtered exact
/// scan) stops once the call is cancelled.
pub fn rerank(
    collection: &Collection,
    q: &PartitionQuery<'_>,
    candidates: impl IntoIterator<Item = u32>,
) -> Result<Vec<Scored>> {
    let kernel = collection.manifest().metric.kernel();
    let mut top = super::topk::TopK::new(q.k);
    for (i, item) in candidates.into_iter().enumerate() {
        if i % CANCEL_EVERY == 0 {
            q.cancel.check("search")?;
        }
        top.push(item, kernel(q.vector, collection.vector(item)));
    }
    Ok(top.into_sorted())
}

/// The `q.k` nearest of the shortlisted positions `estimates` gives ((estimate, error bound,
/// position) into the partition's code order, whose items are `items`), scoring exactly only
/// those the estimates cannot rule out.
pub(super) fn rerank_estimated(
    collection: &Collection,
    q: &PartitionQuery<'_>,
    items: &[u32],
    estimates: Vec<(f32, f32, u32)>,
) -> Result<Vec<Scored>> {
    let kernel = collection.manifest().metric.kernel();
    keep_nearest(
        estimates,
        q.k,
        |position| {
            let item = items[position as usize];
            Ok((item, kernel(q.vector, collection.vector(item))))
        },
        || q.cancel.check("search"),
    )
}

/// The `k` best exact scores among `estimates` ((estimate, error bound, position)), scoring
/// with `exact` (position -> (item, score)) only the positions whose estimate less its bound
/// is not worse than the k-th exact score found so far; `check` runs every
/// [`CANCEL_EVERY`] positions.
pub(super) fn keep_nearest(
    mut estimates: Vec<(f32, f32, u32)>,
    k: usize,
    mut exact: impl FnMut(u32) -> Result<(u32, f32)>,
    check: impl Fn() -> Result<()>,
) -> Result<Vec<Scored>> {
    estimates.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut top = super::topk::TopK::new(k);
    for (i, (estimate, error, position)) in estimates.into_iter().enumerate() {
        if i % CANCEL_EVERY == 0 {
            check()?;
        }
        if top.worst().is_some_and(|worst| estimate - error > worst) {
            continue;
        }
        let (item, score) = exact(position)?;
        top.push(item, score);
    }
    Ok(top.into_sorted())
}

/// Asks the CPU to bring the cache line holding `value` in (a hint; nothing else happens).
#[inline(always)]
pub(super) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; the pointer comes from a reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch(value as *const T as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
