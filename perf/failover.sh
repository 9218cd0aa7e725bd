#!/usr/bin/env bash
# Controller failover and broker fencing on a three-node loopback cluster with default settings
# (2 s broker heartbeat, 9 s session, 1-2 s Raft election timeout). Each trial starts the three
# nodes, SIGKILLs the active controller and polls `ringmq cluster info --json` on a survivor
# every 50 ms: how long until it names another controller, and until it stops listing the
# killed broker (fenced). Usage: perf/failover.sh [TRIALS] (default 5).
set -uo pipefail
cd "$(dirname "$0")/.."
trials=${1:-5}
cargo build --release -q --bin ringmq || exit 1
ringmq=target/release/ringmq
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
field() { python3 -c "import json, sys; info = json.load(sys.stdin); print($1)" 2>/dev/null; }

trial() {
    local dir pids=() ports=() voters controller survivor killed_at named="" fenced="" info
    dir=$(mktemp -d)
    voters="1@127.0.0.1:$(free_port),2@127.0.0.1:$(free_port),3@127.0.0.1:$(free_port)"
    for id in 1 2 3; do
        $ringmq serve --cores 1 --node-id "$id" --controllers "$voters" --listen 127.0.0.1:0 \
            --admin-listen 127.0.0.1:0 --data-dir "$dir/$id" >"$dir/$id.out" 2>"$dir/$id.log" &
        pids[id]=$!
    done
    for id in 1 2 3; do
        for _ in $(seq 300); do grep -q ready "$dir/$id.out" && break; sleep 0.05; done
        ports[id]=$(grep -o 'kafka listener [0-9.:]*' "$dir/$id.out" | cut -d' ' -f3)
    done
    for _ in $(seq 400); do
        [ "$($ringmq cluster info --json --bootstrap "${ports[1]}" | field 'len(info["brokers"])')" = 3 ] && break
        sleep 0.05
    done
    controller=$($ringmq cluster info --json --bootstrap "${ports[1]}" | field 'info["controller"]')
    survivor=1
    [ "$controller" = 1 ] && survivor=2
    killed_at=$(now_ms)
    kill -9 "${pids[controller]}"
    for _ in $(seq 600); do
        info=$($ringmq cluster info --json --bootstrap "${ports[survivor]}" 2>/dev/null)
        local now_controller brokers
        now_controller=$(echo "$info" | field 'info["controller"]')
        brokers=$(echo "$info" | field 'len(info["brokers"])')
        if [ -z "$named" ] && [ -n "$now_controller" ] && [ "$now_controller" != "$controller" ] && [ "$now_controller" != -1 ]; then
            named=$(($(now_ms) - killed_at))
        fi
        [ -z "$fenced" ] && [ "$brokers" = 2 ] && fenced=$(($(now_ms) - killed_at))
        [ -n "$named" ] && [ -n "$fenced" ] && break
        sleep 0.05
    done
    echo "killed controller $controller: another named after ${named:-?} ms, the killed broker fenced after ${fenced:-?} ms"
    for id in 1 2 3; do kill "${pids[id]}" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$dir"
}

for _ in $(seq "$trials"); do trial; done
