#!/usr/bin/env python3
"""Checkpoint benchmarks (`make bench`): what checkpoints cost and how fast a job recovers.

1. Throughput and CPU seconds of the keyed count with checkpoints off vs every 1 s (hashmap and
   rocksdb), in interleaved rounds: the cost is the median of the rounds' ratios, so the
   machine's drift from minute to minute falls on both alike.
2. Checkpoint duration p50/p99 for the keyed count over 100 000 keys of in-memory state.
3. Time from a TaskManager's SIGKILL to the job running again (all subtasks deployed, from
   the latest checkpoint), with heartbeat.timeout 1s.

Usage: bench/checkpoints.py path/to/weir. Prints figures; asserts nothing.
"""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import KEYED_COUNT, run, run_with_cpu  # noqa: E402

# Rounds of (checkpoints off, checkpoints on) for the cost figures (one run of each varied by 5-20%).
COST_ROUNDS = 5

KEYED = """
name: keyed-count
pipeline:
  - source: datagen
    {bound}
    fields:
      - {{name: key, kind: random, min: 0, max: 99999}}
  - key_by: key
  - count: {{}}
  - sink: blackhole
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def weir_json(weir, *args):
    out = subprocess.run([weir, *args, "--output", "json"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


def throughput(weir, rows, extra):
    """The keyed count's rows per second (millions) at parallelism 1 (`bench/unaligned.py` uses it)."""
    return rows / run(weir, KEYED_COUNT, 1, rows, extra) / 1e6


def wait(what, cond, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = cond()
        except OSError:
            v = None
        if v:
            return v
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {what}")


def checkpoint_cost(weir):
    """Prints what checkpoints every second cost the keyed count at parallelism 1, per backend."""
    print(f"{f'checkpoint cost (keyed count, 100k keys, p=1; {COST_ROUNDS} interleaved rounds)':<62} {'M rows/s':>9} {'CPU s':>6}")
    for backend, rows in [("hashmap", 300_000_000), ("rocksdb", 50_000_000)]:
        with tempfile.TemporaryDirectory() as chk:
            base = ["-D", f"state.backend.type={backend}"]
            on = base + ["-D", "execution.checkpointing.interval=1s", "-D", f"execution.checkpointing.dir=file://{chk}"]
            rounds = [(run_with_cpu(weir, KEYED_COUNT, 1, rows, base), run_with_cpu(weir, KEYED_COUNT, 1, rows, on)) for _ in range(COST_ROUNDS)]
        # Per round: throughput with checkpoints over without (durations inverted), CPU likewise.
        speed = sorted(off[0] / with_[0] for off, with_ in rounds)
        cpu = sorted(with_[1] / off[1] for off, with_ in rounds)
        cost = (f"   throughput {statistics.median(speed) - 1:+.1%} ({speed[0] - 1:+.1%} .. {speed[-1] - 1:+.1%}),"
                f" CPU {statistics.median(cpu) - 1:+.1%} ({cpu[0] - 1:+.1%} .. {cpu[-1] - 1:+.1%})")
        for label, i, tail in [("checkpoints off", 0, ""), ("checkpoints every 1s", 1, cost)]:
            secs, cpu_s = statistics.median(r[i][0] for r in rounds), statistics.median(r[i][1] for r in rounds)
            print(f"{backend + ': ' + label:<62} {rows / secs / 1e6:>9.2f} {cpu_s:>6.2f}{tail}", flush=True)


def main():
    weir = sys.argv[1]
    checkpoint_cost(weir)

    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        common = ["-D", "heartbeat.interval=200ms", "-D", "heartbeat.timeout=1s"]
        logs = open(os.path.join(d, "log"), "w")
        jm = subprocess.Popen([weir, "jobmanager", "-D", f"jobmanager.rpc.port={port}", "-D", "rest.port=0", *common], stdout=logs, stderr=logs)
        tms = []
        try:
            wait("jobmanager", lambda: socket.create_connection(("127.0.0.1", port)) and True)
            outs = []
            for i in range(2):
                outs.append(os.path.join(d, f"tm{i}.out"))
                tms.append(subprocess.Popen([weir, "taskmanager", "--jobmanager", f"127.0.0.1:{port}", "-D", "metrics.port=0", "-D", "taskmanager.numberOfTaskSlots=1", *common],
                                            stdout=open(outs[-1], "w"), stderr=logs))
            addr = ["--jobmanager", f"127.0.0.1:{port}"]
            wait("taskmanagers", lambda: len(weir_json(weir, "cluster", *addr) or []) == 2)
            job = os.path.join(d, "job.yaml")
            with open(job, "w") as f:
                f.write(KEYED.format(bound="rows-per-second: 2000000"))
            chk = os.path.join(d, "chk")
            cfg = ["-D", "execution.checkpointing.interval=200ms", "-D", f"execution.checkpointing.dir=file://{chk}",
                   "-D", "restart-strategy.type=fixed-delay", "-D", "restart-strategy.fixed-delay.delay=0ms"]
            jid = weir_json(weir, "run", job, "--detached", "-p", "1", *cfg, *addr)["id"]
            wait("40 checkpoints", lambda: len([c for c in (weir_json(weir, "checkpoints", jid, *addr) or []) if c["status"] == "COMPLETED"]) >= 40, 300)
            done = [c for c in weir_json(weir, "checkpoints", jid, *addr) if c["status"] == "COMPLETED"]
            durations = sorted(c["duration_ms"] for c in done)
            p50 = statistics.median(durations)
            p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
            size = done[-1]["size_bytes"]
            print()
            print(f"checkpoint duration, 100k keys in memory ({size / 1e6:.1f} MB), 2M rows/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(durations)} checkpoints")

            status = weir_json(weir, "status", jid, *addr)
            attempt = status["attempt"]
            # Kill the TaskManager that runs the job (the one without a free slot); each prints
            # "TaskManager <id> rpc ..." first.
            busy = next(t["id"] for t in weir_json(weir, "cluster", *addr) if t["free_slots"] == 0)
            victim = next(tm for tm, out in zip(tms, outs) if busy in open(out).read())
            t0 = time.time()
            victim.send_signal(signal.SIGKILL)
            tms.append(subprocess.Popen([weir, "taskmanager", "--jobmanager", f"127.0.0.1:{port}", "-D", "metrics.port=0", "-D", "taskmanager.numberOfTaskSlots=1", *common], stdout=logs, stderr=logs))

            def running_again():
                s = weir_json(weir, "status", jid, *addr)
                return s and s["attempt"] > attempt and s["state"] == "RUNNING" and all(v["running"] == v["parallelism"] for v in s["vertices"])
            wait("recovery", running_again, 120)
            print(f"TaskManager SIGKILL -> job running again from its checkpoint: {(time.time() - t0) * 1000:.0f} ms (heartbeat.timeout 1s)")
            subprocess.run([weir, "cancel", jid, *addr], capture_output=True)
        finally:
            for p in tms + [jm]:
                p.kill()


if __name__ == "__main__":
    main()
