//! A keyed word count: read a text file, split it into words, count each word with `reduce`
//! (its count lives in the keyed state backend, checkpointed every second), and write one line
//! per update (`word count`) with the transactional file sink.
//!
//! ```sh
//! cargo run --example wordcount                                  # the README, into out/wordcount-program
//! cargo run --example wordcount -- input.txt out/dir rocksdb     # any file, directory and backend
//! ```

use std::time::Duration;
use weir::prelude::*;

fn main() -> Result<(), ApiError> {
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md").to_string());
    let output = args.next().unwrap_or_else(|| "out/wordcount-program".to_string());
    let backend = match args.next().as_deref() {
        Some("rocksdb") => StateBackend::RocksDb,
        _ => StateBackend::HashMap,
    };

    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2).set_state_backend(backend).enable_checkpointing(Duration::from_secs(1));

    env.read_text_file(&input)
        .flat_map(|line: String, words: &mut Vec<(String, i64)>| {
            words.extend(line.split_whitespace().map(|w| (w.to_lowercase(), 1)));
        })
        .name("tokenize")
        .key_by(|(word, _): &(String, i64)| word.clone())
        .reduce(|(word, a): (String, i64), (_, b): (String, i64)| (word, a + b))
        .uid("word-counts")
        .name("count")
        .map(|(word, count): (String, i64)| format!("{word} {count}"))
        .write_as_text(&output)
        .uid("word-count-sink");

    let result = env.execute("word count")?;
    println!("job {} finished in {:.1?}; counts under {output}", result.job_id, result.net_runtime);
    Ok(())
}
