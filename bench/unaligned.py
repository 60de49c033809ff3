#!/usr/bin/env python3
"""The headline benchmark (`make bench`): checkpoints under backpressure, aligned vs unaligned.

A backpressured job — datagen -> key_by -> keyed count -> throttle -> blackhole, parallelism 2,
checkpoints every second — runs on a local cluster (a JobManager and two TaskManagers, real
processes and TCP between them) in three modes at the same input rate:
  aligned      barriers wait behind every buffer queued before them;
  unaligned    barriers overtake in-flight data, which is stored with the checkpoint;
  timeout      aligned first, unaligned once a barrier waited longer than 50 ms.
For each: checkpoint duration p50 / p99 / max, persisted in-flight bytes per checkpoint, the
rows per second the throttled task took meanwhile (the most is 2 x the throttle's rate), and
the kinds the checkpoints completed as. Buffer debloating is on (the default); aligned and
unaligned then run again on TaskManagers with it off, for comparison. Then, without
backpressure, the keyed count's throughput with unaligned checkpoints on vs off (the cost of
the mode itself).

Usage: bench/unaligned.py path/to/weir [-D key=value ...]. The `-D` settings go to both
TaskManagers (e.g. `-D taskmanager.network.memory.buffers-per-channel=8`), to see what a network
setting costs the checkpoints. Prints figures; asserts nothing.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoints import free_port, throughput, wait, weir_json  # noqa: E402

BACKPRESSURED = """
name: backpressured
pipeline:
  - source: datagen
    rows-per-second: {rate}
    fields:
      - {{name: key, kind: random, min: 0, max: 99999}}
  - key_by: key
  - count: {{}}
  - throttle: {{rows-per-second: {throttle}}}
  - sink: blackhole
"""

MODES = [
    ("aligned", []),
    ("unaligned", ["-D", "execution.checkpointing.unaligned.enabled=true"]),
    ("timeout 50ms", ["-D", "execution.checkpointing.unaligned.enabled=true", "-D", "execution.checkpointing.aligned-checkpoint-timeout=50ms"]),
]
CHECKPOINTS = 12  # completed checkpoints measured per mode, after the first two
RATE = 200_000  # datagen rows per second per subtask
THROTTLE = 20_000  # throttle rows per second per subtask: a tenth of the input rate


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def run_mode(weir, addr, rest, d, name, extra):
    job = os.path.join(d, "bp.yaml")
    with open(job, "w") as f:
        f.write(BACKPRESSURED.format(rate=RATE, throttle=THROTTLE))
    chk = os.path.join(d, "chk-" + name.split()[0])
    cfg = ["-D", "execution.checkpointing.interval=1s", "-D", f"execution.checkpointing.dir=file://{chk}",
           "-D", "execution.checkpointing.timeout=10min", *extra]
    jid = weir_json(weir, "run", job, "--detached", "-p", "2", *cfg, *addr)["id"]

    def completed():
        return [c for c in (weir_json(weir, "checkpoints", jid, *addr) or []) if c["status"] == "COMPLETED"]

    def rows_in():
        # Rows the keyed count (and the throttle chained to it) took so far, and when: from the
        # REST API's live metrics (the heartbeats carry them every second).
        with urllib.request.urlopen(f"http://127.0.0.1:{rest}/jobs/{jid}") as r:
            job = json.load(r)
        return time.monotonic(), job["vertices"][1]["metrics"].get("numRecordsIn", 0)
    wait(f"2 checkpoints ({name})", lambda: len(completed()) >= 2, 900)
    t0, r0 = rows_in()
    wait(f"{CHECKPOINTS + 2} checkpoints ({name})", lambda: len(completed()) >= CHECKPOINTS + 2, 900)
    t1, r1 = rows_in()
    done = completed()[2:CHECKPOINTS + 2]
    subprocess.run([weir, "cancel", jid, *addr], capture_output=True)
    wait("the job to end", lambda: (weir_json(weir, "status", jid, *addr) or {}).get("state") in ("CANCELED", "FAILED", "FINISHED"), 60)
    durations = sorted(c["duration_ms"] for c in done)
    inflight = statistics.mean(c.get("inflight_bytes", 0) for c in done)
    kinds = {}
    for c in done:
        kinds[c.get("kind", "?")] = kinds.get(c.get("kind", "?"), 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    rate = (r1 - r0) / (t1 - t0) if t1 > t0 else 0
    print(f"{name:<28} {statistics.median(durations):>8.0f} {pct(durations, 0.99):>8.0f} {durations[-1]:>8.0f} {inflight / 1e3:>12.1f} {rate:>10,.0f}   {kinds}")


def main():
    if len(sys.argv) < 2 or len(sys.argv[2:]) % 2 or any(a != "-D" for a in sys.argv[2::2]):
        sys.exit(__doc__)
    weir, tm_settings = sys.argv[1], sys.argv[2:]
    print(f"backpressured keyed count, p=2, datagen {RATE} rows/s -> throttle {THROTTLE} rows/s per subtask, checkpoints every 1 s"
          + (f"; TaskManagers with {' '.join(tm_settings[1::2])}" if tm_settings else ""))
    print(f"{'mode':<28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'in-flight kB':>12} {'rows/s':>10}   completed as")
    cluster(weir, tm_settings, MODES, "")
    off = ["-D", "taskmanager.network.memory.buffer-debloat.enabled=false"]
    cluster(weir, tm_settings + off, MODES[:2], ", debloating off")
    print()
    print(f"{'unaligned cost without backpressure (keyed count, p=1, hashmap)':<62} {'M rows/s':>9}")
    rows = 100_000_000
    with tempfile.TemporaryDirectory() as chk:
        base = ["-D", "execution.checkpointing.interval=1s", "-D", f"execution.checkpointing.dir=file://{chk}"]
        off = throughput(weir, rows, base)
        on = throughput(weir, rows, base + ["-D", "execution.checkpointing.unaligned.enabled=true"])
        print(f"{'checkpoints every 1s, aligned':<62} {off:>9.2f}")
        print(f"{'checkpoints every 1s, unaligned':<62} {on:>9.2f}   ({(on - off) / off * 100:+.1f}%)")


def cluster(weir, tm_settings, modes, suffix):
    """Runs `modes` on a JobManager and two TaskManagers started with `tm_settings`."""
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        logs = open(os.path.join(d, "log"), "w")
        rest = free_port()
        jm = subprocess.Popen([weir, "jobmanager", "-D", f"jobmanager.rpc.port={port}", "-D", f"rest.port={rest}"], stdout=logs, stderr=logs)
        tms = []
        try:
            wait("jobmanager", lambda: socket.create_connection(("127.0.0.1", port)) and True)
            for _ in range(2):
                tms.append(subprocess.Popen([weir, "taskmanager", "--jobmanager", f"127.0.0.1:{port}", "-D", "metrics.port=0", "-D", "taskmanager.numberOfTaskSlots=2", *tm_settings],
                                            stdout=logs, stderr=logs))
            addr = ["--jobmanager", f"127.0.0.1:{port}"]
            wait("taskmanagers", lambda: len(weir_json(weir, "cluster", *addr) or []) == 2)
            for name, extra in modes:
                run_mode(weir, addr, rest, d, name + suffix, extra)
        finally:
            for p in tms + [jm]:
                p.kill()


if __name__ == "__main__":
    main()
