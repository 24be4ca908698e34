#!/usr/bin/env bash
# The Redis relay, measured side by side in one run (BENCHMARKS.md "Scale-out through Redis"):
#   direct   subscribers on the origin A, no relay at all             (the baseline)
#   origin   subscribers on the origin A, relaying to Redis           (the cost of publishing)
#   relayed  subscribers on the relay-only B, publishing to A         (the Redis hop)
#   split    half the subscribers on A, half on B, at the same time   (two instances against one)
# redis-server, A and B share CPU 0 (one shard each); loadgen runs on CPU 1. Every run is
# bounded; every process is stopped by its PID.
#
#   benches/relay.sh [OUT_DIR]     # default /tmp/relay-bench; SUBS, RATE, SECS override
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/relay-bench}
SUBS=${SUBS:-1000}
RATE=${RATE:-100}
SECS=${SECS:-10}
mkdir -p "$OUT"
ulimit -Sl "$(ulimit -Hl)"
ulimit -Sn "$(ulimit -Hn)"
cargo build --release -q -p takhin-monitor -p loadgen
SERVER=./target/release/takhin-monitor
LOADGEN=./target/release/loadgen
RPORT=${RPORT:-18960}; APORT=${APORT:-18961}; BPORT=${BPORT:-18962}
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

. benches/lib.sh   # wait_port (the script runs from the repo root)
start() {  # name port args...
    local name=$1 port=$2; shift 2
    taskset -c 0 "$@" >"$OUT/$name.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
}
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
lg() {  # name args...
    local name=$1; shift
    echo "== $name: loadgen $*"
    taskset -c 1 "$LOADGEN" "$@" --json --quiet > "$OUT/$name.json" || true
    tail -1 "$OUT/$name.json" | python3 -c '
import json, sys
r = json.load(sys.stdin); l = r["latency_us"]
print("   deliveries %d, lost %d, p50 %d us, p99 %d us, max %d us, server cpu %s s" % (
    r["deliveries"], r["lost"], l["p50"], l["p99"], l["max"], r.get("server_cpu_s")))'
}
common=(fanout --size 256 --rate "$RATE" --duration "${SECS}s")

# direct: no relay.
start a "$APORT" "$SERVER" --listen "127.0.0.1:$APORT" --cpu-list 0 --source none --metrics-interval 60
lg direct "${common[@]}" --subscribers "$SUBS" --server "127.0.0.1:$APORT" --server-pid "${pids[0]}"
stop_all

start redis "$RPORT" redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no
start a "$APORT" "$SERVER" --listen "127.0.0.1:$APORT" --cpu-list 0 --source none --metrics-interval 60 \
    --relay "redis://127.0.0.1:$RPORT/bench"
start b "$BPORT" "$SERVER" --listen "127.0.0.1:$BPORT" --cpu-list 0 --source relay \
    --relay "redis://127.0.0.1:$RPORT/bench"
sleep 0.5   # the relay threads connect (counted in /metrics; nothing to await from here)
lg origin "${common[@]}" --subscribers "$SUBS" --server "127.0.0.1:$APORT" --server-pid "${pids[1]}"
lg relayed "${common[@]}" --subscribers "$SUBS" \
    --subscribe-url "ws://127.0.0.1:$BPORT/api/monitoring/ws" \
    --publish-url "http://127.0.0.1:$APORT/api/monitoring/publish" --server-pid "${pids[2]}"
# split: two instances against one: the same stream, half the subscribers on the origin A and
# half on the relay-only B, read at the same time (B's loadgen only listens).
half=$((SUBS / 2))
echo "== split: $half subscribers on A (publishing) + $half on B (listening), at once"
taskset -c 1 "$LOADGEN" fanout --size 256 --rate "$RATE" --duration "$((SECS + 2))s" \
    --listen-only --subscribers "$half" --server "127.0.0.1:$BPORT" --server-pid "${pids[2]}" \
    --json --quiet > "$OUT/split-b.json" &
listener=$!
sleep 1   # B's subscribers connect first, so they see the whole stream
lg split-a "${common[@]}" --subscribers "$half" --server "127.0.0.1:$APORT" --server-pid "${pids[1]}"
wait "$listener" || true
tail -1 "$OUT/split-b.json" | python3 -c '
import json, sys
r = json.load(sys.stdin); l = r["latency_us"]
print("   B: deliveries %d, p50 %d us, p99 %d us, max %d us, server cpu %s s" % (
    r["deliveries"], l["p50"], l["p99"], l["max"], r.get("server_cpu_s")))'
stop_all
echo "results in $OUT"
