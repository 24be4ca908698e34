#!/usr/bin/env bash
# A large cluster's metrics snapshot to N dashboards, with and without permessage-deflate
# (BENCHMARKS.md "Compression once per broadcast (issue 17)"): bytes on the wire per snapshot,
# server CPU per delivery, and tick to last delivery.
#
# The snapshot is examples/large_snapshot.rs's (100 topics x 12 partitions, 50 groups, every
# value different: 186 KB of JSON). The server (`--source none --cores 1`, pinned to SERVER_CPU;
# its own ticker slowed to one tick a day so that the only snapshots are ours) gets it every
# INTERVAL seconds as `{"type":"metrics","channel":"metrics","data":SNAPSHOT}`
# through the publish API (curl on LOADGEN_CPU), TICKS times, and broadcasts it to every
# dashboard: `loadgen metrics --subscribers N --deflate --deflate-sample SAMPLE`, pinned to
# LOADGEN_CPU. Every loadgen connection offers compression in both modes, as Chromium does;
# the modes differ only by the server's `--compression off|on`, so "off" is the hub before
# issue 17. loadgen measures the server's CPU (--server-pid) over its hold, counts deliveries
# (the compressed ones it does not inflate too) and times each tick from the server's stamp
# (`tsUs`) to its last arrival among the connections that read it (with compression on, one in
# SAMPLE: inflating 10,000 copies of 186 KB would make loadgen the bottleneck). The server's
# /metrics gives the bytes written and the compressions made.
#
#   benches/deflate_fanout.sh [OUT_DIR]      # default /tmp/deflate-fanout
#   env: N (10000), ROUNDS (3), TICKS (8), INTERVAL (3), SAMPLE (10), MODES ("off on"),
#        SERVER_CPU (0), LOADGEN_CPU (1), PORT (18960)
#
# Every process started is stopped by its PID; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/deflate-fanout}
N=${N:-10000}
ROUNDS=${ROUNDS:-3}
TICKS=${TICKS:-8}
INTERVAL=${INTERVAL:-3}
SAMPLE=${SAMPLE:-10}
MODES=${MODES:-off on}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-18960}
mkdir -p "$OUT"
ulimit -Sn "$(ulimit -Hn)"
ulimit -Sl "$(ulimit -Hl)"
cargo build --release -q -p takhin-monitor -p loadgen --bin takhin-monitor --bin loadgen \
    --example large_snapshot
SERVER=./target/release/takhin-monitor
LOADGEN=./target/release/loadgen
pids=()
trap 'for p in "${pids[@]}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done' EXIT
. benches/lib.sh   # wait_port

./target/release/examples/large_snapshot > "$OUT/snapshot.json"
python3 - "$OUT/snapshot.json" "$OUT/publish.json" <<'EOF'
import json, sys
snapshot = json.load(open(sys.argv[1]))
json.dump({"type": "metrics", "channel": "metrics", "data": snapshot}, open(sys.argv[2], "w"),
          separators=(",", ":"))
EOF
echo "== snapshot: $(wc -c < "$OUT/snapshot.json") B of JSON"

scrape() { curl -sf --max-time 5 "http://127.0.0.1:$PORT/metrics" > "$OUT/.metrics"; }
metric() { awk -v n="$1" '$1 == n { print $2 }' "$OUT/.metrics"; }
publish() {
    taskset -c "$LOADGEN_CPU" curl -sf --max-time 10 -o /dev/null -H 'Content-Type: application/json' \
        --data-binary @"$OUT/publish.json" "http://127.0.0.1:$PORT/api/monitoring/publish"
}

results="$OUT/results.tsv"
printf 'round\tmode\tconnected\tdeliveries\tserver_cpu_s\tus_per_delivery\tserver_cpu_pct\tloadgen_cpu_s\ttick_last_p50_ms\ttick_last_max_ms\twire_bytes_per_snapshot\tbytes_written\tdeflate_frames\n' > "$results"
hold=$(( TICKS * INTERVAL + 8 ))
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        echo "== round $round, --compression $mode: $N dashboards"
        taskset -c "$SERVER_CPU" "$SERVER" --listen "127.0.0.1:$PORT" --cpu-list "$SERVER_CPU" \
            --source none --metrics-interval 100000 --compression "$mode" \
            > "$OUT/server-$round-$mode.log" 2>&1 &
        server=$!
        pids+=("$server")
        wait_port "$PORT" 200
        report="$OUT/loadgen-$round-$mode.json"
        taskset -c "$LOADGEN_CPU" timeout $(( hold + 120 )) "$LOADGEN" metrics --subscribers "$N" \
            --duration "${hold}s" --metrics-interval "${INTERVAL}s" --server "127.0.0.1:$PORT" \
            --server-pid "$server" --deflate --deflate-sample "$SAMPLE" --json --quiet \
            > "$report" 2> "$OUT/loadgen-$round-$mode.err" &
        lg=$!
        pids+=("$lg")
        connected=0
        for _ in $(seq 600); do
            scrape; connected=$(metric takhin_connections)
            (( connected >= N )) && break
            sleep 0.1
        done
        (( connected >= N )) || { echo "only $connected of $N connected" >&2; exit 1; }
        sleep 2
        scrape; b0=$(metric takhin_sent_bytes_total); z0=$(metric takhin_deflate_frames_total)
        for _ in $(seq "$TICKS"); do
            publish
            sleep "$INTERVAL"
        done
        scrape; b1=$(metric takhin_sent_bytes_total); z1=$(metric takhin_deflate_frames_total)
        wait "$lg" || echo "   loadgen exited $? (see $OUT/loadgen-$round-$mode.err)"
        pids=("${pids[@]/$lg}")
        kill "$server"; wait "$server" 2>/dev/null || true
        pids=("${pids[@]/$server}")
        python3 - "$round" "$mode" "$connected" "$b0" "$b1" "$z0" "$z1" "$TICKS" "$report" \
            >> "$results" <<'EOF'
import json, sys
round_, mode, connected, b0, b1, z0, z1, ticks, path = sys.argv[1:]
r = json.loads(open(path).read().strip().splitlines()[-1])
d = r["deliveries"]
cpu = r.get("server_cpu_s") or float("nan")
t = r.get("tick_to_last_us") or {}
written = float(b1) - float(b0)
row = [round_, mode, connected, d, "%.3f" % cpu, "%.2f" % (cpu * 1e6 / d if d else float("nan")),
       "%.1f" % (r.get("server_cpu_pct") or float("nan")), "%.3f" % (r.get("loadgen_cpu_s") or float("nan")),
       "%.1f" % (t.get("p50", float("nan")) / 1e3), "%.1f" % (t.get("max", float("nan")) / 1e3),
       "%.0f" % (written / (int(ticks) * int(connected))), "%.0f" % written, "%d" % (float(z1) - float(z0))]
print("\t".join(str(x) for x in row))
print("   %s deliveries, server %s s CPU = %s us/delivery (%s %%), loadgen %s s, tick->last p50 %s ms max %s ms, "
      "%s B written per snapshot per client, %s compressions" % tuple(row[3:11] + row[12:]), file=sys.stderr)
EOF
        sleep 2
    done
done

echo "== medians over $ROUNDS rounds (min-max)"
python3 - "$results" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cols = ["deliveries", "us_per_delivery", "server_cpu_pct", "loadgen_cpu_s", "tick_last_p50_ms",
        "tick_last_max_ms", "wire_bytes_per_snapshot", "deflate_frames"]
med = {}
for mode in dict.fromkeys(r["mode"] for r in rows):
    rs = [r for r in rows if r["mode"] == mode]
    parts = []
    for c in cols:
        v = sorted(float(r[c]) for r in rs)
        med[(mode, c)] = statistics.median(v)
        parts.append("%s %.4g (%.4g-%.4g)" % (c, statistics.median(v), v[0], v[-1]))
    print("--compression %s: %s" % (mode, ", ".join(parts)))
if ("on", "us_per_delivery") in med and ("off", "us_per_delivery") in med:
    print("on/off: CPU per delivery %.2fx, bytes per snapshot %.3fx, tick->last max %.2fx" % (
        med[("on", "us_per_delivery")] / med[("off", "us_per_delivery")],
        med[("on", "wire_bytes_per_snapshot")] / med[("off", "wire_bytes_per_snapshot")],
        med[("on", "tick_last_max_ms")] / med[("off", "tick_last_max_ms")]))
EOF
