#!/usr/bin/env bash
# Before/after: two builds of our server, alternating for 3 rounds, under the same loadgen
# commands (server pinned to CPU 0 with one shard, loadgen to CPU 1). Used for the "before /
# after" tables in BENCHMARKS.md.
#
#   git worktree add /tmp/before OLD_COMMIT
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p takhin-monitor)
#   cargo build --release -p takhin-monitor -p loadgen
#   benches/ab_servers.sh /tmp/before-target/release/takhin-monitor target/release/takhin-monitor
set -euo pipefail
BEFORE=$1 AFTER=$2
cd "$(dirname "$0")/.."
ulimit -Sl "$(ulimit -Hl)"; ulimit -Sn "$(ulimit -Hn)"
LOADGEN=./target/release/loadgen
PORT=${PORT:-18960}
SCENARIOS=(
    "--subscribers 10000 --size 256 --rate 2 --duration 8s"
    "--subscribers 1000 --size 256 --rate 100 --duration 8s"
    "--subscribers 10000 --size 17951 --rate 0.5 --duration 8s --drain 3s"
)
for round in 1 2 3; do
    for which in before after; do
        server=$BEFORE; [ "$which" = after ] && server=$AFTER
        taskset -c 0 "$server" --listen "127.0.0.1:$PORT" --cpu-list 0 >/dev/null 2>&1 &
        pid=$!
        until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do sleep 0.05; done
        for args in "${SCENARIOS[@]}"; do
            # shellcheck disable=SC2086
            report=$(taskset -c 1 "$LOADGEN" fanout --server "127.0.0.1:$PORT" $args \
                --server-pid "$pid" --json --quiet --max-loss 1 | tail -1)
            echo "$round $which [$args] $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); l=r["latency_us"]; print("p50",l["p50"],"p99",l["p99"],"max",l["max"],"cpu/M",round(r.get("server_cpu_s_per_million") or 0,2),"lost",r["lost"])' "$report")"
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
done
