//! A keyed word count written as a `KeyedProcessFunction`: each word's count lives in a
//! `ValueState`, and instead of emitting on every word the function reports a word's count
//! once a second at most, from a processing-time timer registered when the word is first seen
//! after its last report. State and timers are in the keyed state backend, checkpointed every
//! second.
//!
//! The input is a text file replayed at a few lines per second (the datagen sequence picks the
//! line), so the job runs long enough for timers to fire: timers still pending when the input
//! ends are dropped, as in Flink.
//!
//! ```sh
//! cargo run --example wordcount_timers                         # the README at 20 lines/s
//! cargo run --example wordcount_timers -- input.txt 50         # any file, any rate
//! ```

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use weir::prelude::*;

/// A word's count as reported by a timer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WordCount {
    word: String,
    count: i64,
}

/// Counts words; reports each word's count at most once per `every_ms`.
#[derive(Clone)]
struct CountAndReport {
    every_ms: i64,
}

impl KeyedProcessFunction<String, String, WordCount> for CountAndReport {
    fn process_element(&mut self, _word: String, ctx: &mut Context<'_, String, WordCount>) -> FunctionResult {
        let count = ValueStateDescriptor::<i64>::new("count");
        let report_at = ValueStateDescriptor::<i64>::new("report-at");
        let mut state = ctx.get_state(&count);
        let n = state.value()?.unwrap_or(0) + 1;
        state.update(&n)?;
        if ctx.get_state(&report_at).value()?.is_none() {
            let at = ctx.timer_service().current_processing_time() + self.every_ms;
            ctx.timer_service().register_processing_time_timer(at)?;
            ctx.get_state(&report_at).update(&at)?;
        }
        Ok(())
    }

    fn on_timer(&mut self, _timestamp: i64, ctx: &mut OnTimerContext<'_, String, WordCount>) -> FunctionResult {
        let count = ValueStateDescriptor::<i64>::new("count");
        let report_at = ValueStateDescriptor::<i64>::new("report-at");
        let n = ctx.get_state(&count).value()?.unwrap_or(0);
        ctx.get_state(&report_at).clear()?;
        let word = ctx.current_key().clone();
        ctx.collect(WordCount { word, count: n });
        Ok(())
    }
}

fn main() -> Result<(), ApiError> {
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md").to_string());
    let lines_per_second: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let text = std::fs::read_to_string(&input).map_err(|e| ApiError::Program(format!("cannot read '{input}': {e}")))?;
    let lines: Arc<Vec<String>> = Arc::new(text.lines().map(str::to_string).collect());
    if lines.is_empty() {
        return Err(ApiError::Program(format!("'{input}' has no lines")));
    }

    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2).enable_checkpointing(Duration::from_secs(1));

    env.datagen_sequence(0, lines.len() as i64 - 1, Some(lines_per_second))
        .set_parallelism(1)
        .map(move |i: i64| lines[i as usize].clone())
        .flat_map(|line: String, words: &mut Vec<String>| {
            words.extend(line.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()));
        })
        .filter(|w: &String| !w.is_empty())
        .key_by(|w: &String| w.clone())
        .process(CountAndReport { every_ms: 1000 })
        .uid("word-counts")
        .name("count and report")
        .map(|c: WordCount| format!("{} {}", c.word, c.count))
        .print();

    let result = env.execute("word count with timers")?;
    println!("job {} finished in {:.1?}", result.job_id, result.net_runtime);
    Ok(())
}
