#!/usr/bin/env bash
# The fan-out engine's own ceiling (BENCHMARKS.md, "The engine's own ceiling"): the hub on one
# core, fed by a publisher thread in its own process (examples/engine_ceiling.rs) through
# Broadcaster::publish_raw (publish_raw_batch with BATCH > 1), so no publish request, HTTP
# parse or publisher round trip stands between the schedule and the rings. The messages are
# loadgen's own stamped ones; `loadgen fanout --listen-only` subscribers time and count them.
# The shard runs on CPU 0, the publisher thread and loadgen share CPU 1. Every run is bounded
# (the example stops by itself, loadgen after SECS + DRAIN); every process is stopped by its PID.
#
#   benches/engine_ceiling.sh [OUT_DIR]         one run: loadgen's report, then the figures
#   benches/engine_ceiling.sh ramp [OUT_DIR]    one run per rate of RATES, a line each, then the
#                                               highest rate whose p99 stayed under P99_MS ms
#                                               (losing at most MAX_LOSS of its deliveries)
#
# Environment (defaults): SUBS (1000) subscribers, RATE (1000) msg/s, SIZE (256) bytes, SECS (10)
# seconds of publishing (per step), BATCH (1) messages per publish call, RATES ("1000 2000 4000
# 6000 8000 12000 16000"), P99_MS (50), MAX_LOSS (0: the fraction of deliveries a held step may
# lose), DRAIN (2: seconds loadgen keeps listening after the publisher's end), PORT (18990),
# SHARD_CPU (0), PUB_CPU (1), LG_CPU (1), LG_ARGS (extra loadgen arguments, e.g. "--deflate":
# subscribers that negotiate compression). Output (logs, loadgen's JSON) in OUT_DIR, default
# /tmp/engine-ceiling.
#
# The figures: delivered/s is loadgen's deliveries over the publisher's elapsed time; loss is
# published x connected - deliveries (loadgen's own definition, which --listen-only cannot
# apply: it does not know what was published); CPU is the example process's utime+stime from
# /proc/PID/stat (and its shard thread's from /proc/PID/task/TID/stat) between the publisher's
# start and end, per frame the hub wrote over the same span; frames per write is the delta of
# takhin_frames_sent_total over that of takhin_writes_total in /metrics over that span.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=once
if [[ ${1:-} == ramp || ${1:-} == once ]]; then MODE=$1; shift; fi
OUT=${1:-/tmp/engine-ceiling}
SUBS=${SUBS:-1000}
RATE=${RATE:-1000}
SIZE=${SIZE:-256}
SECS=${SECS:-10}
BATCH=${BATCH:-1}
RATES=${RATES:-1000 2000 4000 6000 8000 12000 16000}
P99_MS=${P99_MS:-50}
MAX_LOSS=${MAX_LOSS:-0}
DRAIN=${DRAIN:-2}
PORT=${PORT:-18990}
SHARD_CPU=${SHARD_CPU:-0}; PUB_CPU=${PUB_CPU:-1}; LG_CPU=${LG_CPU:-1}
mkdir -p "$OUT"
ulimit -Sl "$(ulimit -Hl)"   # glommio locks its io_uring memory
ulimit -Sn "$(ulimit -Hn)"
cargo build --release -q --example engine_ceiling -p takhin-monitor
cargo build --release -q -p loadgen
EXAMPLE=./target/release/examples/engine_ceiling
LOADGEN=./target/release/loadgen
HZ=$(getconf CLK_TCK)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

. benches/lib.sh   # wait_port (the script runs from the repo root)
wait_line() {  # file pattern pid seconds: until the line is written (or the process ends)
    local end=$((SECONDS + $4))
    until grep -q "$2" "$1"; do
        if ! kill -0 "$3" 2>/dev/null || ((SECONDS > end)); then
            echo "no '$2' in $1:" >&2; cat "$1" >&2; exit 1
        fi
        sleep 0.01
    done
}
ticks() {  # a stat file: utime + stime, in clock ticks (0 if gone)
    local line f
    read -r line 2>/dev/null <"$1" || { echo 0; return; }
    read -r -a f <<<"${line##*) }"   # fields from the 3rd (state) on, after the command name
    echo $((f[11] + f[12]))
}
snapshot() {  # pid: "ns process_ticks shard_ticks frames_sent writes"
    local t shard=0
    for t in /proc/"$1"/task/*; do
        # glommio's executor thread and its helper, "takhin-shard-0-..." cut to 15 characters
        if [[ $(cat "$t/comm" 2>/dev/null) == takhin-shard-0* ]]; then
            shard=$((shard + $(ticks "$t/stat")))
        fi
    done
    echo "$(date +%s%N) $(ticks /proc/"$1"/stat) $shard $(curl -s --max-time 2 \
        "http://127.0.0.1:$PORT/metrics" | awk '$1 == "takhin_frames_sent_total" { f = $2 }
            $1 == "takhin_writes_total" { w = $2 } END { printf "%d %d", f, w }')"
}

run_step() {  # label rate: the example and loadgen, once; leaves the two snapshots in $OUT
    local label=$1 rate=$2 server lg
    local log="$OUT/$label.server.log" json="$OUT/$label.loadgen.json"
    taskset -c "$SHARD_CPU,$PUB_CPU" "$EXAMPLE" --listen "127.0.0.1:$PORT" \
        --shard-cpu "$SHARD_CPU" --publisher-cpu "$PUB_CPU" --subscribers "$SUBS" \
        --rate "$rate" --size "$SIZE" --duration "${SECS}s" --batch "$BATCH" \
        --wait 60s --linger "$((SECS + DRAIN + 30))s" >"$log" 2>&1 &
    server=$!; pids+=("$server")
    wait_port "$PORT"
    taskset -c "$LG_CPU" "$LOADGEN" fanout --listen-only --server "127.0.0.1:$PORT" \
        --subscribers "$SUBS" --size "$SIZE" --duration "$((SECS + DRAIN))s" ${LG_ARGS:-} \
        --json --quiet >"$json" 2>&1 &
    lg=$!; pids+=("$lg")
    wait_line "$log" '^publishing' "$server" 90
    snapshot "$server" >"$OUT/$label.before"
    wait_line "$log" '^published' "$server" $((SECS + 30))
    snapshot "$server" >"$OUT/$label.after"
    wait "$lg" || true   # 2 when loadgen saw failures: they are in its report
    # The example ends 2 s after its subscribers leave; it is stopped if it has not.
    for _ in $(seq 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill "$server" 2>/dev/null || true
    wait "$server" || echo "   (the example exited with status $?: see $log)"
    pids=()
}

figures() {  # mode label rate: prints the figures; status 3 when the step broke
    python3 - "$@" "$OUT" "$HZ" "$P99_MS" "$MAX_LOSS" <<'EOF'
import json, re, sys
mode, label, rate, out, hz, p99_ms, max_loss = sys.argv[1:]
hz, rate = float(hz), float(rate)
log = open(f"{out}/{label}.server.log").read()
pub = re.search(r"^published (\d+) messages .* in ([\d.]+) s", log, re.M)
pcpu = re.search(r"thread CPU ([\d.]+) s", log)
lines = open(f"{out}/{label}.loadgen.json").read().strip().splitlines()
try:
    r = json.loads(lines[-1])
except (IndexError, ValueError):
    sys.exit(f"no loadgen report in {out}/{label}.loadgen.json")
t0, c0, s0, f0, w0 = map(int, open(f"{out}/{label}.before").read().split())
t1, c1, s1, f1, w1 = map(int, open(f"{out}/{label}.after").read().split())
published, elapsed = int(pub[1]), float(pub[2])
window = (t1 - t0) / 1e9
cpu, shard = (c1 - c0) / hz, (s1 - s0) / hz
frames, writes = f1 - f0, w1 - w0
deliveries, connected = r["deliveries"], r["connected"]
lost = max(0, published * connected - deliveries)
loss = lost / max(1, published * connected)
lat = r["latency_us"]
per = lambda s: s / frames * 1e6 if frames else float("nan")
fpw = frames / writes if writes else float("nan")
held = lat["p99"] < float(p99_ms) * 1000 and loss <= float(max_loss) and connected > 0
ms = lambda us: f"{us / 1000:.1f}"
if mode == "once":
    print(f"== figures: offered {rate:.0f} msg/s, published {published} in {elapsed:.3f} s "
          f"({published / elapsed:.0f} msg/s) to {connected} subscribers")
    print(f"   delivered   {deliveries} ({deliveries / elapsed / 1e6:.3f} M/s over the publisher's "
          f"time); lost {lost} ({loss * 100:.4f}%), gaps {r['gaps']}, "
          f"lagged notices {r['lagged']} ({r['lagged_dropped']} dropped)")
    print(f"   latency     p50 {ms(lat['p50'])} ms, p99 {ms(lat['p99'])} ms, "
          f"p99.9 {ms(lat['p999'])} ms, max {ms(lat['max'])} ms")
    print(f"   server CPU  {cpu:.2f} s over {window:.2f} s of publishing ({cpu / window * 100:.0f}% "
          f"of a core): shard thread {shard:.2f} s ({shard / window * 100:.0f}%), publisher "
          f"thread {float(pcpu[1]) if pcpu else float('nan'):.3f} s")
    print(f"   per frame   {frames} frames written over the span: {per(cpu):.3f} µs of server "
          f"CPU each, {per(shard):.3f} µs of the shard's; {fpw:.1f} frames per write")
    print(f"   loadgen CPU {r['loadgen_cpu_s']:.2f} s")
else:
    print(f"{rate:>8.0f} {published / elapsed:>9.0f} {deliveries / elapsed / 1e6:>8.3f}M "
          f"{ms(lat['p50']):>7} {ms(lat['p99']):>7} {ms(lat['max']):>7} {loss * 100:>8.4f} "
          f"{shard / window * 100:>6.0f} {cpu / window * 100:>6.0f} {per(shard):>8.3f} "
          f"{fpw:>7.1f}  {'held' if held else 'broke'}")
sys.exit(0 if held else 3)
EOF
}

echo "== engine ceiling: $SUBS subscribers, $SIZE B, batch $BATCH, ${SECS} s per run; shard on" \
    "CPU $SHARD_CPU, publisher thread on CPU $PUB_CPU, loadgen on CPU $LG_CPU; output in $OUT"
if [[ $MODE == once ]]; then
    run_step once "$RATE"
    cat "$OUT/once.server.log"
    sed '$d' "$OUT/once.loadgen.json"   # loadgen's report without its JSON line
    figures once once "$RATE" || true
else
    best=""
    printf '%8s %9s %9s %7s %7s %7s %8s %6s %6s %8s %7s\n' offered published delivered \
        p50ms p99ms maxms loss% shard% proc% us/frame fr/wr
    for rate in $RATES; do
        run_step "ramp-$rate" "$rate"
        rc=0; figures ramp "ramp-$rate" "$rate" || rc=$?
        if ((rc == 0)); then
            if ((rate > ${best:-0})); then best=$rate; fi
        elif ((rc != 3)); then exit "$rc"; fi
    done
    echo "highest rate with p99 under $P99_MS ms and loss at most $MAX_LOSS: ${best:-none} msg/s" \
        "($SUBS subscribers: $((${best:-0} * SUBS)) deliveries/s)"
fi
echo "results in $OUT"
