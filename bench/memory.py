#!/usr/bin/env python3
"""Memory per key: peak resident memory of the keyed count (datagen -> key_by -> count ->
blackhole) with 1 M and 10 M distinct keys on each state backend, run on the embedded mini
cluster (`weir run`: the JobManager and TaskManager live in that one process, so its peak is
the TaskManager's plus a few MB). Prints a table; asserts nothing.

Usage: bench/memory.py path/to/weir
"""
import os
import subprocess
import sys
import tempfile

JOB = """
name: keyed-count-memory
pipeline:
  - source: datagen
    number-of-rows: {rows}
    fields:
      - {{name: key, kind: sequence, start: 0}}
  - key_by: key
  - count: {{}}
  - sink: blackhole
"""


def peak_rss_mb(weir, keys, extra):
    """Runs the job in a child and returns the child's peak RSS (MB), read by GNU time."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "job.yaml")
        with open(path, "w") as f:
            f.write(JOB.format(rows=keys))
        # Every key once: the state ends with `keys` entries.
        cmd = ["python3", "-c", "import resource,subprocess,sys; r=subprocess.run(sys.argv[1:], capture_output=True);"
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
               weir, "run", path, "-p", "1", "-D", f"taskmanager.tmp.dirs={d}", *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        if out[0] != "0":
            sys.exit(f"memory benchmark job failed: {' '.join(cmd[3:])}")
        return int(out[1]) / 1024


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    weir = sys.argv[1]
    base = peak_rss_mb(weir, 1000, [])
    print(f"{'keyed count, peak RSS of weir run (JobManager + TaskManager)':<64} {'keys':>11} {'MB':>8} {'bytes/key':>10}")
    print(f"{'baseline: 1,000 keys, hashmap':<64} {1000:>11,} {base:>8.0f} {'':>10}")
    for backend, extra in [("hashmap", []), ("rocksdb (64 MB aggregate cache)", ["-D", "state.backend.type=rocksdb"])]:
        for keys in (1_000_000, 10_000_000):
            mb = peak_rss_mb(weir, keys, extra)
            per_key = max(mb - base, 0) * 1024 * 1024 / keys
            print(f"{backend:<64} {keys:>11,} {mb:>8.0f} {per_key:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
