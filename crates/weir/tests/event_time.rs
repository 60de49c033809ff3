//! Event time end to end on the embedded cluster: timestamps and watermarks from
//! `assign_timestamps_and_watermarks`, carried through the data plane between parallel
//! subtasks, event-time timers of a `KeyedProcessFunction` (tumbling-window counts) that fire
//! while the job runs as the watermark passes them and at the end of input for the rest; an
//! idle subtask that does not hold event time back; and windows and timers restored exactly
//! from a checkpoint after a failure, with aligned, unaligned and aligned-then-unaligned
//! (timeout) checkpoints, across two TaskManagers under backpressure.

mod support;

use support::*;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};
use weir::prelude::*;

/// Window length in event time (ms); number `v` happens at `v * 10` ms.
const WINDOW: i64 = 1000;

/// Per key, counts numbers per tumbling event-time window in a `MapState` (window start →
/// count) and registers an event-time timer at the window's last millisecond; the timer emits
/// `key window count timestamp` and clears the window. Counts the windows that fired before the
/// end of event time in `fired_early`.
#[derive(Clone)]
struct WindowCounts {
    fired_early: &'static AtomicI64,
    fail: Option<(&'static AtomicBool, &'static AtomicBool)>,
    /// Time spent per record (to backpressure the sources).
    slow: Duration,
}

impl KeyedProcessFunction<i64, i64, String> for WindowCounts {
    fn process_element(&mut self, v: i64, ctx: &mut Context<'_, i64, String>) -> FunctionResult {
        if let Some((armed, failed)) = self.fail {
            if armed.load(Ordering::SeqCst) && !failed.swap(true, Ordering::SeqCst) {
                panic!("forced failure at {v}");
            }
        }
        if !self.slow.is_zero() {
            std::thread::sleep(self.slow);
        }
        let ts = ctx.timestamp().ok_or("a record without a timestamp")?;
        assert_eq!(ts, v * 10, "the record keeps the timestamp its assigner gave it");
        let start = ts - ts.rem_euclid(WINDOW);
        let windows = MapStateDescriptor::<i64, i64>::new("windows");
        let mut state = ctx.get_map_state(&windows);
        let n = state.get(&start)?.unwrap_or(0) + 1;
        state.put(&start, &n)?;
        ctx.timer_service().register_event_time_timer(start + WINDOW - 1)?;
        Ok(())
    }

    fn on_timer(&mut self, timestamp: i64, ctx: &mut OnTimerContext<'_, i64, String>) -> FunctionResult {
        assert_eq!(ctx.time_domain(), Some(TimeDomain::EventTime));
        if ctx.timer_service().current_watermark() < i64::MAX {
            self.fired_early.fetch_add(1, Ordering::SeqCst);
        }
        let start = timestamp + 1 - WINDOW;
        let windows = MapStateDescriptor::<i64, i64>::new("windows");
        let n = ctx.get_map_state(&windows).get(&start)?.ok_or("a timer for a window without a count")?;
        ctx.get_map_state(&windows).remove(&start)?;
        let key = *ctx.current_key();
        let at = ctx.timestamp().ok_or("a timer without its time")?;
        ctx.collect(format!("{key} {start} {n} {at}"));
        Ok(())
    }
}

/// The lines `WindowCounts` must produce for the numbers `values`, keyed by `v % 3`.
fn expected(values: impl Iterator<Item = i64>) -> Vec<String> {
    let mut counts: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for v in values {
        let ts = v * 10;
        *counts.entry((v % 3, ts - ts.rem_euclid(WINDOW))).or_default() += 1;
    }
    let mut lines: Vec<String> = counts.iter().map(|((k, start), n)| format!("{k} {start} {n} {}", start + WINDOW - 1)).collect();
    lines.sort();
    lines
}

fn window_job(env: &mut StreamExecutionEnvironment, out: &std::path::Path, f: WindowCounts, keep: fn(&i64) -> bool, idleness: bool) {
    let mut strategy = WatermarkStrategy::for_bounded_out_of_orderness(Duration::ZERO).with_timestamp_assigner(|v: &i64| v * 10);
    if idleness {
        strategy = strategy.with_idleness(Duration::from_millis(300));
    }
    env.set_config("pipeline.auto-watermark-interval", "50ms");
    env.datagen_sequence(1, 6000, Some(1500))
        .filter(keep)
        .assign_timestamps_and_watermarks(strategy)
        .key_by(|v: &i64| v % 3)
        .process(f)
        .uid("windows")
        .write_as_text(out.to_str().unwrap());
}

static FIRED_EARLY: AtomicI64 = AtomicI64::new(0);

/// Two source subtasks feed two window subtasks: each window subtask's event time is the
/// minimum of both sources' watermarks, which advance while the job runs (about 4 s), so most
/// windows fire before the end of input; the last fire when the sources end.
#[test]
fn event_time_windows_fire_as_the_watermark_passes_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    window_job(&mut env, &out, WindowCounts { fired_early: &FIRED_EARLY, fail: None, slow: Duration::ZERO }, |_| true, false);
    let result = env.execute("event-time windows").expect("the job finishes");
    assert_eq!(result.restarts, 0);
    assert_eq!(committed_lines(&out), expected(1..=6000));
    // Periodic watermarks fire all windows but the last few while the sources run; without
    // them only the windows between the ends of the two sources (which run at the same rate)
    // would fire before event time ends.
    let early = FIRED_EARLY.load(Ordering::SeqCst);
    assert!(early >= 120, "only {early} of 180 windows fired before the end of input: watermarks did not flow while the job ran");
}

static IDLE_FIRED_EARLY: AtomicI64 = AtomicI64::new(0);

/// Source subtask 0 emits the odd numbers, subtask 1 the even ones, which the filter drops:
/// subtask 1's assigner never sees a record, and its input lasts about ten minutes. Without
/// idleness its missing watermark would hold every window back for as long; with idleness it
/// goes idle, and the windows of subtask 0's numbers fire while the job runs.
#[test]
fn an_idle_subtask_does_not_hold_event_time_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2).set_config("pipeline.auto-watermark-interval", "50ms");
    let strategy =
        WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|v: &i64| v * 10).with_idleness(Duration::from_millis(300));
    env.datagen_sequence(1, 1_000_000, Some(1500))
        .filter(|v: &i64| v % 2 == 1)
        .assign_timestamps_and_watermarks(strategy)
        .key_by(|v: &i64| v % 3)
        .process(WindowCounts { fired_early: &IDLE_FIRED_EARLY, fail: None, slow: Duration::ZERO })
        .write_as_text(out.to_str().unwrap());
    let client = env.execute_async("idle subtask").expect("submitted");
    let deadline = Instant::now() + Duration::from_secs(120);
    while IDLE_FIRED_EARLY.load(Ordering::SeqCst) < 6 {
        assert!(Instant::now() < deadline, "no windows fired in 120 s: the idle subtask holds event time back");
        std::thread::sleep(Duration::from_millis(20));
    }
    client.cancel().expect("canceled");
}

/// How a failure test checkpoints.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Aligned,
    Unaligned,
    /// Aligned, switching to unaligned after 5 ms of alignment or of waiting in an output queue.
    AlignedTimeout,
}

/// A failure after two checkpoints: the windows' counts, their pending event-time timers and
/// the assigners' event time come back from the checkpoint (with the in-flight records of an
/// unaligned one), and every window is emitted exactly once with its exact count. The window
/// function is slow (2 ms a record, about 1000 records a second in all against 1500 from the
/// sources), so the job runs backpressured across two TaskManagers.
fn windows_across_a_failure(mode: Mode, fired_early: &'static AtomicI64, armed: &'static AtomicBool, failed: &'static AtomicBool) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2).enable_checkpointing(Duration::from_millis(100)).set_config("minicluster.taskmanagers", "2");
    checkpoint_into(&mut env, dir.path());
    match mode {
        Mode::Aligned => {}
        Mode::Unaligned => {
            env.checkpoint_config().enable_unaligned_checkpoints(true);
        }
        Mode::AlignedTimeout => {
            env.checkpoint_config().enable_unaligned_checkpoints(true).set_aligned_checkpoint_timeout(Duration::from_millis(5));
        }
    }
    restart_once(&mut env);
    let f = WindowCounts { fired_early, fail: Some((armed, failed)), slow: Duration::from_millis(2) };
    window_job(&mut env, &out, f, |_| true, false);
    let client = env.execute_async("windows across a failure").expect("submitted");
    await_checkpoints(&client, 2);
    armed.store(true, Ordering::SeqCst);
    let checkpoints = client.checkpoints();
    let result = client.wait().expect("the job finishes after one restart");
    assert!(failed.load(Ordering::SeqCst), "the failure happened while the job ran");
    assert_eq!(result.restarts, 1);
    assert_eq!(committed_lines(&out), expected(1..=6000), "{mode:?}");
    let completed: Vec<_> = checkpoints.iter().filter(|c| c.status == weir_proto::CheckpointStatus::Completed as i32).collect();
    let kinds: Vec<i32> = completed.iter().map(|c| c.kind).collect();
    match mode {
        Mode::Aligned => assert!(kinds.iter().all(|k| *k == weir_proto::CheckpointKind::Aligned as i32), "{kinds:?}"),
        Mode::Unaligned => {
            assert!(kinds.iter().all(|k| *k == weir_proto::CheckpointKind::Unaligned as i32), "{kinds:?}");
            assert!(completed.iter().any(|c| c.inflight_bytes > 0), "no unaligned checkpoint persisted in-flight records: {completed:?}");
        }
        Mode::AlignedTimeout => {}
    }
}

static RESTORE_FIRED_EARLY: AtomicI64 = AtomicI64::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);

#[test]
fn event_time_windows_and_timers_are_restored_exactly_after_a_failure() {
    windows_across_a_failure(Mode::Aligned, &RESTORE_FIRED_EARLY, &ARMED, &FAILED);
}

static UNALIGNED_FIRED_EARLY: AtomicI64 = AtomicI64::new(0);
static UNALIGNED_ARMED: AtomicBool = AtomicBool::new(false);
static UNALIGNED_FAILED: AtomicBool = AtomicBool::new(false);

#[test]
fn event_time_windows_are_exact_after_a_failure_with_unaligned_checkpoints() {
    windows_across_a_failure(Mode::Unaligned, &UNALIGNED_FIRED_EARLY, &UNALIGNED_ARMED, &UNALIGNED_FAILED);
}

static TIMEOUT_FIRED_EARLY: AtomicI64 = AtomicI64::new(0);
static TIMEOUT_ARMED: AtomicBool = AtomicBool::new(false);
static TIMEOUT_FAILED: AtomicBool = AtomicBool::new(false);

#[test]
fn event_time_windows_are_exact_after_a_failure_with_the_aligned_checkpoint_timeout() {
    windows_across_a_failure(Mode::AlignedTimeout, &TIMEOUT_FIRED_EARLY, &TIMEOUT_ARMED, &TIMEOUT_FAILED);
}
