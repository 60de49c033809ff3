#!/usr/bin/env python3
"""Profiles the keyed count on each state backend, and at parallelism 2 across two TaskManagers
(the TCP data plane), with `perf` and writes, per case, a flame graph
(bench/out/flame-<case>.svg, open it in a browser: hover for names and shares) and a text
summary of where the time goes (bench/out/profile-<case>.txt: the functions with the most
samples of their own, and the largest subtrees).

Usage: bench/profile.py path/to/weir [--rows N]

Needs `perf` (Debian: linux-perf) and permission to sample (perf_event_paranoid <= 1, or root).
Samples the CPU clock (no hardware counters needed) at 199 Hz with call graphs unwound from
DWARF (release builds keep line tables and omit frame pointers), for about three seconds per
case. The flame graph and the folding are this script's own (no outside tools).
"""
import collections
import html
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

ROWS = 300_000_000
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import KEYED_COUNT as JOB  # noqa: E402  the job bench/run.py measures

# name -> (title, parallelism, rows / ROWS, extra arguments). "tcp" is the data plane's case:
# half the rows cross loopback TCP between two TaskManagers of the embedded cluster.
CASES = {
    "hashmap": ("keyed count, hashmap, parallelism 1", 1, 1, []),
    "rocksdb": ("keyed count, rocksdb, parallelism 1", 1, 1 / 20,
                ["-D", "state.backend.type=rocksdb", "-D", "execution.checkpointing.interval=1s"]),
    "tcp": ("keyed count, hashmap, parallelism 2 across two TaskManagers (TCP)", 2, 1,
            ["-D", "minicluster.taskmanagers=2", "-D", "taskmanager.numberOfTaskSlots=1"]),
}


def fold(perf_script):
    """perf script text -> Counter of 'thread;outer;...;inner' stacks."""
    stacks = collections.Counter()
    comm, frames = None, []
    for line in perf_script.splitlines() + [""]:
        if not line.strip():
            if comm is not None:
                stacks[";".join([comm] + frames[::-1])] += 1
            comm, frames = None, []
        elif not line.startswith((" ", "\t")):
            # "<comm> <pid>/<tid> <time>: <period> cpu-clock:": the thread name may hold spaces.
            head = line.split(":")[0].rsplit(None, 2)
            comm = head[0] if head else "?"
        else:
            parts = line.strip().split(None, 1)
            name = parts[1] if len(parts) > 1 else parts[0]
            name = name.rsplit(" (", 1)[0]  # drop "(/path/to/object)"
            if "+0x" in name:
                name = name[: name.rindex("+0x")]
            frames.append(name.replace(";", ":"))
    return stacks


def summary(stacks, title):
    total = sum(stacks.values()) or 1
    own = collections.Counter()
    inclusive = collections.Counter()
    threads = collections.Counter()
    for stack, n in stacks.items():
        frames = stack.split(";")
        threads[frames[0]] += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            inclusive[f] += n
    lines = [f"{title}: {total} samples", "", "by thread (tasks; tokio-rt-worker: network reads and writes, RPCs):"]
    for t, n in threads.most_common(8):
        lines.append(f"  {100.0 * n / total:5.1f}%  {t}")
    lines += ["", "own time (the function itself, not what it calls):"]
    for f, n in own.most_common(25):
        lines.append(f"  {100.0 * n / total:5.1f}%  {f}")
    lines += ["", "inclusive time (the function and what it calls; frames in over 95% of samples, the threads' roots, left out):"]
    for f, n in [(f, n) for f, n in inclusive.most_common() if n <= 0.95 * total][:25]:
        lines.append(f"  {100.0 * n / total:5.1f}%  {f}")
    return "\n".join(lines) + "\n"


def flame_svg(stacks, title, width=1200, row=16):
    """A flame graph: one box per frame, as wide as its share of the samples."""
    root = {"n": 0, "kids": {}}
    for stack, n in stacks.items():
        node = root
        node["n"] += n
        for f in stack.split(";"):
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += n
    total = root["n"] or 1
    boxes = []
    depth_max = [0]

    def walk(node, x, depth):
        for name, kid in sorted(node["kids"].items()):
            w = kid["n"] / total * width
            if w >= 0.3:
                boxes.append((x, depth, w, name, kid["n"]))
                depth_max[0] = max(depth_max[0], depth)
                walk(kid, x, depth + 1)
            x += w

    walk(root, 0.0, 0)
    height = (depth_max[0] + 3) * row
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">',
        f'<text x="4" y="{row - 3}">{html.escape(title)} ({total} samples; hover a box)</text>',
    ]
    for x, depth, w, name, n in boxes:
        y = height - (depth + 1) * row
        hue = zlib.crc32(name.encode()) % 60
        label = html.escape(name)
        share = f"{100.0 * n / total:.1f}%"
        out.append(
            f'<g><title>{label} ({n} samples, {share})</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="hsl({hue},80%,60%)"/>'
        )
        chars = int(w / 7)
        if chars >= 4:
            text = name if len(name) <= chars else name[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + row - 4}">{html.escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    weir = os.path.abspath(args[0])
    rows = int(args[args.index("--rows") + 1]) if "--rows" in args else ROWS
    if not shutil.which("perf"):
        print("profile: perf is not installed (Debian: apt-get install linux-perf); no flame graphs")
        return
    os.makedirs(OUT, exist_ok=True)
    for case, (title, parallelism, share, extra) in CASES.items():
        with tempfile.TemporaryDirectory() as d:
            job = os.path.join(d, "job.yaml")
            with open(job, "w") as f:
                f.write(JOB.format(rows=int(rows * share)))
            cmd = [weir, "run", job, "-p", str(parallelism), *extra]
            if case == "rocksdb":
                cmd += ["-D", f"execution.checkpointing.dir=file://{d}/checkpoints"]
            data = os.path.join(d, "perf.data")
            rec = subprocess.run(
                ["perf", "record", "-q", "-F", "199", "-e", "cpu-clock", "--call-graph", "dwarf,32768", "-o", data, "--", *cmd],
                capture_output=True,
                text=True,
                cwd=d,
            )
            if rec.returncode != 0:
                print(f"profile: perf record failed for {case}: {rec.stderr.strip()[-300:]}")
                return
            script = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True, cwd=d)
            stacks = fold(script.stdout)
        with open(os.path.join(OUT, f"flame-{case}.svg"), "w") as f:
            f.write(flame_svg(stacks, title))
        text = summary(stacks, title)
        with open(os.path.join(OUT, f"profile-{case}.txt"), "w") as f:
            f.write(text)
        print(f"profile: bench/out/flame-{case}.svg and bench/out/profile-{case}.txt")
        print("\n".join(text.splitlines()[:20]))


if __name__ == "__main__":
    main()
