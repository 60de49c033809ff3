#!/usr/bin/env python3
"""Runs the micro-benchmarks of `make bench`: the state backends' example (`state_bench`:
update rates and snapshot times) and criterion's benchmarks (the data plane's codec, the state
backends' keyed aggregates).

Usage: bench/micro.py

They come from the one release build `make bench` starts with (`cargo build --release
--workspace --bins --examples --benches`): that build resolves features once for the binary,
the examples and the benchmarks together, so RocksDB is compiled once. `cargo bench -p X` or
`cargo run --example` would each resolve another feature set (dev-dependencies included or
not) and compile RocksDB again. This script asks cargo for the paths of that build's
executables (a no-op build when nothing changed) and runs them.
"""
import json
import os
import subprocess
import sys

BUILD = ["build", "--release", "--workspace", "--bins", "--examples", "--benches", "--message-format=json-render-diagnostics"]


def executables():
    cargo = os.environ.get("CARGO", "cargo")
    out = subprocess.run([cargo, *BUILD], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"micro-benchmarks: the release build failed:\n{out.stderr[-2000:]}")
    found = {}
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        kinds = msg["target"]["kind"]
        if "bench" in kinds or "example" in kinds:
            found[msg["target"]["name"]] = (kinds[0], msg["executable"])
    return found


def main():
    found = executables()
    criterion = ["--bench", "--format", "terse", "--noplot"]
    wanted = [("state_bench", []), ("codec", criterion), ("backends", criterion)]
    for name, args in wanted:
        if name not in found:
            sys.exit(f"micro-benchmarks: no executable for {name} in the release build")
        kind, path = found[name]
        print(f"--- {kind} {name}", flush=True)
        if subprocess.run([path, *args]).returncode != 0:
            sys.exit(f"micro-benchmarks: {name} failed")


if __name__ == "__main__":
    main()
