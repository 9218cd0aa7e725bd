#!/usr/bin/env bash
# Replicated (RF=3) against unreplicated (RF=1) acks=all produce on a three-node loopback
# cluster, in the same run. The three brokers share core 0 (`taskset`), the load generator
# runs on core 1. Each topic has one partition, and `ringmq bench produce` is pointed at its
# leader. Two runs per topic: as fast as acknowledged (closed loop), then at a fixed rate
# (open loop, for latency free of coordinated omission). The machine's O_DIRECT-write and
# loopback baseline is measured first, in the same run.
# Usage: perf/replication.sh [DURATION] [RATE] (defaults 10s, 5000 records/s).
set -uo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
rate=${2:-5000}
cargo build --release -q --bin ringmq || exit 1
ringmq=$PWD/target/release/ringmq
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

dir=$(mktemp -d)
pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$dir"; }
trap stop EXIT

voters="1@127.0.0.1:$(free_port),2@127.0.0.1:$(free_port),3@127.0.0.1:$(free_port)"
declare -A address
for id in 1 2 3; do
    taskset -c 0 "$ringmq" serve --cores 1 --node-id "$id" --controllers "$voters" --listen 127.0.0.1:0 \
        --admin-listen 127.0.0.1:0 --data-dir "$dir/$id" >"$dir/$id.out" 2>"$dir/$id.log" &
    pids+=($!)
done
for id in 1 2 3; do
    for _ in $(seq 300); do grep -q ready "$dir/$id.out" && break; sleep 0.05; done
    address[$id]=$(grep -o 'kafka listener [0-9.:]*' "$dir/$id.out" | cut -d' ' -f3)
done
for _ in $(seq 400); do
    [ "$("$ringmq" cluster info --json --bootstrap "${address[1]}" | json 'len(d["brokers"])')" = 3 ] && break
    sleep 0.05
done

echo "== baseline (same run): O_DIRECT write and loopback TCP"
"$ringmq" bench baseline --dir "$dir" --cpu 1 | sed 's/^/  /'

leader_of() {
    # The address of the leader of partition 0 of topic $1, once every replica is in sync.
    local topic=$1 replicas=$2 described leader
    for _ in $(seq 200); do
        described=$("$ringmq" topic describe "$topic" --json --bootstrap "${address[1]}" 2>/dev/null)
        leader=$(echo "$described" | json "[p['leader'] for p in d['partitions'] if len(p['isr']) == $replicas][0]" 2>/dev/null)
        [ -n "$leader" ] && [ "$leader" -gt 0 ] 2>/dev/null && { echo "${address[$leader]}"; return; }
        sleep 0.1
    done
    echo "no leader for $topic" >&2
    exit 1
}

printf '\n%-4s %-6s %12s %9s %9s %9s %9s\n' RF load records/s MB/s p50_us p99_us p99.9_us
declare -A throughput
for replicas in 1 3; do
    topic="replicated-$replicas"
    "$ringmq" topic create "$topic" --partitions 1 --replication-factor "$replicas" --bootstrap "${address[1]}" >/dev/null
    leader=$(leader_of "$topic" "$replicas")
    for load in max "$rate"; do
        flags=()
        [ "$load" != max ] && flags=(--rate "$load")
        result=$("$ringmq" bench produce --bootstrap "$leader" --topic "$topic" --acks -1 --duration "$duration" \
            --cpu 1 --no-baseline --json "${flags[@]}")
        line=$(echo "$result" | json '"%12.0f %9.1f %9.0f %9.0f %9.0f" % (d["records_per_s"], d["mb_per_s"], d["latency_us"]["p50"], d["latency_us"]["p99"], d["latency_us"]["p99_9"])')
        printf '%-4s %-6s %s\n' "$replicas" "$load" "$line"
        [ "$load" = max ] && throughput[$replicas]=$(echo "$result" | json 'd["records_per_s"]')
    done
done
python3 -c "print('\nRF=3 acks=all throughput is %.2f of RF=1 (same run)' % (${throughput[3]} / ${throughput[1]}))"
