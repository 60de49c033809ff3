//! The `file` sink: each subtask writes one part file (CSV or JSON lines) into the output
//! directory.
//!
//! While the job runs the file is hidden as `.part-{index}.inprogress`; `finish()` flushes,
//! fsyncs and renames it to `part-{index}`. Readers (including Weir's own file source) skip
//! names starting with '.' or '_', so they only ever see complete, committed files.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::DataType;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use weir_core::graph::FileFormat;
use weir_core::operator::{Collector, OpResult, Operator, OperatorError, SubtaskInfo};

const WRITE_BUFFER_BYTES: usize = 256 * 1024;

pub struct FileSink {
    dir: PathBuf,
    inprogress: PathBuf,
    committed: PathBuf,
    format: FileFormat,
    /// None once committed.
    writer: Option<BufWriter<File>>,
}

impl FileSink {
    pub fn new(path: &str, format: FileFormat, info: &SubtaskInfo) -> OpResult<Self> {
        fs::create_dir_all(path).map_err(|e| OperatorError::io("file sink cannot create directory", path, e))?;
        let dir = PathBuf::from(path);
        let inprogress = dir.join(format!(".part-{}.inprogress", info.index));
        let committed = dir.join(format!("part-{}", info.index));
        // A stale in-progress file is left by an earlier attempt that never committed: its
        // rows will be produced again, so start it over.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&inprogress)
            .map_err(|e| OperatorError::io("file sink cannot create", inprogress.display().to_string(), e))?;
        Ok(Self {
            dir,
            inprogress,
            committed,
            format,
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
        })
    }

    fn io_err(&self, e: std::io::Error) -> OperatorError {
        OperatorError::io("file sink cannot write", self.inprogress.display().to_string(), e)
    }
}

/// A column the sink can write, typed once per batch.
enum Column<'a> {
    Int64(&'a Int64Array),
    Utf8(&'a StringArray),
}

impl<'a> Column<'a> {
    fn new(array: &'a dyn Array, name: &str, path: &std::path::Path) -> OpResult<Self> {
        match array.data_type() {
            DataType::Int64 => Ok(Column::Int64(array.as_primitive::<Int64Type>())),
            DataType::Utf8 => Ok(Column::Utf8(array.as_string::<i32>())),
            other => Err(OperatorError::Failed(format!(
                "file sink '{}' cannot write column '{name}' of type {other}: supported types are Int64 and Utf8",
                path.display()
            ))),
        }
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Column::Int64(a) => a.is_null(row),
            Column::Utf8(a) => a.is_null(row),
        }
    }
}

/// CSV: values joined with ',', no header; text is quoted (with inner quotes doubled) only
/// when it holds a delimiter, quote or line break. A null is an empty field.
fn write_csv<W: Write>(w: &mut W, columns: &[Column<'_>], rows: usize) -> std::io::Result<()> {
    for row in 0..rows {
        for (i, col) in columns.iter().enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            if col.is_null(row) {
                continue;
            }
            match col {
                Column::Int64(a) => write!(w, "{}", a.value(row))?,
                Column::Utf8(a) => write_csv_text(w, a.value(row).as_bytes())?,
            }
        }
        w.write_all(b"\n")?;
    }
    Ok(())
}

fn write_csv_text<W: Write>(w: &mut W, text: &[u8]) -> std::io::Result<()> {
    if !text.iter().any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        return w.write_all(text);
    }
    w.write_all(b"\"")?;
    for (i, part) in text.split(|&b| b == b'"').enumerate() {
        if i > 0 {
            w.write_all(b"\"\"")?;
        }
        w.write_all(part)?;
    }
    w.write_all(b"\"")
}

/// JSON lines: `{"col":value,...}` in schema order. `keys` are the column names already
/// encoded as JSON strings with the ':' appended.
fn write_json<W: Write>(w: &mut W, keys: &[Vec<u8>], columns: &[Column<'_>], rows: usize) -> std::io::Result<()> {
    for row in 0..rows {
        w.write_all(b"{")?;
        for (i, (key, col)) in keys.iter().zip(columns).enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            w.write_all(key)?;
            if col.is_null(row) {
                w.write_all(b"null")?;
                continue;
            }
            match col {
                Column::Int64(a) => write!(w, "{}", a.value(row))?,
                // serde_json escapes straight into the writer, without an intermediate String.
                Column::Utf8(a) => serde_json::to_writer(&mut *w, a.value(row))?,
            }
        }
        w.write_all(b"}\n")?;
    }
    Ok(())
}

impl Operator for FileSink {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut dyn Collector) -> OpResult {
        let schema = batch.schema();
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(array, field)| Column::new(array.as_ref(), field.name(), &self.dir))
            .collect::<OpResult<Vec<_>>>()?;
        let Some(writer) = self.writer.as_mut() else {
            return Err(OperatorError::Failed(format!(
                "file sink '{}' received a batch after it was committed",
                self.committed.display()
            )));
        };
        let written = match self.format {
            FileFormat::Csv => write_csv(writer, &columns, batch.num_rows()),
            FileFormat::Json => {
                // Encoded once per batch (a handful of small allocations, not per row).
                let keys = schema
                    .fields()
                    .iter()
                    .map(|f| {
                        let mut key = serde_json::to_vec(f.name())?;
                        key.push(b':');
                        Ok(key)
                    })
                    .collect::<Result<Vec<_>, serde_json::Error>>()
                    .map_err(std::io::Error::from);
                keys.and_then(|keys| write_json(writer, &keys, &columns, batch.num_rows()))
            }
        };
        written.map_err(|e| self.io_err(e))
    }

    fn finish(&mut self, _out: &mut dyn Collector) -> OpResult {
        let Some(writer) = self.writer.take() else { return Ok(()) };
        let file = writer.into_inner().map_err(|e| self.io_err(e.into_error()))?;
        file.sync_all().map_err(|e| self.io_err(e))?;
        drop(file);
        fs::rename(&self.inprogress, &self.committed).map_err(|e| {
            OperatorError::io("file sink cannot commit", self.committed.display().to_string(), e)
        })?;
        // Make the rename itself durable; not every platform lets a directory be fsynced, and
        // the data is already safe, so a failure here is only worth a warning.
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "file sink could not fsync its directory");
        }
        tracing::info!(path = %self.committed.display(), "file sink committed its part file");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{info, NoOutput};
    use arrow_array::{ArrayRef, Float64Array};
    use std::sync::Arc;

    fn rows() -> RecordBatch {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(-22), None, Some(4)]));
        let texts: ArrayRef = Arc::new(StringArray::from(vec![
            Some("plain"),
            Some("a,b \"quoted\""),
            Some("two\nlines\r"),
            None,
        ]));
        RecordBatch::try_from_iter([("id", ids), ("text", texts)]).expect("batch")
    }

    #[test]
    fn file_sink_csv_quotes_and_commits_on_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("nested").join("out");
        let out_str = out.to_str().expect("utf-8 path");
        // A stale in-progress file from an earlier attempt is started over.
        fs::create_dir_all(&out).expect("mkdir");
        fs::write(out.join(".part-1.inprogress"), "stale rows\n").expect("write");

        let mut sink = FileSink::new(out_str, FileFormat::Csv, &info(1, 2)).expect("open");
        sink.process_batch(rows(), &mut NoOutput).expect("write");
        sink.process_batch(rows().slice(0, 1), &mut NoOutput).expect("write");
        assert!(out.join(".part-1.inprogress").exists());
        assert!(!out.join("part-1").exists());

        sink.finish(&mut NoOutput).expect("finish");
        assert!(!out.join(".part-1.inprogress").exists());
        let text = fs::read_to_string(out.join("part-1")).expect("committed file");
        assert_eq!(text, "1,plain\n-22,\"a,b \"\"quoted\"\"\"\n,\"two\nlines\r\"\n4,\n1,plain\n");
        // A second finish is harmless; writing after commit is an error.
        sink.finish(&mut NoOutput).expect("finish again");
        assert!(sink.process_batch(rows(), &mut NoOutput).is_err());
    }

    #[test]
    fn file_sink_writes_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("json");
        let mut sink = crate::file_sink(out.to_str().expect("utf-8 path"), FileFormat::Json, &info(0, 1)).expect("open");
        sink.process_batch(rows(), &mut NoOutput).expect("write");
        sink.finish(&mut NoOutput).expect("finish");
        let text = fs::read_to_string(out.join("part-0")).expect("committed file");
        assert_eq!(
            text,
            concat!(
                "{\"id\":1,\"text\":\"plain\"}\n",
                "{\"id\":-22,\"text\":\"a,b \\\"quoted\\\"\"}\n",
                "{\"id\":null,\"text\":\"two\\nlines\\r\"}\n",
                "{\"id\":4,\"text\":null}\n",
            )
        );
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
            assert!(value.is_object());
        }
    }

    #[test]
    fn file_sink_rejects_unsupported_column_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = FileSink::new(dir.path().to_str().expect("utf-8 path"), FileFormat::Csv, &info(0, 1))
            .expect("open");
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![1.5]));
        let batch = RecordBatch::try_from_iter([("ratio", floats)]).expect("batch");
        let err = sink.process_batch(batch, &mut NoOutput).expect_err("float column").to_string();
        assert!(err.contains("'ratio'"), "{err}");
    }
}
