#!/usr/bin/env bash
# TLS against plain text on the hub's port (BENCHMARKS.md "TLS on the hub's port (issue 18)"):
# server CPU per delivery of a broadcast to N dashboards over wss:// and over ws://, for a large
# frame and for bursts of small ones.
#
# The server (`--source none --cores 1 --compression off`, pinned to SERVER_CPU; its ticker
# slowed to one tick a day) gets PAYLOAD through the publish API (curl on LOADGEN_CPU, https://
# with TLS) every INTERVAL seconds, TICKS times, and broadcasts it on `metrics` to N `loadgen
# metrics` connections pinned to LOADGEN_CPU (with TLS: `--subscribe-url wss://...`, trusting
# the benchmark's self-signed ECDSA P-256 certificate). Payloads:
#   snapshot  examples/large_snapshot.rs's 186 KB metrics snapshot: one frame per tick
#   small     a JSON array of 100 metrics messages of about 200 B: 100 frames per tick, which
#             each client gets in one batch (one encrypt and one write for all of them)
# Compression is off in both modes (unless COMPRESSION=on) so that the difference is TLS
# alone. loadgen measures the server's CPU (--server-pid) over its hold and counts deliveries;
# the server's /metrics gives the bytes and writes.
#
#   benches/tls_fanout.sh [OUT_DIR]      # default /tmp/tls-fanout
#   env: NS ("1000 10000"), PAYLOADS ("snapshot small"), MODES ("plain tls"), ROUNDS (2),
#        TICKS (6), INTERVAL (3), SERVER_CPU (0), LOADGEN_CPU (1), PORT (18970),
#        COMPRESSION (off; "on": the server compresses, loadgen offers permessage-deflate and
#        inflates one connection in SAMPLE (10), as benches/deflate_fanout.sh does)
#
# Every process started is stopped by its PID; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/tls-fanout}
NS=${NS:-1000 10000}
PAYLOADS=${PAYLOADS:-snapshot small}
MODES=${MODES:-plain tls}
ROUNDS=${ROUNDS:-2}
TICKS=${TICKS:-6}
INTERVAL=${INTERVAL:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-18970}
COMPRESSION=${COMPRESSION:-off}
SAMPLE=${SAMPLE:-10}
deflate=()
[[ $COMPRESSION == on ]] && deflate=(--deflate --deflate-sample "$SAMPLE")
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

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
./target/release/examples/large_snapshot > "$OUT/snapshot.json"
python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
snapshot = json.load(open(f"{out}/snapshot.json"))
json.dump({"type": "metrics", "channel": "metrics", "data": snapshot},
          open(f"{out}/publish-snapshot.json", "w"), separators=(",", ":"))
small = [{"type": "metrics", "channel": "metrics",
          "data": {"broker": i % 3, "topic": f"orders-{i}", "partition": i % 12,
                   "bytesInPerSec": 1000.5 + i, "messagesInPerSec": 20 + i,
                   "lag": 17 * i, "state": "Stable", "members": 4}} for i in range(100)]
json.dump(small, open(f"{out}/publish-small.json", "w"), separators=(",", ":"))
EOF

scheme() { [[ $1 == tls ]] && echo https || echo http; }
scrape() { curl -skf --max-time 30 "$(scheme "$1")://localhost:$PORT/metrics" > "$OUT/.metrics"; }
metric() { awk -v n="$1" '$1 == n { print $2 }' "$OUT/.metrics"; }
publish() {
    taskset -c "$LOADGEN_CPU" curl -skf --max-time 30 -o /dev/null \
        -H 'Content-Type: application/json' --data-binary @"$OUT/publish-$2.json" \
        "$(scheme "$1")://localhost:$PORT/api/monitoring/publish"
}

results="$OUT/results.tsv"
printf 'round\tN\tpayload\tmode\tdeliveries\tserver_cpu_s\tus_per_delivery\tloadgen_cpu_s\tbytes_written\twrites\tframes_per_write\n' > "$results"
hold=$(( TICKS * INTERVAL + 8 ))
for round in $(seq "$ROUNDS"); do
  for n in $NS; do
    for payload in $PAYLOADS; do
      for mode in $MODES; do
        echo "== round $round, $n dashboards, $payload, $mode"
        tls=(); url=(); scheme_url="ws"
        if [[ $mode == tls ]]; then
            tls=(--tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem")
            url=(--subscribe-url "wss://localhost:$PORT/api/monitoring/ws" --tls-ca "$OUT/cert.pem")
        fi
        taskset -c "$SERVER_CPU" "$SERVER" --listen "127.0.0.1:$PORT" --cpu-list "$SERVER_CPU" \
            --source none --metrics-interval 100000 --compression "$COMPRESSION" "${tls[@]}" \
            > "$OUT/server-$round-$n-$payload-$mode.log" 2>&1 &
        server=$!
        pids+=("$server")
        wait_port "$PORT" 200
        report="$OUT/loadgen-$round-$n-$payload-$mode.json"
        taskset -c "$LOADGEN_CPU" timeout $(( hold + 120 )) "$LOADGEN" metrics --subscribers "$n" \
            --duration "${hold}s" --metrics-interval "${INTERVAL}s" --server "127.0.0.1:$PORT" \
            "${url[@]}" "${deflate[@]}" --server-pid "$server" --json --quiet \
            > "$report" 2> "$OUT/loadgen-$round-$n-$payload-$mode.err" &
        lg=$!
        pids+=("$lg")
        connected=0
        for _ in $(seq 600); do
            scrape "$mode"; connected=$(metric takhin_connections)
            (( connected >= n )) && break
            sleep 0.1
        done
        (( connected >= n )) || { echo "only $connected of $n connected" >&2; exit 1; }
        sleep 2
        scrape "$mode"; b0=$(metric takhin_sent_bytes_total); w0=$(metric takhin_writes_total)
        f0=$(metric takhin_frames_sent_total)
        for _ in $(seq "$TICKS"); do
            publish "$mode" "$payload"
            sleep "$INTERVAL"
        done
        scrape "$mode"; b1=$(metric takhin_sent_bytes_total); w1=$(metric takhin_writes_total)
        f1=$(metric takhin_frames_sent_total)
        wait "$lg" || echo "   loadgen exited $? (see $OUT/loadgen-$round-$n-$payload-$mode.err)"
        pids=("${pids[@]/$lg}")
        kill "$server"; wait "$server" 2>/dev/null || true
        pids=("${pids[@]/$server}")
        python3 - "$round" "$n" "$payload" "$mode" "$b0" "$b1" "$w0" "$w1" "$f0" "$f1" "$report" \
            >> "$results" <<'EOF'
import json, sys
round_, n, payload, mode, b0, b1, w0, w1, f0, f1, path = sys.argv[1:]
r = json.loads(open(path).read().strip().splitlines()[-1])
d = r["deliveries"]
cpu = r.get("server_cpu_s") or float("nan")
writes = float(w1) - float(w0)
frames = float(f1) - float(f0)
row = [round_, n, payload, mode, d, "%.3f" % cpu, "%.3f" % (cpu * 1e6 / d if d else float("nan")),
       "%.3f" % (r.get("loadgen_cpu_s") or float("nan")), "%.0f" % (float(b1) - float(b0)),
       "%.0f" % writes, "%.1f" % (frames / writes if writes else float("nan"))]
print("\t".join(str(x) for x in row))
print("   %s deliveries, server %s s CPU = %s us/delivery, loadgen %s s, %s B written, %s writes, "
      "%s frames/write" % tuple(row[4:]), file=sys.stderr)
EOF
        sleep 1
      done
    done
  done
done
echo "== results: $results"
column -t "$results"
