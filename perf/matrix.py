#!/usr/bin/env python3
"""The standard workload matrix of MISSION.md, measured with `ringmq bench`.

By default it starts its own broker (target/release/ringmq, pinned to core 0, a fresh data
directory) and pins the load generator to core 1; with --bootstrap HOST:PORT it measures that
broker instead (Kafka, Redpanda, or a ringmq you started), and skips the rows that need a
broker restart or a different flush policy.

Writes one JSON report and one .hgrm file per row, latency.svg (every row's percentile
spectrum) and summary.md under perf/results/<date>-<machine>/, and prints the summary.

Usage: perf/matrix.py [--bootstrap HOST:PORT] [--seconds N] [--out DIR]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGMQ = os.path.join(ROOT, "target", "release", "ringmq")


class Broker:
    """A ringmq broker (this build, or `binary`) pinned to core 0 on a fresh (or given) data
    directory."""

    live = []  # started and not yet stopped: stopped by stop_all when a run fails midway

    def __init__(self, data, fsync=False, binary=RINGMQ):
        args = ["taskset", "-c", "0", binary, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                "--data-dir", data, "--cores", "1"]
        if fsync:
            args += ["--set", "log_flush_policy=fsync"]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if "ready" not in line:
            raise SystemExit(f"the broker did not start: {line!r}")
        self.address = line.split("listener ")[1].split()[0]
        Broker.live.append(self)

    def stop(self):
        try:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            Broker.live.remove(self)

    @staticmethod
    def stop_all():
        for broker in list(Broker.live):
            broker.stop()


def bench(out, name, workload, address, *args):
    """Runs one row; returns its JSON report (also written to <name>.json, with <name>.hgrm)."""
    hgrm = os.path.join(out, f"{name}.hgrm")
    command = [RINGMQ, "bench", workload, "--bootstrap", address, "--cpu", "1", "--json", "--hgrm", hgrm,
               "--baseline-dir", out, *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed: {result.stderr}")
    report = json.loads(result.stdout)
    with open(os.path.join(out, f"{name}.json"), "w") as file:
        json.dump(report, file, indent=1)
    return report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out")
    options = parser.parse_args()
    if not os.path.exists(RINGMQ):
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "ringmq"], cwd=ROOT, check=True)
    out = options.out or os.path.join(
        ROOT, "perf", "results", f"{datetime.date.today()}-{platform.node()}")
    os.makedirs(out, exist_ok=True)
    seconds = f"{options.seconds}s"
    rows = {}
    data = tempfile.mkdtemp(prefix="ringmq-matrix-")
    try:
        rows.update(run_rows(options, out, data, seconds))
    finally:
        try:
            Broker.stop_all()
        finally:
            shutil.rmtree(data, ignore_errors=True)
    # Produce and e2e latencies are per request and per record; a consume row's are per fetch
    # (often one fetch), so they stay out of the plot.
    hgrms = [os.path.join(out, f"{name}.hgrm") for name in rows if not name.startswith("consume")]
    subprocess.run([RINGMQ, "bench", "plot", *hgrms, "--out", os.path.join(out, "latency.svg")], check=True)
    summary = table(rows)
    with open(os.path.join(out, "summary.md"), "w") as file:
        file.write(summary)
    print(summary)
    print(f"results in {out}")


def run_rows(options, out, data, seconds):
    rows = {}
    external = options.bootstrap is not None
    broker = None if external else Broker(os.path.join(data, "interval"))
    address = options.bootstrap or broker.address
    # 8 connections, each with up to 5 requests in flight, as the Java producer sends by default
    # (max.in.flight.requests.per.connection; librdkafka sends more): ringmq reads a
    # connection's next produce while earlier ones wait for the disk. A request carries a
    # 16 KiB batch for each of 8 partitions, as a Kafka client's request to a broker holds the
    # ready batch of every partition it leads.
    common = ["--duration", seconds, "--record-size", "1024", "--batch-bytes", "16384", "--connections", "8",
              "--in-flight", "5", "--batches-per-request", "8"]
    rows["produce-acks1"] = bench(out, "produce-acks1", "produce", address, "--topic", "m-acks1",
                                  "--partitions", "8", "--acks", "1", *common)
    half = rows["produce-acks1"]["records_per_s"] / 2
    rows["produce-half-rate"] = bench(out, "produce-half-rate", "produce", address, "--topic", "m-acks1",
                                      "--acks", "1", "--rate", str(half), *common)
    rows["e2e-half-rate"] = bench(out, "e2e-half-rate", "e2e", address, "--topic", "m-e2e", "--partitions", "8",
                                  "--acks", "1", "--rate", str(half), *common)
    # Tail: what was just produced, all of it still in the batch cache (8 partitions of 5.6
    # MiB each, under the default 8 MiB cache per partition).
    tail_records = str(8 * 5600)
    bench(out, "tail-fill", "produce", address, "--topic", "m-tail", "--partitions", "8", "--records", tail_records,
          "--warmup", "0s", "--no-baseline", *common)
    # Read again from the start each time a partition's end is reached, for the whole duration:
    # the whole tail is one 45 MB fetch, too short a run to measure alone.
    rows["consume-tail"] = bench(out, "consume-tail", "consume", address, "--topic", "m-tail", "--tail",
                                 "--rewind", "--duration", seconds, "--warmup", "1s")
    if not external:
        broker.stop()
        broker = Broker(os.path.join(data, "interval"))  # the cache starts empty: cold reads
        rows["consume-cold"] = bench(out, "consume-cold", "consume", broker.address, "--topic", "m-acks1",
                                     "--duration", seconds, "--warmup", "0s")
        broker.stop()
        broker = Broker(os.path.join(data, "fsync"), fsync=True)
        rows["produce-acks-all-fsync"] = bench(out, "produce-acks-all-fsync", "produce", broker.address,
                                               "--topic", "m-fsync", "--partitions", "8", "--acks", "-1", *common)
        broker.stop()
    return rows


TARGETS = {
    "produce-acks1": ("≥ 0.70 of min(O_DIRECT write, loopback)", 0.70),
    "produce-acks-all-fsync": ("≥ 0.50 of the same", 0.50),
    "consume-tail": ("≥ 0.60 of loopback", 0.60),
    "consume-cold": ("≥ 0.60 of O_DIRECT read", 0.60),
}


def table(rows):
    lines = ["| workload | records/s | MB/s | ratio | bound | target | p50 µs | p99 µs | p99.9 µs | steal % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, report in rows.items():
        target, _ = TARGETS.get(name, ("p99 ≤ 1 ms, p99.9 ≤ 5 ms" if name == "produce-half-rate"
                                       else "p99 ≤ 2 ms" if name == "e2e-half-rate" else "", None))
        latency = report["latency_us"]
        ratio = report.get("baseline_ratio")
        lines.append(f"| {name} | {report['records_per_s']:.0f} | {report['mb_per_s']:.1f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | {report.get('baseline_bound') or ''} | {target} | "
                     f"{latency['p50']:.0f} | {latency['p99']:.0f} | {latency['p99_9']:.0f} | "
                     f"{report.get('cpu_steal_percent') or 0:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
