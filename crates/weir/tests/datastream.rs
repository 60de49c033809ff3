//! The DataStream API end to end on the embedded cluster: exact word counts with both state
//! backends, checkpoints completing while a job runs, a panicking user function failing the
//! job after the restarts its strategy allows, and configuration errors naming their key.

mod support;

use support::*;

use std::collections::BTreeMap;
use std::time::Duration;
use weir::prelude::*;

const TEXT: &[&str] = &["to be or not to be", "that is the question", "to sleep perchance to dream", "", "be be be"];

/// Every running count the word count emits: `word n` for n in 1..=count(word).
fn expected_running_counts() -> Vec<String> {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for w in TEXT.iter().flat_map(|l| l.split_whitespace()) {
        *counts.entry(w).or_default() += 1;
    }
    let mut lines: Vec<String> = counts.iter().flat_map(|(w, n)| (1..=*n).map(move |i| format!("{w} {i}"))).collect();
    lines.sort();
    lines
}

fn word_count(backend: StateBackend) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, TEXT.join("\n")).unwrap();
    let out = dir.path().join("out");
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2).set_state_backend(backend).set_config("taskmanager.tmp.dirs", dir.path().to_str().unwrap());
    env.read_text_file(input.to_str().unwrap())
        .flat_map(|line: String, out: &mut Vec<(String, i64)>| out.extend(line.split_whitespace().map(|w| (w.to_string(), 1))))
        .name("tokenize")
        .key_by(|(word, _): &(String, i64)| word.clone())
        .sum(|(_, n): &mut (String, i64)| n)
        .uid("counts")
        .map(|(word, n): (String, i64)| format!("{word} {n}"))
        .write_as_text(out.to_str().unwrap());
    let result = env.execute("word count").expect("the job finishes");
    assert_eq!(result.restarts, 0);
    assert_eq!(committed_lines(&out), expected_running_counts());
}

#[test]
fn word_count_is_exact_with_the_hashmap_backend() {
    word_count(StateBackend::HashMap);
}

#[test]
fn word_count_is_exact_with_the_rocksdb_backend() {
    word_count(StateBackend::RocksDb);
}

#[test]
fn checkpoints_complete_while_a_program_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2).enable_checkpointing(Duration::from_millis(100));
    env.checkpoint_config()
        .set_checkpointing_mode(CheckpointingMode::ExactlyOnce)
        .set_checkpoint_timeout(Duration::from_secs(60))
        .set_max_concurrent_checkpoints(2)
        .set_checkpoint_storage(&format!("file://{}", dir.path().join("checkpoints").display()));
    // 4000 numbers at 1000 per second: a job of about 4 s.
    env.datagen_sequence(1, 4000, Some(1000))
        .map(|v: i64| (v % 10, v))
        .key_by(|(k, _): &(i64, i64)| *k)
        .sum(|(_, v): &mut (i64, i64)| v)
        .uid("sums")
        .map(|(k, sum): (i64, i64)| format!("{k} {sum}"))
        .write_as_text(out.to_str().unwrap());
    let client = env.execute_async("sums").expect("submitted");
    await_checkpoints(&client, 2);
    client.wait().expect("the job finishes");
    // One running sum per number, none lost or twice, ending at each key's total.
    assert_running_sums_of_4000(committed_lines(&out));
}

#[test]
fn a_panic_in_a_user_function_fails_the_job_after_its_restarts() {
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    restart_once(&mut env);
    env.from_iter(1..=10i64)
        .map(|x: i64| {
            if x == 7 {
                panic!("bad record {x}");
            }
            x
        })
        .name("parse")
        .blackhole();
    let err = env.execute("panics").expect_err("the job fails");
    match &err {
        ApiError::JobFailed { restarts, failure, .. } => {
            assert_eq!(*restarts, 1, "fixed-delay with one attempt restarts once: {err}");
            assert!(failure.contains("user function 'parse' panicked: bad record 7"), "{failure}");
        }
        other => panic!("expected a failed job, got {other}"),
    }
}

#[test]
fn bad_configuration_is_an_error_naming_the_key() {
    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(0);
    env.from_iter(vec![1i64]).print();
    let err = env.execute("bad").expect_err("refused").to_string();
    assert!(err.contains("parallelism.default"), "{err}");

    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.set_config("execution.checkpointing.intervall", "1s");
    assert!(env.config().unwrap_err().to_string().contains("execution.checkpointing.intervall"));

    let mut env = StreamExecutionEnvironment::get_execution_environment();
    env.enable_checkpointing(Duration::from_secs(1)).checkpoint_config().set_max_concurrent_checkpoints(0);
    let err = env.config().map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("execution.checkpointing.max-concurrent-checkpoints"), "{err}");
}
