#!/usr/bin/env bash
# One recorded run of every loadgen scenario against our server, as quoted in BENCHMARKS.md
# ("Fan-out over real sockets (loadgen)", and "A resume storm" for the last one). The server is pinned to CPU 0 (one shard), loadgen
# to CPU 1. Every run is bounded; the server is stopped by its PID at the end.
#
#   benches/loadgen_scenarios.sh [OUT_DIR]      # default /tmp/loadgen-scenarios
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/loadgen-scenarios}
PORT=${PORT:-18950}
mkdir -p "$OUT"
ulimit -Sl "$(ulimit -Hl)"        # glommio's io_uring needs locked memory
ulimit -Sn "$(ulimit -Hn)"
cargo build --release -q -p takhin-monitor -p loadgen
SERVER=./target/release/takhin-monitor
LOADGEN=./target/release/loadgen
ADDR=127.0.0.1:$PORT

server_pid=
start_server() {  # extra server flags
    taskset -c 0 "$SERVER" --listen "$ADDR" --cpu-list 0 "$@" >"$OUT/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return; fi
        sleep 0.05
    done
    echo "server did not start" >&2; exit 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" || true; }
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true' EXIT

run() {  # name, loadgen args...
    local name=$1; shift
    echo "== $name: loadgen $*"
    taskset -c 1 "$LOADGEN" "$@" --server "$ADDR" --server-pid "$server_pid" --json --quiet | tee "$OUT/$name.txt"
}

start_server
run fanout fanout --subscribers 1000 --size 256 --rate 100 --duration 10s
run fanout-4k fanout --subscribers 1000 --size 4096 --rate 20 --duration 10s
run ramp fanout --subscribers 1000 --size 256 --ramp --rate 20 --ramp-factor 1.5 --step 3s --max-p99 50ms
run churn churn --rate 1000 --duration 10s
run processes fanout --processes 2 --subscribers 10000 --size 256 --rate 10 --duration 10s --source-addrs 127.0.0.1-127.0.0.4
stop_server

start_server --source demo
run metrics metrics --subscribers 1000 --duration 10s
stop_server

start_server --metrics-interval 3600
run idle idle --subscribers 10000 --duration 10s
stop_server

# State and recovery (BENCHMARKS.md, "A resume storm"): a fresh server, so that its history
# holds only this run's messages.
start_server
run resume resume --subscribers 1000 --missed 1000
stop_server
echo "reports in $OUT"
