//! How user records travel: as Arrow record batches, like every row in Weir.
//!
//! A stream of user records is a batch with one `Binary` column, `record`, holding each
//! record's postcard encoding (compact, schema-less, serde-driven). Streams that come straight
//! from a built-in source arrive in that source's own column instead — `Utf8` lines (socket,
//! file) or `Int64` numbers (datagen) — and are read through serde's value deserializers, so a
//! `DataStream<String>` can read a line column without a conversion step.
//!
//! A keyed stream carries a second `Binary` column, `key`, with the key's postcard bytes: the
//! hash partitioner routes on those bytes, and the keyed state stores under the same bytes, so
//! a key's state is in the subtask that owns its key group, as for the built-in aggregates.
//!
//! After `assign_timestamps_and_watermarks` a stream also carries each record's event time, in
//! a last column `weir.timestamp` (`Int64`, milliseconds since the epoch; nullable, for records
//! a processing-time timer emitted). Every operator downstream keeps it: a record made from
//! another one inherits its timestamp, as in Flink, and `process` reads it as
//! `Context::timestamp`.
//!
//! Every conversion is a loop inside one operator over a whole batch; nothing crosses an
//! interface per record.

use arrow_array::builder::{ArrayBuilder, BinaryBuilder, Int64Builder};
use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::de::value::{BorrowedStrDeserializer, I64Deserializer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use weir_core::operator::{OpResult, OperatorError};

/// The column of encoded records.
pub const RECORD: &str = "record";
/// The hidden column of encoded keys after `key_by`.
pub const KEY: &str = "key";
/// The hidden column of event-time timestamps after `assign_timestamps_and_watermarks`.
pub const TIMESTAMP: &str = "weir.timestamp";

/// The timestamp column's field.
pub fn timestamp_field() -> Field {
    Field::new(TIMESTAMP, DataType::Int64, true)
}

/// The schema of a stream of user records.
pub fn record_schema() -> SchemaRef {
    record_schema_for(false)
}

/// The schema of a stream of user records, with their timestamps if `timestamped`.
pub fn record_schema_for(timestamped: bool) -> SchemaRef {
    let mut fields = vec![Field::new(RECORD, DataType::Binary, false)];
    if timestamped {
        fields.push(timestamp_field());
    }
    Arc::new(Schema::new(fields))
}

/// The schema of a keyed stream: records and their keys.
pub fn keyed_schema() -> SchemaRef {
    keyed_schema_for(false)
}

/// The schema of a keyed stream, with the records' timestamps if `timestamped`.
pub fn keyed_schema_for(timestamped: bool) -> SchemaRef {
    let mut fields = vec![Field::new(RECORD, DataType::Binary, false), Field::new(KEY, DataType::Binary, false)];
    if timestamped {
        fields.push(timestamp_field());
    }
    Arc::new(Schema::new(fields))
}

/// Whether a stream of this schema carries timestamps.
pub fn is_timestamped(schema: &Schema) -> bool {
    schema.column_with_name(TIMESTAMP).is_some()
}

/// The timestamps of `batch`'s records, if its stream carries them.
pub fn timestamps(batch: &RecordBatch) -> Option<&Int64Array> {
    batch.column_by_name(TIMESTAMP).and_then(|c| c.as_any().downcast_ref::<Int64Array>())
}

/// The timestamp of row `i` (`None` if the stream has none or the row has none).
pub fn timestamp_at(timestamps: Option<&Int64Array>, i: usize) -> Option<i64> {
    timestamps.filter(|t| t.is_valid(i)).map(|t| t.value(i))
}

/// The schema of text on its way to a text sink.
pub fn text_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
}

/// Appends the encoding of `value` to `out` (cleared first).
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>, operator: &str) -> OpResult {
    out.clear();
    postcard::to_io(value, &mut *out)
        .map(|_| ())
        .map_err(|e| OperatorError::Failed(format!("operator '{operator}' cannot encode a record: {e}")))
}

/// Decodes one record's bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], operator: &str) -> OpResult<T> {
    postcard::from_bytes(bytes).map_err(|e| OperatorError::Failed(format!("operator '{operator}' cannot decode a record: {e}")))
}

/// The records of column 0 of `batch`, whichever way the stream carries them.
pub fn decode_column<T: DeserializeOwned>(batch: &RecordBatch, operator: &str) -> OpResult<Vec<T>> {
    let col = batch.column(0);
    let bad = |e: serde::de::value::Error| OperatorError::Failed(format!("operator '{operator}' cannot read its input: {e}"));
    if let Some(a) = col.as_any().downcast_ref::<BinaryArray>() {
        (0..a.len()).map(|i| decode(a.value(i), operator)).collect()
    } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        (0..a.len()).map(|i| T::deserialize(BorrowedStrDeserializer::<serde::de::value::Error>::new(a.value(i))).map_err(bad)).collect()
    } else if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
        a.values().iter().map(|v| T::deserialize(I64Deserializer::<serde::de::value::Error>::new(*v)).map_err(bad)).collect()
    } else {
        Err(OperatorError::Failed(format!("operator '{operator}' cannot read records of type {}", col.data_type())))
    }
}

/// Builds a `record` column (and batch) from encoded records, reusing one scratch buffer; a
/// timestamped writer builds the timestamp column beside it.
pub struct RecordWriter {
    builder: BinaryBuilder,
    scratch: Vec<u8>,
    timestamps: Option<Int64Builder>,
}

impl RecordWriter {
    pub fn with_capacity(rows: usize) -> Self {
        Self { builder: BinaryBuilder::with_capacity(rows, rows * 16), scratch: Vec::new(), timestamps: None }
    }

    /// A writer whose batches carry timestamps if `timestamped` (see [`RecordWriter::push_at`]).
    pub fn for_stream(rows: usize, timestamped: bool) -> Self {
        let mut w = Self::with_capacity(rows);
        if timestamped {
            w.timestamps = Some(Int64Builder::with_capacity(rows));
        }
        w
    }

    /// Whether the batches carry timestamps.
    pub fn is_timestamped(&self) -> bool {
        self.timestamps.is_some()
    }

    pub fn push<T: Serialize>(&mut self, value: &T, operator: &str) -> OpResult {
        self.push_at(value, None, operator)
    }

    /// Appends `value` with timestamp `ts` (dropped by a writer without timestamps).
    pub fn push_at<T: Serialize>(&mut self, value: &T, ts: Option<i64>, operator: &str) -> OpResult {
        encode_into(value, &mut self.scratch, operator)?;
        self.builder.append_value(&self.scratch);
        if let Some(t) = &mut self.timestamps {
            t.append_option(ts);
        }
        Ok(())
    }

    /// The timestamp column built so far, if the writer has one; it starts again empty.
    pub fn finish_timestamps(&mut self) -> Option<ArrayRef> {
        self.timestamps.as_mut().map(|t| Arc::new(t.finish()) as ArrayRef)
    }

    pub fn len(&self) -> usize {
        self.builder.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The column built so far; the writer starts again empty.
    pub fn finish(&mut self) -> ArrayRef {
        Arc::new(self.builder.finish())
    }

    /// The records written so far as a batch of [`record_schema_for`] (with their timestamps if
    /// the writer has them), or `None` if there are none.
    pub fn finish_batch(&mut self) -> OpResult<Option<RecordBatch>> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut columns = vec![self.finish()];
        columns.extend(self.finish_timestamps());
        Ok(Some(RecordBatch::try_new(record_schema_for(columns.len() > 1), columns)?))
    }
}

/// A record as one line of text: a string as it is, anything else as JSON (a tuple
/// `("a", 1)` is `["a",1]`), the way `print` and `write_as_text` show it.
pub fn to_text<T: Serialize>(value: &T, operator: &str) -> OpResult<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(other) => Ok(other.to_string()),
        Err(e) => Err(OperatorError::Failed(format!("operator '{operator}' cannot format a record as text: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_read_from_a_line_column_and_from_encoded_records_alike() {
        let lines = RecordBatch::try_new(text_schema(), vec![Arc::new(StringArray::from(vec!["a b", "c"]))]).unwrap();
        assert_eq!(decode_column::<String>(&lines, "t").unwrap(), vec!["a b", "c"]);
        let mut w = RecordWriter::with_capacity(2);
        w.push(&"a b".to_string(), "t").unwrap();
        w.push(&"c".to_string(), "t").unwrap();
        let encoded = w.finish_batch().unwrap().unwrap();
        assert_eq!(decode_column::<String>(&encoded, "t").unwrap(), vec!["a b", "c"]);
    }

    #[test]
    fn numbers_read_from_an_int64_column() {
        let batch = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![3, 4])) as ArrayRef)]).unwrap();
        assert_eq!(decode_column::<i64>(&batch, "t").unwrap(), vec![3, 4]);
    }

    #[test]
    fn text_shows_strings_bare_and_other_records_as_json() {
        assert_eq!(to_text(&"hello".to_string(), "t").unwrap(), "hello");
        assert_eq!(to_text(&("hello".to_string(), 3i64), "t").unwrap(), "[\"hello\",3]");
    }
}
