#!/usr/bin/env python3
"""Savepoint benchmark (`make bench`): how long a savepoint of 1 M keys takes and how large it is.

A keyed count over 1 000 000 keys (datagen -> key_by -> count -> blackhole, parallelism 1,
checkpoints every 5 s) runs on a
local cluster (a JobManager and a TaskManager, real processes) once per state backend. Once
every key has been counted, three savepoints are taken per format (canonical, and native for
RocksDB): the time `weir savepoint` takes end to end (trigger to `_metadata` written, as the
user waits for it) and the size of the savepoint folder on disk.

Usage: bench/savepoints.py path/to/weir. Prints figures; asserts nothing.
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoints import free_port, wait, weir_json  # noqa: E402

KEYS = 1_000_000
JOB = """
name: savepoint-bench
pipeline:
  - source: datagen
    rows-per-second: 2000000
    fields:
      - {{name: key, kind: random, min: 0, max: {max}}}
  - key_by: key
  - count: {{}}
    uid: count
  - sink: blackhole
"""


def folder_size(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def run_backend(weir, d, backend):
    port = free_port()
    logs = open(os.path.join(d, f"log-{backend}"), "w")
    procs = [subprocess.Popen([weir, "jobmanager", "-D", f"jobmanager.rpc.port={port}", "-D", "rest.port=0"], stdout=logs, stderr=logs)]
    try:
        wait("jobmanager", lambda: socket.create_connection(("127.0.0.1", port)) and True)
        procs.append(subprocess.Popen([weir, "taskmanager", "--jobmanager", f"127.0.0.1:{port}", "-D", "metrics.port=0"], stdout=logs, stderr=logs))
        addr = ["--jobmanager", f"127.0.0.1:{port}"]
        wait("taskmanager", lambda: len(weir_json(weir, "cluster", *addr) or []) == 1)
        job = os.path.join(d, f"job-{backend}.yaml")
        with open(job, "w") as f:
            f.write(JOB.format(max=KEYS - 1))
        cfg = ["-D", f"state.backend.type={backend}", "-D", "execution.checkpointing.interval=5s",
               "-D", f"execution.checkpointing.dir=file://{d}/chk-{backend}",
               "-D", "execution.checkpointing.incremental=false"]  # full checkpoints: sizes comparable
        jid = weir_json(weir, "run", job, "--detached", "-p", "1", *cfg, *addr)["id"]
        # Every key has been counted once the state stops growing: two checkpoints in a row of
        # the same size (random keys: after ~14 M rows all 1 M have been seen).
        def stable():
            sizes = [c["size_bytes"] for c in (weir_json(weir, "checkpoints", jid, *addr) or []) if c["status"] == "COMPLETED"]
            return len(sizes) >= 2 and sizes[-1] == sizes[-2]
        wait("the state to stop growing", stable, 900)
        formats = ["canonical"] + (["native"] if backend == "rocksdb" else [])
        for fmt in formats:
            times, sizes = [], []
            for _ in range(3):
                t0 = time.time()
                out = weir_json(weir, "savepoint", jid, f"{d}/sp-{backend}", "--type", fmt, *addr)
                times.append((time.time() - t0) * 1000)
                if out is None:
                    sys.exit(f"savepoint of {backend} failed")
                sizes.append(folder_size(out["path"].removeprefix("file://")))
            print(f"{backend + ' ' + fmt:<22} {statistics.median(times):>8.0f} ms {statistics.median(sizes) / 1e6:>9.1f} MB")
        subprocess.run([weir, "cancel", jid, *addr], capture_output=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main():
    weir = sys.argv[1]
    print(f"savepoint of {KEYS:,} keys (keyed count, p=1)   duration       size")
    with tempfile.TemporaryDirectory() as d:
        for backend in ["hashmap", "rocksdb"]:
            run_backend(weir, d, backend)


if __name__ == "__main__":
    main()
