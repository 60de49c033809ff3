//! Helpers shared by the `weir` crate's tests (tests/common/mod.rs at the repository root needs
//! the `weir` binary of weir-cli, which cargo does not hand to this package's tests).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

/// The committed lines of a file sink's directory, sorted. Names starting with '.' or '_' are
/// in progress or pending, not output; a directory that does not exist holds none.
pub fn committed_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') && !name.starts_with('_') {
            lines.extend(std::fs::read_to_string(entry.path()).unwrap().lines().map(str::to_string));
        }
    }
    lines.sort();
    lines
}

/// Asserts that `lines` (`key sum`) hold one running sum per number of 1..=4000 keyed by
/// `number % 10`, none lost or twice, ending at each key's total.
pub fn assert_running_sums_of_4000(lines: Vec<String>) {
    assert_eq!(lines.len(), 4000);
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for line in lines {
        let (k, sum) = line.split_once(' ').unwrap();
        let e = last.entry(k.parse().unwrap()).or_default();
        *e = (*e).max(sum.parse().unwrap());
    }
    let want: BTreeMap<i64, i64> = (0..10).map(|r| (r, (1..=4000i64).filter(|v| v % 10 == r).sum())).collect();
    assert_eq!(last, want);
}

/// Stores the program's checkpoints under `dir/checkpoints` (file storage).
pub fn checkpoint_into(env: &mut weir::StreamExecutionEnvironment, dir: &Path) {
    env.checkpoint_config().set_checkpoint_storage(&format!("file://{}", dir.join("checkpoints").display()));
}

/// One restart, 100 ms after a failure: a job that fails twice FAILS.
pub fn restart_once(env: &mut weir::StreamExecutionEnvironment) {
    env.set_config("restart-strategy.type", "fixed-delay")
        .set_config("restart-strategy.fixed-delay.attempts", "1")
        .set_config("restart-strategy.fixed-delay.delay", "100ms");
}

/// Waits, 120 s at most, until `n` of the job's checkpoints completed.
pub fn await_checkpoints(client: &weir::JobClient, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while client.completed_checkpoints() < n {
        assert!(std::time::Instant::now() < deadline, "no {n} completed checkpoints in 120 s: {:?}", client.checkpoints());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
