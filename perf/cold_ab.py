#!/usr/bin/env python3
"""Cold consume, two broker builds against each other, in alternating pairs.

Produces once (8 partitions of 1 KiB records) with BEFORE, then for each pair starts each build
on the same data (so its cache is empty and every fetch reads the disk), pinned to core 0,
and reads it back with `ringmq bench consume` on core 1, the O_DIRECT read baseline measured in
the same run. Prints MB/s, the ratio to that baseline, fetch p50, steal, and the broker's CPU
time per MB read.

Usage: perf/cold_ab.py BEFORE AFTER [--pairs N] [--records N] [--data DIR]
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matrix import Broker  # noqa: E402  (perf/matrix.py)


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def bench(binary, *args):
    result = subprocess.run([binary, "bench", *args, "--cpu", "1", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return json.loads(result.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--records", type=int, default=3_000_000)
    parser.add_argument("--data", default="/tmp/ringmq-cold-ab")
    options = parser.parse_args()
    if not os.path.exists(options.data):
        broker = Broker(options.data, binary=options.before)
        try:
            report = bench(options.before, "produce", "--bootstrap", broker.address, "--topic", "cold", "--partitions", "8",
                           "--record-size", "1024", "--batch-bytes", "16384", "--connections", "8",
                           "--in-flight", "1", "--batches-per-request", "8", "--duration", "15s", "--no-baseline")
            print(f"produced {report['records_per_s'] * report['seconds']:.0f} records")
        finally:
            broker.stop()
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    for pair in range(options.pairs):
        builds = [("before", options.before), ("after", options.after)]
        for name, binary in builds if pair % 2 == 0 else reversed(builds):
            broker = Broker(options.data, binary=binary)
            try:
                ticks0 = cpu_ticks(broker.process.pid)
                report = bench(options.before, "consume", "--bootstrap", broker.address, "--topic", "cold", "--records",
                               str(options.records), "--duration", "60s", "--warmup", "0s", "--baseline-dir",
                               options.data)
                ticks1 = cpu_ticks(broker.process.pid)
            finally:
                broker.stop()
            megabytes = report["mb_per_s"] * report["seconds"]
            print(f"pair {pair} {name}: {report['mb_per_s']:.0f} MB/s, ratio {report.get('baseline_ratio', 0):.2f}, "
                  f"fetch p50 {report['latency_us']['p50'] / 1000:.1f} ms, "
                  f"steal {report.get('cpu_steal_percent') or 0:.0f}%, "
                  f"broker CPU {(ticks1 - ticks0) * tick_ms / megabytes:.2f} ms/MB", flush=True)


if __name__ == "__main__":
    main()
