#!/usr/bin/env bash
# Profiles the broker under one `ringmq bench` workload: `perf stat` counters for the run and a
# `perf record -g` call-graph profile, reported as the hottest symbols and, when
# inferno-flamegraph or flamegraph.pl is installed, as flamegraph.svg.
#
# Usage: perf/profile.sh OUT_DIR [bench arguments...]   (default: produce, 1 KiB, acks=1, 10 s)
# The broker (target/release/ringmq, built if missing) runs on core 0, the generator on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: perf/profile.sh OUT_DIR [bench arguments...]}
shift || true
workload=("$@")
[ ${#workload[@]} -gt 0 ] || workload=(produce --partitions 8 --acks 1 --duration 10s --record-size 1024)
mkdir -p "$out"
[ -x target/release/ringmq ] || cargo build --release --locked --bin ringmq
data=$(mktemp -d)
ready=$(mktemp)
taskset -c 0 target/release/ringmq serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$data" --cores 1 \
    >"$ready" 2>/dev/null &
broker=$!
trap 'kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null; rm -rf "$data" "$ready"' EXIT
for _ in $(seq 1 100); do grep -q ready "$ready" && break; sleep 0.1; done
address=$(grep -o 'kafka listener [0-9.:]*' "$ready" | cut -d' ' -f3)
perf stat -p "$broker" -o "$out/perf-stat.txt" -- sleep 14 &
stat=$!
perf record -g -p "$broker" -o "$out/perf.data" -- sleep 12 2>/dev/null &
record=$!
target/release/ringmq bench "${workload[0]}" --bootstrap "$address" --cpu 1 --no-baseline --json \
    "${workload[@]:1}" >"$out/bench.json"
wait "$record" "$stat" || true
perf report -i "$out/perf.data" --stdio --no-children --percent-limit 1 >"$out/perf-report.txt" 2>/dev/null || true
if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
    perf script -i "$out/perf.data" | inferno-collapse-perf | inferno-flamegraph >"$out/flamegraph.svg"
elif command -v stackcollapse-perf.pl >/dev/null && command -v flamegraph.pl >/dev/null; then
    perf script -i "$out/perf.data" | stackcollapse-perf.pl | flamegraph.pl >"$out/flamegraph.svg"
fi
echo "profile in $out: bench.json, perf-stat.txt, perf-report.txt$( [ -f "$out/flamegraph.svg" ] && echo ', flamegraph.svg')"
