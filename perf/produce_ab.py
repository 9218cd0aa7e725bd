#!/usr/bin/env python3
"""Produce, two broker builds against each other, in alternating pairs.

Each pair starts each build on a fresh data directory, pinned to core 0, and runs the matrix's
produce rows against it with `ringmq bench produce` on core 1 (8 partitions, 1 KiB records,
16 KiB batches, 8 connections each with `--in-flight` requests of 8 batches at once, 1 by
default): acks=1 as fast as
acknowledged, then acks=1 at a fixed rate (open loop), then acks=all under the fsync flush
policy. The baselines are measured in the same run. Prints MB/s, the ratio to
min(O_DIRECT write, loopback), latency percentiles, steal, and the broker's CPU time per MB.

Usage: perf/produce_ab.py BEFORE AFTER [--pairs N] [--seconds N] [--rate RECORDS_PER_S] [--in-flight N]
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matrix import Broker  # noqa: E402  (perf/matrix.py)
from cold_ab import bench, cpu_ticks  # noqa: E402

COMMON = ["--partitions", "8", "--record-size", "1024", "--batch-bytes", "16384", "--connections", "8",
          "--batches-per-request", "8"]


def row(name, binary, generator, seconds, fsync, in_flight, *args):
    data = tempfile.mkdtemp(prefix="ringmq-ab-")
    broker = Broker(data, fsync=fsync, binary=binary)
    try:
        ticks0 = cpu_ticks(broker.process.pid)
        report = bench(generator, "produce", "--bootstrap", broker.address, "--topic", "ab", "--duration",
                       f"{seconds}s", *args, *COMMON, "--in-flight", str(in_flight), "--baseline-dir", data)
        ticks = cpu_ticks(broker.process.pid) - ticks0
    finally:
        broker.stop()
        subprocess.run(["rm", "-rf", data], check=False)
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    mb = report["bytes"] / 1e6
    lat = report["latency_us"]
    ratio = report.get("baseline_ratio")
    print(f"{name:7} {report['mb_per_s']:7.1f} MB/s  ratio {ratio if ratio is None else round(ratio, 3)}  "
          f"p50 {lat['p50']:.0f}  p99 {lat['p99']:.0f}  p99.9 {lat['p99_9']:.0f} us  "
          f"steal {report.get('cpu_steal_percent', 0):.1f}%  broker {ticks * tick_ms / mb:.2f} ms/MB", flush=True)
    return report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200_000, help="records/s of the fixed-rate row")
    parser.add_argument("--generator", help="the ringmq that runs the benchmark (default: AFTER)")
    parser.add_argument("--rows", default="max,rate,fsync")
    parser.add_argument("--in-flight", type=int, default=1, help="requests each connection has in flight")
    options = parser.parse_args()
    generator = options.generator or options.after
    rows = options.rows.split(",")
    for pair in range(options.pairs):
        builds = [("before", options.before), ("after", options.after)]
        for name, binary in builds if pair % 2 == 0 else reversed(builds):
            print(f"pair {pair + 1}, {name}:", flush=True)
            if "max" in rows:
                row("max", binary, generator, options.seconds, False, options.in_flight, "--acks", "1")
            if "rate" in rows:
                row("rate", binary, generator, options.seconds, False, options.in_flight, "--acks", "1", "--rate",
                    str(options.rate))
            if "fsync" in rows:
                row("fsync", binary, generator, options.seconds, True, options.in_flight, "--acks", "-1")


if __name__ == "__main__":
    main()
