//! Apache Parquet, as pyarrow, Spark and pandas write it: one row per item, with
//! - a vector column: `FixedSizeList<Float32>`, or `List` / `LargeList` of `Float32` or
//!   `Float64` (a float64 value is narrowed to f32, as every vector is stored);
//! - an id column of any integer type (a negative id is refused);
//! - optionally a partition column (string) and a tags column (list of strings).
//!
//! Column names come from [`ParquetColumns`]. Only those columns are decoded, one batch of rows
//! at a time, so memory stays bounded by a batch whatever the file's size. Every record knows
//! its row group and its row in it, so a bad row is named by file, row group, row, column and
//! value, and the import report gives the rows of each row group.

use super::{Location, Record, input_error};
use crate::error::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

/// Rows decoded at a time.
const BATCH_ROWS: usize = 4096;

/// The columns a Parquet source is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetColumns {
    pub id: String,
    pub vector: String,
    pub partition: Option<String>,
    pub tags: Option<String>,
}

impl Default for ParquetColumns {
    fn default() -> Self {
        ParquetColumns { id: "id".into(), vector: "vector".into(), partition: None, tags: None }
    }
}

/// The flag that names each column, for errors.
const ID_FLAG: &str = "--id-column";
const VECTOR_FLAG: &str = "--vector-column";
const PARTITION_FLAG: &str = "--partition-column";
const TAGS_FLAG: &str = "--tags-column";

/// The records of one Parquet file.
pub struct ParquetRows {
    source: String,
    columns: ParquetColumns,
    batches: ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    /// Next row of `batch`.
    at: usize,
    /// Rows of each row group, in file order, and where the next row lies.
    row_groups: Vec<u64>,
    group: usize,
    row_in_group: u64,
    done: bool,
}

impl ParquetRows {
    /// Reads the footer and checks that the named columns exist with types quiver can import.
    pub fn open<T: parquet::file::reader::ChunkReader + 'static>(
        file: T,
        source: String,
        columns: ParquetColumns,
    ) -> Result<ParquetRows> {
        let fail = |at: &str, field: &str, value: &str, reason: String| -> Error {
            input_error(&source, at, field, value, reason).into()
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| fail("footer", "file", "(unread)", format!("not a readable Parquet file: {e}")))?;
        let schema = builder.schema().clone();
        let names = || schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
        let mut wanted = vec![(ID_FLAG, columns.id.as_str()), (VECTOR_FLAG, columns.vector.as_str())];
        wanted.extend(columns.partition.as_deref().map(|c| (PARTITION_FLAG, c)));
        wanted.extend(columns.tags.as_deref().map(|c| (TAGS_FLAG, c)));
        let mut roots = Vec::new();
        for (flag, name) in wanted {
            let Some((index, field)) = schema.column_with_name(name) else {
                return Err(fail("schema", flag, name, format!("no such column; the file has: {}", names())));
            };
            let fits = match flag {
                ID_FLAG => field.data_type().is_integer(),
                VECTOR_FLAG => float_list(field.data_type()),
                PARTITION_FLAG => is_string(field.data_type()),
                _ => list_item(field.data_type()).is_some_and(is_string),
            };
            // A fixed length beyond any vector: refused before a batch of it is decoded.
            if let DataType::FixedSizeList(_, n) = field.data_type()
                && flag == VECTOR_FLAG
                && !(1..=crate::limits::MAX_DIMENSIONS as i32).contains(n)
            {
                let reason = format!("vectors of {n} values; 1..={} expected", crate::limits::MAX_DIMENSIONS);
                return Err(fail("schema", flag, name, reason));
            }
            if !fits {
                let expected = match flag {
                    ID_FLAG => "an integer column",
                    VECTOR_FLAG => "FixedSizeList<Float32>, or List / LargeList of Float32 or Float64",
                    PARTITION_FLAG => "a string column",
                    _ => "a list of strings",
                };
                let reason = format!("column {name:?} is {}; expected {expected}", field.data_type());
                return Err(fail("schema", flag, name, reason));
            }
            roots.push(index);
        }
        let row_groups: Vec<u64> = builder.metadata().row_groups().iter().map(|g| g.num_rows().max(0) as u64).collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let batches = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| fail("footer", "file", "(unread)", format!("cannot read the row groups: {e}")))?;
        Ok(ParquetRows {
            source,
            columns,
            batches,
            batch: None,
            at: 0,
            row_groups,
            group: 0,
            row_in_group: 0,
            done: false,
        })
    }

    /// Rows the footer announces.
    pub fn rows(&self) -> u64 {
        self.row_groups.iter().sum()
    }

    /// Rows of each row group, as the footer announces them.
    pub fn row_groups(&self) -> &[u64] {
        &self.row_groups
    }

    fn location(&self) -> Location {
        Location::RowGroup { group: self.group as u32, row: self.row_in_group }
    }

    fn fail(&mut self, field: &str, value: impl ToString, reason: impl Into<String>) -> Option<Result<Record>> {
        self.done = true;
        Some(Err(input_error(&self.source, self.location(), field, value, reason).into()))
    }

    fn column(&self, batch: &RecordBatch, name: &str) -> ArrayRef {
        batch.column_by_name(name).expect("a projected column").clone()
    }

    /// The record at row `i` of `batch`.
    fn record(&self, batch: &RecordBatch, i: usize) -> std::result::Result<Record, (String, String, String)> {
        let c = &self.columns;
        let bad = |column: &str, value: String, reason: &str| (column.to_string(), value, reason.to_string());
        let ids = self.column(batch, &c.id);
        if ids.is_null(i) {
            return Err(bad(&c.id, "null".into(), "a null id"));
        }
        let id = integer(ids.as_ref(), i).map_err(|v| bad(&c.id, v, "a negative id; ids are 0..2^64"))?;
        let vectors = self.column(batch, &c.vector);
        if vectors.is_null(i) {
            return Err(bad(&c.vector, "null".into(), "a null vector"));
        }
        let vector = floats(vectors.as_ref(), i).map_err(|e| bad(&c.vector, e, "a null element in the vector"))?;
        let partition = match &c.partition {
            Some(name) => {
                let column = self.column(batch, name);
                string(column.as_ref(), i)
            }
            None => None,
        };
        let tags = match &c.tags {
            Some(name) => {
                let column = self.column(batch, name);
                strings(column.as_ref(), i).map_err(|e| bad(name, e, "a null tag"))?
            }
            None => Vec::new(),
        };
        Ok(Record { id, vector, partition, tags, at: self.location() })
    }

    /// Moves the row-group position past one row.
    fn advance(&mut self) {
        self.row_in_group += 1;
        while self.group < self.row_groups.len() && self.row_in_group >= self.row_groups[self.group] {
            self.group += 1;
            self.row_in_group = 0;
        }
    }
}

impl Iterator for ParquetRows {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // Empty row groups hold no row to name.
        while self.group < self.row_groups.len() && self.row_groups[self.group] == 0 {
            self.group += 1;
        }
        loop {
            match &self.batch {
                Some(b) if self.at < b.num_rows() => break,
                _ => match self.batches.next() {
                    None => {
                        self.done = true;
                        return None;
                    }
                    Some(Ok(b)) => (self.batch, self.at) = (Some(b), 0),
                    Some(Err(e)) => {
                        let reason = format!("cannot decode the rows (truncated or corrupt file?): {e}");
                        return self.fail("file", "(undecoded)", reason);
                    }
                },
            }
        }
        let batch = self.batch.clone().expect("a batch with rows");
        let record = self.record(&batch, self.at);
        self.at += 1;
        match record {
            Ok(r) => {
                self.advance();
                Some(Ok(r))
            }
            Err((column, value, reason)) => self.fail(&column, value, reason),
        }
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn list_item(t: &DataType) -> Option<&DataType> {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => Some(f.data_type()),
        _ => None,
    }
}

fn float_list(t: &DataType) -> bool {
    list_item(t).is_some_and(|item| matches!(item, DataType::Float32 | DataType::Float64))
}

/// The integer at row `i` as an id; a negative one comes back as its text.
fn integer(a: &dyn Array, i: usize) -> std::result::Result<u64, String> {
    let signed = |v: i64| u64::try_from(v).map_err(|_| v.to_string());
    match a.data_type() {
        DataType::Int8 => signed(a.as_primitive::<Int8Type>().value(i).into()),
        DataType::Int16 => signed(a.as_primitive::<Int16Type>().value(i).into()),
        DataType::Int32 => signed(a.as_primitive::<Int32Type>().value(i).into()),
        DataType::Int64 => signed(a.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => Ok(a.as_primitive::<UInt8Type>().value(i).into()),
        DataType::UInt16 => Ok(a.as_primitive::<UInt16Type>().value(i).into()),
        DataType::UInt32 => Ok(a.as_primitive::<UInt32Type>().value(i).into()),
        DataType::UInt64 => Ok(a.as_primitive::<UInt64Type>().value(i)),
        other => unreachable!("checked at open: {other}"),
    }
}

/// The list at row `i` and the range of its items in the list's values.
fn list_values(a: &dyn Array, i: usize) -> (ArrayRef, usize, usize) {
    match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let o = l.value_offsets();
            (l.values().clone(), o[i] as usize, o[i + 1] as usize)
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let o = l.value_offsets();
            (l.values().clone(), o[i] as usize, o[i + 1] as usize)
        }
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            let n = *n as usize;
            (l.values().clone(), i * n, (i + 1) * n)
        }
        other => unreachable!("checked at open: {other}"),
    }
}

/// The vector at row `i`; a null element comes back as its position.
fn floats(a: &dyn Array, i: usize) -> std::result::Result<Vec<f32>, String> {
    let (values, start, end) = list_values(a, i);
    if let Some(null) = (start..end).find(|&j| values.is_null(j)) {
        return Err(format!("null at [{}]", null - start));
    }
    Ok(match values.data_type() {
        DataType::Float32 => values.as_primitive::<Float32Type>().values()[start..end].to_vec(),
        DataType::Float64 => {
            values.as_primitive::<Float64Type>().values()[start..end].iter().map(|&v| v as f32).collect()
        }
        other => unreachable!("checked at open: {other}"),
    })
}

/// The string at row `i`, None when null.
fn string(a: &dyn Array, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).to_string(),
        DataType::Utf8View => a.as_string_view().value(i).to_string(),
        other => unreachable!("checked at open: {other}"),
    })
}

/// The tags at row `i` (none when the list is null); a null tag comes back as its position.
fn strings(a: &dyn Array, i: usize) -> std::result::Result<Vec<String>, String> {
    if a.is_null(i) {
        return Ok(Vec::new());
    }
    let (values, start, end) = list_values(a, i);
    (start..end).map(|j| string(values.as_ref(), j).ok_or_else(|| format!("null at [{}]", j - start))).collect()
}
