//! The functions of a program and the batch operators that run them.
//!
//! Every user closure is wrapped, when the program is built, in a factory that makes one
//! operator per subtask. The factories are kept in [`ProgramFunctions`] under the function id
//! of their operator (its uid), which is what the JobGraph names; the TaskManagers of the
//! embedded cluster resolve ids through it. Because ids come from uids, and uids from the
//! program's structure, the same program built in another process (an application
//! TaskManager) registers the same ids.
//!
//! Each operator decodes a whole batch, calls the closure in a loop, and encodes the results
//! into one output batch.

use crate::records::{self, RecordWriter};
use arrow_array::builder::StringBuilder;
use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch};
use arrow_schema::Schema;
use hashbrown::HashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use weir_core::graph::ChainedOperator;
use weir_core::operator::{Collector, OpResult, Operator, OperatorError, SourcePoll, SourceReader, SubtaskInfo};
use weir_runtime::user::{KeyedFunction, UserFunction, UserFunctions};
use weir_runtime::watermarks::WatermarkGenerator;
use weir_state::keyed::{composite_key, key_group};
use weir_state::KeyedStateBackend;

/// Makes a function's operator for one subtask.
pub(crate) type Factory = Arc<dyn Fn(&ChainedOperator, &SubtaskInfo) -> OpResult<UserFunction> + Send + Sync>;

/// Every function of one program, by id.
#[derive(Clone, Default)]
pub struct ProgramFunctions {
    factories: std::collections::BTreeMap<String, Factory>,
}

impl ProgramFunctions {
    pub(crate) fn insert(&mut self, id: String, factory: Factory) {
        self.factories.insert(id, factory);
    }

    /// The ids of the registered functions, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(|s| s.as_str())
    }
}

impl UserFunctions for ProgramFunctions {
    fn build(&self, id: &str, op: &ChainedOperator, info: &SubtaskInfo) -> Option<OpResult<UserFunction>> {
        self.factories.get(id).map(|f| f(op, info))
    }
}

/// The record types a stream can carry.
pub trait Record: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Record for T {}

/// `flat_map` (and `map`, `filter` through it): each input record gives zero or more outputs.
pub(crate) struct FlatMapOp<I, O, F> {
    pub name: String,
    pub f: Arc<F>,
    pub _types: std::marker::PhantomData<fn(I) -> O>,
}

impl<I: Record, O: Record, F: Fn(I, &mut Vec<O>) + Send + Sync + 'static> Operator for FlatMapOp<I, O, F> {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let inputs = records::decode_column::<I>(&batch, &self.name)?;
        let ts = records::timestamps(&batch);
        let mut writer = RecordWriter::for_stream(inputs.len(), ts.is_some());
        let mut produced = Vec::new();
        for (i, record) in inputs.into_iter().enumerate() {
            (self.f)(record, &mut produced);
            // What a record produces inherits its timestamp.
            let at = records::timestamp_at(ts, i);
            for o in produced.drain(..) {
                writer.push_at(&o, at, &self.name)?;
            }
        }
        match writer.finish_batch()? {
            Some(b) => out.collect(b),
            None => Ok(()),
        }
    }
}

/// `key_by`: adds the hidden key column the hash partitioner routes on.
pub(crate) struct KeyByOp<T, K, F> {
    pub name: String,
    pub f: Arc<F>,
    pub _types: std::marker::PhantomData<fn(T) -> K>,
}

impl<T: Record, K: Serialize + 'static, F: Fn(&T) -> K + Send + Sync + 'static> Operator for KeyByOp<T, K, F> {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let inputs = records::decode_column::<T>(&batch, &self.name)?;
        let mut values = RecordWriter::with_capacity(inputs.len());
        let mut keys = RecordWriter::with_capacity(inputs.len());
        for record in &inputs {
            keys.push(&(self.f)(record), &self.name)?;
            values.push(record, &self.name)?;
        }
        let mut columns = vec![values.finish(), keys.finish()];
        columns.extend(batch.column_by_name(records::TIMESTAMP).cloned());
        out.collect(RecordBatch::try_new(records::keyed_schema_for(columns.len() > 2), columns)?)
    }
}

/// `reduce` on a keyed stream: per key, the running reduction, kept in the job's keyed state
/// backend under the key's bytes (state `reduce`), emitted after every record as Flink does.
///
/// Per batch it reads every distinct key's value once (one `multi_get`) and writes each once
/// (one `write_batch`), like the built-in aggregates.
pub(crate) struct ReduceOp<T, F> {
    pub name: String,
    pub f: Arc<F>,
    pub _types: std::marker::PhantomData<fn(T) -> T>,
}

/// The keyed-state name the reduced value is stored under.
const REDUCE_STATE: &str = "reduce";

impl<T: Record + Clone, F: Fn(T, T) -> T + Send + Sync + 'static> KeyedFunction for ReduceOp<T, F> {
    fn process_batch(&mut self, batch: RecordBatch, state: &mut dyn KeyedStateBackend, out: &mut dyn Collector) -> OpResult {
        let name = &self.name;
        let inputs = records::decode_column::<T>(&batch, name)?;
        let key_col = batch
            .column_by_name(records::KEY)
            .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
            .ok_or_else(|| OperatorError::Failed(format!("operator '{name}' has no key column: it must follow key_by")))?;
        let max_p = state.max_parallelism();
        let mut slots: HashMap<&[u8], usize> = HashMap::new();
        let mut composite: Vec<Vec<u8>> = Vec::new();
        let mut rows = Vec::with_capacity(key_col.len());
        for i in 0..key_col.len() {
            let k = key_col.value(i);
            let next = slots.len();
            let slot = *slots.entry(k).or_insert_with(|| {
                let mut ck = Vec::with_capacity(k.len() + REDUCE_STATE.len() + 9);
                composite_key(&mut ck, key_group(k, max_p), REDUCE_STATE, k, &[]);
                composite.push(ck);
                next
            });
            rows.push(slot);
        }
        let state_error = |e: weir_state::StateError| OperatorError::Failed(format!("operator '{name}': keyed state: {e}"));
        let mut acc: Vec<Option<T>> = Vec::with_capacity(composite.len());
        for stored in state.multi_get(&composite).map_err(state_error)? {
            acc.push(stored.map(|b| records::decode::<T>(&b, name)).transpose()?);
        }
        let ts = records::timestamps(&batch);
        let mut writer = RecordWriter::for_stream(inputs.len(), ts.is_some());
        for (i, (record, slot)) in inputs.into_iter().zip(rows).enumerate() {
            let new = match acc[slot].take() {
                Some(a) => (self.f)(a, record),
                None => record,
            };
            writer.push_at(&new, records::timestamp_at(ts, i), name)?;
            acc[slot] = Some(new);
        }
        let mut ops = Vec::with_capacity(composite.len());
        let mut buf = Vec::new();
        for (ck, value) in composite.into_iter().zip(acc) {
            let value = value.expect("every distinct key had a row");
            records::encode_into(&value, &mut buf, name)?;
            ops.push((ck, Some(buf.clone())));
        }
        state.write_batch(ops).map_err(state_error)?;
        match writer.finish_batch()? {
            Some(b) => out.collect(b),
            None => Ok(()),
        }
    }
}

/// Formats records as text lines for `print` and `write_as_text`; a text column passes as it is.
pub(crate) struct ToTextOp<T> {
    pub name: String,
    pub _types: std::marker::PhantomData<fn(T)>,
}

impl<T: Record> Operator for ToTextOp<T> {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        if batch.column(0).data_type() == &arrow_schema::DataType::Utf8 {
            return out.collect(RecordBatch::try_new(records::text_schema(), vec![batch.column(0).clone()])?);
        }
        let inputs = records::decode_column::<T>(&batch, &self.name)?;
        let mut lines = StringBuilder::with_capacity(inputs.len(), inputs.len() * 16);
        for record in &inputs {
            lines.append_value(records::to_text(record, &self.name)?);
        }
        out.collect(RecordBatch::try_new(records::text_schema(), vec![Arc::new(lines.finish())])?)
    }
}

/// `assign_timestamps_and_watermarks`: computes each record's event time with the strategy's
/// timestamp assigner into the timestamp column, and makes the stream's watermarks with a
/// [`WatermarkGenerator`] (periodic, bounded out-of-orderness, idleness), whose largest
/// timestamp is its operator state. Watermarks from upstream are replaced by its own, except
/// the end of event time.
pub(crate) struct AssignTimestampsOp<T> {
    pub name: String,
    pub assigner: Arc<dyn Fn(&T) -> i64 + Send + Sync>,
    pub generator: WatermarkGenerator,
    pub _types: std::marker::PhantomData<fn(T)>,
}

impl<T: Record> Operator for AssignTimestampsOp<T> {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let inputs = records::decode_column::<T>(&batch, &self.name)?;
        let stamps: Int64Array = inputs.iter().map(|r| Some((self.assigner)(r))).collect();
        self.generator.observe(stamps.iter().flatten().max(), out)?;
        // The record column goes on as it is (a line or number column stays one).
        let record = batch.column(0).clone();
        let field = batch.schema().field(0).clone();
        let schema = Arc::new(Schema::new(vec![field, records::timestamp_field()]));
        out.collect(RecordBatch::try_new(schema, vec![record, Arc::new(stamps)])?)
    }

    fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        Ok(self.generator.snapshot())
    }

    fn restore_state(&mut self, _checkpoint: u64, elements: Vec<Vec<u8>>) -> OpResult {
        self.generator.restore(elements, &self.name)
    }

    fn next_timer(&self) -> Option<Instant> {
        self.generator.next_timer()
    }

    fn on_time(&mut self, now: Instant, out: &mut dyn Collector) -> OpResult {
        self.generator.on_time(now, out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> OpResult {
        self.generator.on_upstream_watermark(watermark, out)
    }
}

/// Rows per batch of the `from_iter` source.
const FROM_ITER_BATCH: usize = 1024;

/// `from_iter`: a bounded source of encoded records. Its position (records emitted) is its
/// operator state, so a restart resumes after the last checkpointed record. It runs at
/// parallelism 1 (as Flink's `fromCollection`).
pub(crate) struct FromIterSource {
    pub records: Arc<Vec<Vec<u8>>>,
    pub position: usize,
}

impl SourceReader for FromIterSource {
    fn poll_next(&mut self) -> OpResult<SourcePoll> {
        if self.position >= self.records.len() {
            return Ok(SourcePoll::End);
        }
        let end = (self.position + FROM_ITER_BATCH).min(self.records.len());
        let values: BinaryArray = self.records[self.position..end].iter().map(|r| Some(r.as_slice())).collect();
        self.position = end;
        Ok(SourcePoll::Batch(RecordBatch::try_new(records::record_schema(), vec![Arc::new(values)])?))
    }

    fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        Ok(Some(vec![(self.position as u64).to_le_bytes().to_vec()]))
    }

    fn restore_state(&mut self, elements: Vec<Vec<u8>>) -> OpResult {
        for e in elements {
            let bytes: [u8; 8] =
                e.as_slice().try_into().map_err(|_| OperatorError::Failed("from_iter: its checkpointed position is not 8 bytes".into()))?;
            self.position = self.position.max(u64::from_le_bytes(bytes) as usize);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Out(Vec<RecordBatch>);
    impl Collector for Out {
        fn collect(&mut self, batch: RecordBatch) -> OpResult {
            self.0.push(batch);
            Ok(())
        }
    }

    #[test]
    fn reduce_keeps_a_running_value_per_key_across_batches() {
        let words = |ws: &[&str]| {
            let mut w = RecordWriter::with_capacity(ws.len());
            let mut k = RecordWriter::with_capacity(ws.len());
            for s in ws {
                w.push(&(s.to_string(), 1i64), "t").unwrap();
                k.push(&s.to_string(), "t").unwrap();
            }
            RecordBatch::try_new(records::keyed_schema(), vec![w.finish(), k.finish()]).unwrap()
        };
        let range = weir_core::KeyGroupRange::for_subtask(128, 1, 0);
        let mut state = weir_state::hashmap::HashMapBackend::new(128, range);
        let mut op = ReduceOp {
            name: "reduce".into(),
            f: Arc::new(|a: (String, i64), b: (String, i64)| (a.0, a.1 + b.1)),
            _types: Default::default(),
        };
        let mut out = Out(Vec::new());
        op.process_batch(words(&["a", "b", "a"]), &mut state, &mut out).unwrap();
        op.process_batch(words(&["a"]), &mut state, &mut out).unwrap();
        let got: Vec<(String, i64)> = out.0.iter().flat_map(|b| records::decode_column::<(String, i64)>(b, "t").unwrap()).collect();
        let want: Vec<(String, i64)> = vec![("a".into(), 1), ("b".into(), 1), ("a".into(), 2), ("a".into(), 3)];
        assert_eq!(got, want);
        assert_eq!(state.entries().unwrap(), 2);
    }
}
