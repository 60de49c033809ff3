//! Weir's built-in connectors: the sources (`datagen`, `socket`, `file`) and sinks (`print`,
//! `file`, `blackhole`) a job file can name. The runtime builds one instance per subtask
//! through [`BuiltinConnectors`], the [`ConnectorFactory`] the TaskManager hands it (the
//! runtime does not depend on this crate); the constructor functions below are what it calls.
//! Everything else in the crate is private so the readers and sinks can change without
//! touching the runtime.

mod blackhole;
mod datagen;
mod file_sink;
mod file_source;
mod print;
mod socket;
mod state;
mod text;

use arrow_schema::SchemaRef;
use weir_core::graph::{ChainedOperator, DatagenSpec, FileFormat, OperatorSpec};
use weir_core::operator::{ConnectorFactory, OpResult, Operator, OperatorError, SourceReader, SubtaskInfo};

pub use datagen::DATAGEN_BATCH_ROWS;

/// The connectors of this crate, as the runtime asks for them.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinConnectors;

impl BuiltinConnectors {
    fn not_a(op: &ChainedOperator, expected: &'static str) -> OperatorError {
        OperatorError::NotAConnector { name: op.name.clone(), uid: op.uid.clone(), expected }
    }
}

impl ConnectorFactory for BuiltinConnectors {
    fn source(&self, op: &ChainedOperator, info: &SubtaskInfo) -> OpResult<Box<dyn SourceReader>> {
        let schema = op.output_schema.clone();
        match &op.spec {
            OperatorSpec::DatagenSource(spec) => Ok(datagen_reader(spec, info, schema)),
            OperatorSpec::SocketSource { host, port } => socket_reader(host, *port, schema),
            OperatorSpec::FileSource { path } => file_reader(path, info, schema),
            _ => Err(Self::not_a(op, "source")),
        }
    }

    fn sink(&self, op: &ChainedOperator, info: &SubtaskInfo) -> OpResult<Box<dyn Operator>> {
        match &op.spec {
            OperatorSpec::PrintSink => Ok(print_sink(info)),
            OperatorSpec::FileSink { path, format } => file_sink(path, *format, info),
            OperatorSpec::BlackholeSink => Ok(blackhole_sink()),
            _ => Err(Self::not_a(op, "sink")),
        }
    }
}

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

/// The `file` sink: writes `part-{job}-{attempt}-{index}-{seq}` files (CSV or JSON lines) into
/// the directory `path`. A file is hidden (`.part-….inprogress`, then `.pending` once a
/// checkpoint pre-committed it) until its checkpoint completes or `finish()` commits it:
/// exactly-once output with checkpoints, one `part-{job}-{attempt}-{index}-0` per subtask
/// without. It never touches another job's files.
pub fn file_sink(path: &str, format: FileFormat, info: &SubtaskInfo) -> OpResult<Box<dyn Operator>> {
    Ok(Box::new(file_sink::FileSink::new(path, format, info)?))
}

/// The `blackhole` sink: discards everything (for benchmarks).
pub fn blackhole_sink() -> Box<dyn Operator> {
    Box::new(blackhole::BlackholeSink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn op(spec: OperatorSpec) -> ChainedOperator {
        ChainedOperator { name: "op".into(), uid: "op-1".into(), spec, output_schema: Arc::new(arrow_schema::Schema::empty()) }
    }

    #[test]
    fn the_factory_builds_sinks_and_names_what_it_does_not_build() {
        let f = BuiltinConnectors;
        let info = test_util::info(0, 1);
        assert!(f.sink(&op(OperatorSpec::BlackholeSink), &info).is_ok());
        let err = f.sink(&op(OperatorSpec::Upper { column: "w".into() }), &info).err().expect("not a sink");
        assert!(matches!(&err, OperatorError::NotAConnector { uid, expected: "sink", .. } if uid == "op-1"), "{err}");
        let err = f.source(&op(OperatorSpec::PrintSink), &info).err().expect("not a source");
        assert!(matches!(err, OperatorError::NotAConnector { expected: "source", .. }));
        let missing = op(OperatorSpec::FileSource { path: "/no/such/weir/input".into() });
        let err = f.source(&missing, &info).err().expect("a missing path");
        assert!(err.to_string().contains("/no/such/weir/input"), "{err}");
    }
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
