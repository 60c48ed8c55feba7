//! `.fvecs` (the TEXMEX format): each record is a little-endian `i32` dimension, then that
//! many `f32`.

use super::npy::{ReadFailure, read_full};
use super::{Location, Record, input_error};
use crate::error::Result;
use crate::limits::MAX_DIMENSIONS;
use std::io::Read;

pub struct FvecsRows<R> {
    reader: R,
    source: String,
    row: u64,
    id_offset: u64,
    dims: Option<usize>,
    done: bool,
}

impl<R: Read> FvecsRows<R> {
    pub fn new(reader: R, source: String, id_offset: u64) -> Self {
        FvecsRows { reader, source, row: 0, id_offset, dims: None, done: false }
    }

    fn fail(&mut self, field: &str, value: impl ToString, reason: String) -> Option<Result<Record>> {
        self.done = true;
        Some(Err(input_error(&self.source, Location::Row(self.row), field, value, reason).into()))
    }
}

impl<R: Read> Iterator for FvecsRows<R> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut len = [0u8; 4];
        match read_full(&mut self.reader, &mut len) {
            Ok(()) => {}
            Err(ReadFailure::Truncated(0)) => return None, // clean end of file
            Err(ReadFailure::Truncated(n)) => {
                return self.fail(
                    "dimension",
                    format!("{n} of 4 bytes"),
                    "file truncated inside a record header".into(),
                );
            }
            Err(ReadFailure::Io(e)) => return self.fail("dimension", "(unread)", format!("read error: {e}")),
        }
        let dims = i32::from_le_bytes(len);
        if dims <= 0 || dims as usize > MAX_DIMENSIONS {
            // A value far out of range is shown only as such: the file may not be vectors at all
            // (a token, a key), and its first bytes read as a number are still its content.
            let shown = if (1..=1 << 20).contains(&dims) { dims.to_string() } else { "(out of range)".into() };
            return self.fail(
                "dimension",
                shown,
                format!("not a vector dimension: 1..={MAX_DIMENSIONS} expected (corrupt or not .fvecs)"),
            );
        }
        let dims = dims as usize;
        if let Some(expected) = self.dims.filter(|&d| d != dims) {
            return self.fail("dimension", dims, format!("earlier records have {expected}"));
        }
        self.dims = Some(dims);
        let mut buf = vec![0u8; dims * 4];
        match read_full(&mut self.reader, &mut buf) {
            Ok(()) => {}
            Err(ReadFailure::Truncated(n)) => {
                return self.fail("vector", format!("{n} of {} bytes", dims * 4), "file truncated".into());
            }
            Err(ReadFailure::Io(e)) => return self.fail("vector", "(unread)", format!("read error: {e}")),
        }
        let vector = buf.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let at = Location::Row(self.row);
        let id = self.id_offset + self.row;
        self.row += 1;
        Some(Ok(Record { id, vector, partition: None, tags: Vec::new(), at }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fvecs(rows: &[&[f32]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in rows {
            out.extend((r.len() as i32).to_le_bytes());
            r.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
        out
    }

    #[test]
    fn reads_records() {
        let bytes = fvecs(&[&[1.0, 2.0], &[3.0, 4.0]]);
        let rows: Vec<Record> = FvecsRows::new(bytes.as_slice(), "a.fvecs".into(), 0).collect::<Result<_>>().unwrap();
        assert_eq!(rows[1].vector, vec![3.0, 4.0]);
        assert_eq!(rows[1].id, 1);
    }

    #[test]
    fn dimensions_are_capped_and_implausible_ones_not_echoed() {
        let mut bytes = 5000i32.to_le_bytes().to_vec();
        bytes.extend(vec![0u8; 5000 * 4]);
        let err = FvecsRows::new(bytes.as_slice(), "a.fvecs".into(), 0).find_map(|r| r.err()).unwrap().to_string();
        assert!(err.contains("row 0: field `dimension` = 5000") && err.contains("1..=4096"), "{err}");
        let token = b"s3cr3t-token-value\n";
        let err = FvecsRows::new(&token[..], "t.fvecs".into(), 0).find_map(|r| r.err()).unwrap().to_string();
        let as_number = i32::from_le_bytes(token[..4].try_into().unwrap()).to_string();
        assert!(err.contains("(out of range)") && !err.contains(&as_number) && !err.contains("s3cr"), "{err}");
    }

    #[test]
    fn truncation_and_mixed_dimensions_name_the_row() {
        let mut bytes = fvecs(&[&[1.0, 2.0], &[3.0, 4.0]]);
        bytes.truncate(bytes.len() - 2);
        let err = FvecsRows::new(bytes.as_slice(), "a.fvecs".into(), 0).find_map(|r| r.err()).unwrap().to_string();
        assert!(err.contains("a.fvecs: row 1: field `vector` = 6 of 8 bytes"), "{err}");

        let bytes = fvecs(&[&[1.0, 2.0], &[3.0, 4.0, 5.0]]);
        let err = FvecsRows::new(bytes.as_slice(), "a.fvecs".into(), 0).find_map(|r| r.err()).unwrap().to_string();
        assert!(err.contains("row 1: field `dimension` = 3: earlier records have 2"), "{err}");
    }
}
