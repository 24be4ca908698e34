#!/usr/bin/env bash
# Autobahn|Testsuite (the original `wstest`, installed by ./install.sh) against examples/echo.rs,
# which serves with the hub's own connection code. Runs cases 1-7 and 10, the 9.* cases within
# our 512 KiB message limit, and 12-13 (permessage-deflate: compressed messages of 16 B to
# 128 KiB each way, under every offer of window and context takeover), then compares every
# case's verdict (behavior and behaviorClose) with expected.json, as tungstenite's CI does: any
# difference, FAILED or not, fails the run.
#
#   tests/autobahn/run.sh            install if needed, run, compare
#   tests/autobahn/run.sh --update   run and write expected.json from this run (review the diff!
#                                    with AUTOBAHN_CASES=all, so that it holds every case)
#   tests/autobahn/run.sh --tls      the same over TLS (or AUTOBAHN_TLS=1): echo serves wss://
#                                    with a self-signed certificate made for the run; the
#                                    verdicts are compared with the same expected.json
#
# Over TLS, CI runs the same 383 cases as in plain: the cases take about as long as in plain
# (here 78 s against 70 s, the whole run; wstest's Python is the slow side either way), so
# there is no subset. All 479 cases over TLS took 7 minutes here.
# The fuzzing client negotiates TLS 1.3 (OpenSSL 1.1.1 of the cryptography wheel) and checks no
# certificate. Every case over TLS: AUTOBAHN_CASES=all tests/autobahn/run.sh --tls.
#
# The full report: $AUTOBAHN_STATE/reports/index.html, or reports-tls/ (and index.json, one JSON
# per case).
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$AUTOBAHN_DIR/../.."
update=0; tls=${AUTOBAHN_TLS:-0}
for arg; do
    case $arg in
        --update) update=1 ;;
        --tls) tls=1 ;;
        *) echo "usage: $0 [--update] [--tls]" >&2; exit 2 ;;
    esac
done
[ "$tls" = 1 ] && [ "$update" = 1 ] && { echo "--update is for the plain run" >&2; exit 2; }

"$AUTOBAHN_DIR/install.sh" >/dev/null
cargo build --release --quiet --example echo
ulimit -Sl "$(ulimit -Hl)" 2>/dev/null || true   # glommio's io_uring memory

out="$AUTOBAHN_STATE/reports"; [ "$tls" = 1 ] && out="$AUTOBAHN_STATE/reports-tls"
rm -rf "$out"; mkdir -p "$out"
echo_args=()
if [ "$tls" = 1 ]; then
    # A fresh self-signed P-256 certificate for this run. wstest's fuzzingclient verifies
    # nothing: without a "hostname" in the spec it uses Twisted's ClientContextFactory (no
    # verification, no SNI).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -days 2 \
        -keyout "$out/key.pem" -out "$out/cert.pem" 2>"$out/openssl.log" \
        || { cat "$out/openssl.log"; exit 1; }
    echo_args=(--tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
fi
# Port 0: the echo server prints the address it got.
target/release/examples/echo 127.0.0.1:0 "${echo_args[@]}" > "$out/echo.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q '^echo on ' "$out/echo.log" && break; sleep 0.1; done
url=$(sed -n 's/^echo on //p' "$out/echo.log")
[ -n "$url" ] || { cat "$out/echo.log"; exit 1; }
scheme=ws; [ "$tls" = 1 ] && scheme=wss
[[ $url == "$scheme://"* ]] || { echo "echo serves $url, not $scheme://" >&2; exit 1; }

# 9.*: only what fits our 512 KiB limit (9.1.1/9.1.2 and 9.2.1/9.2.2 are 64 and 256 KiB; 9.7/9.8
# are 1000 small round trips). The others are 1 to 16 MiB messages, closed with 1009 by design.
# 12.*/13.*: 1000 compressed round trips per case, 16 B to 128 KiB, whole or fragmented, under
# every offer. The cases of 32-128 KiB messages (sizes 9, 10 and 13-18 of each group) take 10
# of the 13 minutes the suite then needs (wstest's Python is the slow side): CI runs the others,
# which hold every offer, size up to 32 KiB and fragmentation; AUTOBAHN_CASES=all runs them too.
exclude='"12.*.9", "12.*.10", "12.*.13", "12.*.14", "12.*.15", "12.*.16", "12.*.17", "12.*.18",
         "13.*.9", "13.*.10", "13.*.13", "13.*.14", "13.*.15", "13.*.16", "13.*.17", "13.*.18"'
[ "${AUTOBAHN_CASES:-}" = all ] && exclude=''
cat > "$out/spec.json" <<JSON
{ "outdir": "$out", "servers": [ { "agent": "takhin-monitor", "url": "$url" } ],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.1.1", "9.1.2", "9.2.1", "9.2.2",
            "9.7.*", "9.8.*", "10.*", "12.*", "13.*"],
  "exclude-cases": [$exclude], "exclude-agent-cases": {} }
JSON
(cd "$out" && "$AUTOBAHN_DIR/wstest.sh" -m fuzzingclient -s "$out/spec.json" > "$out/wstest.log" 2>&1) \
    || { tail -20 "$out/wstest.log"; exit 1; }
kill $pid; wait $pid 2>/dev/null || true; trap - EXIT

label=autobahn; [ "$tls" = 1 ] && label="autobahn over TLS"
python3 - "$out/index.json" "$AUTOBAHN_DIR/expected.json" "$update" "$label" <<'PY'
import collections, json, sys
index, expected_path, update, label = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
key = lambda s: [int(x) for x in s.split(".")]
got = {case: {"behavior": v["behavior"], "behaviorClose": v["behaviorClose"]}
       for case, v in json.load(open(index))["takhin-monitor"].items()}
got = dict(sorted(got.items(), key=lambda kv: key(kv[0])))
counts = collections.Counter(v["behavior"] for v in got.values())
print(f"{label}: {len(got)} cases: " + ", ".join(f"{n} {b}" for b, n in sorted(counts.items())))
if update:
    with open(expected_path, "w") as f:
        json.dump(got, f, indent=1)
        f.write("\n")
    print(f"wrote {expected_path}")
    sys.exit(0)
expected = json.load(open(expected_path))
# expected.json holds every case of a full run (AUTOBAHN_CASES=all); a shorter run is compared
# on the cases it ran, and must have run some.
if not got:
    sys.exit(f"{label}: no case ran")
bad = [c for c in sorted(got, key=key) if got.get(c) != expected.get(c)]
for c in bad:
    print(f"  {c}: expected {expected.get(c)}, got {got.get(c)}")
failed = [c for c, v in got.items() if v["behavior"] == "FAILED" or v["behaviorClose"] == "FAILED"]
if bad or failed:
    print(f"{label}: {len(bad)} cases differ from expected.json, {len(failed)} FAILED")
    sys.exit(1)
print(f"{label}: every case as expected.json")
PY
