//! NumPy `.npy` matrices: 2-D, little-endian float32 (float64 is converted).

use super::{Location, Record, input_error};
use crate::error::{InputError, Result};
use crate::limits::MAX_DIMENSIONS;
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

/// Longest `.npy` header dictionary accepted. numpy writes well under 1 KiB for a 2-D matrix;
/// a v2/v3 header declares its length as a `u32`, which is checked against this before any
/// buffer is allocated.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// A header value as shown in an error: short, printable ASCII.
fn shown(value: &str) -> String {
    super::source::short(value, 40)
}

fn read_preamble(reader: &mut impl Read, source: &str) -> Result<Preamble, InputError> {
    let bad = |field: &str, value: &str, reason: &str| input_error(source, "header", field, value, reason);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(|_| bad("magic", "(eof)", "file too short for an .npy header"))?;
    if &magic[..6] != b"\x93NUMPY" {
        // Not echoed: the file may be anything (a token, a key), not vectors.
        return Err(bad("magic", "(not \\x93NUMPY)", "not an .npy file"));
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
    if len > MAX_HEADER_BYTES {
        let reason = format!("the header claims {len} bytes; at most {MAX_HEADER_BYTES} are accepted");
        return Err(bad("header_len", &len.to_string(), &reason));
    }
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
        .map_err(|_| bad("shape", &shown(&shape), "not a tuple of integers"))?;
    if dims.len() != 2 || dims[1] == 0 {
        return Err(bad("shape", &shown(&format!("({inner})")), "expected a 2-D matrix (rows, dimensions)"));
    }
    Ok(Preamble { descr: descr.trim_matches(['\'', '"']).to_string(), shape: dims })
}

/// `rows * cols * width` in bytes, or an error naming `shape` when that does not fit in memory
/// addresses (a header that lies about its size).
fn data_bytes(source: &str, rows: u64, cols: u64, width: usize) -> Result<usize, InputError> {
    let row_bytes = cols.checked_mul(width as u64).filter(|&b| usize::try_from(b).is_ok());
    row_bytes.and_then(|b| b.checked_mul(rows)).and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
        input_error(
            source,
            "header",
            "shape",
            format!("({rows}, {cols})"),
            format!("{rows} x {cols} values of {width} bytes do not fit in a file quiver can read"),
        )
    })
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
                shown(other),
                "expected little-endian float32 ('<f4') or float64",
            ));
        }
    };
    let (rows, dims) = (preamble.shape[0], preamble.shape[1]);
    if dims > MAX_DIMENSIONS as u64 {
        return Err(input_error(
            source,
            "header",
            "shape",
            format!("({rows}, {dims})"),
            format!("vectors of {dims} dimensions: at most {MAX_DIMENSIONS} are supported"),
        ));
    }
    data_bytes(source, rows, dims, element.size())?;
    Ok(Header { rows, dims: dims as usize, element })
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

/// Reads a whole int32/int64 matrix (ground truth) into rows of ids. The size the header declares
/// is checked against the file's length before anything is allocated for the data.
pub fn read_ids(path: &std::path::Path) -> Result<Vec<Vec<u64>>> {
    let source = path.display().to_string();
    let io_error = |e| crate::error::Error::io(format!("reading {source}"), e);
    let file = std::fs::File::open(path).map_err(io_error)?;
    let file_len = file.metadata().map_err(io_error)?.len();
    let mut reader = std::io::BufReader::new(file);
    let preamble = read_preamble(&mut reader, &source)?;
    let width = match preamble.descr.as_str() {
        "<i4" | "<u4" => 4,
        "<i8" | "<u8" => 8,
        other => {
            return Err(
                input_error(&source, "header", "descr", shown(other), "expected an int32 or int64 matrix").into()
            );
        }
    };
    let (rows, cols) = (preamble.shape[0], preamble.shape[1]);
    let need = data_bytes(&source, rows, cols, width)?;
    let header_len = std::io::Seek::stream_position(&mut reader).map_err(io_error)?;
    let have = file_len.saturating_sub(header_len);
    if have < need as u64 {
        let reason = format!("file truncated: {rows}x{cols} ids need {need} bytes");
        return Err(input_error(&source, "data", "data", have, reason).into());
    }
    let mut data = vec![0u8; need];
    reader.read_exact(&mut data).map_err(io_error)?;
    Ok(data
        .chunks_exact(cols as usize * width)
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

    /// An `.npy` preamble with `dict` as its header, the length field written as given.
    fn raw_header(version: u8, declared_len: u32, dict: &str) -> Vec<u8> {
        let mut out = b"\x93NUMPY".to_vec();
        out.extend([version, 0]);
        match version {
            1 => out.extend((declared_len as u16).to_le_bytes()),
            _ => out.extend(declared_len.to_le_bytes()),
        }
        out.extend(dict.as_bytes());
        out
    }

    fn honest(dict: &str) -> Vec<u8> {
        raw_header(1, dict.len() as u32, dict)
    }

    fn dict(descr: &str, shape: &str) -> String {
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n")
    }

    fn header_error(bytes: &[u8]) -> String {
        NpyRows::new(bytes, "m.npy".into(), 0).err().expect("refused").to_string()
    }

    #[test]
    fn lying_header_sizes_are_refused_before_allocating() {
        let started = std::time::Instant::now();
        // A v2/v3 header length is a u32: 4 GiB is not allocated on its say-so.
        let err = header_error(&raw_header(2, u32::MAX, &dict("<f4", "(2, 2)")));
        assert!(
            err.contains("m.npy: header: field `header_len` = 4294967295") && err.contains("at most 65536"),
            "{err}"
        );
        let text = dict("<f4", "(2, 2)");
        let exact = raw_header(3, text.len() as u32, &text);
        assert!(NpyRows::new([exact.as_slice(), &[0u8; 16]].concat().as_slice(), "m.npy".into(), 0).is_ok());
        // More dimensions than a collection holds.
        let err = header_error(&honest(&dict("<f4", "(10, 1000000000)")));
        assert!(err.contains("field `shape` = (10, 1000000000)") && err.contains("at most 4096"), "{err}");
        // rows x dims x 8 bytes overflows.
        let err = header_error(&honest(&dict("<f8", "(18446744073709551615, 4096)")));
        assert!(err.contains("field `shape` = (18446744073709551615, 4096)") && err.contains("do not fit"), "{err}");
        // A long or binary shape is shown short and printable.
        let long = format!("({}\u{7}, 2)", "9".repeat(200));
        let err = header_error(&honest(&dict("<f4", &long)));
        assert!(err.contains("`shape`") && err.contains('…') && !err.contains('\u{7}') && err.len() < 200, "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn ground_truth_with_a_lying_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gt.npy");
        let lie = |shape: &str| {
            let text = dict("<i4", shape);
            let mut bytes = honest(&text);
            bytes.extend([0u8; 24]);
            std::fs::write(&path, bytes).unwrap();
            read_ids(&path).expect_err("refused").to_string()
        };
        let err = lie("(1099511627776, 100)");
        assert!(err.contains("file truncated") && err.contains("= 24"), "{err}");
        let err = lie("(6148914691236517206, 3)");
        assert!(err.contains("field `shape`") && err.contains("do not fit"), "{err}");
        let err = lie("(0, 4611686018427387904)");
        assert!(err.contains("field `shape`"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_npy_is_not_echoed() {
        let err = header_error(b"s3cr3t-token-value\n");
        assert!(err.contains("not an .npy file") && !err.contains("s3cr3t") && !err.contains("115"), "{err}");
    }

    #[test]
    fn ground_truth_ids_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gt.npy");
        write_i32(&path, 2, 3, &[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(read_ids(&path).unwrap(), vec![vec![1, 2, 3], vec![4, 5, 6]]);
    }
}
