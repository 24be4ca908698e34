#!/usr/bin/env bash
# What a second shard costs and saves (BENCHMARKS.md "Cores"), on this 2-CPU machine: the same
# loadgen commands against one shard (CPU 0) and two shards (CPUs 0 and 1), loadgen on CPU 1 in
# both cases, so the two-shard runs share CPU 1 with loadgen. The scenarios are chosen so that
# loadgen needs little CPU (a burst to 10,000 subscribers a few times a second, and idle
# connections): what moves is the pass over the sockets, which two shards split.
#
#   benches/cores.sh [OUT_DIR]        # default /tmp/cores-bench; ROUNDS (2) overrides
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/cores-bench}
ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT"
ulimit -Sl "$(ulimit -Hl)"
ulimit -Sn "$(ulimit -Hn)"
cargo build --release -q -p takhin-monitor -p loadgen
SERVER=./target/release/takhin-monitor
LOADGEN=./target/release/loadgen
PORT=${PORT:-18970}
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT

. benches/lib.sh   # wait_port (the script runs from the repo root)

summary() {  # one loadgen --json report -> one line
    python3 -c '
import json, sys
r = json.loads(sys.argv[1]); l = r["latency_us"]
cpu = r.get("server_cpu_s_per_million")
print("p50 %.1f ms, p99 %.1f ms, max %.1f ms, %s deliveries, lost %s, server CPU %s s per 1M" % (
    l["p50"] / 1e3, l["p99"] / 1e3, l["max"] / 1e3, r.get("deliveries"), r.get("lost"),
    "%.2f" % cpu if cpu is not None else "?"))' "$1"
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

for round in $(seq "$ROUNDS"); do
    for cpus in 0 0,1; do
        taskset -c "$cpus" "$SERVER" --listen "127.0.0.1:$PORT" --cpu-list "$cpus" \
            --metrics-interval 3600 >"$OUT/server.log" 2>&1 &
        pid=$!
        wait_port "$PORT"
        before=$(rss_kib "$pid")
        echo "round $round, shards on CPU $cpus: fresh server RSS $before KiB"
        for args in "--subscribers 10000 --rate 4 --duration 8s" \
                    "--subscribers 1000 --rate 200 --duration 8s"; do
            # shellcheck disable=SC2086
            report=$(taskset -c 1 "$LOADGEN" fanout --server "127.0.0.1:$PORT" $args --size 256 \
                --server-pid "$pid" --json --quiet --max-loss 1 | tail -1)
            echo "$report" >>"$OUT/reports.jsonl"
            echo "  [$args] $(summary "$report")"
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    done
done
