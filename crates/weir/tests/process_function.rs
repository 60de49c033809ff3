//! `process` with a `KeyedProcessFunction` end to end on the embedded cluster: a word count in
//! value state on both backends, list, map and reducing state with exact output, processing-time
//! timers that fire after the input stopped (and are dropped at the end of input, as in
//! Flink), state restored from a checkpoint after a failure, and every kind of state and
//! event-time timers through a savepoint and a rescale.

mod support;

use support::*;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use weir::prelude::*;

const TEXT: &[&str] = &["to be or not to be", "that is the question", "to sleep perchance to dream", "", "be be be"];

/// Counts words in a `ValueState`, emitting `word n` after every word.
#[derive(Clone)]
struct CountWords;

impl KeyedProcessFunction<String, String, String> for CountWords {
    fn process_element(&mut self, word: String, ctx: &mut Context<'_, String, String>) -> FunctionResult {
        let descriptor = ValueStateDescriptor::<i64>::new("count");
        let mut count = ctx.get_state(&descriptor);
        let n = count.value()?.unwrap_or(0) + 1;
        count.update(&n)?;
        ctx.collect(format!("{word} {n}"));
        Ok(())
    }
}

fn word_count(backend: StateBackend) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2).set_state_backend(backend).set_config("taskmanager.tmp.dirs", dir.path().to_str().unwrap());
    env.from_iter(TEXT.iter().map(|l| l.to_string()).collect::<Vec<_>>())
        .flat_map(|line: String, out: &mut Vec<String>| out.extend(line.split_whitespace().map(str::to_string)))
        .key_by(|w: &String| w.clone())
        .process(CountWords)
        .uid("counts")
        .write_as_text(out.to_str().unwrap());
    let result = env.execute("process word count").expect("the job finishes");
    assert_eq!(result.restarts, 0);

    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for w in TEXT.iter().flat_map(|l| l.split_whitespace()) {
        *counts.entry(w).or_default() += 1;
    }
    let mut want: Vec<String> = counts.iter().flat_map(|(w, n)| (1..=*n).map(move |i| format!("{w} {i}"))).collect();
    want.sort();
    assert_eq!(committed_lines(&out), want);
}

#[test]
fn a_value_state_word_count_is_exact_with_the_hashmap_backend() {
    word_count(StateBackend::HashMap);
}

#[test]
fn a_value_state_word_count_is_exact_with_the_rocksdb_backend() {
    word_count(StateBackend::RocksDb);
}

/// Per user: the items in order (list), how often each was bought (map), the total spent
/// (reducing); `-item` returns one (map remove), `reset` clears everything.
#[derive(Clone)]
struct Baskets;

impl KeyedProcessFunction<String, (String, String, i64), String> for Baskets {
    fn process_element(&mut self, (user, item, price): (String, String, i64), ctx: &mut Context<'_, String, String>) -> FunctionResult {
        let items = ListStateDescriptor::<String>::new("items");
        let bought = MapStateDescriptor::<String, i64>::new("bought");
        let total = ReducingStateDescriptor::<i64>::new("total", |a, b| a + b);
        if item == "reset" {
            ctx.get_list_state(&items).clear()?;
            ctx.get_map_state(&bought).clear()?;
            ctx.get_reducing_state(&total).clear()?;
            ctx.collect(format!("{user}: reset"));
            return Ok(());
        }
        if let Some(returned) = item.strip_prefix('-') {
            let mut map = ctx.get_map_state(&bought);
            let had = map.contains(&returned.to_string())?;
            map.remove(&returned.to_string())?;
            ctx.get_reducing_state(&total).add(-price)?;
            ctx.collect(format!("{user}: returned {returned} (had it: {had})"));
            return Ok(());
        }
        ctx.get_list_state(&items).add(&item)?;
        let mut map = ctx.get_map_state(&bought);
        let n = map.get(&item)?.unwrap_or(0) + 1;
        map.put(&item, &n)?;
        ctx.get_reducing_state(&total).add(price)?;
        let list = ctx.get_list_state(&items).get()?;
        let mut entries = ctx.get_map_state(&bought).iter()?;
        entries.sort();
        let sum = ctx.get_reducing_state(&total).get()?.unwrap_or(0);
        assert_eq!(ctx.current_key(), &user);
        ctx.collect(format!("{user}: items={} bought={entries:?} total={sum}", list.join(",")));
        Ok(())
    }
}

#[test]
fn list_map_and_reducing_state_give_exact_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let events: Vec<(String, String, i64)> = [
        ("ann", "apple", 3),
        ("bob", "pear", 5),
        ("ann", "fig", 7),
        ("ann", "apple", 3),
        ("bob", "-pear", 5),
        ("bob", "-kiwi", 0),
        ("ann", "reset", 0),
        ("ann", "kiwi", 2),
        ("bob", "pear", 4),
    ]
    .iter()
    .map(|(u, i, p)| (u.to_string(), i.to_string(), *p))
    .collect();
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    env.from_iter(events)
        .key_by(|(user, _, _): &(String, String, i64)| user.clone())
        .process(Baskets)
        .uid("baskets")
        .write_as_text(out.to_str().unwrap());
    env.execute("baskets").expect("the job finishes");
    let mut want = vec![
        "ann: items=apple bought=[(\"apple\", 1)] total=3",
        "ann: items=apple,fig bought=[(\"apple\", 1), (\"fig\", 1)] total=10",
        "ann: items=apple,fig,apple bought=[(\"apple\", 2), (\"fig\", 1)] total=13",
        "ann: reset",
        "ann: items=kiwi bought=[(\"kiwi\", 1)] total=2",
        "bob: items=pear bought=[(\"pear\", 1)] total=5",
        "bob: returned pear (had it: true)",
        "bob: returned kiwi (had it: false)",
        "bob: items=pear,pear bought=[(\"pear\", 1)] total=4",
    ];
    want.sort();
    assert_eq!(committed_lines(&out), want);
}

/// Sums each key's values and reports the sum once, a second after its first value, from a
/// processing-time timer; every value registers the same timer again (deduplicated), and a
/// timer an hour away is pending when the input ends (dropped, as Flink does).
#[derive(Clone)]
struct SumThenReport;

impl KeyedProcessFunction<i64, (i64, i64), String> for SumThenReport {
    fn process_element(&mut self, (_, v): (i64, i64), ctx: &mut Context<'_, i64, String>) -> FunctionResult {
        let sum = ValueStateDescriptor::<i64>::new("sum");
        let due = ValueStateDescriptor::<i64>::new("due");
        let mut s = ctx.get_state(&sum);
        let total = s.value()?.unwrap_or(0) + v;
        s.update(&total)?;
        let at = match ctx.get_state(&due).value()? {
            Some(at) => at,
            None => {
                let at = ctx.timer_service().current_processing_time() + 1000;
                ctx.get_state(&due).update(&at)?;
                let mut timers = ctx.timer_service();
                timers.register_processing_time_timer(at + 3_600_000)?;
                timers.register_processing_time_timer(at + 60_000)?;
                timers.delete_processing_time_timer(at + 60_000)?;
                at
            }
        };
        ctx.timer_service().register_processing_time_timer(at)?;
        Ok(())
    }

    fn on_timer(&mut self, timestamp: i64, ctx: &mut OnTimerContext<'_, i64, String>) -> FunctionResult {
        let sum = ValueStateDescriptor::<i64>::new("sum");
        let total = ctx.get_state(&sum).value()?.unwrap_or(0);
        let late = ctx.timer_service().current_processing_time() < timestamp;
        assert!(!late, "a timer fired before its time");
        assert_eq!(ctx.timestamp(), Some(timestamp));
        ctx.collect(format!("key {} sum {total}", ctx.current_key()));
        Ok(())
    }
}

#[test]
fn processing_time_timers_fire_after_the_input_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    // 4000 numbers at 1000 per second keep the job running about 4 s; only the first 20 reach
    // the process function, in its first few milliseconds: the timers fire a second later, with
    // no input arriving.
    env.datagen_sequence(1, 4000, Some(1000))
        .filter(|v: &i64| *v <= 20)
        .map(|v: i64| (v % 4, v))
        .key_by(|(k, _): &(i64, i64)| *k)
        .process(SumThenReport)
        .uid("report")
        .write_as_text(out.to_str().unwrap());
    // The hour-long timers still pending do not hold the job: it ends with its input.
    env.execute("timers").expect("the job finishes");
    let want: Vec<String> = (0..4).map(|k| format!("key {k} sum {}", (1..=20i64).filter(|v| v % 4 == k).sum::<i64>())).collect();
    assert_eq!(committed_lines(&out), want);
}

static ARMED: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);
/// The sum the restarted attempt found in state for the first key it saw (-1: none yet).
static FIRST_AFTER_RESTART: AtomicI64 = AtomicI64::new(-1);

/// A running sum per key in value state, which fails once when the test arms it.
#[derive(Clone)]
struct SumFailingOnce;

impl KeyedProcessFunction<i64, (i64, i64), String> for SumFailingOnce {
    fn process_element(&mut self, (k, v): (i64, i64), ctx: &mut Context<'_, i64, String>) -> FunctionResult {
        let descriptor = ValueStateDescriptor::<i64>::new("sum");
        let mut sum = ctx.get_state(&descriptor);
        let stored = sum.value()?;
        if FAILED.load(Ordering::SeqCst) {
            let _ = FIRST_AFTER_RESTART.compare_exchange(-1, stored.unwrap_or(0), Ordering::SeqCst, Ordering::SeqCst);
        } else if ARMED.load(Ordering::SeqCst) && !FAILED.swap(true, Ordering::SeqCst) {
            panic!("forced failure at {v}");
        }
        let total = stored.unwrap_or(0) + v;
        sum.update(&total)?;
        ctx.collect(format!("{k} {total}"));
        Ok(())
    }
}

#[test]
fn process_function_state_is_restored_from_a_checkpoint_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    // One subtask: the first record after the failure is the restarted attempt's.
    env.set_parallelism(1).enable_checkpointing(Duration::from_millis(100));
    checkpoint_into(&mut env, dir.path());
    restart_once(&mut env);
    env.datagen_sequence(1, 4000, Some(1000))
        .map(|v: i64| (v % 10, v))
        .key_by(|(k, _): &(i64, i64)| *k)
        .process(SumFailingOnce)
        .uid("sums")
        .write_as_text(out.to_str().unwrap());
    let client = env.execute_async("sums").expect("submitted");
    await_checkpoints(&client, 2);
    ARMED.store(true, Ordering::SeqCst);
    let result = client.wait().expect("the job finishes after one restart");
    assert_eq!(result.restarts, 1);
    assert!(FIRST_AFTER_RESTART.load(Ordering::SeqCst) > 0, "the restarted attempt found its sums in the restored state");
    // One running sum per number, none lost or twice, ending at each key's total.
    assert_running_sums_of_4000(committed_lines(&out));
}

static TIMERS_ARMED: AtomicBool = AtomicBool::new(false);
static TIMERS_FAILED: AtomicBool = AtomicBool::new(false);
/// How many timers fired after the forced failure.
static FIRED_AFTER_FAILURE: AtomicI64 = AtomicI64::new(0);

/// Registers a timer 3 s ahead for each of the first ten numbers' keys (0 and 1); fails once
/// on any number after the test armed it; reports each key when its timer fires.
#[derive(Clone)]
struct TimersAcrossAFailure;

impl KeyedProcessFunction<i64, i64, String> for TimersAcrossAFailure {
    fn process_element(&mut self, v: i64, ctx: &mut Context<'_, i64, String>) -> FunctionResult {
        if TIMERS_ARMED.load(Ordering::SeqCst) && !TIMERS_FAILED.swap(true, Ordering::SeqCst) {
            panic!("forced failure at {v}");
        }
        if v <= 10 {
            let due = ValueStateDescriptor::<i64>::new("due");
            if ctx.get_state(&due).value()?.is_none() {
                let at = ctx.timer_service().current_processing_time() + 3000;
                ctx.get_state(&due).update(&at)?;
                ctx.timer_service().register_processing_time_timer(at)?;
            }
        }
        Ok(())
    }

    fn on_timer(&mut self, _timestamp: i64, ctx: &mut OnTimerContext<'_, i64, String>) -> FunctionResult {
        if TIMERS_FAILED.load(Ordering::SeqCst) {
            FIRED_AFTER_FAILURE.fetch_add(1, Ordering::SeqCst);
        }
        let key = *ctx.current_key();
        ctx.collect(format!("key {key} fired"));
        Ok(())
    }
}

#[test]
fn timers_registered_before_a_checkpoint_fire_after_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(1).enable_checkpointing(Duration::from_millis(100));
    checkpoint_into(&mut env, dir.path());
    restart_once(&mut env);
    // 6000 numbers at 1000 per second: the job runs about 6 s. The timers of keys 0 and 1 are
    // registered in its first milliseconds for 3 s later; the failure comes after two
    // checkpoints, and the source resumes behind the numbers that registered them, so the
    // timers that fire afterwards can only come from the restored state.
    env.datagen_sequence(1, 6000, Some(1000))
        .key_by(|v: &i64| if *v <= 10 { v % 2 } else { 2 + v % 8 })
        .process(TimersAcrossAFailure)
        .uid("timers")
        .write_as_text(out.to_str().unwrap());
    let client = env.execute_async("timers across a failure").expect("submitted");
    await_checkpoints(&client, 2);
    TIMERS_ARMED.store(true, Ordering::SeqCst);
    let result = client.wait().expect("the job finishes after one restart");
    assert_eq!(result.restarts, 1);
    assert_eq!(committed_lines(&out), vec!["key 0 fired".to_string(), "key 1 fired".to_string()]);
    assert_eq!(FIRED_AFTER_FAILURE.load(Ordering::SeqCst), 2, "both timers fired after the restore");
}

/// Slows the first run of the savepoint test down, so that its stop cuts the input.
static SLOW: AtomicBool = AtomicBool::new(true);

/// Every kind of keyed state and an event-time timer per key: the count (value), every number
/// (list), the sums of even and odd numbers (map), the largest number (reducing); after each
/// number it emits `key count list-length even-sum odd-sum max`, and when event time ends,
/// `key end count` from the timer the key's first number registered.
#[derive(Clone)]
struct EveryState;

impl KeyedProcessFunction<i64, (i64, i64), String> for EveryState {
    fn process_element(&mut self, (k, v): (i64, i64), ctx: &mut Context<'_, i64, String>) -> FunctionResult {
        let count = ValueStateDescriptor::<i64>::new("count");
        let all = ListStateDescriptor::<i64>::new("all");
        let sums = MapStateDescriptor::<bool, i64>::new("sums");
        let max = ReducingStateDescriptor::<i64>::new("max", |a, b| a.max(b));
        let n = ctx.get_state(&count).value()?.unwrap_or(0) + 1;
        ctx.get_state(&count).update(&n)?;
        if n == 1 {
            ctx.timer_service().register_event_time_timer(i64::MAX - 1)?;
        }
        ctx.get_list_state(&all).add(&v)?;
        let even = v % 2 == 0;
        let sum = ctx.get_map_state(&sums).get(&even)?.unwrap_or(0) + v;
        ctx.get_map_state(&sums).put(&even, &sum)?;
        ctx.get_reducing_state(&max).add(v)?;
        let len = ctx.get_list_state(&all).get()?.len();
        let (even_sum, odd_sum) = (ctx.get_map_state(&sums).get(&true)?.unwrap_or(0), ctx.get_map_state(&sums).get(&false)?.unwrap_or(0));
        let top = ctx.get_reducing_state(&max).get()?.unwrap_or(0);
        ctx.collect(format!("{k} {n} {len} {even_sum} {odd_sum} {top}"));
        Ok(())
    }

    fn on_timer(&mut self, _timestamp: i64, ctx: &mut OnTimerContext<'_, i64, String>) -> FunctionResult {
        let n = ctx.get_state(&ValueStateDescriptor::<i64>::new("count")).value()?.unwrap_or(0);
        let k = *ctx.current_key();
        ctx.collect(format!("{k} end {n}"));
        Ok(())
    }
}

fn every_state_job(env: &mut StreamExecutionEnvironment, out: &std::path::Path, numbers: i64) {
    env.from_iter((1..=numbers).collect::<Vec<i64>>())
        .uid("numbers")
        .map(|v: i64| {
            if SLOW.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            v
        })
        .uid("pace")
        .assign_timestamps_and_watermarks(WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|v: &i64| *v))
        .uid("timestamps")
        .map(|v: i64| (v % 7, v))
        .uid("pair")
        .key_by(|(k, _): &(i64, i64)| *k)
        .process(EveryState)
        .uid("every-state")
        .write_as_text(out.to_str().unwrap())
        .uid("out");
}

/// A program stopped with a savepoint at parallelism 1 and started from it at parallelism 2
/// (`execution.savepoint.path`): value, list, map and reducing state and the pending event-time
/// timers move with their key groups, and the output of both runs together is exact: every
/// key's states continue where the savepoint left them, nothing lost or twice, and each key's
/// timer fires once, in the second run, with its final count.
#[test]
fn every_kind_of_state_and_timers_survive_a_savepoint_and_a_rescale() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let savepoints = dir.path().join("savepoints");
    let numbers = 3000;
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(1).enable_checkpointing(Duration::from_millis(200));
    checkpoint_into(&mut env, dir.path());
    every_state_job(&mut env, &out, numbers);
    let client = env.execute_async("every state, parallelism 1").expect("submitted");
    await_checkpoints(&client, 1);
    let savepoint = client.stop_with_savepoint(savepoints.to_str().unwrap()).expect("stopped with a savepoint");
    let first = committed_lines(&out);
    assert!(!first.is_empty() && first.len() < numbers as usize, "the stop must cut the input: {} lines", first.len());
    assert!(first.iter().all(|l| !l.contains("end")), "no timer fires before event time ends");

    SLOW.store(false, Ordering::SeqCst);
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2).enable_checkpointing(Duration::from_millis(200)).set_config("execution.savepoint.path", &savepoint);
    checkpoint_into(&mut env, dir.path());
    every_state_job(&mut env, &out, numbers);
    let result = env.execute("every state, parallelism 2").expect("the restored job finishes");
    assert_eq!(result.restarts, 0);

    let mut want: Vec<String> = Vec::new();
    for k in 0..7 {
        let (mut n, mut even, mut odd, mut max) = (0, 0, 0, 0);
        for v in (1..=numbers).filter(|v| v % 7 == k) {
            n += 1;
            if v % 2 == 0 {
                even += v
            } else {
                odd += v
            }
            max = max.max(v);
            want.push(format!("{k} {n} {n} {even} {odd} {max}"));
        }
        want.push(format!("{k} end {n}"));
    }
    want.sort();
    assert_eq!(committed_lines(&out), want);
}
