//! The built-in transforms (split, upper, lower, filter, select), the keyed running
//! aggregates, and [`build_chain`], which turns a vertex's operator specs into a runnable
//! chain: it builds the transforms itself and asks the [`ConnectorFactory`] it is given for
//! sources and sinks (and the [`SqlOperators`](crate::sql::SqlOperators) factory for the
//! operators of SQL plans). Every operator works on whole batches: one loop over a column, one
//! output array.
//!
//! Keyed state is typed: an operator that keeps some is a [`KeyedOperator`] and sits in the
//! chain as [`ChainOperator::Keyed`], so the task reaches its [`StateBackend`] to snapshot,
//! restore and notify it without downcasting.
//!
//! Operators of one chain call each other directly ([`push_through`]): a batch runs through the
//! whole chain before the task takes the next one, with no queue and no thread between them.

use crate::user::{build_user, BuiltUser, UserFunctions};
use arrow_array::builder::StringBuilder;
use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow_buffer::Buffer;
use arrow_schema::SchemaRef;
use std::sync::Arc;
use weir_core::graph::{AggKind, ChainedOperator, CompareOp, Literal, OperatorSpec, Vertex};
use weir_core::operator::{Collector, ConnectorFactory, OpResult, Operator, OperatorError, SourceReader, SubtaskInfo};
use weir_core::KeyGroupRange;
use weir_state::{BackendKind, Keys, StateBackend};

/// The index of column `name` in `schema`; the error names the column.
fn column_index(schema: &SchemaRef, name: &str) -> OpResult<usize> {
    schema.index_of(name).map_err(|_| OperatorError::Failed(format!("no column '{name}'")))
}

/// Column `idx` of `batch` as text, or an error naming its index.
fn text_column<'a>(batch: &'a RecordBatch, idx: usize) -> OpResult<&'a StringArray> {
    batch.column(idx).as_any().downcast_ref::<StringArray>().ok_or_else(|| OperatorError::Failed(format!("column {idx} is not text")))
}

/// `split`: one output row per whitespace-separated word. Null lines give no words; the other
/// input columns are not carried over.
struct Split {
    /// Index of the text column to split.
    column: usize,
    /// The output schema: one text column of words.
    schema: SchemaRef,
}

impl Operator for Split {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let col = text_column(&batch, self.column)?;
        let bytes = col.values().len();
        let mut words = StringBuilder::with_capacity(col.len() * 4, bytes);
        for i in 0..col.len() {
            if col.is_valid(i) {
                for w in col.value(i).split_whitespace() {
                    words.append_value(w);
                }
            }
        }
        let words = words.finish();
        if words.is_empty() {
            return Ok(());
        }
        out.collect(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(words)])?)
    }
}

/// `upper` / `lower` on one text column. ASCII text keeps its byte offsets, so the new column
/// reuses them and only the value bytes are rewritten in one pass. Other text goes row by row
/// through Unicode case mapping (which may change lengths). Nulls stay null.
struct ChangeCase {
    /// Index of the text column to change; the other columns pass through unchanged.
    column: usize,
    /// `true` for `upper`, `false` for `lower`.
    upper: bool,
}

impl Operator for ChangeCase {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let col = text_column(&batch, self.column)?;
        let new: ArrayRef = if col.values().is_ascii() {
            let mut values = col.values().to_vec();
            if self.upper {
                values.make_ascii_uppercase();
            } else {
                values.make_ascii_lowercase();
            }
            Arc::new(StringArray::try_new(col.offsets().clone(), Buffer::from_vec(values), col.nulls().cloned())?)
        } else {
            let mut b = StringBuilder::with_capacity(col.len(), col.values().len());
            for i in 0..col.len() {
                if col.is_null(i) {
                    b.append_null();
                } else if self.upper {
                    b.append_value(col.value(i).to_uppercase());
                } else {
                    b.append_value(col.value(i).to_lowercase());
                }
            }
            Arc::new(b.finish())
        };
        let mut columns = batch.columns().to_vec();
        columns[self.column] = new;
        out.collect(RecordBatch::try_new(batch.schema(), columns)?)
    }
}

/// `filter`: keeps the rows for which `column op value` holds.
///
/// An integer literal needs an `Int64` column, a text literal a text column; otherwise the
/// task fails. Nulls are not special: an `Int64` null compares as the value stored under its
/// null slot, a text null as the text under it (usually empty). `contains` and `starts_with`
/// only apply to text: with an integer literal they keep no row.
struct Filter {
    /// Index of the compared column.
    column: usize,
    /// The comparison.
    op: CompareOp,
    /// The right-hand side.
    value: Literal,
}

/// `a op b` for the ordering operators; the text-only `contains` and `starts_with` are false
/// here (the text filter handles them before calling this).
fn compare<T: PartialOrd + ?Sized>(a: &T, op: CompareOp, b: &T) -> bool {
    match op {
        CompareOp::Eq => a == b,
        CompareOp::Ne => a != b,
        CompareOp::Lt => a < b,
        CompareOp::Le => a <= b,
        CompareOp::Gt => a > b,
        CompareOp::Ge => a >= b,
        CompareOp::Contains | CompareOp::StartsWith => false,
    }
}

impl Operator for Filter {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let col = batch.column(self.column);
        let mask: BooleanArray = match &self.value {
            Literal::Int(v) => {
                let a = col
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| OperatorError::Failed("filter on a non-integer column".into()))?;
                a.values().iter().map(|x| Some(compare(x, self.op, v))).collect()
            }
            Literal::Text(v) => {
                let a = text_column(&batch, self.column)?;
                (0..a.len())
                    .map(|i| {
                        let s = a.value(i);
                        Some(match self.op {
                            CompareOp::Contains => s.contains(v.as_str()),
                            CompareOp::StartsWith => s.starts_with(v.as_str()),
                            op => compare(s, op, v.as_str()),
                        })
                    })
                    .collect()
            }
        };
        let kept = arrow_select::filter::filter_record_batch(&batch, &mask)?;
        if kept.num_rows() > 0 {
            out.collect(kept)?;
        }
        Ok(())
    }
}

/// `select`: keeps the listed columns, in that order. Zero-copy: the output shares the input's
/// arrays.
struct Select {
    /// Input column indices, in output order.
    indices: Vec<usize>,
}

impl Operator for Select {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        out.collect(batch.project(&self.indices)?)
    }
}

/// Keyed running aggregate: for every input row, emits (key, updated aggregate). Its state
/// lives in the job's state backend (`state.backend.type`), one batch call per record batch.
struct KeyedAggregate {
    /// Which aggregate: `count`, `sum`, `min` or `max`.
    kind: AggKind,
    /// Index of the key column (`Utf8` or `Int64`).
    key: usize,
    /// Index of the aggregated `Int64` column; `None` for `count`.
    field: Option<usize>,
    /// The output schema: the key column, then the aggregate.
    schema: SchemaRef,
    /// This subtask's state backend, covering its key-group range.
    state: StateBackend,
    /// The backend writes one updated aggregate per input row here; it becomes the output column.
    scratch: Vec<i64>,
}

impl Operator for KeyedAggregate {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let key_col = batch.column(self.key).clone();
        let keys = if let Some(a) = key_col.as_any().downcast_ref::<StringArray>() {
            Keys::Utf8(a)
        } else if let Some(a) = key_col.as_any().downcast_ref::<Int64Array>() {
            Keys::Int64(a)
        } else {
            return Err(OperatorError::Failed(format!("cannot key by type {}", key_col.data_type())));
        };
        let values = match self.field {
            Some(f) => Some(
                batch
                    .column(f)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| OperatorError::Failed("aggregated column is not an integer".into()))?,
            ),
            None => None,
        };
        self.state
            .keyed()
            .aggregate_batch(self.kind.name(), keys, values, self.kind, &mut self.scratch)
            .map_err(|e| OperatorError::Failed(format!("keyed state: {e}")))?;
        let result = Int64Array::from(std::mem::take(&mut self.scratch));
        out.collect(RecordBatch::try_new(self.schema.clone(), vec![key_col, Arc::new(result)])?)
    }
}

impl KeyedOperator for KeyedAggregate {
    fn keyed_state(&mut self) -> &mut StateBackend {
        &mut self.state
    }
}

/// An operator that keeps keyed state in a [`StateBackend`], which its task snapshots at a
/// barrier, restores from a checkpoint and notifies of completed checkpoints.
pub trait KeyedOperator: Operator {
    /// The operator's state backend.
    fn keyed_state(&mut self) -> &mut StateBackend;
}

/// One operator of a chain.
pub enum ChainOperator {
    /// A transform or sink without keyed state (operator state, if any, goes through the
    /// [`Operator`] hooks).
    Plain(Box<dyn Operator>),
    /// An operator whose keyed state the task checkpoints.
    Keyed(Box<dyn KeyedOperator>),
}

impl ChainOperator {
    /// The operator itself.
    pub fn operator(&mut self) -> &mut dyn Operator {
        match self {
            ChainOperator::Plain(op) => op.as_mut(),
            ChainOperator::Keyed(op) => op.as_mut(),
        }
    }

    /// The keyed state the task checkpoints for this operator, if it keeps any.
    pub fn keyed_state(&mut self) -> Option<&mut StateBackend> {
        match self {
            ChainOperator::Plain(_) => None,
            ChainOperator::Keyed(op) => Some(op.keyed_state()),
        }
    }
}

/// A vertex's operators, ready to run: an optional source reader at the head, then the
/// chain of operators a batch passes through in order.
pub struct OperatorChain {
    /// The source reader, if the vertex starts with a source. The task takes it out while it runs
    /// it and puts it back afterwards.
    pub source: Option<Box<dyn SourceReader>>,
    /// The source's uid: its operator state (the source position) is stored under it.
    pub source_uid: Option<String>,
    /// The transforms and sinks, in chain order (without the source).
    pub operators: Vec<ChainOperator>,
    /// The uid of each operator, in chain order.
    pub uids: Vec<String>,
}

/// `throttle`: passes every batch on at once, then asks the task for no further input until
/// the rows it passed are due at `rows_per_second` ([`Operator::ready_at`]). It never sleeps,
/// so a throttled task still sees barriers and commands; what it does not take waits upstream,
/// which is backpressure.
struct Throttle {
    rows_per_second: u64,
    /// When the rows passed so far are due; `None` before the first batch.
    due: Option<std::time::Instant>,
}

impl Operator for Throttle {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let now = std::time::Instant::now();
        let spent = std::time::Duration::from_secs_f64(batch.num_rows() as f64 / self.rows_per_second as f64);
        // An idle throttle builds up no credit: the schedule restarts from now.
        self.due = Some(self.due.map_or(now, |d| d.max(now)) + spent);
        out.collect(batch)
    }

    fn ready_at(&self) -> Option<std::time::Instant> {
        self.due
    }
}

impl ChainOperator {
    /// The latest instant before which an operator of the chain wants no input.
    pub fn chain_ready_at(ops: &[ChainOperator]) -> Option<std::time::Instant> {
        ops.iter()
            .filter_map(|o| match o {
                ChainOperator::Plain(op) => op.ready_at(),
                ChainOperator::Keyed(op) => op.ready_at(),
            })
            .max()
    }

    /// The earliest instant an operator of the chain wants its timers fired
    /// ([`Operator::next_timer`]).
    pub fn chain_next_timer(ops: &[ChainOperator]) -> Option<std::time::Instant> {
        ops.iter()
            .filter_map(|o| match o {
                ChainOperator::Plain(op) => op.next_timer(),
                ChainOperator::Keyed(op) => op.next_timer(),
            })
            .min()
    }
}

/// Calls [`Operator::on_time`] on every operator of `ops` whose timer is due; each one's output
/// flows through the operators after it into `out`.
///
/// The clock is read after each operator named its instant, so an operator whose timer is due
/// "now" (`Instant::now()` when asked) is called.
pub fn fire_timers(ops: &mut [ChainOperator], out: &mut dyn Collector) -> OpResult {
    for i in 0..ops.len() {
        let (head, rest) = ops[i..].split_first_mut().expect("i < len");
        let next = head.operator().next_timer();
        let now = std::time::Instant::now();
        if next.is_some_and(|t| t <= now) {
            head.operator().on_time(now, &mut ChainCollector { rest, out })?;
        }
    }
    Ok(())
}

/// Where keyed operators keep their state.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// `state.backend.type`: `hashmap` or `rocksdb`.
    pub backend: BackendKind,
    /// The TaskManager's working directory (RocksDB instances live under it).
    pub local_dir: std::path::PathBuf,
    /// `state.backend.rocksdb.aggregate-cache` in bytes (0: none).
    pub rocksdb_aggregate_cache: usize,
}

/// The hashmap backend, with the system's temporary directory: what tests use.
impl Default for StateConfig {
    fn default() -> Self {
        Self { backend: BackendKind::HashMap, local_dir: std::env::temp_dir(), rocksdb_aggregate_cache: 0 }
    }
}

/// Builds the operators of `vertex` for subtask `info`. `input_schema` is the schema of the
/// rows arriving from upstream (empty for a source vertex); `connectors` builds its source
/// and sinks, `functions` the functions of a DataStream program.
///
/// Each operator's columns are resolved against the output schema of the operator before it,
/// so a missing column fails here, naming it. A keyed operator gets a new, empty state backend
/// for this subtask's key-group range; restoring it from a checkpoint is the task's job.
pub fn build_chain(
    vertex: &Vertex,
    info: &SubtaskInfo,
    input_schema: SchemaRef,
    state: &StateConfig,
    connectors: &dyn ConnectorFactory,
    functions: &dyn UserFunctions,
    sql: &dyn crate::sql::SqlOperators,
) -> OpResult<OperatorChain> {
    let mut source = None;
    let mut source_uid = None;
    let mut operators: Vec<ChainOperator> = Vec::new();
    let mut uids = Vec::new();
    let mut schema = input_schema;
    for op in &vertex.operators {
        let out_schema = op.output_schema.clone();
        if op.spec.is_source() {
            source_uid = Some(op.uid.clone());
        } else {
            uids.push(op.uid.clone());
        }
        let plain = |op: Box<dyn Operator>| ChainOperator::Plain(op);
        match &op.spec {
            OperatorSpec::DatagenSource(_) | OperatorSpec::SocketSource { .. } | OperatorSpec::FileSource { .. } => {
                source = Some(connectors.source(op, info)?)
            }
            OperatorSpec::Split { column } => {
                operators.push(plain(Box::new(Split { column: column_index(&schema, column)?, schema: out_schema.clone() })))
            }
            OperatorSpec::Upper { column } => {
                operators.push(plain(Box::new(ChangeCase { column: column_index(&schema, column)?, upper: true })))
            }
            OperatorSpec::Lower { column } => {
                operators.push(plain(Box::new(ChangeCase { column: column_index(&schema, column)?, upper: false })))
            }
            OperatorSpec::Filter { column, op, value } => {
                operators.push(plain(Box::new(Filter { column: column_index(&schema, column)?, op: *op, value: value.clone() })))
            }
            OperatorSpec::Select { columns } => {
                let indices = columns.iter().map(|c| column_index(&schema, c)).collect::<OpResult<Vec<_>>>()?;
                operators.push(plain(Box::new(Select { indices })))
            }
            OperatorSpec::Throttle { rows_per_second } => {
                operators.push(plain(Box::new(Throttle { rows_per_second: *rows_per_second, due: None })))
            }
            OperatorSpec::User { function, .. } => match build_user(functions, function, op, info, || new_backend(op, info, state))? {
                BuiltUser::Source(reader) => source = Some(reader),
                BuiltUser::Chained(chained) => operators.push(chained),
            },
            OperatorSpec::KeyedAggregate { kind, key, field } => {
                let field = match field {
                    Some(f) => Some(column_index(&schema, f)?),
                    None => None,
                };
                let backend = new_backend(op, info, state)?;
                debug_assert!(field.is_some() || *kind == AggKind::Count);
                operators.push(ChainOperator::Keyed(Box::new(KeyedAggregate {
                    kind: *kind,
                    key: column_index(&schema, key)?,
                    field,
                    schema: out_schema.clone(),
                    state: backend,
                    scratch: Vec::new(),
                })))
            }
            OperatorSpec::Sql { .. } => operators.push(sql.build(op, &schema, info, &mut || new_backend(op, info, state))?),
            OperatorSpec::PrintSink | OperatorSpec::FileSink { .. } | OperatorSpec::BlackholeSink => {
                operators.push(plain(connectors.sink(op, info)?))
            }
        }
        schema = out_schema;
    }
    Ok(OperatorChain { source, source_uid, operators, uids })
}

/// A new, empty state backend for keyed operator `op` in subtask `info`, covering the
/// subtask's key-group range.
fn new_backend(op: &ChainedOperator, info: &SubtaskInfo, state: &StateConfig) -> OpResult<StateBackend> {
    let range = KeyGroupRange::for_subtask(info.max_parallelism, info.parallelism, info.index);
    let mut backend = StateBackend::create(state.backend, &state.local_dir, info.max_parallelism, range)
        .map_err(|e| OperatorError::Failed(format!("cannot create the state backend of {}: {e}", op.uid)))?;
    backend
        .set_aggregate_cache(state.rocksdb_aggregate_cache)
        .map_err(|e| OperatorError::Failed(format!("the state backend of {}: {e}", op.uid)))?;
    Ok(backend)
}

/// Pushes a batch through `ops`, then into `out`. Each operator's collector is the rest of the
/// chain, so the call returns once every output the batch caused has reached `out`.
pub fn push_through(ops: &mut [ChainOperator], batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
    match ops.split_first_mut() {
        None => out.collect(batch),
        Some((op, rest)) => op.operator().process_batch(batch, &mut ChainCollector { rest, out }),
    }
}

/// Passes watermark `watermark` down the chain: each operator fires what it is due (its output
/// flowing through the operators after it) and forwards the watermark, or holds it back; what
/// leaves the last operator goes to `out`.
pub fn push_watermark(ops: &mut [ChainOperator], watermark: i64, out: &mut dyn Collector) -> OpResult {
    match ops.split_first_mut() {
        None => out.emit_watermark(watermark),
        Some((op, rest)) => op.operator().on_watermark(watermark, &mut ChainCollector { rest, out }),
    }
}

/// Finishes `ops` in order: each operator's final output flows through the ones after it.
pub fn finish_chain(ops: &mut [ChainOperator], out: &mut dyn Collector) -> OpResult {
    for i in 0..ops.len() {
        let (head, rest) = ops[i..].split_first_mut().expect("i < len");
        head.operator().finish(&mut ChainCollector { rest, out })?;
    }
    Ok(())
}

/// The collector an operator writes to: forwards each batch through the rest of the chain.
struct ChainCollector<'a> {
    /// The operators after the one writing.
    rest: &'a mut [ChainOperator],
    /// Where the chain's output goes (the task's partition).
    out: &'a mut dyn Collector,
}

impl Collector for ChainCollector<'_> {
    fn collect(&mut self, batch: RecordBatch) -> OpResult {
        push_through(self.rest, batch, self.out)
    }

    fn emit_watermark(&mut self, watermark: i64) -> OpResult {
        push_watermark(self.rest, watermark, self.out)
    }

    /// A status passes the operators after the one writing untouched: only sources and
    /// watermark assigners decide idleness.
    fn emit_watermark_status(&mut self, idle: bool) -> OpResult {
        self.out.emit_watermark_status(idle)
    }
}

/// Connectors for the runtime's own tests, which cannot use `weir-connectors`.
#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Builds no source, and sinks that drop everything.
    pub struct TestConnectors;

    struct Discard;

    impl Operator for Discard {
        fn process_batch(&mut self, _batch: RecordBatch, _out: &mut dyn Collector) -> OpResult {
            Ok(())
        }
    }

    impl ConnectorFactory for TestConnectors {
        fn source(&self, op: &ChainedOperator, _info: &SubtaskInfo) -> OpResult<Box<dyn SourceReader>> {
            Err(OperatorError::NotAConnector { name: op.name.clone(), uid: op.uid.clone(), expected: "source" })
        }

        fn sink(&self, _op: &ChainedOperator, _info: &SubtaskInfo) -> OpResult<Box<dyn Operator>> {
            Ok(Box::new(Discard))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::TestConnectors;
    use super::*;

    struct Sink(Vec<RecordBatch>);
    impl Collector for Sink {
        fn collect(&mut self, batch: RecordBatch) -> OpResult {
            self.0.push(batch);
            Ok(())
        }
    }

    fn text(batch: &RecordBatch, col: usize) -> Vec<String> {
        let a = batch.column(col).as_any().downcast_ref::<StringArray>().unwrap();
        (0..a.len()).map(|i| a.value(i).to_string()).collect()
    }

    #[test]
    fn split_upper_count_chain() {
        let yaml = "pipeline:\n  - source: socket\n    port: 1\n  - split: {}\n  - lower: {}\n  - filter: \"word != 'skip'\"\n  - key_by: word\n  - count: {}\n  - sink: blackhole\n";
        let (graph, _) = weir_core::job::compile_job(yaml, "t", &Default::default(), &Default::default()).unwrap();
        let info = SubtaskInfo {
            job_id: "j".into(),
            attempt: 0,
            vertex: 0,
            vertex_name: "v".into(),
            index: 0,
            parallelism: 1,
            max_parallelism: 128,
        };
        // Vertex 0 is socket -> split -> lower -> filter; build only its transforms.
        let mut v0 = graph.vertices[0].clone();
        v0.operators.remove(0);
        let line_schema = graph.vertices[0].operators[0].output_schema.clone();
        let mut chain = build_chain(
            &v0,
            &info,
            line_schema.clone(),
            &StateConfig::default(),
            &TestConnectors,
            &crate::user::NoUserFunctions,
            &crate::sql::NoSqlOperators,
        )
        .unwrap();
        let lines = RecordBatch::try_new(line_schema, vec![Arc::new(StringArray::from(vec!["To be OR", "not to skip be"]))]).unwrap();
        let mut out = Sink(Vec::new());
        push_through(&mut chain.operators, lines, &mut out).unwrap();
        assert_eq!(text(&out.0[0], 0), vec!["to", "be", "or", "not", "to", "be"]);

        let v1 = &graph.vertices[1];
        let mut chain = build_chain(
            v1,
            &info,
            v0.output_schema(),
            &StateConfig::default(),
            &TestConnectors,
            &crate::user::NoUserFunctions,
            &crate::sql::NoSqlOperators,
        )
        .unwrap();
        assert!(matches!(chain.operators.last(), Some(ChainOperator::Plain(_))), "the sink comes from the factory");
        assert!(chain.operators[0].keyed_state().is_some(), "the count keeps keyed state");
        let mut counted = Sink(Vec::new());
        let agg = chain.operators.remove(0);
        let mut ops = vec![agg];
        push_through(&mut ops, out.0.remove(0), &mut counted).unwrap();
        let counts = counted.0[0].column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(counts.values().to_vec(), vec![1, 1, 1, 1, 2, 2]);
    }

    /// An operator whose timer is due is called through `on_time`, and its output goes through
    /// the rest of the chain; operators without a due timer are not called.
    #[test]
    fn due_timers_fire_through_the_rest_of_the_chain() {
        struct Timed {
            at: Option<std::time::Instant>,
        }
        impl Operator for Timed {
            fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
                out.collect(batch)
            }
            fn next_timer(&self) -> Option<std::time::Instant> {
                self.at
            }
            fn on_time(&mut self, _now: std::time::Instant, out: &mut dyn Collector) -> OpResult {
                self.at = None;
                out.collect(RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![7i64])) as _)])?)
            }
        }
        let later = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        let mut ops = vec![
            ChainOperator::Plain(Box::new(Timed { at: Some(std::time::Instant::now()) })),
            ChainOperator::Plain(Box::new(Timed { at: Some(later) })),
        ];
        assert!(ChainOperator::chain_next_timer(&ops).is_some_and(|t| t < later), "the earliest timer");
        let mut out = Sink(Vec::new());
        fire_timers(&mut ops, &mut out).unwrap();
        assert_eq!(out.0.len(), 1, "the first operator fired once, through the second");
        assert_eq!(ChainOperator::chain_next_timer(&ops), Some(later));
        fire_timers(&mut ops, &mut out).unwrap();
        assert_eq!(out.0.len(), 1, "nothing else was due");
    }

    /// A throttle passes every row on at once and then asks for no input until those rows are
    /// due at its rate; it never sleeps. In a job file it is a step like any other, and a rate
    /// of zero is refused.
    #[test]
    fn throttle_passes_rows_and_pauses_the_input_for_their_time() {
        let yaml = "pipeline:\n  - source: socket\n    port: 1\n  - throttle: {rows-per-second: 1000}\n  - sink: blackhole\n";
        let (graph, _) = weir_core::job::compile_job(yaml, "t", &Default::default(), &Default::default()).unwrap();
        assert_eq!(graph.vertices[0].operators[1].spec, OperatorSpec::Throttle { rows_per_second: 1000 });
        let zero = yaml.replace("1000", "0");
        let err = weir_core::job::compile_job(&zero, "t", &Default::default(), &Default::default()).unwrap_err().to_string();
        assert!(err.contains("rows-per-second"), "{err}");

        let mut ops = vec![ChainOperator::Plain(Box::new(Throttle { rows_per_second: 1000, due: None }))];
        assert_eq!(ChainOperator::chain_ready_at(&ops), None, "ready before any input");
        let rows = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![1i64; 500])) as _)]).unwrap();
        let before = std::time::Instant::now();
        let mut out = Sink(Vec::new());
        push_through(&mut ops, rows.clone(), &mut out).unwrap();
        let after = std::time::Instant::now();
        assert_eq!(out.0.len(), 1, "the batch is passed on at once");
        let due = ChainOperator::chain_ready_at(&ops).expect("a pause after 500 rows");
        assert!(
            due >= before + std::time::Duration::from_millis(500) && due <= after + std::time::Duration::from_millis(500),
            "500 rows at 1000/s"
        );
        // The next batch's time adds up behind the first one's.
        push_through(&mut ops, rows, &mut out).unwrap();
        assert_eq!(ChainOperator::chain_ready_at(&ops), Some(due + std::time::Duration::from_millis(500)));
    }
}
