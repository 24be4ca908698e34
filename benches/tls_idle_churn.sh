#!/usr/bin/env bash
# TLS against plain text on the hub's port (BENCHMARKS.md "TLS on the hub's port (issue 18)"):
# memory per idle connection at 1,000 and 10,000 connections, and handshakes: the rate and the
# server's CPU per handshake, plain, TLS full (ECDSA P-256 certificate) and TLS resumed (tickets).
#
# The server (`--source none --cores 1`, pinned to SERVER_CPU) and loadgen (pinned to
# LOADGEN_CPU) run one at a time per mode:
#   idle   `loadgen idle --subscribers N --server-pid` (the server's resident memory before and
#          after N connections that stay idle), with TLS over wss:// trusting the certificate
#   churn  `loadgen churn --rate 0 --duration DURATION --server-pid` (connect, upgrade, close, as
#          fast as they go): plain; TLS with `--tls-no-resume` (every handshake full); TLS with
#          resumption (loadgen's shared session cache: tickets)
#
#   benches/tls_idle_churn.sh [OUT_DIR]     # default /tmp/tls-idle-churn
#   env: NS ("1000 10000"), ROUNDS (2), DURATION (5s), SERVER_CPU (0), LOADGEN_CPU (1),
#        PORT (18980)
#
# Every process started is stopped by its PID; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/tls-idle-churn}
NS=${NS:-1000 10000}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5s}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-18980}
mkdir -p "$OUT"
ulimit -Sn "$(ulimit -Hn)"
ulimit -Sl "$(ulimit -Hl)"
cargo build --release -q -p takhin-monitor -p loadgen --bin takhin-monitor --bin loadgen
SERVER=./target/release/takhin-monitor
LOADGEN=./target/release/loadgen
pids=()
trap 'for p in "${pids[@]}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done' EXIT
. benches/lib.sh   # wait_port

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

# run NAME TLS(0|1) LOADGEN-ARGS...: one server, one loadgen run, its JSON report kept.
run() {
    local name=$1 tls=$2; shift 2
    local server_tls=() url=()
    if (( tls )); then
        server_tls=(--tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem")
        url=(--subscribe-url "wss://localhost:$PORT/api/monitoring/ws" --tls-ca "$OUT/cert.pem")
    fi
    taskset -c "$SERVER_CPU" "$SERVER" --listen "127.0.0.1:$PORT" --cpu-list "$SERVER_CPU" \
        --source none --metrics-interval 3600 "${server_tls[@]}" > "$OUT/server-$name.log" 2>&1 &
    local server=$!
    pids+=("$server")
    wait_port "$PORT" 200
    taskset -c "$LOADGEN_CPU" timeout 300 "$LOADGEN" "$@" --server "127.0.0.1:$PORT" "${url[@]}" \
        --server-pid "$server" --json --quiet > "$OUT/$name.json" 2> "$OUT/$name.err" \
        || echo "   loadgen exited $? (see $OUT/$name.err)"
    kill "$server"; wait "$server" 2>/dev/null || true
    pids=("${pids[@]/$server}")
}

for round in $(seq "$ROUNDS"); do
    for n in $NS; do
        for mode in plain tls; do
            tls=0; [[ $mode == tls ]] && tls=1
            echo "== round $round: $n idle connections, $mode"
            run "idle-$round-$n-$mode" "$tls" idle --subscribers "$n" --duration 3s
        done
    done
    for mode in plain tls-full tls-resumed; do
        echo "== round $round: churn, $mode"
        case $mode in
            plain) run "churn-$round-$mode" 0 churn --rate 0 --duration "$DURATION" ;;
            tls-full) run "churn-$round-$mode" 1 churn --rate 0 --duration "$DURATION" --tls-no-resume ;;
            tls-resumed) run "churn-$round-$mode" 1 churn --rate 0 --duration "$DURATION" ;;
        esac
    done
done

python3 - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
def report(path):
    return json.loads(open(path).read().strip().splitlines()[-1])
print("run\tconnections_or_handshakes\thandshakes_per_s\tfull/resumed\tserver_bytes_per_connection\tserver_cpu_s\tus_per_handshake\tloadgen_cpu_s")
for path in sorted(glob.glob(f"{out}/*.json")):
    name = os.path.basename(path)[:-5]
    r = report(path)
    tls = r.get("tls") or {}
    kinds = f"{tls.get('full', '-')}/{tls.get('resumed', '-')}"
    if name.startswith("idle"):
        print(f"{name}\t{r['connected']}\t\t{kinds}\t{r['server_rss_per_conn']:.0f}\t\t\t{r['loadgen_cpu_s']:.2f}")
    else:
        hs, cpu = r["handshakes"], r["server_cpu_s"]
        print(f"{name}\t{hs}\t{r['handshakes_per_sec']:.0f}\t{kinds}\t\t{cpu:.2f}\t{cpu * 1e6 / hs:.1f}\t{r['loadgen_cpu_s']:.2f}")
EOF
