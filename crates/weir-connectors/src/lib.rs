//! Weir's built-in connectors: the sources (`datagen`, `socket`, `file`) and sinks (`print`,
//! `file`, `blackhole`) a job file can name. The runtime builds one instance per subtask
//! through the constructor functions below; everything else in the crate is private so the
//! readers and sinks can change without touching the runtime.

mod blackhole;
mod datagen;
mod file_sink;
mod file_source;
mod print;
mod socket;
mod state;
mod text;

use arrow_schema::SchemaRef;
use weir_core::graph::{DatagenSpec, FileFormat};
use weir_core::operator::{OpResult, Operator, SourceReader, SubtaskInfo};

pub use datagen::DATAGEN_BATCH_ROWS;

/// The `datagen` source for one subtask: rows `n ≡ info.index (mod info.parallelism)` of the
/// spec's deterministic row sequence, rate limited to this subtask's share of
/// `rows_per_second`. `schema` has one column per `spec.fields`, in the same order.
pub fn datagen_reader(spec: &DatagenSpec, info: &SubtaskInfo, schema: SchemaRef) -> Box<dyn SourceReader> {
    Box::new(datagen::DatagenReader::new(spec, info, schema))
}

/// The `socket` source: connects to `host:port` now (the error names the address) and emits
/// the newline-separated text it receives as a `line` column until the peer closes.
pub fn socket_reader(host: &str, port: u16, schema: SchemaRef) -> OpResult<Box<dyn SourceReader>> {
    Ok(Box::new(socket::SocketReader::connect(host, port, schema)?))
}

/// The `file` source for one subtask: `path` is a file or a directory of files; every file is
/// split into `info.parallelism` byte ranges and this subtask reads the lines that start in
/// range `info.index`. A missing path is an error naming it.
pub fn file_reader(path: &str, info: &SubtaskInfo, schema: SchemaRef) -> OpResult<Box<dyn SourceReader>> {
    Ok(Box::new(file_source::FileReader::new(path, info, schema)?))
}

/// The `print` sink: writes every row to stdout like Flink's `print()` (`{index+1}> ` prefix
/// when the sink runs with parallelism above 1).
pub fn print_sink(info: &SubtaskInfo) -> Box<dyn Operator> {
    Box::new(print::PrintSink::new(info))
}

/// The `file` sink: writes `part-{index}-{seq}` files (CSV or JSON lines) into the directory
/// `path`. A file is hidden (`.part-{index}-{seq}.inprogress`, then `.pending` once a
/// checkpoint pre-committed it) until its checkpoint completes or `finish()` commits it:
/// exactly-once output with checkpoints, one `part-{index}-0` per subtask without.
pub fn file_sink(path: &str, format: FileFormat, info: &SubtaskInfo) -> OpResult<Box<dyn Operator>> {
    Ok(Box::new(file_sink::FileSink::new(path, format, info)?))
}

/// The `blackhole` sink: discards everything (for benchmarks).
pub fn blackhole_sink() -> Box<dyn Operator> {
    Box::new(blackhole::BlackholeSink)
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the connector tests.

    use arrow_array::RecordBatch;
    use weir_core::operator::{Collector, OpResult, SubtaskInfo};

    pub fn info(index: u32, parallelism: u32) -> SubtaskInfo {
        SubtaskInfo { job_id: "job".into(), attempt: 0, vertex: 0, vertex_name: "test".into(), index, parallelism, max_parallelism: 128 }
    }

    /// A collector for sinks, which must not emit anything.
    pub struct NoOutput;

    impl Collector for NoOutput {
        fn collect(&mut self, _batch: RecordBatch) -> OpResult {
            panic!("a sink emitted a batch")
        }
    }
}
