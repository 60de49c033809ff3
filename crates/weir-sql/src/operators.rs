//! The operators of SQL plans, as a TaskManager runs them, and their definitions ([`spec`])
//! as the JobGraph carries them.
//!
//! - `calc`: a filter and projections, DataFusion physical expressions evaluated over whole
//!   batches; optionally appends the hidden group-key column of some of its outputs.
//! - `decode`: csv or json lines (from the file and socket sources) into the table's columns,
//!   with arrow-csv's and arrow-json's decoders.
//! - `group-aggregate`: a grouped aggregate over keyed state; per batch it reads every group
//!   the batch touches with one `multi_get`, folds the rows, writes the changed groups with one
//!   `write_batch`, and emits Flink's changelog for each changed group: `+I` for a new one,
//!   `-U` old / `+U` new for an updated one. A group updated several times in one batch emits
//!   once (as Flink's mini-batch aggregation does), and one whose result did not change emits
//!   nothing.
//! - `debezium-encode`: rows as Flink's `debezium-json` changelog (`before`, `after`, `op`),
//!   which the file sink writes as JSON lines.
//! - `upsert`: drops the `-U` rows of an updating stream written into a sink whose primary key
//!   is the stream's unique key, as Flink's upsert mode: each `+U` replaces its key's row.
//! - `print`: Flink SQL's print connector, `+I[a, 1]` per row.
//! - `collect`: a query's rows to the interactive SQL client, over TCP, one line per row:
//!   its row kind, a tab, and the row as a JSON array.
//! - `join`: a regular inner join. Each side's rows are kept per join key in keyed state (one
//!   list per key and side, with a count per distinct row); a batch reads the lists of every key
//!   it touches with one `multi_get`, pairs each row with the other side's rows so far (rows of
//!   the same batch included, in order), and writes the changed lists with one `write_batch`.
//!   The state grows with the inputs, as a Flink regular join's does without a state TTL, except
//!   in an interval join (time bounds between the sides): there an index of when each row can
//!   meet no future partner (time, side, key) drops rows as the watermark passes them.
//! - `watermark`: a table's `WATERMARK FOR` expression, evaluated per batch; its largest value
//!   so far goes downstream as the watermark after each batch that advanced it. With an idle
//!   timeout, a subtask without rows for that long declares itself idle (downstream event time
//!   stops waiting for it) until its next row.
//! - `window-assign`: the windows of each row (TUMBLE, HOP, CUMULATE), one output row per window.
//! - `window-aggregate`: an aggregate per group and window in keyed state; a window's row is
//!   emitted once, when the watermark passes its end, and its state is then dropped. Rows of a
//!   window the watermark has already passed are late: they are dropped (and counted), as
//!   Flink's window aggregates drop them.

use crate::compile::{RowKind, KEY, ROWKIND};
use crate::planner::ShippedExpr;
use arrow_array::builder::{BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, BinaryArray, Decimal128Array, Int8Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, SchemaRef};
use datafusion_physical_expr::PhysicalExpr;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use weir_core::graph::{ChainedOperator, FileFormat, OperatorSpec};
use weir_core::operator::{Collector, OpResult, Operator, OperatorError, SubtaskInfo};
use weir_runtime::operators::{ChainOperator, KeyedOperator};
use weir_runtime::sql::SqlOperators;
use weir_state::keyed::{composite_key, key_group};
use weir_state::StateBackend;

/// The definitions of SQL operators, as JSON inside `OperatorSpec::Sql`.
pub mod spec {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Calc {
        /// A predicate over the input's visible columns (`c0`, `c1`, ...): rows where it is not
        /// true are dropped before the projections.
        pub filter: Option<String>,
        /// One expression per output column, over the input's visible columns.
        pub projections: Vec<String>,
        /// Append the hidden key column ([`KEY`]) of these output columns.
        #[serde(default)]
        pub key: Option<Vec<usize>>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Decode {
        pub format: FileFormat,
        /// The table, for error messages.
        pub table: String,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum AggFunction {
        Count,
        Sum,
        Min,
        Max,
        Avg,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Aggregate {
        pub function: AggFunction,
        /// The input column of its argument; `None` for `COUNT(*)`.
        pub arg: Option<usize>,
        pub distinct: bool,
        /// The result's Arrow type, in arrow's text form.
        pub output: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct GroupAggregate {
        /// Input columns `0..keys` are the group key; the output starts with them.
        pub keys: usize,
        pub aggregates: Vec<Aggregate>,
        /// One NOT NULL BIGINT or STRING key and COUNT/SUM over NOT NULL BIGINTs: the state
        /// backend's typed aggregates run it, and the input is partitioned by the key column
        /// itself (no hidden key column).
        #[serde(default)]
        pub typed: bool,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Print {
        pub identifier: Option<String>,
    }

    /// A table's watermark: `expr` (over its columns) evaluated per row; its largest value so
    /// far is the watermark, emitted after each batch that advanced it. After `idle_timeout_ms`
    /// without rows the subtask declares itself idle, until its next row.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Watermark {
        pub expr: String,
        /// Milliseconds without rows after which the source is idle (`None`: never).
        #[serde(default)]
        pub idle_timeout_ms: Option<u64>,
    }

    /// The windows of each row (a window function): the input's columns, then `window_start`,
    /// `window_end`, `window_time`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct WindowAssign {
        pub kind: crate::script::WindowKind,
        /// The input column of the row's time.
        pub time: usize,
        pub size_ms: i64,
        pub step_ms: i64,
    }

    /// Rows to the interactive SQL client listening at `address`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Collect {
        pub address: String,
    }

    /// A regular inner join. Its input rows hold `left` columns, then `right` columns (the other
    /// side's NULL), a side marker (0 left, 1 right), the key columns and the hidden key.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Join {
        pub left: usize,
        pub right: usize,
        /// Whether rows of the left (right) side without a partner are emitted padded with
        /// NULLs: a LEFT (RIGHT, FULL) outer join.
        #[serde(default)]
        pub outer: [bool; 2],
        /// An interval join's time bounds: its state is dropped as the watermark passes them.
        #[serde(default)]
        pub interval: Option<IntervalBounds>,
    }

    /// The time bounds of an interval join, `lower <= left time - right time <= upper` (in
    /// milliseconds; `None`: unbounded on that side), over the join's columns `left_time` and
    /// `right_time` (indexes among its output columns). A left row can meet no future right
    /// row once the watermark reaches its time minus `lower`, a right row none once it reaches
    /// its time plus `upper`: it is then dropped from state, as Flink's interval join does.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct IntervalBounds {
        pub left_time: usize,
        pub right_time: usize,
        pub lower: Option<i64>,
        pub upper: Option<i64>,
    }

    /// An aggregate per group and window, emitted once when the watermark passes the window's
    /// end: input columns `0..keys` are the group key, `window_end` the index among them of the
    /// window's end.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct WindowAggregate {
        pub keys: usize,
        pub window_end: usize,
        pub aggregates: Vec<Aggregate>,
        /// Windows close by the wall clock (`PROCTIME()`), not by the watermark.
        #[serde(default)]
        pub processing_time: bool,
    }
}

/// Builds the operators of SQL plans for the runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqlRuntime;

impl SqlOperators for SqlRuntime {
    fn build(
        &self,
        op: &ChainedOperator,
        input: &SchemaRef,
        info: &SubtaskInfo,
        state: &mut dyn FnMut() -> OpResult<StateBackend>,
    ) -> OpResult<ChainOperator> {
        let OperatorSpec::Sql { kind, spec, .. } = &op.spec else {
            return Err(OperatorError::Failed(format!("operator '{}' is not a SQL operator", op.name)));
        };
        let bad = |e: String| OperatorError::Failed(format!("SQL operator '{}' (uid {}): {e}", op.name, op.uid));
        fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<T, String> {
            serde_json::from_value(v.clone()).map_err(|e| format!("bad definition: {e}"))
        }
        let output = op.output_schema.clone();
        Ok(match kind.as_str() {
            "calc" => ChainOperator::Plain(Box::new(Calc::new(parse(spec).map_err(bad)?, input, output).map_err(bad)?)),
            "decode" => ChainOperator::Plain(Box::new(Decode { spec: parse(spec).map_err(bad)?, schema: output })),
            "group-aggregate" => {
                let spec: spec::GroupAggregate = parse(spec).map_err(bad)?;
                let agg = GroupAggregate::new(spec, input, output, state()?, info.max_parallelism).map_err(bad)?;
                ChainOperator::Keyed(Box::new(agg))
            }
            "debezium-encode" => ChainOperator::Plain(Box::new(DebeziumEncode { schema: output })),
            "upsert" => {
                let rowkind = input.index_of(ROWKIND).map_err(|_| bad("the input carries no row kinds".into()))?;
                ChainOperator::Plain(Box::new(Upsert { rowkind }))
            }
            "watermark" => ChainOperator::Plain(Box::new(WatermarkAssigner::new(parse(spec).map_err(bad)?, input, &op.uid).map_err(bad)?)),
            "window-assign" => ChainOperator::Plain(Box::new(WindowAssign { spec: parse(spec).map_err(bad)?, schema: output })),
            "collect" => {
                ChainOperator::Plain(Box::new(Collect { address: parse::<spec::Collect>(spec).map_err(bad)?.address, stream: None }))
            }
            "join" => {
                let spec: spec::Join = parse(spec).map_err(bad)?;
                ChainOperator::Keyed(Box::new(Join::new(spec, input, output, state()?, info.max_parallelism).map_err(bad)?))
            }
            "window-aggregate" => {
                let spec: spec::WindowAggregate = parse(spec).map_err(bad)?;
                let agg = WindowAggregate::new(spec, input, output, state()?, info.max_parallelism).map_err(bad)?;
                ChainOperator::Keyed(Box::new(agg))
            }
            "print" => {
                let spec: spec::Print = parse(spec).map_err(bad)?;
                ChainOperator::Plain(Box::new(Print::new(spec, info)))
            }
            other => return Err(bad(format!("unknown SQL operator kind '{other}' (a newer Weir's plan?)"))),
        })
    }
}

fn df(e: datafusion_common::DataFusionError) -> OperatorError {
    OperatorError::Failed(e.strip_backtrace())
}

/// `calc`: filter, then projections; hidden columns pass through.
struct Calc {
    filter: Option<Arc<dyn PhysicalExpr>>,
    projections: Vec<Arc<dyn PhysicalExpr>>,
    /// Number of visible input columns (the expressions' input).
    visible: usize,
    /// Hidden input columns passed through (the row kind).
    hidden: Vec<usize>,
    key: Option<Vec<usize>>,
    schema: SchemaRef,
}

impl Calc {
    fn new(spec: spec::Calc, input: &SchemaRef, schema: SchemaRef) -> Result<Self, String> {
        let visible_fields: Vec<_> = input.fields().iter().filter(|f| !f.name().starts_with("weir.")).cloned().collect();
        let visible = visible_fields.len();
        let expr_input = arrow_schema::Schema::new(visible_fields);
        let hidden = input.fields().iter().enumerate().filter(|(_, f)| f.name() == ROWKIND).map(|(i, _)| i).collect();
        let plan = |t: &String| ShippedExpr::physical(t, &expr_input).map_err(|e| format!("expression `{t}`: {}", e.strip_backtrace()));
        let filter = spec.filter.as_ref().map(plan).transpose()?;
        let projections = spec.projections.iter().map(plan).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { filter, projections, visible, hidden, key: spec.key, schema })
    }
}

impl Operator for Calc {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let batch = match &self.filter {
            None => batch,
            Some(f) => {
                let visible = batch.project(&(0..self.visible).collect::<Vec<_>>())?;
                let mask = f.evaluate(&visible).map_err(df)?.into_array(batch.num_rows()).map_err(df)?;
                let mask = mask.as_boolean_opt().ok_or_else(|| OperatorError::Failed("the filter is not a predicate".into()))?;
                arrow_select::filter::filter_record_batch(&batch, mask)?
            }
        };
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let visible = batch.project(&(0..self.visible).collect::<Vec<_>>())?;
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (p, field) in self.projections.iter().zip(self.schema.fields()) {
            let mut c = p.evaluate(&visible).map_err(df)?.into_array(rows).map_err(df)?;
            if c.data_type() != field.data_type() {
                c = arrow_cast::cast(&c, field.data_type())?;
            }
            columns.push(c);
        }
        for &h in &self.hidden {
            columns.push(batch.column(h).clone());
        }
        if let Some(key) = &self.key {
            let parts: Vec<ArrayRef> = key.iter().map(|&i| columns[i].clone()).collect();
            columns.push(Arc::new(encode_keys(&parts, rows)?));
        }
        out.collect(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// One key column, typed once per batch.
enum KeyPart {
    Int(arrow_array::Int64Array),
    Float(arrow_array::Float64Array),
    Text(StringArray),
    Bool(arrow_array::BooleanArray),
    Decimal(Decimal128Array),
    Bytes(BinaryArray),
}

impl KeyPart {
    fn new(a: &ArrayRef) -> OpResult<Self> {
        let t = a.data_type();
        Ok(if t.is_integer() || t.is_temporal() {
            KeyPart::Int(arrow_cast::cast(a, &DataType::Int64)?.as_primitive::<Int64Type>().clone())
        } else if t.is_floating() {
            KeyPart::Float(arrow_cast::cast(a, &DataType::Float64)?.as_primitive::<Float64Type>().clone())
        } else if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            KeyPart::Text(arrow_cast::cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
        } else if matches!(t, DataType::Boolean) {
            KeyPart::Bool(a.as_boolean().clone())
        } else if matches!(t, DataType::Decimal128(..)) {
            KeyPart::Decimal(a.as_primitive::<Decimal128Type>().clone())
        } else if matches!(t, DataType::Binary) {
            KeyPart::Bytes(a.as_binary::<i32>().clone())
        } else {
            return Err(OperatorError::Failed(format!("cannot group by a column of type {t}")));
        })
    }

    fn write(&self, row: usize, out: &mut Vec<u8>) {
        let valid = match self {
            KeyPart::Int(a) => a.is_valid(row),
            KeyPart::Float(a) => a.is_valid(row),
            KeyPart::Text(a) => a.is_valid(row),
            KeyPart::Bool(a) => a.is_valid(row),
            KeyPart::Decimal(a) => a.is_valid(row),
            KeyPart::Bytes(a) => a.is_valid(row),
        };
        if !valid {
            out.push(0);
            return;
        }
        out.push(1);
        match self {
            KeyPart::Int(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
            // -0.0 and 0.0 group together, as SQL compares them equal.
            KeyPart::Float(a) => out.extend_from_slice(&(a.value(row) + 0.0).to_bits().to_le_bytes()),
            KeyPart::Text(a) => {
                let v = a.value(row).as_bytes();
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            KeyPart::Bool(a) => out.push(a.value(row) as u8),
            KeyPart::Decimal(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
            KeyPart::Bytes(a) => {
                let v = a.value(row);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
}

/// The key bytes of every row of `parts`: per column a null flag, then the value (integers,
/// dates and timestamps as i64, floats as f64 bits, strings and bytes length-prefixed). The
/// same group key gives the same bytes in every process, so it picks the key group and
/// addresses the group's state.
fn encode_keys(parts: &[ArrayRef], rows: usize) -> OpResult<BinaryArray> {
    let parts = parts.iter().map(KeyPart::new).collect::<OpResult<Vec<_>>>()?;
    let mut builder = BinaryBuilder::with_capacity(rows, rows * (1 + 9 * parts.len()));
    let mut buf = Vec::with_capacity(64);
    for row in 0..rows {
        buf.clear();
        for p in &parts {
            p.write(row, &mut buf);
        }
        builder.append_value(&buf);
    }
    Ok(builder.finish())
}

/// `decode`: lines of csv or json into the table's physical columns.
struct Decode {
    spec: spec::Decode,
    schema: SchemaRef,
}

impl Operator for Decode {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let lines = batch.column(0).as_string_opt::<i32>().ok_or_else(|| OperatorError::Failed("decode takes a text column".into()))?;
        let mut buf = Vec::with_capacity(lines.values().len() + lines.len());
        let mut count = 0;
        for line in lines.iter().flatten() {
            if line.trim().is_empty() {
                continue;
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        let table = &self.spec.table;
        let fail = |e: arrow_schema::ArrowError| OperatorError::Failed(format!("table '{table}': cannot decode a row: {e}"));
        let decoded = match self.spec.format {
            FileFormat::Json => {
                let mut d = arrow_json::ReaderBuilder::new(self.schema.clone()).with_batch_size(count).build_decoder().map_err(fail)?;
                decode_all(&buf, &mut d).map_err(fail)?
            }
            _ => {
                let mut d = arrow_csv::ReaderBuilder::new(self.schema.clone()).with_header(false).with_batch_size(count).build_decoder();
                decode_all(&buf, &mut d).map_err(fail)?
            }
        };
        for b in decoded {
            out.collect(b)?;
        }
        Ok(())
    }
}

/// arrow-csv's and arrow-json's push decoders.
trait PushDecoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow_schema::ArrowError>;
    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow_schema::ArrowError>;
}

impl PushDecoder for arrow_csv::reader::Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow_schema::ArrowError> {
        arrow_csv::reader::Decoder::decode(self, buf)
    }
    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        arrow_csv::reader::Decoder::flush(self)
    }
}

impl PushDecoder for arrow_json::reader::Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow_schema::ArrowError> {
        arrow_json::reader::Decoder::decode(self, buf)
    }
    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        arrow_json::reader::Decoder::flush(self)
    }
}

/// Feeds `buf` to a push decoder, flushing whenever it stops taking bytes.
fn decode_all(buf: &[u8], d: &mut impl PushDecoder) -> Result<Vec<RecordBatch>, arrow_schema::ArrowError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let read = d.decode(&buf[at..])?;
        at += read;
        if read == 0 || at < buf.len() {
            match d.flush()? {
                Some(b) => out.push(b),
                None if read == 0 => break,
                None => {}
            }
        }
    }
    if let Some(b) = d.flush()? {
        out.push(b);
    }
    Ok(out)
}

/// A group's accumulator of one aggregate, as stored in keyed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Acc {
    Count(i64),
    SumInt(Option<i64>),
    SumFloat(Option<f64>),
    SumDecimal(Option<i128>),
    Avg { sum: f64, count: i64 },
    Min(Option<Scalar>),
    Max(Option<Scalar>),
}

/// A MIN/MAX value.
#[derive(Debug, Clone, PartialEq, PartialOrd, Serialize, Deserialize)]
enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
    Decimal(i128),
    Bool(bool),
}

/// An aggregate's argument column, typed once per batch.
enum ArgColumn {
    None,
    Int(arrow_array::Int64Array),
    Float(arrow_array::Float64Array),
    Decimal(Decimal128Array),
    Text(StringArray),
    Bool(arrow_array::BooleanArray),
}

impl ArgColumn {
    fn new(a: Option<&ArrayRef>) -> OpResult<Self> {
        let Some(a) = a else { return Ok(ArgColumn::None) };
        let t = a.data_type();
        Ok(if t.is_integer() || t.is_temporal() {
            ArgColumn::Int(arrow_cast::cast(a, &DataType::Int64)?.as_primitive::<Int64Type>().clone())
        } else if t.is_floating() {
            ArgColumn::Float(arrow_cast::cast(a, &DataType::Float64)?.as_primitive::<Float64Type>().clone())
        } else if matches!(t, DataType::Decimal128(..)) {
            ArgColumn::Decimal(a.as_primitive::<Decimal128Type>().clone())
        } else if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            ArgColumn::Text(arrow_cast::cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
        } else if matches!(t, DataType::Boolean) {
            ArgColumn::Bool(a.as_boolean().clone())
        } else {
            return Err(OperatorError::Failed(format!("cannot aggregate a column of type {t}")));
        })
    }

    fn is_valid(&self, row: usize) -> bool {
        match self {
            ArgColumn::None => true,
            ArgColumn::Int(a) => a.is_valid(row),
            ArgColumn::Float(a) => a.is_valid(row),
            ArgColumn::Decimal(a) => a.is_valid(row),
            ArgColumn::Text(a) => a.is_valid(row),
            ArgColumn::Bool(a) => a.is_valid(row),
        }
    }

    fn scalar(&self, row: usize) -> Option<Scalar> {
        if !self.is_valid(row) {
            return None;
        }
        Some(match self {
            ArgColumn::None => return None,
            ArgColumn::Int(a) => Scalar::Int(a.value(row)),
            ArgColumn::Float(a) => Scalar::Float(a.value(row)),
            ArgColumn::Decimal(a) => Scalar::Decimal(a.value(row)),
            ArgColumn::Text(a) => Scalar::Text(a.value(row).to_string()),
            ArgColumn::Bool(a) => Scalar::Bool(a.value(row)),
        })
    }

    fn as_f64(&self, row: usize) -> f64 {
        match self {
            ArgColumn::Int(a) => a.value(row) as f64,
            ArgColumn::Float(a) => a.value(row),
            ArgColumn::Decimal(a) => a.value(row) as f64,
            _ => 0.0,
        }
    }

    /// The value's bytes, for COUNT(DISTINCT).
    fn distinct_bytes(&self, row: usize, out: &mut Vec<u8>) {
        out.clear();
        match self.scalar(row) {
            Some(Scalar::Int(v)) => out.extend_from_slice(&v.to_le_bytes()),
            Some(Scalar::Float(v)) => out.extend_from_slice(&(v + 0.0).to_bits().to_le_bytes()),
            Some(Scalar::Decimal(v)) => out.extend_from_slice(&v.to_le_bytes()),
            Some(Scalar::Text(v)) => out.extend_from_slice(v.as_bytes()),
            Some(Scalar::Bool(v)) => out.push(v as u8),
            None => {}
        }
    }
}

impl Acc {
    fn new(function: spec::AggFunction, output: &DataType) -> Self {
        use spec::AggFunction::*;
        match function {
            Count => Acc::Count(0),
            Sum if output.is_floating() => Acc::SumFloat(None),
            Sum if matches!(output, DataType::Decimal128(..)) => Acc::SumDecimal(None),
            Sum => Acc::SumInt(None),
            Avg => Acc::Avg { sum: 0.0, count: 0 },
            Min => Acc::Min(None),
            Max => Acc::Max(None),
        }
    }

    /// Folds row `row` of `arg` in (a COUNT(DISTINCT) is folded by the operator itself).
    fn fold(&mut self, arg: &ArgColumn, row: usize) {
        if !arg.is_valid(row) {
            return;
        }
        match self {
            Acc::Count(n) => *n += 1,
            Acc::SumInt(s) => {
                if let ArgColumn::Int(a) = arg {
                    *s = Some(s.unwrap_or(0).wrapping_add(a.value(row)));
                }
            }
            Acc::SumFloat(s) => *s = Some(s.unwrap_or(0.0) + arg.as_f64(row)),
            Acc::SumDecimal(s) => {
                if let ArgColumn::Decimal(a) = arg {
                    *s = Some(s.unwrap_or(0).wrapping_add(a.value(row)));
                }
            }
            Acc::Avg { sum, count } => {
                *sum += arg.as_f64(row);
                *count += 1;
            }
            Acc::Min(m) => {
                let v = arg.scalar(row);
                if m.is_none() || v.as_ref().is_some_and(|v| Some(v) < m.as_ref()) {
                    *m = v;
                }
            }
            Acc::Max(m) => {
                let v = arg.scalar(row);
                if m.is_none() || v.as_ref().is_some_and(|v| Some(v) > m.as_ref()) {
                    *m = v;
                }
            }
        }
    }
}

/// `group-aggregate`: see the module header.
struct GroupAggregate {
    spec: spec::GroupAggregate,
    outputs: Vec<DataType>,
    /// Index of the hidden key column in the input.
    key_column: usize,
    schema: SchemaRef,
    state: StateBackend,
    max_parallelism: u32,
}

/// The address in keyed state of `key`'s entry in state `state` (namespace `ns`): under the
/// key's key group, so it moves with the key when the job is rescaled.
fn state_key(state: &str, key: &[u8], ns: &[u8], max_parallelism: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + ns.len() + state.len() + 9);
    composite_key(&mut out, key_group(key, max_parallelism), state, key, ns);
    out
}

/// What the aggregates of a plan need from their input: the index of its hidden key column,
/// and the result type of each aggregate.
fn aggregate_layout(input: &SchemaRef, aggregates: &[spec::Aggregate]) -> Result<(usize, Vec<DataType>), String> {
    let key_column = input.index_of(KEY).map_err(|_| "the input has no key column".to_string())?;
    let outputs = aggregates
        .iter()
        .map(|a| a.output.parse::<DataType>().map_err(|e| format!("aggregate type {}: {e}", a.output)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((key_column, outputs))
}

/// Reads the accumulators that `multi_get` returned: `None` where a group had none yet.
fn decode_accumulators(stored: Vec<Option<Vec<u8>>>) -> OpResult<Vec<Option<Vec<Acc>>>> {
    stored
        .into_iter()
        .map(|v| match v {
            Some(bytes) => {
                postcard::from_bytes(&bytes).map(Some).map_err(|e| OperatorError::Failed(format!("corrupt aggregate state: {e}")))
            }
            None => Ok(None),
        })
        .collect()
}

fn state_error(e: weir_state::StateError) -> OperatorError {
    OperatorError::Failed(format!("keyed state: {e}"))
}

/// The state name of the accumulators, and of the values seen by COUNT(DISTINCT).
const ACC_STATE: &str = "sql-agg";
/// The typed path's hidden count per group (its sums go under `sql-agg-count-<j>`).
const TYPED_COUNT_STATE: &str = "sql-agg-count";
const DISTINCT_STATE: &str = "sql-agg-distinct";

impl GroupAggregate {
    fn new(
        spec: spec::GroupAggregate,
        input: &SchemaRef,
        schema: SchemaRef,
        state: StateBackend,
        max_parallelism: u32,
    ) -> Result<Self, String> {
        let (key_column, outputs) = if spec.typed {
            let outputs = vec![DataType::Int64; spec.aggregates.len()];
            (0, outputs)
        } else {
            aggregate_layout(input, &spec.aggregates)?
        };
        Ok(Self { spec, outputs, key_column, schema, state, max_parallelism })
    }

    /// [`Operator::process_batch`] on the typed path: per aggregate one call of the backend's
    /// batch aggregate (a running value per row), plus a hidden count that tells new groups
    /// from updated ones; a group's value before the batch is its running value at its first
    /// row less that row's own contribution.
    fn process_typed(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        use weir_core::graph::AggKind;
        let rows = batch.num_rows();
        let key_col = batch.column(0).clone();
        let keys = if let Some(a) = key_col.as_any().downcast_ref::<StringArray>() {
            weir_state::Keys::Utf8(a)
        } else if let Some(a) = key_col.as_any().downcast_ref::<arrow_array::Int64Array>() {
            weir_state::Keys::Int64(a)
        } else {
            return Err(OperatorError::Failed(format!("the typed aggregate's key is {}", key_col.data_type())));
        };
        let mut counts = Vec::with_capacity(rows);
        self.state.keyed().aggregate_batch(TYPED_COUNT_STATE, keys, None, AggKind::Count, &mut counts).map_err(state_error)?;
        // Per aggregate: its running values and its argument (None: the count).
        let mut running: Vec<(Vec<i64>, Option<arrow_array::Int64Array>)> = Vec::with_capacity(self.spec.aggregates.len());
        for (j, agg) in self.spec.aggregates.iter().enumerate() {
            match (agg.function, agg.arg) {
                (spec::AggFunction::Sum, Some(i)) => {
                    let values = batch
                        .column(i)
                        .as_primitive_opt::<Int64Type>()
                        .ok_or_else(|| OperatorError::Failed("SUM's argument is not BIGINT".into()))?
                        .clone();
                    let mut out = Vec::with_capacity(rows);
                    self.state
                        .keyed()
                        .aggregate_batch(&format!("{TYPED_COUNT_STATE}-{j}"), keys, Some(&values), AggKind::Sum, &mut out)
                        .map_err(state_error)?;
                    running.push((out, Some(values)));
                }
                _ => running.push((Vec::new(), None)),
            }
        }
        // Each group's first and last row in the batch, in order of first appearance.
        let mut groups: Vec<(u32, u32)> = Vec::new();
        match keys {
            weir_state::Keys::Int64(a) => {
                let mut at: hashbrown::HashMap<i64, usize> = hashbrown::HashMap::with_capacity(rows);
                for (r, k) in a.values().iter().enumerate() {
                    let g = *at.entry(*k).or_insert_with(|| {
                        groups.push((r as u32, r as u32));
                        groups.len() - 1
                    });
                    groups[g].1 = r as u32;
                }
            }
            weir_state::Keys::Utf8(a) => {
                let mut at: hashbrown::HashMap<&str, usize> = hashbrown::HashMap::with_capacity(rows);
                for r in 0..rows {
                    let g = *at.entry(a.value(r)).or_insert_with(|| {
                        groups.push((r as u32, r as u32));
                        groups.len() - 1
                    });
                    groups[g].1 = r as u32;
                }
            }
        }
        let mut indices = Vec::with_capacity(groups.len() * 2);
        let mut kinds = Vec::with_capacity(groups.len() * 2);
        let mut values: Vec<Vec<i64>> = vec![Vec::with_capacity(groups.len() * 2); self.spec.aggregates.len()];
        for &(first, last) in &groups {
            let (f, l) = (first as usize, last as usize);
            let old_count = counts[f] - 1;
            let value = |j: usize, row: usize, before: bool| -> i64 {
                match &running[j] {
                    (out, Some(arg)) => out[row] - if before { arg.value(row) } else { 0 },
                    (_, None) => counts[row] - before as i64,
                }
            };
            if old_count > 0 {
                indices.push(first);
                kinds.push(RowKind::UpdateBefore as i8);
                for (j, v) in values.iter_mut().enumerate() {
                    v.push(value(j, f, true));
                }
                kinds.push(RowKind::UpdateAfter as i8);
            } else {
                kinds.push(RowKind::Insert as i8);
            }
            indices.push(first);
            for (j, v) in values.iter_mut().enumerate() {
                v.push(value(j, l, false));
            }
        }
        let indices = UInt32Array::from(indices);
        let mut columns = vec![arrow_select::take::take(&key_col, &indices, None)?];
        for v in values {
            columns.push(Arc::new(arrow_array::Int64Array::from(v)) as ArrayRef);
        }
        columns.push(Arc::new(Int8Array::from(kinds)));
        out.collect(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The result column of aggregate `j` for the accumulators `accs`.
    fn result_column(&self, j: usize, accs: &[&[Acc]]) -> OpResult<ArrayRef> {
        result_column(&self.outputs[j], j, accs)
    }
}

/// The result column (of type `output`) of aggregate `j` for the accumulators `accs`.
fn result_column(output: &DataType, j: usize, accs: &[&[Acc]]) -> OpResult<ArrayRef> {
    let column: ArrayRef = match accs.first().map(|a| &a[j]) {
        Some(Acc::Count(_)) | Some(Acc::SumInt(_)) => {
            let mut b = Int64Builder::with_capacity(accs.len());
            for a in accs {
                match &a[j] {
                    Acc::Count(n) => b.append_value(*n),
                    Acc::SumInt(s) => b.append_option(*s),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Some(Acc::SumFloat(_)) | Some(Acc::Avg { .. }) => {
            let mut b = Float64Builder::with_capacity(accs.len());
            for a in accs {
                match &a[j] {
                    Acc::SumFloat(s) => b.append_option(*s),
                    Acc::Avg { sum, count } if *count > 0 => b.append_value(sum / *count as f64),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Some(Acc::SumDecimal(_)) => {
            let values: Decimal128Array = accs.iter().map(|a| if let Acc::SumDecimal(s) = &a[j] { *s } else { None }).collect();
            let (p, s) = match output {
                DataType::Decimal128(p, s) => (*p, *s),
                _ => (38, 0),
            };
            Arc::new(values.with_precision_and_scale(p, s)?)
        }
        Some(Acc::Min(_)) | Some(Acc::Max(_)) => scalars_to_array(
            accs.iter().map(|a| match &a[j] {
                Acc::Min(v) | Acc::Max(v) => v.as_ref(),
                _ => None,
            }),
            output,
        )?,
        None => arrow_array::new_empty_array(output),
    };
    Ok(if column.data_type() != output { cast_to(&column, output)? } else { column })
}

/// Casts `a` to `to`, through Int32 for dates (arrow casts Int32, not Int64, to Date32).
fn cast_to(a: &ArrayRef, to: &DataType) -> OpResult<ArrayRef> {
    if matches!(to, DataType::Date32) && a.data_type() == &DataType::Int64 {
        let a = arrow_cast::cast(a, &DataType::Int32)?;
        return Ok(arrow_cast::cast(&a, to)?);
    }
    Ok(arrow_cast::cast(a, to)?)
}

/// MIN/MAX values as an array of type `output`.
fn scalars_to_array<'a>(values: impl Iterator<Item = Option<&'a Scalar>>, output: &DataType) -> OpResult<ArrayRef> {
    let values: Vec<Option<&Scalar>> = values.collect();
    let kind = values.iter().flatten().next().cloned();
    Ok(match kind {
        Some(Scalar::Float(_)) => {
            let mut b = Float64Builder::with_capacity(values.len());
            values.iter().for_each(|v| b.append_option(if let Some(Scalar::Float(f)) = v { Some(*f) } else { None }));
            Arc::new(b.finish())
        }
        Some(Scalar::Text(_)) => {
            let mut b = StringBuilder::new();
            values.iter().for_each(|v| b.append_option(if let Some(Scalar::Text(s)) = v { Some(s.as_str()) } else { None }));
            Arc::new(b.finish())
        }
        Some(Scalar::Bool(_)) => {
            let mut b = BooleanBuilder::with_capacity(values.len());
            values.iter().for_each(|v| b.append_option(if let Some(Scalar::Bool(x)) = v { Some(*x) } else { None }));
            Arc::new(b.finish())
        }
        Some(Scalar::Decimal(_)) => {
            let a: Decimal128Array = values.iter().map(|v| if let Some(Scalar::Decimal(x)) = v { Some(*x) } else { None }).collect();
            match output {
                DataType::Decimal128(p, s) => Arc::new(a.with_precision_and_scale(*p, *s)?),
                _ => Arc::new(a),
            }
        }
        Some(Scalar::Int(_)) => {
            let mut b = Int64Builder::with_capacity(values.len());
            values.iter().for_each(|v| b.append_option(if let Some(Scalar::Int(x)) = v { Some(*x) } else { None }));
            Arc::new(b.finish())
        }
        None => arrow_array::new_null_array(output, values.len()),
    })
}

impl Operator for GroupAggregate {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        if self.spec.typed {
            return self.process_typed(batch, out);
        }
        let keys = batch
            .column(self.key_column)
            .as_binary_opt::<i32>()
            .ok_or_else(|| OperatorError::Failed("the key column is not binary".into()))?
            .clone();
        // The groups of this batch, in order of first appearance.
        let mut slot_of: hashbrown::HashMap<&[u8], u32> = hashbrown::HashMap::with_capacity(rows);
        let mut first_row: Vec<u32> = Vec::new();
        let mut row_slot: Vec<u32> = Vec::with_capacity(rows);
        for r in 0..rows {
            let next = first_row.len() as u32;
            let slot = *slot_of.entry(keys.value(r)).or_insert(next);
            if slot == next {
                first_row.push(r as u32);
            }
            row_slot.push(slot);
        }
        let composite: Vec<Vec<u8>> =
            first_row.iter().map(|&r| state_key(ACC_STATE, keys.value(r as usize), &[], self.max_parallelism)).collect();
        let stored = self.state.keyed().multi_get(&composite).map_err(state_error)?;
        let fresh: Vec<Acc> = self.spec.aggregates.iter().zip(&self.outputs).map(|(a, t)| Acc::new(a.function, t)).collect();
        let old = decode_accumulators(stored)?;
        let mut accs: Vec<Vec<Acc>> = old.iter().map(|o| o.clone().unwrap_or_else(|| fresh.clone())).collect();
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for (j, agg) in self.spec.aggregates.iter().enumerate() {
            let arg = ArgColumn::new(agg.arg.map(|i| batch.column(i)))?;
            if agg.distinct {
                // COUNT(DISTINCT x): the values each group has seen live in state; a value
                // counts once, the first time its group sees it.
                let mut value = Vec::new();
                let mut candidates: Vec<(u32, Vec<u8>)> = Vec::new();
                let mut seen = hashbrown::HashSet::new();
                for r in 0..rows {
                    if !arg.is_valid(r) {
                        continue;
                    }
                    arg.distinct_bytes(r, &mut value);
                    let mut ns = vec![j as u8];
                    ns.extend_from_slice(&value);
                    let key = state_key(DISTINCT_STATE, keys.value(r), &ns, self.max_parallelism);
                    if seen.insert(key.clone()) {
                        candidates.push((row_slot[r], key));
                    }
                }
                let present =
                    self.state.keyed().multi_get(&candidates.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>()).map_err(state_error)?;
                for ((slot, key), present) in candidates.into_iter().zip(present) {
                    if present.is_none() {
                        if let Acc::Count(n) = &mut accs[slot as usize][j] {
                            *n += 1;
                        }
                        writes.push((key, Some(Vec::new())));
                    }
                }
                continue;
            }
            for r in 0..rows {
                accs[row_slot[r] as usize][j].fold(&arg, r);
            }
        }
        // The changelog: +I for a new group, -U/+U for a changed one, nothing for the rest.
        let mut emitted_rows: Vec<u32> = Vec::new();
        let mut kinds: Vec<i8> = Vec::new();
        let mut values: Vec<&[Acc]> = Vec::new();
        for (slot, (new, previous)) in accs.iter().zip(&old).enumerate() {
            match previous {
                Some(p) if p == new => continue,
                Some(p) => {
                    emitted_rows.extend([first_row[slot], first_row[slot]]);
                    kinds.extend([RowKind::UpdateBefore as i8, RowKind::UpdateAfter as i8]);
                    values.extend([p.as_slice(), new.as_slice()]);
                }
                None => {
                    emitted_rows.push(first_row[slot]);
                    kinds.push(RowKind::Insert as i8);
                    values.push(new.as_slice());
                }
            }
            let bytes = postcard::to_allocvec(new).map_err(|e| OperatorError::Failed(format!("cannot encode aggregate state: {e}")))?;
            writes.push((composite[slot].clone(), Some(bytes)));
        }
        if !writes.is_empty() {
            self.state.keyed().write_batch(writes).map_err(state_error)?;
        }
        if emitted_rows.is_empty() {
            return Ok(());
        }
        let indices = UInt32Array::from(emitted_rows);
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for k in 0..self.spec.keys {
            columns.push(arrow_select::take::take(batch.column(k), &indices, None)?);
        }
        for j in 0..self.spec.aggregates.len() {
            columns.push(self.result_column(j, &values)?);
        }
        columns.push(Arc::new(Int8Array::from(kinds)));
        out.collect(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl KeyedOperator for GroupAggregate {
    fn keyed_state(&mut self) -> &mut StateBackend {
        &mut self.state
    }
}

/// `print`: Flink SQL's print connector. `+I[a, 1]` per row; with parallelism above 1 a
/// `{subtask}> ` prefix, with a `print-identifier` an `{identifier}> ` (or
/// `{identifier}:{subtask}> `) prefix.
struct Print {
    prefix: String,
    buf: Vec<u8>,
}

impl Print {
    fn new(spec: spec::Print, info: &SubtaskInfo) -> Self {
        let prefix = match (&spec.identifier, info.parallelism > 1) {
            (None, false) => String::new(),
            (None, true) => format!("{}> ", info.index + 1),
            (Some(id), false) => format!("{id}> "),
            (Some(id), true) => format!("{id}:{}> ", info.index + 1),
        };
        Self { prefix, buf: Vec::new() }
    }
}

/// Appends the rows of `batch` as Flink prints them: `+I[a, 1]` (the row kind from the hidden
/// column, `+I` without one).
pub fn format_changelog(prefix: &str, batch: &RecordBatch, out: &mut Vec<u8>) -> OpResult {
    use std::io::Write;
    let schema = batch.schema();
    let kinds = schema.index_of(ROWKIND).ok().map(|i| batch.column(i).as_primitive::<arrow_array::types::Int8Type>().clone());
    let options = arrow_cast::display::FormatOptions::new().with_null("null");
    let formatters = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .filter(|(_, f)| !f.name().starts_with("weir."))
        .map(|(c, _)| arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let io = |e: std::io::Error| OperatorError::Failed(format!("cannot format a row: {e}"));
    for row in 0..batch.num_rows() {
        let kind = kinds.as_ref().and_then(|k| RowKind::from_i8(k.value(row))).unwrap_or(RowKind::Insert);
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(kind.short().as_bytes());
        out.push(b'[');
        for (i, f) in formatters.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            write!(out, "{}", f.value(row)).map_err(io)?;
        }
        out.extend_from_slice(b"]\n");
    }
    Ok(())
}

impl Operator for Print {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut dyn Collector) -> OpResult {
        use std::io::Write;
        self.buf.clear();
        format_changelog(&self.prefix, &batch, &mut self.buf)?;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&self.buf).and_then(|()| stdout.flush()).map_err(|e| OperatorError::io("print sink cannot write to", "stdout", e))
    }
}

/// `debezium-encode`: each row as a change, as Flink's `debezium-json` format writes it: `+I` and
/// `+U` as `{"before": null, "after": row, "op": "c"}`, `-U` and `-D` as
/// `{"before": row, "after": null, "op": "d"}`.
struct DebeziumEncode {
    schema: SchemaRef,
}

impl Operator for DebeziumEncode {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let rows = batch.num_rows();
        let schema = batch.schema();
        let retracts: Vec<bool> = match schema.index_of(ROWKIND) {
            Ok(i) => batch
                .column(i)
                .as_primitive::<arrow_array::types::Int8Type>()
                .values()
                .iter()
                .map(|k| matches!(RowKind::from_i8(*k), Some(RowKind::UpdateBefore | RowKind::Delete)))
                .collect(),
            Err(_) => vec![false; rows],
        };
        let DataType::Struct(fields) = self.schema.field(0).data_type() else {
            return Err(OperatorError::Failed("debezium-encode: the output's `before` is not a struct".into()));
        };
        let columns: Vec<ArrayRef> =
            schema.fields().iter().zip(batch.columns()).filter(|(f, _)| !f.name().starts_with("weir.")).map(|(_, c)| c.clone()).collect();
        let before_valid = arrow_buffer::NullBuffer::from(retracts.clone());
        let after_valid = arrow_buffer::NullBuffer::from(retracts.iter().map(|r| !r).collect::<Vec<_>>());
        let before = arrow_array::StructArray::try_new(fields.clone(), columns.clone(), Some(before_valid))?;
        let after = arrow_array::StructArray::try_new(fields.clone(), columns, Some(after_valid))?;
        let op = StringArray::from_iter_values(retracts.iter().map(|r| if *r { "d" } else { "c" }));
        out.collect(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(before), Arc::new(after), Arc::new(op)])?)
    }
}

/// `upsert`: see the module header.
struct Upsert {
    rowkind: usize,
}

impl Operator for Upsert {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let kinds = batch
            .column(self.rowkind)
            .as_primitive_opt::<arrow_array::types::Int8Type>()
            .ok_or_else(|| OperatorError::Failed("the row kind column is not TINYINT".into()))?;
        let keep = arrow_array::BooleanArray::from_iter(kinds.iter().map(|k| Some(k != Some(RowKind::UpdateBefore as i8))));
        if keep.true_count() == batch.num_rows() {
            return out.collect(batch);
        }
        let kept = arrow_select::filter::filter_record_batch(&batch, &keep)?;
        if kept.num_rows() > 0 {
            out.collect(kept)?;
        }
        Ok(())
    }
}

/// `watermark`: see the module header.
struct WatermarkAssigner {
    expr: Arc<dyn PhysicalExpr>,
    visible: usize,
    /// The largest value of the expression so far (restored from checkpoints).
    max: Option<i64>,
    /// The last watermark sent downstream.
    emitted: i64,
    uid: String,
    idle_timeout: Option<std::time::Duration>,
    /// When the last batch arrived.
    last_rows: std::time::Instant,
    /// Whether the subtask has told downstream it is idle.
    idle: bool,
}

impl WatermarkAssigner {
    fn new(spec: spec::Watermark, input: &SchemaRef, uid: &str) -> Result<Self, String> {
        let visible: Vec<_> = input.fields().iter().filter(|f| !f.name().starts_with("weir.")).cloned().collect();
        let n = visible.len();
        let expr = ShippedExpr::physical(&spec.expr, &arrow_schema::Schema::new(visible))
            .map_err(|e| format!("watermark `{}`: {}", spec.expr, e.strip_backtrace()))?;
        Ok(Self {
            expr,
            visible: n,
            max: None,
            emitted: i64::MIN,
            uid: uid.to_string(),
            idle_timeout: spec.idle_timeout_ms.filter(|ms| *ms > 0).map(std::time::Duration::from_millis),
            last_rows: std::time::Instant::now(),
            idle: false,
        })
    }
}

/// A timestamp column as milliseconds since the epoch.
fn epoch_millis(a: &ArrayRef) -> OpResult<arrow_array::Int64Array> {
    let ms = arrow_cast::cast(a, &DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, None))?;
    Ok(arrow_cast::cast(&ms, &DataType::Int64)?.as_primitive::<Int64Type>().clone())
}

impl Operator for WatermarkAssigner {
    /// The batch goes on first, then the watermark it allows (if it advanced): every row
    /// travels ahead of the watermark that covers it. Emitting after each batch (at most a few
    /// thousand rows) rather than on a timer makes event time advance with the data, the same
    /// way on every run.
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        self.last_rows = std::time::Instant::now();
        if self.idle {
            // Active again before the rows go on, so downstream waits for this subtask's
            // event time again.
            self.idle = false;
            out.emit_watermark_status(false)?;
        }
        let visible = batch.project(&(0..self.visible).collect::<Vec<_>>())?;
        let values = self.expr.evaluate(&visible).map_err(df)?.into_array(batch.num_rows()).map_err(df)?;
        if let Some(m) = epoch_millis(&values)?.iter().flatten().max() {
            self.max = Some(self.max.map_or(m, |x| x.max(m)));
        }
        out.collect(batch)?;
        if let Some(wm) = self.max.filter(|wm| *wm > self.emitted) {
            self.emitted = wm;
            out.emit_watermark(wm)?;
        }
        Ok(())
    }

    /// With an idle timeout: when the subtask turns idle if no rows come.
    fn next_timer(&self) -> Option<std::time::Instant> {
        self.idle_timeout.filter(|_| !self.idle).map(|t| self.last_rows + t)
    }

    fn on_time(&mut self, now: std::time::Instant, out: &mut dyn Collector) -> OpResult {
        if let Some(t) = self.idle_timeout {
            if !self.idle && now >= self.last_rows + t {
                self.idle = true;
                out.emit_watermark_status(true)?;
            }
        }
        Ok(())
    }

    /// The source's end of event time goes on; its other watermarks (none) would not.
    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> OpResult {
        if watermark == weir_core::operator::MAX_WATERMARK && self.emitted < watermark {
            self.emitted = watermark;
            out.emit_watermark(watermark)?;
        }
        Ok(())
    }

    fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        Ok(self.max.map(|m| vec![m.to_le_bytes().to_vec()]))
    }

    /// Resumes from the smallest of the old subtasks' largest values, so no subtask's rows turn
    /// late after a rescale.
    fn restore_state(&mut self, _checkpoint: u64, elements: Vec<Vec<u8>>) -> OpResult {
        for e in elements {
            let bytes: [u8; 8] = e
                .as_slice()
                .try_into()
                .map_err(|_| OperatorError::Failed(format!("watermark '{}': its checkpointed time is not 8 bytes", self.uid)))?;
            let m = i64::from_le_bytes(bytes);
            self.max = Some(self.max.map_or(m, |x| x.min(m)));
        }
        Ok(())
    }
}

/// `window-assign`: see the module header.
struct WindowAssign {
    spec: spec::WindowAssign,
    schema: SchemaRef,
}

impl WindowAssign {
    /// The windows `[start, end)` that hold time `t`, appended to `out`.
    fn windows(&self, t: i64, out: &mut Vec<(i64, i64)>) {
        let (size, step) = (self.spec.size_ms, self.spec.step_ms);
        match self.spec.kind {
            crate::script::WindowKind::Tumble => {
                let start = t - t.rem_euclid(size);
                out.push((start, start + size));
            }
            crate::script::WindowKind::Hop => {
                let mut start = t - t.rem_euclid(step);
                while start > t - size {
                    out.push((start, start + size));
                    start -= step;
                }
            }
            crate::script::WindowKind::Cumulate => {
                let start = t - t.rem_euclid(size);
                let mut end = start + step;
                while end <= start + size {
                    if end > t {
                        out.push((start, end));
                    }
                    end += step;
                }
            }
        }
    }
}

impl Operator for WindowAssign {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let times = epoch_millis(batch.column(self.spec.time))?;
        let mut rows = Vec::with_capacity(batch.num_rows());
        let (mut starts, mut ends) = (Vec::with_capacity(batch.num_rows()), Vec::with_capacity(batch.num_rows()));
        let mut windows = Vec::new();
        for (r, t) in times.iter().enumerate() {
            // A row without a time is in no window.
            let Some(t) = t else { continue };
            windows.clear();
            self.windows(t, &mut windows);
            for &(start, end) in &windows {
                rows.push(r as u32);
                starts.push(start);
                ends.push(end);
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let indices = UInt32Array::from(rows);
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        let visible = batch.num_columns();
        for c in batch.columns().iter().take(visible) {
            columns.push(arrow_select::take::take(c, &indices, None)?);
        }
        let ts = |v: Vec<i64>| -> ArrayRef { Arc::new(arrow_array::TimestampMillisecondArray::from(v)) };
        let times: Vec<i64> = ends.iter().map(|e| e - 1).collect();
        columns.push(ts(starts));
        columns.push(ts(ends));
        columns.push(ts(times));
        out.collect(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// Reads the key bytes [`encode_keys`] wrote back into columns of `types`.
fn decode_keys(keys: &[&[u8]], types: &[DataType]) -> OpResult<Vec<ArrayRef>> {
    let corrupt = || OperatorError::Failed("corrupt group key in window state".into());
    let mut builders: Vec<Vec<Option<Scalar>>> = vec![Vec::with_capacity(keys.len()); types.len()];
    let mut bytes_builders: Vec<Vec<Option<Vec<u8>>>> = vec![Vec::new(); types.len()];
    for key in keys {
        let mut at = 0usize;
        let mut take = |n: usize| -> OpResult<&[u8]> {
            let s = key.get(at..at + n).ok_or_else(corrupt)?;
            at += n;
            Ok(s)
        };
        for (i, t) in types.iter().enumerate() {
            let valid = take(1)?[0] == 1;
            if !valid {
                builders[i].push(None);
                bytes_builders[i].push(None);
                continue;
            }
            let v = if t.is_integer() || t.is_temporal() {
                Scalar::Int(i64::from_le_bytes(take(8)?.try_into().expect("8 bytes")))
            } else if t.is_floating() {
                Scalar::Float(f64::from_bits(u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"))))
            } else if matches!(t, DataType::Boolean) {
                Scalar::Bool(take(1)?[0] == 1)
            } else if matches!(t, DataType::Decimal128(..)) {
                Scalar::Decimal(i128::from_le_bytes(take(16)?.try_into().expect("16 bytes")))
            } else {
                let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
                let raw = take(len)?.to_vec();
                if matches!(t, DataType::Binary) {
                    bytes_builders[i].push(Some(raw));
                    builders[i].push(None);
                    continue;
                }
                Scalar::Text(String::from_utf8(raw).map_err(|_| corrupt())?)
            };
            builders[i].push(Some(v));
            bytes_builders[i].push(None);
        }
    }
    let mut out = Vec::with_capacity(types.len());
    for (i, t) in types.iter().enumerate() {
        let column: ArrayRef = if matches!(t, DataType::Binary) {
            Arc::new(BinaryArray::from_iter(bytes_builders[i].iter().map(|b| b.as_deref())))
        } else {
            scalars_to_array(builders[i].iter().map(|v| v.as_ref()), t)?
        };
        out.push(if column.data_type() != t { cast_to(&column, t)? } else { column });
    }
    Ok(out)
}

/// A time index entry: `time` (big-endian), `tag`, then `key`, stored under `key`'s key group
/// (not the entry's own bytes'), beside the state it indexes, so it moves with that state when
/// the job is rescaled.
fn time_index_key(index: &str, time: i64, tag: &[u8], key: &[u8], max_parallelism: u32) -> Vec<u8> {
    let mut inner = Vec::with_capacity(8 + tag.len() + key.len());
    inner.extend_from_slice(&time.to_be_bytes());
    inner.extend_from_slice(tag);
    inner.extend_from_slice(key);
    let mut out = Vec::with_capacity(inner.len() + 24);
    composite_key(&mut out, key_group(key, max_parallelism), index, &inner, &[]);
    out
}

/// Every entry of time index `index` in this subtask's key groups (read after a restore): each
/// entry's bytes after the key group, time first.
fn scan_time_index(state: &mut StateBackend, index: &str) -> OpResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let range = state.keyed().key_group_range();
    for kg in range.start..range.end {
        let mut prefix = Vec::new();
        prefix.extend_from_slice(&(kg as u16).to_be_bytes());
        prefix.push(index.len() as u8);
        prefix.extend_from_slice(index.as_bytes());
        for (k, _) in state.keyed().scan_prefix(&prefix).map_err(state_error)? {
            // kg (2) + name length (1) + name + key length (4) + key (time + tag + key) + namespace length (2).
            let start = prefix.len() + 4;
            let inner = k
                .get(start..k.len().saturating_sub(2))
                .filter(|i| i.len() >= 8)
                .ok_or_else(|| OperatorError::Failed(format!("corrupt entry of state index '{index}'")))?;
            out.push(inner.to_vec());
        }
    }
    Ok(out)
}

/// `window-aggregate`: see the module header.
struct WindowAggregate {
    spec: spec::WindowAggregate,
    outputs: Vec<DataType>,
    key_types: Vec<DataType>,
    key_column: usize,
    schema: SchemaRef,
    state: StateBackend,
    max_parallelism: u32,
    /// Windows with state, by end: the group keys (window included) waiting for the watermark.
    /// Rebuilt from the state backend on first use after a restore.
    pending: Option<std::collections::BTreeMap<i64, Vec<Vec<u8>>>>,
    /// The last watermark seen: rows of windows ending at or before it are late.
    watermark: i64,
    late_rows: u64,
}

/// The state names of a window aggregate: accumulators per group key, and the index of pending
/// windows (key: the window's end, big-endian, then the group key).
const WINDOW_STATE: &str = "sql-window";
const WINDOW_PENDING: &str = "sql-window-pending";

impl WindowAggregate {
    fn new(
        spec: spec::WindowAggregate,
        input: &SchemaRef,
        schema: SchemaRef,
        state: StateBackend,
        max_parallelism: u32,
    ) -> Result<Self, String> {
        let (key_column, outputs) = aggregate_layout(input, &spec.aggregates)?;
        if spec.aggregates.iter().any(|a| a.distinct) {
            return Err("COUNT(DISTINCT) in a window aggregate is not supported yet".into());
        }
        let key_types = schema.fields().iter().take(spec.keys).map(|f| f.data_type().clone()).collect();
        Ok(Self { spec, outputs, key_types, key_column, schema, state, max_parallelism, pending: None, watermark: i64::MIN, late_rows: 0 })
    }

    /// The pending index entry of a group key whose window ends at `end`.
    fn pending_key(&self, key: &[u8], end: i64) -> Vec<u8> {
        time_index_key(WINDOW_PENDING, end, &[], key, self.max_parallelism)
    }

    /// The index of pending windows, read from the state backend the first time.
    fn pending(&mut self) -> OpResult<&mut std::collections::BTreeMap<i64, Vec<Vec<u8>>>> {
        if self.pending.is_none() {
            let mut index: std::collections::BTreeMap<i64, Vec<Vec<u8>>> = std::collections::BTreeMap::new();
            for inner in scan_time_index(&mut self.state, WINDOW_PENDING)? {
                let end = i64::from_be_bytes(inner[..8].try_into().expect("8 bytes"));
                index.entry(end).or_default().push(inner[8..].to_vec());
            }
            self.pending = Some(index);
        }
        Ok(self.pending.as_mut().expect("set above"))
    }

    /// Emits and drops every window that ends at or before `watermark` + 1.
    fn fire(&mut self, watermark: i64, out: &mut dyn Collector) -> OpResult {
        let due: Vec<(i64, Vec<Vec<u8>>)> = {
            let pending = self.pending()?;
            let later = pending.split_off(&watermark.saturating_add(2));
            let due = std::mem::replace(pending, later);
            due.into_iter().collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let keys: Vec<(i64, Vec<u8>)> = due.into_iter().flat_map(|(end, keys)| keys.into_iter().map(move |k| (end, k))).collect();
        let composite: Vec<Vec<u8>> = keys.iter().map(|(_, k)| state_key(WINDOW_STATE, k, &[], self.max_parallelism)).collect();
        let stored = self.state.keyed().multi_get(&composite).map_err(state_error)?;
        let mut accs: Vec<Vec<Acc>> = Vec::with_capacity(stored.len());
        let mut rows: Vec<&[u8]> = Vec::with_capacity(stored.len());
        for ((_, key), acc) in keys.iter().zip(decode_accumulators(stored)?) {
            if let Some(acc) = acc {
                accs.push(acc);
                rows.push(key);
            }
        }
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = composite.into_iter().map(|k| (k, None)).collect();
        writes.extend(keys.iter().map(|(end, k)| (self.pending_key(k, *end), None)));
        self.state.keyed().write_batch(writes).map_err(state_error)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut columns = decode_keys(&rows, &self.key_types)?;
        let values: Vec<&[Acc]> = accs.iter().map(Vec::as_slice).collect();
        for j in 0..self.spec.aggregates.len() {
            columns.push(result_column(&self.outputs[j], j, &values)?);
        }
        out.collect(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl Operator for WindowAggregate {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut dyn Collector) -> OpResult {
        // Load the index of pending windows before this batch adds to the state it is read from.
        self.pending()?;
        let rows = batch.num_rows();
        let keys = batch
            .column(self.key_column)
            .as_binary_opt::<i32>()
            .ok_or_else(|| OperatorError::Failed("the key column is not binary".into()))?
            .clone();
        let ends = epoch_millis(batch.column(self.spec.window_end))?;
        let mut slot_of: hashbrown::HashMap<&[u8], u32> = hashbrown::HashMap::with_capacity(rows);
        let mut first_row: Vec<u32> = Vec::new();
        let mut row_slot: Vec<Option<u32>> = Vec::with_capacity(rows);
        for r in 0..rows {
            let end = ends.value(r);
            // Rows of a window already emitted are late (in processing time: rows that took
            // longer than the grace period to arrive).
            if end.saturating_sub(1) <= self.watermark {
                self.late_rows += 1;
                row_slot.push(None);
                continue;
            }
            let next = first_row.len() as u32;
            let slot = *slot_of.entry(keys.value(r)).or_insert(next);
            if slot == next {
                first_row.push(r as u32);
            }
            row_slot.push(Some(slot));
        }
        if first_row.is_empty() {
            return Ok(());
        }
        let composite: Vec<Vec<u8>> =
            first_row.iter().map(|&r| state_key(WINDOW_STATE, keys.value(r as usize), &[], self.max_parallelism)).collect();
        let stored = self.state.keyed().multi_get(&composite).map_err(state_error)?;
        let fresh: Vec<Acc> = self.spec.aggregates.iter().zip(&self.outputs).map(|(a, t)| Acc::new(a.function, t)).collect();
        let mut accs = Vec::with_capacity(stored.len());
        let mut new_windows = Vec::new();
        for (slot, acc) in decode_accumulators(stored)?.into_iter().enumerate() {
            accs.push(acc.unwrap_or_else(|| {
                new_windows.push(slot);
                fresh.clone()
            }));
        }
        for (j, agg) in self.spec.aggregates.iter().enumerate() {
            let arg = ArgColumn::new(agg.arg.map(|i| batch.column(i)))?;
            for r in 0..rows {
                if let Some(slot) = row_slot[r] {
                    accs[slot as usize][j].fold(&arg, r);
                }
            }
        }
        let mut writes = Vec::with_capacity(accs.len() + new_windows.len());
        for (slot, acc) in accs.iter().enumerate() {
            let bytes = postcard::to_allocvec(acc).map_err(|e| OperatorError::Failed(format!("cannot encode window state: {e}")))?;
            writes.push((composite[slot].clone(), Some(bytes)));
        }
        let mut added = Vec::with_capacity(new_windows.len());
        for slot in new_windows {
            let r = first_row[slot] as usize;
            let (key, end) = (keys.value(r).to_vec(), ends.value(r));
            writes.push((self.pending_key(&key, end), Some(Vec::new())));
            added.push((end, key));
        }
        self.state.keyed().write_batch(writes).map_err(state_error)?;
        let pending = self.pending()?;
        for (end, key) in added {
            pending.entry(end).or_default().push(key);
        }
        Ok(())
    }

    /// Processing time: the earliest end of a window with state.
    fn next_timer(&self) -> Option<std::time::Instant> {
        if !self.spec.processing_time {
            return None;
        }
        let Some(pending) = &self.pending else {
            // Not read from state yet (after a restore): look now.
            return Some(std::time::Instant::now());
        };
        let end = *pending.keys().next()?;
        let wait = (end + PROCESSING_TIME_GRACE_MS).saturating_sub(wall_clock_millis()).max(0) as u64;
        Some(std::time::Instant::now() + std::time::Duration::from_millis(wait))
    }

    fn on_time(&mut self, _now: std::time::Instant, out: &mut dyn Collector) -> OpResult {
        if self.spec.processing_time {
            // Windows that ended a grace period ago: rows stamped just before a window's end
            // are still on their way from the source.
            let closed = wall_clock_millis() - PROCESSING_TIME_GRACE_MS - 1;
            self.fire(closed, out)?;
            self.watermark = self.watermark.max(closed);
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> OpResult {
        if self.spec.processing_time {
            return out.emit_watermark(watermark);
        }
        if watermark > self.watermark {
            self.watermark = watermark;
            self.fire(watermark, out)?;
        }
        if self.late_rows > 0 {
            tracing::debug!(late_rows = self.late_rows, "window aggregate dropped late rows");
        }
        out.emit_watermark(watermark)
    }
}

impl KeyedOperator for WindowAggregate {
    fn keyed_state(&mut self) -> &mut StateBackend {
        &mut self.state
    }
}

/// `join`: see the module header.
struct Join {
    left: usize,
    /// Which sides keep their unmatched rows (outer joins).
    outer: [bool; 2],
    /// Whether the output carries row kinds (an outer join's does).
    updating: bool,
    side: usize,
    key_column: usize,
    types: Vec<DataType>,
    schema: SchemaRef,
    state: StateBackend,
    max_parallelism: u32,
    /// An interval join's bounds: its rows leave state as the watermark passes them.
    interval: Option<spec::IntervalBounds>,
    /// Interval joins: when each stored row can be dropped, as (time, side, key) entries; read
    /// from the state backend on first use (after a restore).
    expiries: Option<std::collections::BTreeSet<(i64, u8, Vec<u8>)>>,
    /// The last watermark seen.
    watermark: i64,
}

/// The state names of a join's sides: per key, the side's distinct rows and their counts.
const JOIN_STATE: [&str; 2] = ["sql-join-left", "sql-join-right"];
/// An interval join's index of when rows expire: key = time (big-endian), side, join key.
const JOIN_EXPIRY: &str = "sql-join-expiry";

impl Join {
    fn new(spec: spec::Join, input: &SchemaRef, schema: SchemaRef, state: StateBackend, max_parallelism: u32) -> Result<Self, String> {
        let key_column = input.index_of(KEY).map_err(|_| "the input has no key column".to_string())?;
        let side = spec.left + spec.right;
        if input.fields().len() <= side {
            return Err(format!("the input's columns do not fit a join of {} and {} columns", spec.left, spec.right));
        }
        let updating = spec.outer.iter().any(|o| *o);
        let visible = side;
        if schema.fields().len() != visible + updating as usize {
            return Err(format!("the output's columns do not fit a join of {} and {} columns", spec.left, spec.right));
        }
        let types: Vec<DataType> = schema.fields().iter().take(visible).map(|f| f.data_type().clone()).collect();
        if let Some(b) = &spec.interval {
            let is_time = |i: usize| matches!(types.get(i), Some(DataType::Timestamp(..)));
            if !is_time(b.left_time) || !is_time(b.right_time) || b.left_time >= spec.left || b.right_time < spec.left {
                return Err("the interval join's time columns are not timestamps of their sides".into());
            }
            if spec.outer != [false, false] {
                return Err("an outer interval join is not supported".into());
            }
        }
        Ok(Self {
            left: spec.left,
            outer: spec.outer,
            updating,
            side,
            key_column,
            types,
            schema,
            state,
            max_parallelism,
            interval: spec.interval,
            expiries: None,
            watermark: i64::MIN,
        })
    }

    /// When a row of `side` at `time` can meet no future row of the other side: once the
    /// watermark reaches it. `None`: never (the bound on that side is open).
    fn expiry(&self, side: usize, time: i64) -> Option<i64> {
        let b = self.interval.as_ref()?;
        if side == 0 {
            b.lower.map(|lower| time.saturating_sub(lower))
        } else {
            b.upper.map(|upper| time.saturating_add(upper))
        }
    }

    /// The expiry index, read from the state backend the first time.
    fn expiries(&mut self) -> OpResult<&mut std::collections::BTreeSet<(i64, u8, Vec<u8>)>> {
        if self.expiries.is_none() {
            let mut index = std::collections::BTreeSet::new();
            for inner in scan_time_index(&mut self.state, JOIN_EXPIRY)? {
                let side = *inner.get(8).ok_or_else(|| OperatorError::Failed("corrupt join expiry entry".into()))?;
                index.insert((i64::from_be_bytes(inner[..8].try_into().expect("8 bytes")), side, inner[9..].to_vec()));
            }
            self.expiries = Some(index);
        }
        Ok(self.expiries.as_mut().expect("set above"))
    }

    /// Drops the rows the watermark has passed: the keys with an expiry entry at or before
    /// `watermark` are read with one `multi_get`, their lists keep the rows that can still meet
    /// a partner, and lists, emptied keys and due entries are written with one `write_batch`.
    fn expire(&mut self, watermark: i64) -> OpResult {
        let due: Vec<(i64, u8, Vec<u8>)> = {
            let index = self.expiries()?;
            let later = index.split_off(&(watermark.saturating_add(1), 0, Vec::new()));
            std::mem::replace(index, later).into_iter().collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            due.iter().map(|(t, side, key)| (time_index_key(JOIN_EXPIRY, *t, &[*side], key, self.max_parallelism), None)).collect();
        let mut lists: Vec<(usize, &[u8])> = due.iter().map(|(_, side, key)| (*side as usize, key.as_slice())).collect();
        lists.sort_unstable();
        lists.dedup();
        let composite: Vec<Vec<u8>> =
            lists.iter().map(|(side, key)| state_key(JOIN_STATE[*side], key, &[], self.max_parallelism)).collect();
        let stored = self.state.keyed().multi_get(&composite).map_err(state_error)?;
        let interval = self.interval.clone().expect("only interval joins expire rows");
        for ((&(side, _), state_key), bytes) in lists.iter().zip(composite).zip(stored) {
            let Some(bytes) = bytes else { continue };
            let list: JoinRows = postcard::from_bytes(&bytes).map_err(|e| OperatorError::Failed(format!("corrupt join state: {e}")))?;
            let (types, time) = if side == 0 {
                (&self.types[..self.left], interval.left_time)
            } else {
                (&self.types[self.left..], interval.right_time - self.left)
            };
            let rows: Vec<&[u8]> = list.iter().map(|(row, _)| row.as_slice()).collect();
            let times = epoch_millis(&decode_keys(&rows, types)?[time])?;
            let kept: JoinRows = list
                .iter()
                .zip(times.iter())
                .filter(|(_, t)| t.and_then(|t| self.expiry(side, t)).is_some_and(|e| e > watermark))
                .map(|(row, _)| row.clone())
                .collect();
            if kept.len() == list.len() {
                continue;
            }
            let value = if kept.is_empty() {
                None
            } else {
                Some(postcard::to_allocvec(&kept).map_err(|e| OperatorError::Failed(format!("cannot encode join state: {e}")))?)
            };
            writes.push((state_key, value));
        }
        self.state.keyed().write_batch(writes).map_err(state_error)
    }
}

/// One side's rows of one key: each distinct row's bytes and how many times it arrived.
type JoinRows = Vec<(Vec<u8>, u64)>;

impl Operator for Join {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let rows = batch.num_rows();
        if self.interval.is_some() {
            // Read the expiry index before this batch adds to the state it is read from.
            self.expiries()?;
        }
        // Interval joins: each side's time column (NULL in the other side's rows).
        let times = match &self.interval {
            Some(b) => Some([epoch_millis(batch.column(b.left_time))?, epoch_millis(batch.column(b.right_time))?]),
            None => None,
        };
        let mut new_expiries: Vec<(i64, u8, Vec<u8>)> = Vec::new();
        let sides = batch
            .column(self.side)
            .as_primitive_opt::<arrow_array::types::Int8Type>()
            .ok_or_else(|| OperatorError::Failed("the join's side column is not TINYINT".into()))?
            .clone();
        let keys = batch
            .column(self.key_column)
            .as_binary_opt::<i32>()
            .ok_or_else(|| OperatorError::Failed("the key column is not binary".into()))?
            .clone();
        // Each row's own columns as bytes, as the other side will read them from state.
        let left = encode_keys(&batch.columns()[..self.left], rows)?;
        let right = encode_keys(&batch.columns()[self.left..self.side], rows)?;
        // The lists of every key of the batch, both sides, read at once.
        let mut slot_of: hashbrown::HashMap<&[u8], usize> = hashbrown::HashMap::new();
        let mut distinct: Vec<&[u8]> = Vec::new();
        for r in 0..rows {
            slot_of.entry(keys.value(r)).or_insert_with(|| {
                distinct.push(keys.value(r));
                distinct.len() - 1
            });
        }
        let composite: Vec<Vec<u8>> = (0..2)
            .flat_map(|side| distinct.iter().map(move |k| (side, *k)))
            .map(|(side, k)| state_key(JOIN_STATE[side], k, &[], self.max_parallelism))
            .collect();
        let stored = self.state.keyed().multi_get(&composite).map_err(state_error)?;
        let mut lists: Vec<JoinRows> = Vec::with_capacity(stored.len());
        for v in stored {
            lists.push(match v {
                Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| OperatorError::Failed(format!("corrupt join state: {e}")))?,
                None => Vec::new(),
            });
        }
        let mut changed = vec![false; lists.len()];
        let mut index: Vec<Option<hashbrown::HashMap<Vec<u8>, usize>>> = vec![None; lists.len()];
        // Output rows: (left bytes, right bytes, kind), in the order rows arrived; `None` is a
        // side padded with NULLs (outer joins).
        let mut pairs: Vec<(Option<Vec<u8>>, Option<Vec<u8>>, RowKind)> = Vec::new();
        let n = distinct.len();
        for r in 0..rows {
            let slot = slot_of[keys.value(r)];
            let side = match sides.value(r) {
                0 => 0usize,
                1 => 1,
                other => return Err(OperatorError::Failed(format!("join side {other} is neither 0 nor 1"))),
            };
            // A key with a NULL in it joins nothing (SQL's NULL = NULL is not true).
            if (self.side + 1..self.key_column).any(|k| batch.column(k).is_null(r)) {
                continue;
            }
            let own_bytes = if side == 0 { left.value(r) } else { right.value(r) };
            let (own, other) = (side * n + slot, (1 - side) * n + slot);
            let pair = |own_row: Option<Vec<u8>>, other_row: Option<Vec<u8>>, kind| {
                if side == 0 {
                    (own_row, other_row, kind)
                } else {
                    (other_row, own_row, kind)
                }
            };
            if lists[other].is_empty() {
                // No partner yet: an outer side's row goes out padded with NULLs.
                if self.outer[side] {
                    pairs.push(pair(Some(own_bytes.to_vec()), None, RowKind::Insert));
                }
            } else {
                // The other side's rows that had no partner lose their NULL-padded row.
                if self.outer[1 - side] && lists[own].is_empty() {
                    for (other_row, count) in &lists[other] {
                        for _ in 0..*count {
                            pairs.push(pair(None, Some(other_row.clone()), RowKind::Delete));
                        }
                    }
                }
                for (other_row, count) in &lists[other] {
                    for _ in 0..*count {
                        pairs.push(pair(Some(own_bytes.to_vec()), Some(other_row.clone()), RowKind::Insert));
                    }
                }
            }
            // An interval join keeps a row only while a future row of the other side can meet
            // it: not one whose time is NULL or already behind the watermark (a late row still
            // meets the rows in state).
            if let Some(times) = &times {
                let time = times[side].is_valid(r).then(|| times[side].value(r));
                match time.map(|t| self.expiry(side, t)) {
                    None => continue,
                    Some(Some(e)) if e <= self.watermark => continue,
                    Some(Some(e)) => {
                        let entry = (e, side as u8, keys.value(r).to_vec());
                        if !self.expiries.as_ref().is_some_and(|x| x.contains(&entry)) {
                            new_expiries.push(entry);
                        }
                    }
                    Some(None) => {}
                }
            }
            // Where each distinct row sits in its list, built the first time the list grows in
            // this batch, so adding a row is not a search through the key's rows.
            let positions = index[own].get_or_insert_with(|| lists[own].iter().enumerate().map(|(i, (row, _))| (row.clone(), i)).collect());
            match positions.get(own_bytes) {
                Some(&i) => lists[own][i].1 += 1,
                None => {
                    positions.insert(own_bytes.to_vec(), lists[own].len());
                    lists[own].push((own_bytes.to_vec(), 1));
                }
            }
            changed[own] = true;
        }
        let mut writes = Vec::new();
        for (i, list) in lists.iter().enumerate().filter(|(i, _)| changed[*i]) {
            let bytes = postcard::to_allocvec(list).map_err(|e| OperatorError::Failed(format!("cannot encode join state: {e}")))?;
            writes.push((composite[i].clone(), Some(bytes)));
        }
        new_expiries.sort_unstable();
        new_expiries.dedup();
        for (t, side, key) in &new_expiries {
            writes.push((time_index_key(JOIN_EXPIRY, *t, &[*side], key, self.max_parallelism), Some(Vec::new())));
        }
        self.state.keyed().write_batch(writes).map_err(state_error)?;
        if let Some(index) = self.expiries.as_mut() {
            index.extend(new_expiries);
        }
        if pairs.is_empty() {
            return Ok(());
        }
        let lefts: Vec<Option<&[u8]>> = pairs.iter().map(|(l, _, _)| l.as_deref()).collect();
        let rights: Vec<Option<&[u8]>> = pairs.iter().map(|(_, r, _)| r.as_deref()).collect();
        let mut columns = decode_optional_rows(&lefts, &self.types[..self.left])?;
        columns.extend(decode_optional_rows(&rights, &self.types[self.left..])?);
        if self.updating {
            columns.push(Arc::new(Int8Array::from_iter_values(pairs.iter().map(|(_, _, k)| *k as i8))));
        }
        out.collect(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> OpResult {
        if self.interval.is_some() && watermark > self.watermark {
            self.watermark = watermark;
            self.expire(watermark)?;
        }
        out.emit_watermark(watermark)
    }
}

impl KeyedOperator for Join {
    fn keyed_state(&mut self) -> &mut StateBackend {
        &mut self.state
    }
}

/// [`decode_keys`] of rows some of which are missing (`None`): those are all NULL.
fn decode_optional_rows(rows: &[Option<&[u8]>], types: &[DataType]) -> OpResult<Vec<ArrayRef>> {
    let present: Vec<&[u8]> = rows.iter().flatten().copied().collect();
    let columns = decode_keys(&present, types)?;
    if present.len() == rows.len() {
        return Ok(columns);
    }
    let mut next = 0u32;
    let indices: UInt32Array = rows
        .iter()
        .map(|r| {
            r.map(|_| {
                next += 1;
                next - 1
            })
        })
        .collect();
    columns.iter().map(|c| Ok(arrow_select::take::take(c, &indices, None)?)).collect()
}

/// `collect`: see the module header. It connects when the first rows come; a client that went
/// away fails the task (and so the query's job).
struct Collect {
    address: String,
    stream: Option<std::io::BufWriter<std::net::TcpStream>>,
}

impl Operator for Collect {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut dyn Collector) -> OpResult {
        use std::io::Write;
        let io = |what: &'static str, e: std::io::Error| OperatorError::io(what, "the SQL client", e);
        if self.stream.is_none() {
            let addr: std::net::SocketAddr =
                self.address.parse().map_err(|_| OperatorError::Failed(format!("bad SQL client address '{}'", self.address)))?;
            let s =
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)).map_err(|e| io("cannot connect to", e))?;
            self.stream = Some(std::io::BufWriter::new(s));
        }
        let schema = batch.schema();
        let kinds = schema.index_of(ROWKIND).ok().map(|i| batch.column(i).as_primitive::<arrow_array::types::Int8Type>().clone());
        let visible: Vec<usize> =
            schema.fields().iter().enumerate().filter(|(_, f)| !f.name().starts_with("weir.")).map(|(i, _)| i).collect();
        let rows = batch.project(&visible)?;
        let mut json = Vec::new();
        {
            let mut w = arrow_json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow_json::writer::JsonArray>(&mut json);
            w.write(&rows)?;
            w.finish()?;
        }
        let objects: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(&json).map_err(|e| OperatorError::Failed(format!("collect: {e}")))?;
        let names: Vec<String> = rows.schema().fields().iter().map(|f| f.name().clone()).collect();
        let out = self.stream.as_mut().expect("connected above");
        for (r, object) in objects.iter().enumerate() {
            let kind = kinds.as_ref().and_then(|k| RowKind::from_i8(k.value(r))).unwrap_or(RowKind::Insert);
            let row: Vec<&serde_json::Value> = names.iter().map(|n| object.get(n.as_str()).unwrap_or(&serde_json::Value::Null)).collect();
            writeln!(out, "{}\t{}", kind.short(), serde_json::to_string(&row).unwrap_or_default()).map_err(|e| io("cannot write to", e))?;
        }
        out.flush().map_err(|e| io("cannot write to", e))
    }
}

/// Milliseconds since the epoch, now.
fn wall_clock_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// How long after its end a processing-time window is emitted.
const PROCESSING_TIME_GRACE_MS: i64 = 200;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, TimestampMillisecondArray};
    use arrow_schema::{Field, Schema, TimeUnit};
    use weir_core::keygroup::KeyGroupRange;
    use weir_state::hashmap::HashMapBackend;

    /// What an operator sent on: rows as `kind:left,right` strings, watermarks, idle status.
    #[derive(Default)]
    struct Seen(Vec<String>);

    impl Collector for Seen {
        fn collect(&mut self, batch: RecordBatch) -> OpResult {
            self.0.push(format!("rows {}", batch_rows(&batch)));
            Ok(())
        }
        fn emit_watermark(&mut self, watermark: i64) -> OpResult {
            self.0.push(format!("wm {watermark}"));
            Ok(())
        }
        fn emit_watermark_status(&mut self, idle: bool) -> OpResult {
            self.0.push(format!("idle {idle}"));
            Ok(())
        }
    }

    /// A batch's rows as `a,b;c,d`.
    fn batch_rows(batch: &RecordBatch) -> String {
        let options = arrow_cast::display::FormatOptions::default();
        let formatters: Vec<_> =
            batch.columns().iter().map(|c| arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
        (0..batch.num_rows())
            .map(|r| formatters.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
            .join(";")
    }

    fn ts() -> DataType {
        DataType::Timestamp(TimeUnit::Millisecond, None)
    }

    /// The rows a join reads (`l.k, l.ts, r.k, r.ts, side, key column, key`) for rows of one
    /// side: (k, ts) each.
    fn join_input(side: i8, rows: &[(i64, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("lk", DataType::Int64, true),
            Field::new("lts", ts(), true),
            Field::new("rk", DataType::Int64, true),
            Field::new("rts", ts(), true),
            Field::new("__side", DataType::Int8, false),
            Field::new("__k0", DataType::Int64, true),
            Field::new(KEY, DataType::Binary, false),
        ]));
        let k: ArrayRef = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0)));
        let t: ArrayRef = Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.1)));
        let null_k: ArrayRef = Arc::new(Int64Array::new_null(rows.len()));
        let null_t: ArrayRef = Arc::new(TimestampMillisecondArray::new_null(rows.len()));
        let (l, r) = if side == 0 { ((k.clone(), t), (null_k, null_t)) } else { ((null_k, null_t), (k.clone(), t)) };
        let key = encode_keys(&[k.clone()], rows.len()).unwrap();
        let sides: ArrayRef = Arc::new(Int8Array::from_iter_values(rows.iter().map(|_| side)));
        RecordBatch::try_new(schema, vec![l.0, l.1, r.0, r.1, sides, k, Arc::new(key)]).unwrap()
    }

    /// `l.ts BETWEEN r.ts - 5 s AND r.ts`: a left row is kept until the watermark reaches
    /// its time + 5 s, a right row until it reaches its own time.
    fn interval_join(state: StateBackend) -> Join {
        let input = join_input(0, &[]).schema();
        let output = Arc::new(Schema::new(input.fields()[..4].iter().map(|f| f.as_ref().clone()).collect::<Vec<_>>()));
        let bounds = spec::IntervalBounds { left_time: 1, right_time: 3, lower: Some(-5000), upper: Some(0) };
        let spec = spec::Join { left: 2, right: 2, outer: [false, false], interval: Some(bounds) };
        Join::new(spec, &input, output, state, 128).unwrap()
    }

    #[test]
    fn an_interval_join_drops_its_rows_as_the_watermark_passes_their_bounds() {
        let state = StateBackend::HashMap(HashMapBackend::new(128, KeyGroupRange { start: 0, end: 128 }));
        let mut join = interval_join(state);
        let mut seen = Seen::default();
        join.process_batch(join_input(0, &[(1, 10_000), (2, 10_000), (2, 20_000)]), &mut seen).unwrap();
        join.process_batch(join_input(1, &[(1, 12_000)]), &mut seen).unwrap();
        assert_eq!(seen.0, vec!["rows 1,1970-01-01T00:00:10,1,1970-01-01T00:00:12"]);
        let entries = |j: &mut Join| j.state.keyed().entries().unwrap();
        // Lists: left 1, left 2, right 1; expiry entries: 15 s (left 1 and 2), 25 s, 12 s.
        assert_eq!(entries(&mut join), 7);

        // At 14.999 s only the right row's time has passed.
        join.on_watermark(14_999, &mut seen).unwrap();
        assert_eq!(entries(&mut join), 5, "the right row and its expiry entry are gone");
        // A row behind the watermark still meets what is in state, but is not kept.
        seen.0.clear();
        join.process_batch(join_input(1, &[(2, 11_000)]), &mut seen).unwrap();
        assert_eq!(seen.0, vec!["rows 2,1970-01-01T00:00:10,2,1970-01-01T00:00:11;2,1970-01-01T00:00:20,2,1970-01-01T00:00:11"]);
        assert_eq!(entries(&mut join), 5);

        // A restored operator finds the expiry index in the state backend.
        let mut join = interval_join(join.state);
        seen.0.clear();
        join.on_watermark(15_000, &mut seen).unwrap();
        assert_eq!(seen.0, vec!["wm 15000"]);
        assert_eq!(entries(&mut join), 2, "only the left row at 20 s is left, with its entry");
        join.on_watermark(25_000, &mut seen).unwrap();
        assert_eq!(entries(&mut join), 0);
        seen.0.clear();
        join.process_batch(join_input(1, &[(1, 26_000), (2, 26_000)]), &mut seen).unwrap();
        assert!(seen.0.is_empty(), "no left row is left to meet: {:?}", seen.0);
    }

    #[test]
    fn a_regular_join_keeps_its_rows_whatever_the_watermark() {
        let state = StateBackend::HashMap(HashMapBackend::new(128, KeyGroupRange { start: 0, end: 128 }));
        let input = join_input(0, &[]).schema();
        let output = Arc::new(Schema::new(input.fields()[..4].iter().map(|f| f.as_ref().clone()).collect::<Vec<_>>()));
        let spec = spec::Join { left: 2, right: 2, outer: [false, false], interval: None };
        let mut join = Join::new(spec, &input, output, state, 128).unwrap();
        let mut seen = Seen::default();
        join.process_batch(join_input(0, &[(1, 10_000)]), &mut seen).unwrap();
        join.on_watermark(1_000_000, &mut seen).unwrap();
        join.process_batch(join_input(1, &[(1, 2_000_000)]), &mut seen).unwrap();
        assert_eq!(seen.0, vec!["wm 1000000".to_string(), "rows 1,1970-01-01T00:00:10,1,1970-01-01T00:33:20".into()]);
    }

    #[test]
    fn a_watermark_assigner_turns_idle_without_rows_and_active_with_the_next_ones() {
        let schema = Arc::new(Schema::new(vec![Field::new("ts", ts(), false)]));
        let spec = spec::Watermark { expr: "c0".into(), idle_timeout_ms: Some(500) };
        let mut assigner = WatermarkAssigner::new(spec, &schema, "wm").unwrap();
        let batch = |t: i64| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(TimestampMillisecondArray::from_iter_values([t])) as ArrayRef]).unwrap()
        };
        let mut seen = Seen::default();
        assigner.process_batch(batch(1_000), &mut seen).unwrap();
        let due = assigner.next_timer().expect("an idle timeout sets a timer");
        assigner.on_time(due - std::time::Duration::from_millis(1), &mut seen).unwrap();
        assert_eq!(seen.0, vec!["rows 1970-01-01T00:00:01", "wm 1000"], "not idle before the timeout");
        assigner.on_time(due, &mut seen).unwrap();
        assert_eq!(seen.0[2..], ["idle true"]);
        assert_eq!(assigner.next_timer(), None, "an idle subtask waits for rows, not time");
        assigner.process_batch(batch(2_000), &mut seen).unwrap();
        assert_eq!(seen.0[3..], ["idle false", "rows 1970-01-01T00:00:02", "wm 2000"]);

        let never = spec::Watermark { expr: "c0".into(), idle_timeout_ms: None };
        assert_eq!(WatermarkAssigner::new(never, &schema, "wm").unwrap().next_timer(), None);
    }
}
