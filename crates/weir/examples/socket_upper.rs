//! The first program of every Flink tutorial, in Rust: read lines from a socket, upper-case
//! them, print them, with exactly-once checkpoints every 10 s into local files.
//!
//! ```sh
//! nc -lk 9999 &                       # type lines into it
//! cargo run --example socket_upper    # or: cargo run --example socket_upper -- localhost 9999
//! ```

use std::time::Duration;
use weir::prelude::*;

fn main() -> Result<(), ApiError> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".to_string());
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9999);
    let checkpoints = std::env::temp_dir().join("weir-socket-upper-checkpoints");

    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(4);
    env.enable_checkpointing(Duration::from_secs(10));
    env.checkpoint_config()
        .set_checkpointing_mode(CheckpointingMode::ExactlyOnce)
        .set_checkpoint_timeout(Duration::from_secs(60))
        .set_max_concurrent_checkpoints(2)
        .set_checkpoint_storage(&format!("file://{}", checkpoints.display()));

    env.socket_text_stream(&host, port).flat_map(|line: String, out: &mut Vec<String>| out.push(line.to_uppercase())).name("upper").print();

    env.execute("socket upper")?;
    Ok(())
}
