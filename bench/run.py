#!/usr/bin/env python3
"""Weir benchmarks: runs bounded jobs on the embedded mini cluster with a release build and
prints rows/second side by side. Figures, not assertions: compare runs on the same machine.

Usage: bench/run.py path/to/weir [--rows N]

Beside each figure it prints the one recorded in bench/previous.json (the last note's figures,
updated by hand when a note reports new ones) and writes this run's to bench/out/run.json.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

ROWS = 100_000_000
# Runs per case; the median is printed (one run on this noisy 2-core machine varies by 30%).
REPEAT = 3
# Interleaved rounds of the parallelism-2 cases (one TaskManager, and the TCP data plane variants).
REPEAT_PAIR = 7

KEYED_COUNT = """
name: keyed-count
pipeline:
  - source: datagen
    number-of-rows: {rows}
    fields:
      - {{name: key, kind: random, min: 0, max: 99999}}
  - key_by: key
  - count: {{}}
  - sink: blackhole
"""

FILTER_PROJECT = """
name: filter-project
pipeline:
  - source: datagen
    number-of-rows: {rows}
    fields:
      - {{name: id, kind: sequence, start: 0}}
      - {{name: key, kind: random, min: 0, max: 99999}}
      - {{name: v, kind: random, min: 0, max: 99}}
  - filter: "v > 9"
  - select: [id, v]
  - sink: blackhole
"""

# The same two jobs in SQL: the SQL planner's operators (DataFusion expressions, the updating
# group aggregate emitting -U/+U per changed key and batch) next to the built-in YAML ones.
SQL_KEYED_COUNT = """
CREATE TABLE gen (`key` BIGINT NOT NULL) WITH ('connector' = 'datagen', 'number-of-rows' = '{rows}',
  'rows-per-second' = '1000000000000', 'fields.key.min' = '0', 'fields.key.max' = '99999');
CREATE TABLE sink (`key` BIGINT, n BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT `key`, COUNT(*) FROM gen GROUP BY `key`;
"""

SQL_FILTER_PROJECT = """
CREATE TABLE gen (id BIGINT, `key` BIGINT, v BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '{rows}',
  'rows-per-second' = '1000000000000', 'fields.id.kind' = 'sequence', 'fields.id.start' = '0',
  'fields.id.end' = '{rows}', 'fields.key.min' = '0', 'fields.key.max' = '99999', 'fields.v.min' = '0', 'fields.v.max' = '99');
CREATE TABLE sink (id BIGINT, v BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT id, v FROM gen WHERE v > 9;
"""


def run(weir, job_text, parallelism, rows, extra=()):
    """Runs the job; returns its duration in seconds (from the job's status)."""
    return run_with_cpu(weir, job_text, parallelism, rows, extra)[0]


def run_with_cpu(weir, job_text, parallelism, rows, extra=()):
    """Runs the job; returns its duration and the CPU seconds (user + system) the `weir run`
    process used, start-up included: the embedded cluster runs every TaskManager in it."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "job.sql" if "INSERT INTO" in job_text else "job.yaml")
        with open(path, "w") as f:
            f.write(job_text.format(rows=rows))
        cmd = [weir, "run", path, "-p", str(parallelism), "--output", "json", *extra]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            sys.exit(f"benchmark job failed: {' '.join(cmd)}\n{out.stderr}")
        status = json.loads(out.stdout.strip().splitlines()[-1])
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return status["duration_ms"] / 1000.0, cpu


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    weir = sys.argv[1]
    rows = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else ROWS
    two_tms = ["-D", "minicluster.taskmanagers=2", "-D", "taskmanager.numberOfTaskSlots=1"]
    cases = [
        ("keyed count (datagen -> key_by -> count -> blackhole, 100k keys), hashmap", KEYED_COUNT, 1, []),
        ("keyed count, hashmap, 1 TaskManager (in-memory channels)", KEYED_COUNT, 2, []),
        ("keyed count, hashmap, 2 TaskManagers (TCP data plane)", KEYED_COUNT, 2, two_tms),
        ("keyed count, hashmap, 2 TaskManagers (TCP), 32 KiB network buffers (Flink's size)", KEYED_COUNT, 2,
         two_tms + ["-D", "taskmanager.memory.segment-size=32kb"]),
        ("keyed count, hashmap, 2 TaskManagers (TCP), 8 credits + 8 queued per channel", KEYED_COUNT, 2,
         two_tms + ["-D", "taskmanager.network.memory.buffers-per-channel=8", "-D", "taskmanager.network.sender-queue-buffers=8"]),
        ("keyed count, rocksdb, checkpoints every 1 s (write-back aggregate cache)", KEYED_COUNT, 1,
         ["-D", "state.backend.type=rocksdb", "-D", "execution.checkpointing.interval=1s"]),
        ("keyed count, rocksdb, checkpoints every 1 s, cache off (multi_get + WriteBatch)", KEYED_COUNT, 1,
         ["-D", "state.backend.type=rocksdb", "-D", "execution.checkpointing.interval=1s",
          "-D", "state.backend.rocksdb.aggregate-cache=0"]),
        ("stateless filter + projection (datagen -> filter -> select -> blackhole)", FILTER_PROJECT, 1, []),
        ("SQL keyed count (GROUP BY key, COUNT(*), updating result), hashmap", SQL_KEYED_COUNT, 1, []),
        ("SQL keyed count, nullable key (the general group aggregate), hashmap",
         SQL_KEYED_COUNT.replace("BIGINT NOT NULL", "BIGINT"), 1, []),
        ("SQL filter + projection (WHERE v > 9, SELECT id, v)", SQL_FILTER_PROJECT, 1, []),
    ]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, "previous.json")) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = {}
    figures = {}
    print(f"{'job':<84} {'p':>2} {'rows':>12} {'seconds':>8} {'M rows/s':>9} {'previous':>9}  (median of {REPEAT})")
    # The parallelism-2 cases run interleaved, REPEAT_PAIR rounds of one each, so the machine's
    # drift from minute to minute (up to 30% here) falls on all alike; the ratio of a TCP case
    # to the local one is the data plane's cost.
    # Their CPU seconds too: the TCP data plane's cost in CPU (kernel copies and TCP stack
    # included), which the machine's drift moves less than their durations.
    local, tcps = cases[1], cases[2:5]
    pair = {c[0]: [] for c in [local, *tcps]}
    pair_cpu = {c[0]: [] for c in [local, *tcps]}
    for name, job, p, extra in (local, *tcps):
        run(weir, job, p, 1_000_000, extra)  # warm-up
    for _ in range(REPEAT_PAIR):
        for name, job, p, extra in (local, *tcps):
            secs, cpu = run_with_cpu(weir, job, p, rows, extra)
            pair[name].append(secs)
            pair_cpu[name].append(cpu)
    for name, job, p, extra in cases:
        n = rows // 10 if "rocksdb" in name else rows
        n = n // 10 if "cache off" in name or "general" in name else n
        if name in pair:
            secs = statistics.median(pair[name])
        else:
            run(weir, job, p, min(n, 1_000_000), extra)  # warm-up (page cache, allocator)
            secs = statistics.median(run(weir, job, p, n, extra) for _ in range(REPEAT))
        figures[name] = round(n / secs / 1e6, 2)
        before = previous.get(name)
        before = f"{before:>9.2f}" if isinstance(before, (int, float)) else f"{'-':>9}"
        print(f"{name:<84} {p:>2} {n:>12,} {secs:>8.2f} {n / secs / 1e6:>9.2f} {before}", flush=True)
        if name in (t[0] for t in tcps):
            # Throughput is 1 / duration: the local case's duration over the TCP case's.
            for key, label, tcp_over_local in [
                ("TCP / local", "its throughput / 1 TaskManager, per interleaved round", [l / t for l, t in zip(pair[local[0]], pair[name])]),
                ("CPU / local CPU", "its CPU seconds (user + system) / 1 TaskManager", [t / l for l, t in zip(pair_cpu[local[0]], pair_cpu[name])]),
            ]:
                ratios = sorted(tcp_over_local)
                figures[f"{name}: {key}"] = round(statistics.median(ratios), 3)
                before = previous.get(f"{name}: {key}")
                before = f"{before:>9.0%}" if isinstance(before, (int, float)) else f"{'-':>9}"
                print(f"{'  ' + label + ' (median; min .. max)':<84} {'':>2} {'':>12} {'':>8} "
                      f"{statistics.median(ratios):>9.0%} {before}  {ratios[0]:.0%} .. {ratios[-1]:.0%}", flush=True)
    os.makedirs(os.path.join(here, "out"), exist_ok=True)
    with open(os.path.join(here, "out", "run.json"), "w") as f:
        json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
