//! The word count of `examples/wordcount.yaml` (file → split → key_by → count → blackhole),
//! written with the DataStream API, timed: compare with `weir run` on the same YAML job.
//!
//! ```sh
//! cargo run --release --example wordcount_throughput -- input.txt [parallelism]
//! ```

use std::time::Instant;
use weir::prelude::*;

fn main() -> Result<(), ApiError> {
    let mut args = std::env::args().skip(1);
    let input = args.next().expect("usage: wordcount_throughput <input.txt> [parallelism]");
    let parallelism: u32 = args.next().and_then(|p| p.parse().ok()).unwrap_or(2);
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(parallelism);
    env.read_text_file(&input)
        .flat_map(|line: String, words: &mut Vec<(String, i64)>| words.extend(line.split_whitespace().map(|w| (w.to_string(), 1))))
        .key_by(|(word, _): &(String, i64)| word.clone())
        .sum(|(_, n): &mut (String, i64)| n)
        .blackhole();
    let start = Instant::now();
    env.execute("word count throughput")?;
    println!("finished in {:.2?}", start.elapsed());
    Ok(())
}
