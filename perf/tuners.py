#!/usr/bin/env python3
"""What a `ringmq tune` tuner buys: a workload measured with the tuner's setting as this machine
has it and as `ringmq tune --apply` sets it, in alternating pairs (before/after, then
after/before, ...) so that a drift of the machine does not favour either side.

Each run starts a fresh broker (target/release/ringmq pinned to core 0, data under the
directory given, on the disk whose scheduler is tuned) and pins the generator to core 1, as
perf/matrix.py does, with the same-run baseline. The setting is put back as it was at the end,
whatever happens. Needs root.

Writes tuners.json (every run) and tuners.md (medians per tuner and workload) under
perf/results/<date>-<machine>/ and prints the table.

Usage: perf/tuners.py [--pairs N] [--seconds N] [--data-dir DIR] [--tuner NAME ...]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matrix  # noqa: E402  (perf/matrix.py: Broker, bench, RINGMQ)


def selected(value):
    """The bracketed choice of a sysfs multiple-choice file ("always [madvise] never")."""
    for word in value.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return value.strip()


def scheduler_file(directory):
    """The scheduler file of the disk holding `directory` (a partition's parent disk)."""
    device = os.stat(directory).st_dev
    block = f"/sys/dev/block/{os.major(device)}:{os.minor(device)}"
    for candidate in (block, os.path.join(block, "..")):
        path = os.path.join(candidate, "queue", "scheduler")
        if os.path.exists(path):
            return os.path.realpath(path)
    raise SystemExit(f"no I/O scheduler for the disk of {directory}")


def tcp_max(path, wanted_max):
    """tcp_rmem / tcp_wmem with only the maximum (third field) raised, as `ringmq tune` does."""
    with open(path) as file:
        low, default, high = file.read().split()
    return f"{low} {default} {max(int(high), wanted_max)}"


def tuners(data_dir):
    """name -> a function giving (file, value as `ringmq tune --apply` sets it, workloads it
    should move), called only for the tuners measured. tcp-wmem and tcp-rmem are candidates, not
    `ringmq tune` tuners: measured to see whether they should be (tuning/README.md has what they
    did)."""
    return {
        "disk-scheduler": lambda: (scheduler_file(data_dir), "none", ["produce-acks-all-fsync", "produce-acks1"]),
        "transparent-hugepages": lambda: ("/sys/kernel/mm/transparent_hugepage/enabled", "always",
                                          ["produce-acks1", "consume-tail"]),
        "tcp-wmem": lambda: ("/proc/sys/net/ipv4/tcp_wmem", tcp_max("/proc/sys/net/ipv4/tcp_wmem", 16 << 20),
                             ["consume-tail"]),
        "tcp-rmem": lambda: ("/proc/sys/net/ipv4/tcp_rmem", tcp_max("/proc/sys/net/ipv4/tcp_rmem", 16 << 20),
                             ["produce-acks1"]),
    }


# The matrix's produce settings: 8 connections, one request in flight each, a 16 KiB batch for
# each of 8 partitions per request.
COMMON = ["--record-size", "1024", "--batch-bytes", "16384", "--connections", "8", "--in-flight", "1",
          "--batches-per-request", "8"]
TAIL_RECORDS = str(8 * 5600)


def run(workload, out, data, seconds):
    """One run of `workload` on a fresh broker; its JSON report."""
    broker = matrix.Broker(data, fsync=workload == "produce-acks-all-fsync")
    try:
        if workload == "consume-tail":
            matrix.bench(out, "tuner-fill", "produce", broker.address, "--topic", "t", "--partitions", "8",
                         "--records", TAIL_RECORDS, "--warmup", "0s", "--no-baseline", "--duration", seconds,
                         *COMMON)
            return matrix.bench(out, "tuner-run", "consume", broker.address, "--topic", "t", "--tail",
                                "--rewind", "--duration", seconds, "--warmup", "1s")
        acks = "-1" if workload == "produce-acks-all-fsync" else "1"
        return matrix.bench(out, "tuner-run", "produce", broker.address, "--topic", "t", "--partitions", "8",
                            "--acks", acks, "--duration", seconds, *COMMON)
    finally:
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)


def write(path, value):
    with open(path, "w") as file:
        file.write(value)


def measure(name, path, wanted, workloads, options, out):
    """Alternating pairs of runs with the setting as found ("before") and as tuned ("after")."""
    with open(path) as file:
        found = file.read().strip()
    before = selected(found) if "[" in found else " ".join(found.split())
    if before == wanted:
        print(f"{name}: already {wanted!r} here; put it back to the kernel default first to measure it")
        return []
    runs = []
    try:
        for pair in range(options.pairs):
            order = [("before", before), ("after", wanted)]
            for side, value in order if pair % 2 == 0 else reversed(order):
                write(path, value)
                for workload in workloads:
                    data = tempfile.mkdtemp(prefix="ringmq-tuner-", dir=options.data_dir)
                    report = run(workload, out, data, f"{options.seconds}s")
                    runs.append({"tuner": name, "side": side, "value": value, "workload": workload,
                                 "pair": pair, "report": report})
                    print(f"{name} {side:6} {workload:24} {report['mb_per_s']:8.1f} MB/s "
                          f"ratio {report.get('baseline_ratio') or 0:.2f} p99 {report['latency_us']['p99']:.0f} µs "
                          f"steal {report.get('cpu_steal_percent') or 0:.0f}%", flush=True)
    finally:
        try:
            matrix.Broker.stop_all()
        finally:
            write(path, before)
    return runs


def table(runs):
    lines = ["| tuner | workload | before | after | MB/s before → after (median) | ratio before → after | "
             "p99 µs before → after | pairs |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(run["tuner"], run["workload"]) for run in runs}, key=lambda k: (k[0], k[1]))
    for tuner, workload in keys:
        side = {s: [r for r in runs if (r["tuner"], r["workload"], r["side"]) == (tuner, workload, s)]
                for s in ("before", "after")}

        def median(s, field):
            values = [field(r["report"]) for r in side[s]]
            return statistics.median(values) if values else 0

        if not side["before"] or not side["after"]:
            continue  # a run failed before both sides were measured: no comparison to show
        mb = [median(s, lambda r: r["mb_per_s"]) for s in ("before", "after")]
        ratio = [median(s, lambda r: r.get("baseline_ratio") or 0) for s in ("before", "after")]
        p99 = [median(s, lambda r: r["latency_us"]["p99"]) for s in ("before", "after")]
        lines.append(f"| {tuner} | {workload} | {side['before'][0]['value']} | {side['after'][0]['value']} | "
                     f"{mb[0]:.0f} → {mb[1]:.0f} ({mb[1] / max(mb[0], 1e-9):.2f}x) | {ratio[0]:.2f} → {ratio[1]:.2f} | "
                     f"{p99[0]:.0f} → {p99[1]:.0f} | {len(side['before'])} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--data-dir", default=tempfile.gettempdir(),
                        help="where each run's broker keeps its data: the disk whose scheduler is tuned")
    parser.add_argument("--tuner", action="append", help="only these tuners (default: every one measured here)")
    parser.add_argument("--out")
    options = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("changing the tuners' settings needs root")
    if not os.path.exists(matrix.RINGMQ):
        raise SystemExit(f"build {matrix.RINGMQ} first: cargo build --release --locked --bin ringmq")
    out = options.out or os.path.join(
        matrix.ROOT, "perf", "results", f"{datetime.date.today()}-{platform.node()}")
    os.makedirs(out, exist_ok=True)
    runs = []
    for name, tuner in tuners(options.data_dir).items():
        if options.tuner and name not in options.tuner:
            continue
        path, wanted, workloads = tuner()
        runs += measure(name, path, wanted, workloads, options, out)
    for scratch in ("tuner-fill", "tuner-run"):
        for suffix in (".json", ".hgrm"):
            if os.path.exists(os.path.join(out, scratch + suffix)):
                os.remove(os.path.join(out, scratch + suffix))
    with open(os.path.join(out, "tuners.json"), "w") as file:
        json.dump(runs, file, indent=1)
    summary = table(runs)
    with open(os.path.join(out, "tuners.md"), "w") as file:
        file.write(summary)
    print(summary)
    print(f"results in {out}")


if __name__ == "__main__":
    sys.exit(main())
