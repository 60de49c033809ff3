//! Streams: sources on the environment, transforms and sinks on [`DataStream`], keyed
//! reductions on [`KeyedStream`]. Each call appends one operator to the program; the
//! per-operator settings (`name`, `uid`, `set_parallelism`) apply to the operator the stream
//! came from, as on Flink's `SingleOutputStreamOperator`.

use crate::env::StreamExecutionEnvironment;
use crate::event_time::WatermarkStrategy;
use crate::functions::{AssignTimestampsOp, FlatMapOp, FromIterSource, KeyByOp, Record, ReduceOp, ToTextOp};
use crate::program::{Node, NodeSpec, Program};
use crate::records;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use weir_core::graph::{DatagenField, DatagenKind, DatagenSpec, FileFormat, OperatorSpec, Partitioning, UserKind};
use weir_runtime::user::UserFunction;
use weir_runtime::watermarks::WatermarkGenerator;

/// A stream of records of type `T`.
pub struct DataStream<T> {
    program: Rc<RefCell<Program>>,
    node: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        Self { program: self.program.clone(), node: self.node, _type: PhantomData }
    }
}

fn node(kind: &'static str, input: Option<usize>, partitioning: Partitioning, spec: NodeSpec, output_schema: SchemaRef) -> Node {
    Node { kind, name: None, uid: None, parallelism: None, input, partitioning, spec, output_schema }
}

fn text_line_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
}

impl StreamExecutionEnvironment {
    fn add_source<T>(&self, kind: &'static str, spec: NodeSpec, schema: SchemaRef) -> DataStream<T> {
        let i = self.program.borrow_mut().add(node(kind, None, Partitioning::Forward, spec, schema));
        self.stream(i)
    }

    /// Lines of text from a TCP server (`host:port`), one record per line. Runs at parallelism
    /// 1 and cannot rewind: after a restart, lines sent meanwhile are lost (at-most-once).
    pub fn socket_text_stream(&self, host: &str, port: u16) -> DataStream<String> {
        let spec = OperatorSpec::SocketSource { host: host.to_string(), port };
        self.add_source("socket", NodeSpec::Builtin(spec), text_line_schema())
    }

    /// The lines of a text file, or of every file in a directory; its position is checkpointed.
    pub fn read_text_file(&self, path: &str) -> DataStream<String> {
        let spec = OperatorSpec::FileSource { path: path.to_string() };
        self.add_source("file", NodeSpec::Builtin(spec), text_line_schema())
    }

    /// A bounded stream of the given records (for tests and examples), at parallelism 1. Its
    /// position is checkpointed: after a restart it resumes behind the last checkpoint.
    pub fn from_iter<T: Record>(&self, records: impl IntoIterator<Item = T>) -> DataStream<T> {
        let mut buf = Vec::new();
        let encoded: Vec<Vec<u8>> = records
            .into_iter()
            .map(|r| {
                records::encode_into(&r, &mut buf, "from_iter").expect("a record of a serde type encodes");
                buf.clone()
            })
            .collect();
        let encoded = Arc::new(encoded);
        let factory: crate::functions::Factory =
            Arc::new(move |_op, _info| Ok(UserFunction::Source(Box::new(FromIterSource { records: encoded.clone(), position: 0 }))));
        let spec = NodeSpec::User { kind: UserKind::Source { max_parallelism: Some(1) }, factory };
        self.add_source("from_iter", spec, records::record_schema())
    }

    /// The numbers `start..=end`, split over the source's subtasks, at most `rows_per_second`
    /// in all if given (the `datagen` connector's sequence; replayable).
    pub fn datagen_sequence(&self, start: i64, end: i64, rows_per_second: Option<u64>) -> DataStream<i64> {
        let spec = DatagenSpec {
            fields: vec![DatagenField { name: "v".into(), kind: DatagenKind::Sequence { start, end: Some(end) } }],
            rows_per_second,
            number_of_rows: None,
            seed: 0,
        };
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        self.add_source("datagen", NodeSpec::Builtin(OperatorSpec::DatagenSource(spec)), schema)
    }
}

impl<T> DataStream<T> {
    pub(crate) fn new(program: Rc<RefCell<Program>>, node: usize) -> Self {
        Self { program, node, _type: PhantomData }
    }

    fn then<U>(&self, kind: &'static str, partitioning: Partitioning, spec: NodeSpec, schema: SchemaRef) -> DataStream<U> {
        let i = self.program.borrow_mut().add(node(kind, Some(self.node), partitioning, spec, schema));
        DataStream::new(self.program.clone(), i)
    }

    fn configure(&self, f: impl FnOnce(&mut Node)) {
        f(&mut self.program.borrow_mut().nodes[self.node]);
    }

    /// The operator's display name.
    pub fn name(self, name: &str) -> Self {
        self.configure(|n| n.name = Some(name.to_string()));
        self
    }

    /// The operator's stable id: its state and its function id are matched by it, so set it
    /// on every stateful operator of a program that will change.
    pub fn uid(self, uid: &str) -> Self {
        self.configure(|n| n.uid = Some(uid.to_string()));
        self
    }

    /// The operator's own parallelism.
    pub fn set_parallelism(self, parallelism: u32) -> Self {
        self.configure(|n| n.parallelism = Some(parallelism));
        self
    }

    /// Records go round robin to the next operator's subtasks.
    pub fn rebalance(&self) -> DataStream<T> {
        // Rebalance is an edge, not an operator: the next operator's edge takes it.
        DataStream { program: self.program.clone(), node: self.node, _type: PhantomData }.with_next_edge(Partitioning::Rebalance)
    }

    fn with_next_edge(self, partitioning: Partitioning) -> Self {
        // A marker node that passes records on; it carries the edge so the API stays linear.
        let spec =
            NodeSpec::User { kind: UserKind::Transform, factory: Arc::new(|_op, _info| Ok(UserFunction::Operator(Box::new(PassThrough)))) };
        let schema = self.program.borrow().nodes[self.node].output_schema.clone();
        self.then("rebalance", partitioning, spec, schema)
    }
}

/// Passes batches on unchanged (the operator after a `rebalance`).
struct PassThrough;

impl weir_core::operator::Operator for PassThrough {
    fn process_batch(
        &mut self,
        batch: arrow_array::RecordBatch,
        out: &mut dyn weir_core::operator::Collector,
    ) -> weir_core::operator::OpResult {
        out.collect(batch)
    }
}

impl<T: Record> DataStream<T> {
    /// Whether this stream's records carry timestamps (downstream of an assigner).
    fn is_timestamped(&self) -> bool {
        records::is_timestamped(&self.program.borrow().nodes[self.node].output_schema)
    }

    fn user<U>(&self, kind: &'static str, partitioning: Partitioning, user: UserKind, factory: crate::functions::Factory) -> DataStream<U> {
        let schema = match &user {
            UserKind::Keyed { .. } | UserKind::Transform | UserKind::Source { .. } => records::record_schema_for(self.is_timestamped()),
            UserKind::Sink => Arc::new(Schema::empty()),
        };
        self.then(kind, partitioning, NodeSpec::User { kind: user, factory }, schema)
    }

    /// Gives every record its event time and the stream its watermarks, per `strategy` (see
    /// [`crate::event_time`]). The operators downstream keep each record's timestamp, and
    /// event-time timers of `process` fire as the watermark passes them. The assigner's largest
    /// timestamp is checkpointed, so a restored job resumes at its checkpoint's event time.
    ///
    /// # Panics
    /// If the strategy has no timestamp assigner (`with_timestamp_assigner`).
    pub fn assign_timestamps_and_watermarks(&self, strategy: WatermarkStrategy<T>) -> DataStream<T> {
        let assigner = strategy.assigner.clone().expect("a WatermarkStrategy needs with_timestamp_assigner(..)");
        let interval = self.program.borrow().watermark_interval_ms.clone();
        let factory: crate::functions::Factory = Arc::new(move |op, _info| {
            let every = Duration::from_millis(interval.load(std::sync::atomic::Ordering::Relaxed));
            let generator = WatermarkGenerator::new(strategy.out_of_orderness, every, strategy.idleness);
            Ok(UserFunction::Operator(Box::new(AssignTimestampsOp::<T> {
                name: op.name.clone(),
                assigner: assigner.clone(),
                generator,
                _types: PhantomData,
            })))
        });
        let input = self.program.borrow().nodes[self.node].output_schema.clone();
        let schema = Arc::new(Schema::new(vec![input.field(0).clone(), records::timestamp_field()]));
        self.then("timestamps", Partitioning::Forward, NodeSpec::User { kind: UserKind::Transform, factory }, schema)
    }

    /// Zero or more records per record: `f` pushes its outputs into the vector it is given.
    pub fn flat_map<O: Record, F>(&self, f: F) -> DataStream<O>
    where
        F: Fn(T, &mut Vec<O>) + Send + Sync + 'static,
    {
        self.flat_map_named("flat_map", f)
    }

    fn flat_map_named<O: Record, F>(&self, kind: &'static str, f: F) -> DataStream<O>
    where
        F: Fn(T, &mut Vec<O>) + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let factory: crate::functions::Factory = Arc::new(move |op, _info| {
            Ok(UserFunction::Operator(Box::new(FlatMapOp::<T, O, F> { name: op.name.clone(), f: f.clone(), _types: PhantomData })))
        });
        self.user(kind, Partitioning::Forward, UserKind::Transform, factory)
    }

    /// One record per record.
    pub fn map<O: Record, F>(&self, f: F) -> DataStream<O>
    where
        F: Fn(T) -> O + Send + Sync + 'static,
    {
        self.flat_map_named("map", move |t, out: &mut Vec<O>| out.push(f(t)))
    }

    /// The records for which `f` holds.
    pub fn filter<F>(&self, f: F) -> DataStream<T>
    where
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        self.flat_map_named("filter", move |t, out: &mut Vec<T>| {
            if f(&t) {
                out.push(t)
            }
        })
    }

    /// Partitions the stream by the key `f` computes: every record of a key goes to the subtask
    /// owning the key's key group (`hash(key bytes) % pipeline.max-parallelism`), as the
    /// built-in `key_by` does, so state can be rescaled by key group.
    pub fn key_by<K: Serialize + 'static, F>(&self, f: F) -> KeyedStream<K, T>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let factory: crate::functions::Factory = Arc::new(move |op, _info| {
            Ok(UserFunction::Operator(Box::new(KeyByOp::<T, K, F> { name: op.name.clone(), f: f.clone(), _types: PhantomData })))
        });
        let spec = NodeSpec::User { kind: UserKind::Transform, factory };
        let keyed: DataStream<T> = self.then("key_by", Partitioning::Forward, spec, records::keyed_schema_for(self.is_timestamped()));
        KeyedStream { stream: keyed, _key: PhantomData }
    }

    fn text_sink(&self, kind: &'static str, spec: OperatorSpec) -> DataStreamSink {
        let factory: crate::functions::Factory =
            Arc::new(move |op, _info| Ok(UserFunction::Operator(Box::new(ToTextOp::<T> { name: op.name.clone(), _types: PhantomData }))));
        let text: DataStream<String> =
            self.then("to_text", Partitioning::Forward, NodeSpec::User { kind: UserKind::Transform, factory }, records::text_schema());
        let sink: DataStream<()> = text.then(kind, Partitioning::Forward, NodeSpec::Builtin(spec), Arc::new(Schema::empty()));
        DataStreamSink { program: self.program.clone(), nodes: vec![text.node, sink.node] }
    }

    /// Prints every record to standard output, one per line (`<subtask>> record`): a string
    /// as it is, other records as JSON.
    pub fn print(&self) -> DataStreamSink {
        self.text_sink("print", OperatorSpec::PrintSink)
    }

    /// Writes every record as one line of text into part files under directory `path`, with
    /// the transactional file sink: files become visible when a checkpoint (or the end of the
    /// input) commits them.
    pub fn write_as_text(&self, path: &str) -> DataStreamSink {
        self.text_sink("file_sink", OperatorSpec::FileSink { path: path.to_string(), format: FileFormat::Text })
    }

    /// Drops every record (for benchmarks).
    pub fn blackhole(&self) -> DataStreamSink {
        let sink: DataStream<()> =
            self.then("blackhole", Partitioning::Forward, NodeSpec::Builtin(OperatorSpec::BlackholeSink), Arc::new(Schema::empty()));
        DataStreamSink { program: self.program.clone(), nodes: vec![sink.node] }
    }
}

/// A stream partitioned by key `K`.
pub struct KeyedStream<K, T> {
    stream: DataStream<T>,
    _key: PhantomData<fn() -> K>,
}

impl<K, T: Record + Clone> KeyedStream<K, T> {
    /// Per key, the running reduction of its records by `f`, kept in the job's keyed state
    /// backend (checkpointed and restored like the built-in aggregates); emits the updated
    /// value after every record.
    pub fn reduce<F>(&self, f: F) -> DataStream<T>
    where
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let factory: crate::functions::Factory = Arc::new(move |op, _info| {
            Ok(UserFunction::Keyed(Box::new(ReduceOp::<T, F> { name: op.name.clone(), f: f.clone(), _types: PhantomData })))
        });
        let hash = Partitioning::Hash { key: records::KEY.to_string() };
        self.stream.user("reduce", hash, UserKind::Keyed { key: records::KEY.to_string() }, factory)
    }

    /// Per key, the running sum of the `i64` field `field` points at; the other fields are
    /// those of the key's first record (Flink's `sum(field)`).
    pub fn sum<F>(&self, field: F) -> DataStream<T>
    where
        F: Fn(&mut T) -> &mut i64 + Send + Sync + 'static,
    {
        self.reduce(move |mut acc, mut next| {
            let add = *field(&mut next);
            let total = field(&mut acc);
            *total = total.wrapping_add(add);
            acc
        })
    }
}

impl<K: Record, T: Record> KeyedStream<K, T> {
    /// Runs `f` on every record with the record's key current: it may read and write keyed
    /// state and register processing-time and event-time timers, both kept in the job's keyed state backend
    /// (checkpointed, restored and rescaled by key group). Each subtask runs a clone of `f`.
    /// See [`KeyedProcessFunction`](crate::process::KeyedProcessFunction).
    pub fn process<O: Record, F>(&self, f: F) -> DataStream<O>
    where
        F: crate::process::KeyedProcessFunction<K, T, O> + Clone,
    {
        let f = std::sync::Mutex::new(f);
        let factory: crate::functions::Factory = Arc::new(move |op, _info| {
            let f = f.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
            let timestamped = records::is_timestamped(&op.output_schema);
            Ok(UserFunction::Keyed(Box::new(crate::process::ProcessOp::<K, T, O, F>::new(op.name.clone(), f, timestamped))))
        });
        let hash = Partitioning::Hash { key: records::KEY.to_string() };
        self.stream.user("process", hash, UserKind::Keyed { key: records::KEY.to_string() }, factory)
    }
}

/// A sink: its operator's settings.
pub struct DataStreamSink {
    program: Rc<RefCell<Program>>,
    /// The sink's operators: a formatting step (if any), then the sink itself.
    nodes: Vec<usize>,
}

impl DataStreamSink {
    fn sink_node(&self, f: impl FnOnce(&mut Node)) {
        let last = *self.nodes.last().expect("a sink has an operator");
        f(&mut self.program.borrow_mut().nodes[last]);
    }

    pub fn name(self, name: &str) -> Self {
        self.sink_node(|n| n.name = Some(name.to_string()));
        self
    }

    pub fn uid(self, uid: &str) -> Self {
        self.sink_node(|n| n.uid = Some(uid.to_string()));
        self
    }

    pub fn set_parallelism(self, parallelism: u32) -> Self {
        for &i in &self.nodes {
            self.program.borrow_mut().nodes[i].parallelism = Some(parallelism);
        }
        self
    }
}
