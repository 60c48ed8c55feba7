//! NumPy `.npy` matrices: 2-D, little-endian float32 (float64 is converted).

use super::{Location, Record, input_error};
use crate::error::{InputError, Result};
use std::io::{ErrorKind, Read};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Element {
    F32,
    F64,
}

impl Element {
    fn size(self) -> usize {
        match self {
            Element::F32 => 4,
            Element::F64 => 8,
        }
    }
}

/// The parsed header of an `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub rows: u64,
    pub dims: usize,
    element: Element,
}

/// The raw dictionary of an `.npy` preamble: dtype, and shape.
struct Preamble {
    descr: String,
    shape: Vec<u64>,
}

fn read_preamble(reader: &mut impl Read, source: &str) -> Result<Preamble, InputError> {
    let bad = |field: &str, value: &str, reason: &str| input_error(source, "header", field, value, reason);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(|_| bad("magic", "(eof)", "file too short for an .npy header"))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(bad("magic", &format!("{:?}", &magic[..6]), "not an .npy file"));
    }
    let len = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            reader.read_exact(&mut b).map_err(|_| bad("header_len", "(eof)", "truncated header"))?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            reader.read_exact(&mut b).map_err(|_| bad("header_len", "(eof)", "truncated header"))?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(bad("version", &v.to_string(), "unsupported .npy version")),
    };
    let mut text = vec![0u8; len];
    reader.read_exact(&mut text).map_err(|_| bad("header", "(eof)", "truncated header"))?;
    let text = String::from_utf8_lossy(&text);
    let descr = dict_value(&text, "descr").ok_or_else(|| bad("descr", "(missing)", "no dtype"))?;
    let fortran = dict_value(&text, "fortran_order").unwrap_or_default();
    if fortran.starts_with("True") {
        return Err(bad("fortran_order", "True", "save the array in C order (np.ascontiguousarray)"));
    }
    let shape = dict_value(&text, "shape").ok_or_else(|| bad("shape", "(missing)", "no shape"))?;
    let inner = shape.trim_start_matches('(').split(')').next().unwrap_or("");
    let dims: Vec<u64> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("shape", &shape, "not a tuple of integers"))?;
    if dims.len() != 2 || dims[1] == 0 {
        return Err(bad("shape", &format!("({inner})"), "expected a 2-D matrix (rows, dimensions)"));
    }
    Ok(Preamble { descr: descr.trim_matches(['\'', '"']).to_string(), shape: dims })
}

/// Parses the `.npy` preamble of a float matrix from `reader`.
pub fn read_header(reader: &mut impl Read, source: &str) -> Result<Header, InputError> {
    let preamble = read_preamble(reader, source)?;
    let element = match preamble.descr.as_str() {
        "<f4" | "=f4" | "f4" => Element::F32,
        "<f8" | "=f8" | "f8" => Element::F64,
        other => {
            return Err(input_error(
                source,
                "header",
                "descr",
                other,
                "expected little-endian float32 ('<f4') or float64",
            ));
        }
    };
    Ok(Header { rows: preamble.shape[0], dims: preamble.shape[1] as usize, element })
}

/// The text after `'key':` in the header dict, up to the next top-level comma.
fn dict_value(text: &str, key: &str) -> Option<String> {
    let start = text.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = text[start..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            (c == ',' || c == '}') && depth == 0
        })
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// Streams the rows of an `.npy` matrix.
pub struct NpyRows<R> {
    reader: R,
    source: String,
    header: Header,
    next: u64,
    id_offset: u64,
    buf: Vec<u8>,
}

impl<R: Read> NpyRows<R> {
    pub fn new(mut reader: R, source: String, id_offset: u64) -> Result<Self> {
        let header = read_header(&mut reader, &source)?;
        let buf = vec![0u8; header.dims * header.element.size()];
        Ok(NpyRows { reader, source, header, next: 0, id_offset, buf })
    }

    pub fn rows(&self) -> u64 {
        self.header.rows
    }
}

impl<R: Read> Iterator for NpyRows<R> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.header.rows {
            return None;
        }
        let row = self.next;
        self.next += 1;
        if let Err(e) = read_full(&mut self.reader, &mut self.buf) {
            self.next = self.header.rows; // stop after reporting
            let reason = match e {
                ReadFailure::Truncated(got) => format!(
                    "file truncated: the header promises {} rows of {} values; this row has {got} of {} bytes",
                    self.header.rows,
                    self.header.dims,
                    self.buf.len()
                ),
                ReadFailure::Io(e) => format!("read error: {e}"),
            };
            return Some(Err(input_error(&self.source, Location::Row(row), "data", "(incomplete)", reason).into()));
        }
        let vector = match self.header.element {
            Element::F32 => self.buf.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            Element::F64 => {
                self.buf.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect()
            }
        };
        Some(Ok(Record { id: self.id_offset + row, vector, partition: None, tags: Vec::new(), at: Location::Row(row) }))
    }
}

pub(crate) enum ReadFailure {
    /// End of input after this many bytes of the record.
    Truncated(usize),
    Io(std::io::Error),
}

/// Fills `buf`, telling a clean truncation apart from an I/O error.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), ReadFailure> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Err(ReadFailure::Truncated(filled)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFailure::Io(e)),
        }
    }
    Ok(())
}

/// Writes a float32 matrix as `.npy` (used by `quiver demo`, the bench and tests).
pub fn write_f32(path: &std::path::Path, rows: usize, dims: usize, data: &[f32]) -> std::io::Result<()> {
    write_matrix(path, "<f4", rows, dims, bytemuck::cast_slice(data))
}

/// Writes an int32 matrix as `.npy` (ground-truth neighbour ids).
pub fn write_i32(path: &std::path::Path, rows: usize, cols: usize, data: &[i32]) -> std::io::Result<()> {
    write_matrix(path, "<i4", rows, cols, bytemuck::cast_slice(data))
}

fn write_matrix(path: &std::path::Path, descr: &str, rows: usize, cols: usize, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Pad so the data starts on a 64-byte boundary, as numpy does.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    out.write_all(bytes)?;
    out.flush()
}

/// Reads a whole int32/int64 matrix (ground truth) into rows of ids.
pub fn read_ids(path: &std::path::Path) -> Result<Vec<Vec<u64>>> {
    let source = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| crate::error::Error::io(format!("reading {source}"), e))?;
    let mut data = bytes.as_slice();
    let preamble = read_preamble(&mut data, &source)?;
    let width = match preamble.descr.as_str() {
        "<i4" | "<u4" => 4,
        "<i8" | "<u8" => 8,
        other => return Err(input_error(&source, "header", "descr", other, "expected an int32 or int64 matrix").into()),
    };
    let (rows, cols) = (preamble.shape[0] as usize, preamble.shape[1] as usize);
    if data.len() < rows * cols * width {
        let reason = format!("file truncated: {rows}x{cols} ids need {} bytes", rows * cols * width);
        return Err(input_error(&source, "data", "data", data.len(), reason).into());
    }
    Ok(data[..rows * cols * width]
        .chunks_exact(cols * width)
        .map(|row| {
            row.chunks_exact(width)
                .map(|b| match width {
                    4 => i32::from_le_bytes(b.try_into().unwrap()) as u64,
                    _ => i64::from_le_bytes(b.try_into().unwrap()) as u64,
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_bytes(rows: usize, dims: usize, data: &[f32]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        write_f32(&path, rows, dims, data).unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn reads_what_it_writes() {
        let data: Vec<f32> = (0..12).map(|x| x as f32 * 0.5).collect();
        let bytes = npy_bytes(4, 3, &data);
        assert_eq!((10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64, 0);
        let rows: Vec<Record> =
            NpyRows::new(bytes.as_slice(), "m.npy".into(), 100).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].id, 101);
        assert_eq!(rows[1].vector, vec![1.5, 2.0, 2.5]);
    }

    #[test]
    fn truncated_file_names_the_row() {
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let mut bytes = npy_bytes(4, 3, &data);
        bytes.truncate(bytes.len() - 5);
        let results: Vec<Result<Record>> = NpyRows::new(bytes.as_slice(), "m.npy".into(), 0).unwrap().collect();
        assert_eq!(results.len(), 4);
        let err = results[3].as_ref().unwrap_err().to_string();
        assert!(err.contains("m.npy: row 3") && err.contains("truncated") && err.contains("7 of 12 bytes"), "{err}");
    }

    #[test]
    fn rejects_wrong_dtype_and_shape() {
        let bytes = npy_bytes(2, 2, &[0.0; 4]);
        let replace = |from: &[u8], to: &[u8]| {
            let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
            [&bytes[..at], to, &bytes[at + from.len()..]].concat()
        };
        let text = replace(b"<f4", b"<i2");
        let err = NpyRows::new(text.as_slice(), "m.npy".into(), 0).err().unwrap().to_string();
        assert!(err.contains("`descr` = <i2"), "{err}");
        let text = replace(b"(2, 2)", b"(4,)  ");
        let err = NpyRows::new(text.as_slice(), "m.npy".into(), 0).err().unwrap().to_string();
        assert!(err.contains("`shape`") && err.contains("2-D"), "{err}");
        let err = NpyRows::new(&b"hello world"[..], "m.npy".into(), 0).err().unwrap().to_string();
        assert!(err.contains("not an .npy file"), "{err}");
    }

    #[test]
    fn ground_truth_ids_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gt.npy");
        write_i32(&path, 2, 3, &[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(read_ids(&path).unwrap(), vec![vec![1, 2, 3], vec![4, 5, 6]]);
    }
}
