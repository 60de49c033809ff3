//! The `print` sink: writes rows to stdout in the format of Flink's `print()`, so examples
//! and their expected output read the same as Flink's: `3> (hello,2)` with parallelism above
//! 1, `(hello,2)` with parallelism 1, and a lone column without parentheses.
//!
//! A batch is formatted into one reused buffer and written with stdout locked once, so the
//! rows of a batch stay together and other subtasks' batches interleave only between batches.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::DataType;
use std::io::Write;
use weir_core::operator::{Collector, OpResult, Operator, OperatorError, SubtaskInfo};

const NULL: &str = "null";

pub struct PrintSink {
    /// `"{index+1}> "`, or empty with parallelism 1.
    prefix: String,
    buf: Vec<u8>,
}

impl PrintSink {
    pub fn new(info: &SubtaskInfo) -> Self {
        let prefix = if info.parallelism > 1 { format!("{}> ", info.index + 1) } else { String::new() };
        Self { prefix, buf: Vec::new() }
    }
}

/// One column, typed once per batch so the row loop does no dynamic dispatch for the common
/// types; anything else goes through Arrow's generic display.
enum Column<'a> {
    Int64(&'a Int64Array),
    Utf8(&'a StringArray),
    Other(ArrayFormatter<'a>),
}

impl<'a> Column<'a> {
    fn new(array: &'a dyn Array, options: &FormatOptions<'a>) -> OpResult<Self> {
        Ok(match array.data_type() {
            DataType::Int64 => Column::Int64(array.as_primitive::<Int64Type>()),
            DataType::Utf8 => Column::Utf8(array.as_string::<i32>()),
            _ => Column::Other(ArrayFormatter::try_new(array, options)?),
        })
    }

    fn write(&self, row: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Column::Int64(a) if a.is_null(row) => out.write_all(NULL.as_bytes()),
            Column::Int64(a) => write!(out, "{}", a.value(row)),
            Column::Utf8(a) if a.is_null(row) => out.write_all(NULL.as_bytes()),
            Column::Utf8(a) => out.write_all(a.value(row).as_bytes()),
            Column::Other(f) => write!(out, "{}", f.value(row)),
        }
    }
}

/// Appends the rows of `batch` to `out`, one line each.
fn format_batch(prefix: &str, batch: &RecordBatch, out: &mut Vec<u8>) -> OpResult {
    let options = FormatOptions::new().with_null(NULL);
    let columns = batch.columns().iter().map(|c| Column::new(c.as_ref(), &options)).collect::<OpResult<Vec<_>>>()?;
    let format_err = |e: std::io::Error| OperatorError::Failed(format!("print sink cannot format a row: {e}"));
    for row in 0..batch.num_rows() {
        out.extend_from_slice(prefix.as_bytes());
        if let [only] = columns.as_slice() {
            only.write(row, out).map_err(format_err)?;
        } else {
            out.push(b'(');
            for (i, col) in columns.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                col.write(row, out).map_err(format_err)?;
            }
            out.push(b')');
        }
        out.push(b'\n');
    }
    Ok(())
}

impl Operator for PrintSink {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut dyn Collector) -> OpResult {
        self.buf.clear();
        format_batch(&self.prefix, &batch, &mut self.buf)?;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&self.buf).and_then(|()| stdout.flush()).map_err(|e| OperatorError::io("print sink cannot write to", "stdout", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{info, NoOutput};
    use arrow_array::{ArrayRef, Float64Array};
    use std::sync::Arc;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).expect("batch")
    }

    fn formatted(prefix: &str, batch: &RecordBatch) -> String {
        let mut out = Vec::new();
        format_batch(prefix, batch, &mut out).expect("format");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn print_formats_like_flink() {
        let words: ArrayRef = Arc::new(StringArray::from(vec!["hello", "a,b"]));
        let counts: ArrayRef = Arc::new(Int64Array::from(vec![Some(2), None]));
        let two = batch(vec![("word", words.clone()), ("count", counts)]);
        assert_eq!(formatted("", &two), "(hello,2)\n(a,b,null)\n");
        assert_eq!(formatted("3> ", &two), "3> (hello,2)\n3> (a,b,null)\n");
        let one = batch(vec![("word", words)]);
        assert_eq!(formatted("", &one), "hello\na,b\n");
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![1.5]));
        assert_eq!(formatted("", &batch(vec![("f", floats)])), "1.5\n");
    }

    #[test]
    fn print_prefix_only_with_parallelism_above_one() {
        assert_eq!(PrintSink::new(&info(0, 1)).prefix, "");
        assert_eq!(PrintSink::new(&info(2, 4)).prefix, "3> ");
        // An empty batch goes through the real stdout path without printing anything
        // (direct stdout writes bypass the test harness's capture).
        let words: ArrayRef = Arc::new(StringArray::from(Vec::<&str>::new()));
        let mut sink = crate::print_sink(&info(0, 2));
        sink.process_batch(batch(vec![("w", words)]), &mut NoOutput).expect("print");
    }
}
