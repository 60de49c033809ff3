//! `process` on a keyed stream: a [`KeyedProcessFunction`] called per record with a
//! [`Context`] that knows the current key and the record's timestamp, collects outputs, hands
//! out keyed state ([`crate::state`]) and registers processing-time and event-time timers
//! ([`TimerService`]).
//!
//! The operator ([`ProcessOp`]) is a keyed user function: the runtime lends it the job's keyed
//! state backend for every batch and checkpoints that backend, so the function's state and its
//! timers ([`crate::timers`]) are restored and rescaled by key group like every keyed state. It
//! decodes a whole batch, calls the function per record, and encodes what the function
//! collected into one output batch.
//!
//! Processing-time timers fire on the task's thread between two batches, through the runtime's
//! timer hook (`Operator::next_timer` / `Operator::on_time`), whether or not input arrives. They
//! fire while the input runs: timers pending when the input ends are dropped, as Flink drops
//! pending processing-time timers when an operator finishes. Event-time timers fire when a
//! watermark reaches the operator (`Operator::on_watermark`) at or past their time, earliest
//! first, before the watermark goes on; when a bounded input ends, event time ends and every
//! one fires. What `on_timer` emits carries the timer's time as its timestamp (event time) or
//! none (processing time); what `process_element` emits carries the record's.

use crate::functions::Record;
use crate::records::{self, RecordWriter};
use crate::state::{
    ListState, ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor, Scope, ValueState,
    ValueStateDescriptor,
};
use crate::timers::{processing_time, TimerQueue};
use arrow_array::{Array, BinaryArray, RecordBatch};
use std::marker::PhantomData;
use std::time::Instant;
use weir_core::operator::MAX_WATERMARK;
use weir_core::operator::{Collector, OpResult, OperatorError};
use weir_runtime::user::KeyedFunction;
use weir_state::keyed::key_group;
use weir_state::KeyedStateBackend;

/// What a process function may fail with: any error (`?` converts them).
pub type FunctionError = Box<dyn std::error::Error + Send + Sync>;

/// The result of a process function's calls.
pub type FunctionResult<T = ()> = Result<T, FunctionError>;

/// A function over a keyed stream with keyed state and timers (Flink's
/// `KeyedProcessFunction<K, IN, OUT>`).
///
/// Each subtask runs its own clone of the function; its fields are not state (they are lost on
/// a failure): keep what must survive in the state the [`Context`] gives. An error or a panic
/// fails the task, naming the operator, and the job restarts per its restart strategy.
pub trait KeyedProcessFunction<K, IN, OUT>: Send + 'static {
    /// Called for every record, with the record's key current in `ctx`.
    fn process_element(&mut self, value: IN, ctx: &mut Context<'_, K, OUT>) -> FunctionResult;

    /// Called when a timer registered for the key current in `ctx` fires; `timestamp` is the
    /// time it was registered for, and [`Context::time_domain`] tells which kind it is. Does
    /// nothing by default.
    fn on_timer(&mut self, _timestamp: i64, _ctx: &mut OnTimerContext<'_, K, OUT>) -> FunctionResult {
        Ok(())
    }
}

/// The context of [`KeyedProcessFunction::process_element`] and of
/// [`KeyedProcessFunction::on_timer`]: the current key, the output, its state and its timers.
pub struct Context<'a, K, OUT> {
    key: &'a K,
    key_bytes: &'a [u8],
    key_group: u32,
    backend: &'a mut dyn KeyedStateBackend,
    timers: &'a mut Timers,
    out: &'a mut Vec<(OUT, Option<i64>)>,
    operator: &'a str,
    /// The record's timestamp, or the firing timer's.
    timestamp: Option<i64>,
    /// The firing timer's kind, in `on_timer`.
    domain: Option<TimeDomain>,
}

/// Which clock a firing timer follows (Flink's `TimeDomain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDomain {
    ProcessingTime,
    EventTime,
}

/// Both timer queues of one subtask and its current watermark.
pub(crate) struct Timers {
    processing: TimerQueue,
    event: TimerQueue,
    watermark: i64,
}

impl Timers {
    fn new() -> Self {
        Self { processing: TimerQueue::processing_time(), event: TimerQueue::event_time(), watermark: i64::MIN }
    }

    fn load(&mut self, backend: &dyn KeyedStateBackend) -> Result<(), weir_state::StateError> {
        self.processing.load(backend)?;
        self.event.load(backend)
    }
}

/// The context of [`KeyedProcessFunction::on_timer`]: the one of `process_element`, with
/// [`Context::timestamp`] the firing timer's time.
pub type OnTimerContext<'a, K, OUT> = Context<'a, K, OUT>;

impl<K, OUT> Context<'_, K, OUT> {
    /// The key of the record being processed, or of the timer firing.
    pub fn current_key(&self) -> &K {
        self.key
    }

    /// Emits `value` downstream, with the timestamp of the record being processed (or of the
    /// event-time timer firing).
    pub fn collect(&mut self, value: OUT) {
        let ts = if self.domain == Some(TimeDomain::ProcessingTime) { None } else { self.timestamp };
        self.out.push((value, ts));
    }

    /// In `process_element`, the record's event time (`None` if the stream has no timestamps:
    /// see `assign_timestamps_and_watermarks`); in `on_timer`, the firing timer's time.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// In `on_timer`, whether an event-time or a processing-time timer fires; `None` in
    /// `process_element`.
    pub fn time_domain(&self) -> Option<TimeDomain> {
        self.domain
    }

    fn scope(&mut self) -> Scope<'_> {
        Scope { backend: &mut *self.backend, key: self.key_bytes, key_group: self.key_group, operator: self.operator }
    }

    /// The current key's [`ValueState`] declared by `descriptor`.
    pub fn get_state<'s, T>(&'s mut self, descriptor: &'s ValueStateDescriptor<T>) -> ValueState<'s, T> {
        ValueState { scope: self.scope(), name: descriptor.name(), _t: PhantomData }
    }

    /// The current key's [`ListState`] declared by `descriptor`.
    pub fn get_list_state<'s, T>(&'s mut self, descriptor: &'s ListStateDescriptor<T>) -> ListState<'s, T> {
        ListState { scope: self.scope(), name: descriptor.name(), _t: PhantomData }
    }

    /// The current key's [`MapState`] declared by `descriptor`.
    pub fn get_map_state<'s, UK, UV>(&'s mut self, descriptor: &'s MapStateDescriptor<UK, UV>) -> MapState<'s, UK, UV> {
        MapState { scope: self.scope(), name: descriptor.name(), _t: PhantomData }
    }

    /// The current key's [`ReducingState`] declared by `descriptor`.
    pub fn get_reducing_state<'s, T>(&'s mut self, descriptor: &'s ReducingStateDescriptor<T>) -> ReducingState<'s, T> {
        ReducingState { scope: self.scope(), name: descriptor.name(), reduce: descriptor.reduce_fn() }
    }

    /// The processing-time timers of the current key.
    pub fn timer_service(&mut self) -> TimerService<'_> {
        TimerService {
            backend: &mut *self.backend,
            timers: &mut *self.timers,
            key: self.key_bytes,
            key_group: self.key_group,
            operator: self.operator,
        }
    }
}

/// Processing time, event time and the current key's timers (Flink's `TimerService`).
///
/// Times are milliseconds since the Unix epoch. Registering a timer for a (key, time) that
/// already has one of its kind does nothing: it fires once.
pub struct TimerService<'s> {
    backend: &'s mut dyn KeyedStateBackend,
    timers: &'s mut Timers,
    key: &'s [u8],
    key_group: u32,
    operator: &'s str,
}

impl TimerService<'_> {
    /// The current processing time (the machine's clock), in milliseconds since the epoch.
    pub fn current_processing_time(&self) -> i64 {
        processing_time()
    }

    /// Calls `on_timer` for the current key once processing time reaches `timestamp` (at once
    /// if it passed already).
    pub fn register_processing_time_timer(&mut self, timestamp: i64) -> OpResult {
        let operator = self.operator;
        self.timers
            .processing
            .register(self.backend, self.key, self.key_group, timestamp)
            .map_err(|e| OperatorError::Failed(format!("operator '{operator}': registering a timer: {e}")))
    }

    /// Removes the current key's timer at `timestamp`, if there is one.
    pub fn delete_processing_time_timer(&mut self, timestamp: i64) -> OpResult {
        let operator = self.operator;
        self.timers
            .processing
            .delete(self.backend, self.key, self.key_group, timestamp)
            .map_err(|e| OperatorError::Failed(format!("operator '{operator}': deleting a timer: {e}")))
    }

    /// The operator's event time: the last watermark it received (`i64::MIN` before the
    /// first).
    pub fn current_watermark(&self) -> i64 {
        self.timers.watermark
    }

    /// Calls `on_timer` for the current key once the watermark reaches `timestamp` (with the
    /// next watermark if it already did).
    pub fn register_event_time_timer(&mut self, timestamp: i64) -> OpResult {
        let operator = self.operator;
        self.timers
            .event
            .register(self.backend, self.key, self.key_group, timestamp)
            .map_err(|e| OperatorError::Failed(format!("operator '{operator}': registering an event-time timer: {e}")))
    }

    /// Removes the current key's event-time timer at `timestamp`, if there is one.
    pub fn delete_event_time_timer(&mut self, timestamp: i64) -> OpResult {
        let operator = self.operator;
        self.timers
            .event
            .delete(self.backend, self.key, self.key_group, timestamp)
            .map_err(|e| OperatorError::Failed(format!("operator '{operator}': deleting an event-time timer: {e}")))
    }
}

/// The operator of `process`: runs one subtask's clone of the function.
pub(crate) struct ProcessOp<K, IN, OUT, F> {
    pub name: String,
    pub f: F,
    timers: Timers,
    /// Whether the output stream carries timestamps (its input does).
    timestamped: bool,
    pub _types: PhantomData<fn(K, IN) -> OUT>,
}

impl<K, IN, OUT, F> ProcessOp<K, IN, OUT, F> {
    pub fn new(name: String, f: F, timestamped: bool) -> Self {
        Self { name, f, timers: Timers::new(), timestamped, _types: PhantomData }
    }
}

fn failed(operator: &str, e: FunctionError) -> OperatorError {
    OperatorError::Failed(format!("user function '{operator}' failed: {e}"))
}

fn state_error(operator: &str, e: weir_state::StateError) -> OperatorError {
    OperatorError::Failed(format!("operator '{operator}': timers: {e}"))
}

/// Encodes what the function collected into one batch (with the timestamps if `timestamped`).
fn emit<OUT: Record>(collected: &mut Vec<(OUT, Option<i64>)>, timestamped: bool, operator: &str, out: &mut dyn Collector) -> OpResult {
    if collected.is_empty() {
        return Ok(());
    }
    let mut writer = RecordWriter::for_stream(collected.len(), timestamped);
    for (o, ts) in collected.drain(..) {
        writer.push_at(&o, ts, operator)?;
    }
    match writer.finish_batch()? {
        Some(b) => out.collect(b),
        None => Ok(()),
    }
}

impl<K: Record, IN: Record, OUT: Record, F: KeyedProcessFunction<K, IN, OUT>> KeyedFunction for ProcessOp<K, IN, OUT, F> {
    fn process_batch(&mut self, batch: RecordBatch, state: &mut dyn KeyedStateBackend, out: &mut dyn Collector) -> OpResult {
        let Self { name, f, timers, timestamped, .. } = self;
        timers.load(state).map_err(|e| state_error(name, e))?;
        let inputs = records::decode_column::<IN>(&batch, name)?;
        let stamps = records::timestamps(&batch);
        let key_col = batch
            .column_by_name(records::KEY)
            .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
            .ok_or_else(|| OperatorError::Failed(format!("operator '{name}' has no key column: it must follow key_by")))?;
        let max_parallelism = state.max_parallelism();
        let mut collected = Vec::new();
        // Consecutive records of one key decode it once.
        let mut current: Option<(usize, K, u32)> = None;
        for (i, value) in inputs.into_iter().enumerate() {
            let bytes = key_col.value(i);
            if !current.as_ref().is_some_and(|(row, _, _)| key_col.value(*row) == bytes) {
                current = Some((i, records::decode::<K>(bytes, name)?, key_group(bytes, max_parallelism)));
            }
            let (_, key, kg) = current.as_ref().expect("set above");
            let mut ctx = Context {
                key,
                key_bytes: bytes,
                key_group: *kg,
                backend: &mut *state,
                timers: &mut *timers,
                out: &mut collected,
                operator: name,
                timestamp: records::timestamp_at(stamps, i),
                domain: None,
            };
            f.process_element(value, &mut ctx).map_err(|e| failed(name, e))?;
        }
        emit(&mut collected, *timestamped, name, out)
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.processing.next_instant()
    }

    fn on_time(&mut self, _now: Instant, state: &mut dyn KeyedStateBackend, out: &mut dyn Collector) -> OpResult {
        let Self { name, timers, .. } = self;
        timers.load(state).map_err(|e| state_error(name, e))?;
        let due = timers.processing.take_due(state, processing_time()).map_err(|e| state_error(name, e))?;
        self.fire(due, TimeDomain::ProcessingTime, state, out)
    }

    /// Fires the event-time timers at or before `watermark`, earliest first (also those that
    /// firing timers register at or before it), then forwards the watermark.
    fn on_watermark(&mut self, watermark: i64, state: &mut dyn KeyedStateBackend, out: &mut dyn Collector) -> OpResult {
        let Self { name, timers, .. } = self;
        timers.load(state).map_err(|e| state_error(name, e))?;
        timers.watermark = timers.watermark.max(watermark);
        loop {
            let due = self.timers.event.take_due(state, watermark).map_err(|e| state_error(&self.name, e))?;
            if due.is_empty() {
                break;
            }
            self.fire(due, TimeDomain::EventTime, state, out)?;
        }
        if watermark == MAX_WATERMARK {
            tracing::debug!(operator = %self.name, "event time ended: every event-time timer fired");
        }
        out.emit_watermark(watermark)
    }
}

impl<K: Record, IN: Record, OUT: Record, F: KeyedProcessFunction<K, IN, OUT>> ProcessOp<K, IN, OUT, F> {
    /// Calls `on_timer` for each of `due` (time, key bytes, key group) and emits what it
    /// collected.
    fn fire(
        &mut self,
        due: Vec<(i64, Vec<u8>, u32)>,
        domain: TimeDomain,
        state: &mut dyn KeyedStateBackend,
        out: &mut dyn Collector,
    ) -> OpResult {
        let Self { name, f, timers, timestamped, .. } = self;
        let mut collected = Vec::new();
        for (ts, bytes, kg) in due {
            let key = records::decode::<K>(&bytes, name)?;
            let mut ctx = Context {
                key: &key,
                key_bytes: &bytes,
                key_group: kg,
                backend: &mut *state,
                timers: &mut *timers,
                out: &mut collected,
                operator: name,
                timestamp: Some(ts),
                domain: Some(domain),
            };
            f.on_timer(ts, &mut ctx).map_err(|e| failed(name, e))?;
        }
        emit(&mut collected, *timestamped, name, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::KeyGroupRange;
    use weir_state::hashmap::HashMapBackend;

    /// Counts each key's records in value state and registers an already-due timer; the timer
    /// reports the count.
    #[derive(Clone)]
    struct CountThenReport;

    impl KeyedProcessFunction<String, String, String> for CountThenReport {
        fn process_element(&mut self, _value: String, ctx: &mut Context<'_, String, String>) -> FunctionResult {
            let count = ValueStateDescriptor::<i64>::new("count");
            let mut state = ctx.get_state(&count);
            let n = state.value()?.unwrap_or(0) + 1;
            state.update(&n)?;
            ctx.timer_service().register_processing_time_timer(1)?;
            Ok(())
        }

        fn on_timer(&mut self, _timestamp: i64, ctx: &mut OnTimerContext<'_, String, String>) -> FunctionResult {
            let n = ctx.get_state(&ValueStateDescriptor::<i64>::new("count")).value()?.unwrap_or(0);
            let key = ctx.current_key().clone();
            ctx.collect(format!("{key} {n}"));
            Ok(())
        }
    }

    struct Out(Vec<RecordBatch>);
    impl Collector for Out {
        fn collect(&mut self, batch: RecordBatch) -> OpResult {
            self.0.push(batch);
            Ok(())
        }
    }

    fn keyed_batch(words: &[&str]) -> RecordBatch {
        let mut values = RecordWriter::with_capacity(words.len());
        let mut keys = RecordWriter::with_capacity(words.len());
        for w in words {
            values.push(&w.to_string(), "t").unwrap();
            keys.push(&w.to_string(), "t").unwrap();
        }
        RecordBatch::try_new(records::keyed_schema(), vec![values.finish(), keys.finish()]).unwrap()
    }

    fn lines(out: &Out) -> Vec<String> {
        let mut lines: Vec<String> = out.0.iter().flat_map(|b| records::decode_column::<String>(b, "t").unwrap()).collect();
        lines.sort();
        lines
    }

    /// State and timers taken at parallelism 1 and restored at parallelism 2 land with their
    /// key groups: each subtask fires the timers of its own keys, with their counts.
    #[test]
    fn state_and_timers_rescale_with_their_key_groups() {
        let words = ["a", "b", "c", "d", "e", "f", "g", "h", "a", "c", "a"];
        let mut before = HashMapBackend::new(128, KeyGroupRange::for_subtask(128, 1, 0));
        let mut op = ProcessOp::<String, String, String, _>::new("count".into(), CountThenReport, false);
        op.process_batch(keyed_batch(&words), &mut before, &mut Out(Vec::new())).unwrap();
        let snapshot = before.snapshot_bytes();

        let mut all = Vec::new();
        for subtask in 0..2 {
            let range = KeyGroupRange::for_subtask(128, 2, subtask);
            let mut after = HashMapBackend::new(128, range);
            after.restore_bytes(&snapshot, "snapshot").unwrap();
            let mut op = ProcessOp::<String, String, String, _>::new("count".into(), CountThenReport, false);
            assert!(op.next_timer().is_some_and(|t| t <= Instant::now()), "asks to read its timers at once");
            let mut out = Out(Vec::new());
            op.on_time(Instant::now(), &mut after, &mut out).unwrap();
            assert_eq!(op.next_timer(), None, "every timer fired once");
            for line in lines(&out) {
                let key = line.split(' ').next().unwrap().to_string();
                let kg = key_group(&postcard::to_allocvec(&key).unwrap(), 128);
                assert!(range.contains(kg), "{key} fired in the subtask owning its key group");
                all.push(line);
            }
        }
        all.sort();
        let want = ["a 3", "b 1", "c 2", "d 1", "e 1", "f 1", "g 1", "h 1"];
        assert_eq!(all, want);
    }
}
