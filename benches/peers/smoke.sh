#!/usr/bin/env bash
# Smoke test of the peer hubs in peers.tsv:  benches/peers/smoke.sh [NAME ...]   (default: all)
# For each peer: start it (its start.sh, in the background, by PID), wait for its ports,
# subscribe 2 clients and publish one message by HTTP POST (smoke_client.py), stop it by PID.
# Prints ok/FAIL per peer; exits 1 if any failed. Logs: $PEERS_STATE/smoke-NAME.log.
set -uo pipefail
cd "$(dirname "$0")"; . ./env.sh
PY="$PEERS_STATE/venv/bin/python"
[ -x "$PY" ] || { echo "no venv at $PEERS_STATE/venv: run benches/peers/install.sh python" >&2; exit 1; }
port_of() { sed -E 's#^[a-z]+://[^:/]+:([0-9]+)/.*#\1#' <<<"$1"; }
wait_port() {  # PORT PID: until the port accepts, the server exits, or 10 s
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done; return 1
}
want=("$@"); fail=0; seen=0
while IFS=$'\t' read -r name start ws pub _; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  if [ ${#want[@]} -gt 0 ] && [[ " ${want[*]} " != *" $name "* ]]; then continue; fi
  seen=$((seen + 1))
  log="$PEERS_STATE/smoke-$name.log"
  if (exec 3<>"/dev/tcp/127.0.0.1/$(port_of "$ws")") 2>/dev/null; then
    echo "FAIL  $name   (port $(port_of "$ws") already in use by another process)"; fail=1; continue
  fi
  "./$start" > "$log" 2>&1 & pid=$!
  if wait_port "$(port_of "$ws")" "$pid" && wait_port "$(port_of "$pub")" "$pid" \
     && "$PY" smoke_client.py "$ws" "$pub" >> "$log" 2>&1; then
    echo "ok    $name"
  else
    echo "FAIL  $name   (log: $log)"; tail -n 5 "$log" | sed 's/^/      /'; fail=1
  fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
done < peers.tsv
[ "$seen" -gt 0 ] || { echo "no peer matched: ${want[*]}" >&2; exit 1; }
exit $fail
