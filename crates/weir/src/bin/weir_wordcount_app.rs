//! A word count as a Weir application (application mode): `weir-wordcount-app` runs it
//! embedded, `weir-wordcount-app jobmanager`, `taskmanager --jobmanager HOST:PORT` and
//! `run --jobmanager HOST:PORT` run it as its own cluster. The end-to-end tests in
//! `crates/weir/tests/application.rs` drive it.
//!
//! It reads the text file `$WORDCOUNT_INPUT`, counts words (running counts, `word n`) in a
//! keyed sum, and writes them with the transactional file sink under `$WORDCOUNT_OUTPUT`,
//! checkpointing every 300 ms. `$WORDCOUNT_LINE_DELAY_US` (microseconds, default 0) slows the tokenizer per
//! line, so that a test can kill a TaskManager while the job still runs.

use std::process::ExitCode;
use std::time::Duration;
use weir::application::BuildError;
use weir::prelude::*;

fn word_count(env: &mut StreamExecutionEnvironment) -> Result<(), BuildError> {
    let input = std::env::var("WORDCOUNT_INPUT").unwrap_or_else(|_| "input.txt".into());
    let output = std::env::var("WORDCOUNT_OUTPUT").unwrap_or_else(|_| "out".into());
    let delay = Duration::from_micros(std::env::var("WORDCOUNT_LINE_DELAY_US").ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    env.set_parallelism(2).enable_checkpointing(Duration::from_millis(300));
    env.checkpoint_config().set_checkpointing_mode(CheckpointingMode::ExactlyOnce);
    env.read_text_file(&input)
        .uid("lines")
        .flat_map(move |line: String, out: &mut Vec<(String, i64)>| {
            std::thread::sleep(delay);
            out.extend(line.split_whitespace().map(|w| (w.to_string(), 1)))
        })
        .uid("tokenize")
        .key_by(|(word, _): &(String, i64)| word.clone())
        .sum(|(_, n): &mut (String, i64)| n)
        .uid("counts")
        .map(|(word, n): (String, i64)| format!("{word} {n}"))
        .uid("format")
        .write_as_text(&output)
        .uid("out");
    Ok(())
}

fn main() -> ExitCode {
    weir::application::main("word count application", word_count)
}
