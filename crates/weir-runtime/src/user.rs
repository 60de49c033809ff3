//! User functions: the operators of a DataStream program (`weir` crate), which the runtime
//! cannot build from a spec alone because their code lives in the program's binary.
//!
//! A JobGraph names such an operator `OperatorSpec::User { function, kind }`. The program
//! registers every function it defines in a [`UserFunctions`] registry under an id derived from
//! the operator's uid, and hands the registry to the TaskManagers it starts (the embedded mini
//! cluster now; the application's own TaskManagers later), as the TaskManager hands the
//! connectors to the runtime. [`build_user`] resolves an operator through it when a chain is
//! built. A TaskManager without the function (a session cluster's, started from the `weir`
//! binary) fails the deployment with an error that names the function.
//!
//! The registry lives here rather than in `weir-core`, beside [`ConnectorFactory`]
//! (weir_core::operator::ConnectorFactory), because a keyed function works on the job's
//! keyed state backend, which `weir-core` cannot name (`weir-state` depends on it).
//!
//! Every call into user code is guarded: a panic becomes an operator error naming the
//! function and carrying the panic message, so the task fails and the job restarts per its
//! restart strategy, as for any other task failure.

use crate::operators::{ChainOperator, KeyedOperator};
use arrow_array::RecordBatch;
use std::panic::{catch_unwind, AssertUnwindSafe};
use weir_core::graph::ChainedOperator;
use weir_core::operator::{Collector, OpResult, Operator, OperatorError, SourcePoll, SourceReader, SubtaskInfo};
use weir_state::{KeyedStateBackend, StateBackend};

/// A user function built for one subtask.
pub enum UserFunction {
    /// The reader of a user source.
    Source(Box<dyn SourceReader>),
    /// A stateless transform or a sink.
    Operator(Box<dyn Operator>),
    /// A transform over keyed state: the runtime creates the state backend for the subtask's
    /// key-group range, checkpoints and restores it, and lends it to every batch call.
    Keyed(Box<dyn KeyedFunction>),
}

/// A batch transform that reads and writes keyed state.
///
/// Its input is hash-partitioned on a key column whose bytes are the key, so every key
/// arrives at the subtask owning its key group; the function must store state under those
/// same bytes (`weir_state::keyed::composite_key` with `weir_state::keyed::key_group`).
pub trait KeyedFunction: Send {
    /// Processes one batch against `state`, emitting any output to `out`.
    fn process_batch(&mut self, batch: RecordBatch, state: &mut dyn KeyedStateBackend, out: &mut dyn Collector) -> OpResult;

    /// When the function next wants [`KeyedFunction::on_time`] (its earliest processing-time
    /// timer), as [`Operator::next_timer`]. A function that keeps its timers in `state` must
    /// rebuild its view of them after a restore: until it saw the backend it may answer "now".
    fn next_timer(&self) -> Option<std::time::Instant> {
        None
    }

    /// The instant named by [`KeyedFunction::next_timer`] passed: fire the due timers against
    /// `state`, emitting any output to `out`.
    fn on_time(&mut self, _now: std::time::Instant, _state: &mut dyn KeyedStateBackend, _out: &mut dyn Collector) -> OpResult {
        Ok(())
    }

    /// Event time reached `watermark`: fire the event-time timers due against `state`, then
    /// forward the watermark, as [`Operator::on_watermark`] (the default only forwards it).
    fn on_watermark(&mut self, watermark: i64, _state: &mut dyn KeyedStateBackend, out: &mut dyn Collector) -> OpResult {
        out.emit_watermark(watermark)
    }
}

/// The functions of one program, by id.
pub trait UserFunctions: Send + Sync {
    /// Builds function `id` (operator `op`) for subtask `info`; `None` if this registry does
    /// not know the id.
    fn build(&self, id: &str, op: &ChainedOperator, info: &SubtaskInfo) -> Option<OpResult<UserFunction>>;
}

/// The registry of a TaskManager started without a program (the `weir` binary): it knows no
/// function.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoUserFunctions;

impl UserFunctions for NoUserFunctions {
    fn build(&self, _id: &str, _op: &ChainedOperator, _info: &SubtaskInfo) -> Option<OpResult<UserFunction>> {
        None
    }
}

/// What [`build_user`] made of a user operator.
pub enum BuiltUser {
    Source(Box<dyn SourceReader>),
    Chained(ChainOperator),
}

/// Builds user function `id` of operator `op`. `state` is called for a keyed function only,
/// and creates its empty backend.
pub fn build_user(
    functions: &dyn UserFunctions,
    id: &str,
    op: &ChainedOperator,
    info: &SubtaskInfo,
    state: impl FnOnce() -> OpResult<StateBackend>,
) -> OpResult<BuiltUser> {
    let built = functions.build(id, op, info).ok_or_else(|| {
        OperatorError::Failed(format!(
            "user function '{id}' (operator '{}') is not known to this TaskManager: the job is a DataStream program and \
             needs the program's own TaskManagers (the embedded cluster of `execute`, or the application's TaskManagers), \
             not those of a session cluster",
            op.name
        ))
    })??;
    let name = op.name.clone();
    Ok(match built {
        UserFunction::Source(reader) => BuiltUser::Source(Box::new(GuardedSource { name, reader })),
        UserFunction::Operator(operator) => BuiltUser::Chained(ChainOperator::Plain(Box::new(GuardedOperator { name, operator }))),
        UserFunction::Keyed(function) => BuiltUser::Chained(ChainOperator::Keyed(Box::new(UserKeyed { name, function, state: state()? }))),
    })
}

/// Runs `f`, turning a panic into an error that names function `name` and carries the panic
/// message.
fn guarded<R>(name: &str, f: impl FnOnce() -> OpResult<R>) -> OpResult<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            Err(OperatorError::Failed(format!("user function '{name}' panicked: {message}")))
        }
    }
}

/// A user source whose calls are guarded.
struct GuardedSource {
    name: String,
    reader: Box<dyn SourceReader>,
}

impl SourceReader for GuardedSource {
    fn poll_next(&mut self) -> OpResult<SourcePoll> {
        guarded(&self.name, || self.reader.poll_next())
    }

    fn snapshot_state(&mut self, checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        guarded(&self.name, || self.reader.snapshot_state(checkpoint))
    }

    fn restore_state(&mut self, elements: Vec<Vec<u8>>) -> OpResult {
        guarded(&self.name, || self.reader.restore_state(elements))
    }

    fn is_replayable(&self) -> bool {
        self.reader.is_replayable()
    }
}

/// A user transform or sink whose calls are guarded.
struct GuardedOperator {
    name: String,
    operator: Box<dyn Operator>,
}

impl Operator for GuardedOperator {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        guarded(&self.name, || self.operator.process_batch(batch, out))
    }

    fn finish(&mut self, out: &mut dyn Collector) -> OpResult {
        guarded(&self.name, || self.operator.finish(out))
    }

    fn snapshot_state(&mut self, checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        guarded(&self.name, || self.operator.snapshot_state(checkpoint))
    }

    fn restore_state(&mut self, checkpoint: u64, elements: Vec<Vec<u8>>) -> OpResult {
        guarded(&self.name, || self.operator.restore_state(checkpoint, elements))
    }

    fn ready_at(&self) -> Option<std::time::Instant> {
        self.operator.ready_at()
    }

    fn next_timer(&self) -> Option<std::time::Instant> {
        self.operator.next_timer()
    }

    fn on_time(&mut self, now: std::time::Instant, out: &mut dyn Collector) -> OpResult {
        guarded(&self.name, || self.operator.on_time(now, out))
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> OpResult {
        guarded(&self.name, || self.operator.on_watermark(watermark, out))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint: u64) -> OpResult {
        guarded(&self.name, || self.operator.notify_checkpoint_complete(checkpoint))
    }
}

/// A keyed user function with the state backend the task checkpoints.
struct UserKeyed {
    name: String,
    function: Box<dyn KeyedFunction>,
    state: StateBackend,
}

impl Operator for UserKeyed {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> OpResult {
        let (function, state) = (&mut self.function, &mut self.state);
        guarded(&self.name, || function.process_batch(batch, state.keyed(), out))
    }

    fn next_timer(&self) -> Option<std::time::Instant> {
        self.function.next_timer()
    }

    fn on_time(&mut self, now: std::time::Instant, out: &mut dyn Collector) -> OpResult {
        let (function, state) = (&mut self.function, &mut self.state);
        guarded(&self.name, || function.on_time(now, state.keyed(), out))
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> OpResult {
        let (function, state) = (&mut self.function, &mut self.state);
        guarded(&self.name, || function.on_watermark(watermark, state.keyed(), out))
    }
}

impl KeyedOperator for UserKeyed {
    fn keyed_state(&mut self) -> &mut StateBackend {
        &mut self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use std::sync::Arc;

    struct Panics;
    impl Operator for Panics {
        fn process_batch(&mut self, _batch: RecordBatch, _out: &mut dyn Collector) -> OpResult {
            panic!("bad record {}", 7)
        }
    }

    struct OnlyPanics;
    impl UserFunctions for OnlyPanics {
        fn build(&self, id: &str, _op: &ChainedOperator, _info: &SubtaskInfo) -> Option<OpResult<UserFunction>> {
            (id == "f").then(|| Ok(UserFunction::Operator(Box::new(Panics))))
        }
    }

    fn op() -> ChainedOperator {
        ChainedOperator {
            name: "parse".into(),
            uid: "parse-1".into(),
            spec: weir_core::graph::OperatorSpec::User { function: "f".into(), kind: weir_core::graph::UserKind::Transform },
            output_schema: Arc::new(arrow_schema::Schema::empty()),
        }
    }

    fn info() -> SubtaskInfo {
        SubtaskInfo { job_id: "j".into(), attempt: 0, vertex: 0, vertex_name: "v".into(), index: 0, parallelism: 1, max_parallelism: 128 }
    }

    struct Discard;
    impl Collector for Discard {
        fn collect(&mut self, _batch: RecordBatch) -> OpResult {
            Ok(())
        }
    }

    #[test]
    fn a_panic_in_a_user_function_is_an_error_naming_it() {
        let fail = || Err(OperatorError::Failed("no state".into()));
        let BuiltUser::Chained(mut chained) = build_user(&OnlyPanics, "f", &op(), &info(), fail).unwrap() else { panic!("a transform") };
        let batch = RecordBatch::try_from_iter(vec![("v", Arc::new(Int64Array::from(vec![1])) as _)]).unwrap();
        let err = chained.operator().process_batch(batch, &mut Discard).unwrap_err().to_string();
        assert_eq!(err, "user function 'parse' panicked: bad record 7");
    }

    #[test]
    fn an_unknown_function_fails_the_build_naming_it() {
        let fail = || Err(OperatorError::Failed("no state".into()));
        let Err(err) = build_user(&NoUserFunctions, "f", &op(), &info(), fail) else { panic!("built an unknown function") };
        let err = err.to_string();
        assert!(err.contains("user function 'f'") && err.contains("program's own TaskManagers"), "{err}");
    }
}
