//! A partition's coarse lists as stored (the collection's `coarse` database, one value per
//! partition): centroids, list boundaries and the items grouped by list. Read whole and
//! checked at open; trained by [`crate::index::coarse`], scanned by the sign-code search.

use roaring::RoaringBitmap;
use std::ops::Range;

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

    /// The list holding position `position` of [`CoarseLists::items`].
    pub fn list_of(&self, position: usize) -> usize {
        self.offsets.partition_point(|&o| o as usize <= position) - 1
    }

    pub fn items(&self) -> &[u32] {
        &self.items
    }

    /// Lists of `dims`-dimensional centroids (`lists * dims` floats) over `items`, grouped by
    /// the `lists + 1` boundaries `offsets`.
    pub fn new(dims: usize, centroids: Vec<f32>, offsets: Vec<u32>, items: Vec<u32>) -> CoarseLists {
        debug_assert_eq!(centroids.len(), (offsets.len() - 1) * dims);
        debug_assert_eq!(*offsets.last().expect("boundaries") as usize, items.len());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> CoarseLists {
        CoarseLists { dims: 2, centroids: vec![0.0, 1.0, 1.0, 0.0], offsets: vec![0, 2, 3], items: vec![4, 0, 7] }
    }

    #[test]
    fn a_position_belongs_to_the_list_whose_range_holds_it() {
        // Lists 0..2, 2..2 (empty), 2..3.
        let lists = CoarseLists::new(1, vec![0.0; 3], vec![0, 2, 2, 3], vec![5, 6, 7]);
        assert_eq!([0, 1, 2].map(|p| lists.list_of(p)), [0, 0, 2]);
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
}
