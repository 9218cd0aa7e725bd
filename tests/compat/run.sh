#!/usr/bin/env bash
# The compatibility suite: unmodified third-party Kafka clients against a real `ringmq serve`.
# kcat as Debian ships it (librdkafka 2.0.2) and the Python clients confluent-kafka and
# kafka-python, installed here if missing. Prints one result line per check and a closing
# "N passed, N failed" line; exits non-zero if any check failed.
set -uo pipefail
cd "$(dirname "$0")/../.."

venv=target/compat-venv
if ! command -v kcat >/dev/null; then
    echo "installing kcat"
    (apt-get update -qq && apt-get install -y -qq kcat) >/dev/null 2>&1 || { echo "cannot install kcat"; exit 1; }
fi
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || { echo "cannot create a Python venv"; exit 1; }
fi
"$venv/bin/pip" install -q --disable-pip-version-check "confluent-kafka==2.16.1" "kafka-python==3.0.12" \
    || { echo "cannot install the Python clients"; exit 1; }
cargo build --locked -q --bin ringmq || exit 1

data=$(mktemp -d)
out=$(mktemp)
target/debug/ringmq serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$data" --cores 2 --set num_partitions=3 --set group_consumer_heartbeat_interval_ms=1000 >"$out" 2>"$data.log" &
broker=$!
cleanup() { kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null; rm -rf "$data" "$data.log" "$out"; }
trap cleanup EXIT
for _ in $(seq 1 300); do grep -q "ready" "$out" && break; sleep 0.1; done
address=$(grep -o 'kafka listener [0-9.:]*' "$out" | cut -d' ' -f3)
admin=$(grep -o 'admin listener [0-9.:]*' "$out" | cut -d' ' -f3)
[ -n "$address" ] || { echo "the broker did not start"; cat "$data.log"; exit 1; }

passed=0
failed=0
known=0
check() {
    local name=$1
    shift
    if output=$("$@" 2>&1); then
        echo "ok      $name"
        passed=$((passed + 1))
    else
        echo "FAILED  $name"
        echo "$output" | sed 's/^/        /' | tail -20
        failed=$((failed + 1))
    fi
}

# A check listed in findings.md: expected to fail until the feature it needs lands.
known_failure() {
    local name=$1
    shift
    if "$@" >/dev/null 2>&1; then
        echo "FAILED  $name: passes now; take it off tests/compat/findings.md"
        failed=$((failed + 1))
    else
        echo "known   $name (tests/compat/findings.md)"
        known=$((known + 1))
    fi
}

kcat_round_trip() {
    seq 1 500 | sed 's/.*/key&:value &/' | kcat -b "$address" -P -t kcat-topic -K: -z snappy || return 1
    local got
    got=$(kcat -b "$address" -C -t kcat-topic -o beginning -e -q -f '%k=%s\n' | sort -V)
    [ "$(echo "$got" | wc -l)" -eq 500 ] || { echo "consumed $(echo "$got" | wc -l) of 500"; return 1; }
    [ "$(echo "$got" | head -1)" = "key1=value 1" ] || { echo "first: $(echo "$got" | head -1)"; return 1; }
}

kcat_metadata() {
    kcat -b "$address" -L -t kcat-topic | grep -q 'partition 2, leader 0' || { kcat -b "$address" -L; return 1; }
}

# kcat's balanced consumer (-G) reads what is there; its offsets are committed on exit, so a
# second run in the same group reads only what was produced since.
kcat_group() {
    local got
    seq 1 500 | sed 's/.*/g&:value &/' | kcat -b "$address" -P -t kcat-group-topic -K: || return 1
    got=$(timeout 60 kcat -b "$address" -G kcat-group -X auto.offset.reset=earliest -c 500 -q -f '%k\n' \
        kcat-group-topic | sort -u)
    [ "$(echo "$got" | wc -l)" -eq 500 ] || { echo "first run: $(echo "$got" | wc -l) of 500 distinct keys"; return 1; }
    seq 501 600 | sed 's/.*/g&:value &/' | kcat -b "$address" -P -t kcat-group-topic -K: || return 1
    got=$(timeout 60 kcat -b "$address" -G kcat-group -X auto.offset.reset=earliest -c 100 -q -f '%k\n' \
        kcat-group-topic | sort -V)
    [ "$got" = "$(seq 501 600 | sed 's/^/g/')" ] || { echo "second run read: $(echo "$got" | head -3) ..."; return 1; }
}

check "kcat produces and consumes (snappy, keys)" kcat_round_trip
check "kcat lists metadata" kcat_metadata
check "kcat balanced consumer (-G) reads every record, then resumes after its commit" kcat_group
for client in confluent kafka-python; do
    check "python $client: admin, produce, consume, metadata" "$venv/bin/python" tests/compat/clients.py "$client" "$address"
    check "python $client: two group members read every record once" \
        "$venv/bin/python" tests/compat/clients.py "$client-group-split" "$address"
    check "python $client: commit, close, reopen in the group resumes at the commit" \
        "$venv/bin/python" tests/compat/clients.py "$client-group-resume" "$address"
    check "python $client: admin lists, describes, reads offsets of and deletes a group" \
        "$venv/bin/python" tests/compat/clients.py "$client-group-admin" "$address"
done
check "python confluent, KIP-848 protocol: two members read every record once" \
    "$venv/bin/python" tests/compat/clients.py confluent-kip848-split "$address"
check "python confluent, KIP-848 protocol: commit, close, reopen resumes at the commit" \
    "$venv/bin/python" tests/compat/clients.py confluent-kip848-resume "$address"
check "python kafka-python with its default (idempotent) producer" \
    "$venv/bin/python" tests/compat/clients.py kafka-python-defaults "$address"
check "python confluent idempotent producer" \
    "$venv/bin/python" tests/compat/clients.py confluent-idempotent "$address"
for client in confluent kafka-python; do
    check "python $client transactions: committed rounds read once by read_committed, aborted ones hidden" \
        "$venv/bin/python" tests/compat/clients.py "$client-transactions" "$address"
done

# kafka-python's consumers open incremental fetch sessions (KIP-227) by default; the checks
# above read every record through them. The broker's metrics show the sessions were used.
incremental_fetches() {
    local scraped
    scraped=$("$venv/bin/python" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
        "http://$admin/metrics") || return 1
    echo "$scraped" | awk '/^ringmq_fetch_incremental_total/ { n += $2 } END { exit !(n > 0) }' \
        || { echo "$scraped" | grep fetch_; return 1; }
}
check "kafka-python's consumers fetched through incremental fetch sessions" incremental_fetches

# The same clients against a three-node cluster (every node a controller voter and a broker,
# brokers talking to each other on peer listeners of their own),
# bootstrapped from one node: topics spread over the brokers, groups and transactions
# coordinated by the leaders of their internal partitions.
# The voters' ports are named before any node binds them, so they are taken below the kernel's
# ephemeral range (from 32768), where no node's port-0 listener or outgoing connection can
# take one first; each is checked free now.
free_ports() {
    "$venv/bin/python" - "$1" <<'PY'
import random, socket, sys
ports = []
for port in random.sample(range(20000, 32000), 200):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    ports.append(port)
    if len(ports) == int(sys.argv[1]):
        break
print(" ".join(map(str, ports)))
PY
}
read -r port1 port2 port3 < <(free_ports 3)
voters="1@127.0.0.1:$port1,2@127.0.0.1:$port2,3@127.0.0.1:$port3"
nodes=()
cluster_dir=$(mktemp -d)
for id in 1 2 3; do
    mkdir -p "$cluster_dir/$id"
    target/debug/ringmq serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$cluster_dir/$id" \
        --cores 1 --node-id "$id" --controllers "$voters" --peer-listen 127.0.0.1:0 --set broker_heartbeat_interval_ms=200 \
        >"$cluster_dir/$id.out" 2>"$cluster_dir/$id.log" &
    nodes+=($!)
done
cleanup_cluster() { kill "${nodes[@]}" 2>/dev/null; wait "${nodes[@]}" 2>/dev/null; rm -rf "$cluster_dir"; cleanup; }
trap cleanup_cluster EXIT
for id in 1 2 3; do
    for _ in $(seq 1 300); do grep -q "ready" "$cluster_dir/$id.out" && break; sleep 0.1; done
done
cluster=$(grep -o 'kafka listener [0-9.:]*' "$cluster_dir/1.out" | cut -d' ' -f3)
cluster_formed() {
    for _ in $(seq 1 300); do
        [ "$(kcat -b "$cluster" -L 2>/dev/null | grep -c '  broker [123] at')" -eq 3 ] && return 0
        sleep 0.1
    done
    kcat -b "$cluster" -L
    return 1
}
check "cluster: kcat sees all three brokers" cluster_formed
# Topics made from here on have three replicas: acks=all waits for the in-sync followers,
# transaction markers too.
export COMPAT_REPLICATION_FACTOR=3
replicated_everywhere() {
    "$venv/bin/python" tests/compat/clients.py confluent "$cluster" >/dev/null || return 1
    kcat -b "$cluster" -L | grep -q 'replicas: [123],[123],[123], isrs: [123],[123],[123]'
}
check "cluster: a topic the Python client made has three replicas, all in sync" replicated_everywhere
for client in confluent kafka-python; do
    check "cluster, python $client: admin, produce, consume, metadata" \
        "$venv/bin/python" tests/compat/clients.py "$client" "$cluster"
    check "cluster, python $client: two group members read every record once" \
        "$venv/bin/python" tests/compat/clients.py "$client-group-split" "$cluster"
    check "cluster, python $client transactions: committed rounds read once, aborted ones hidden" \
        "$venv/bin/python" tests/compat/clients.py "$client-transactions" "$cluster"
done
check "cluster, python kafka-python: a partition moves to another broker and keeps its records" \
    "$venv/bin/python" tests/compat/clients.py kafka-python-reassign "$cluster"

echo
echo "compat: $known known failures listed in tests/compat/findings.md"
echo "compat: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
