#!/usr/bin/env bash
# Idempotent installer for the peer hubs that takhin-monitor is benchmarked against.
# Sources stay in benches/peers; everything built or downloaded goes to $PEERS_STATE
# (default /tmp/takhin-peers): the venv, node_modules, caches, cargo home/target, binaries.
# Only the apt section touches the system (root; apt-get runs only for packages that are missing).
#
#   benches/peers/install.sh                 all sections: apt python node go rust
#   benches/peers/install.sh SECTION ...     any of those
#
# Prerequisites not installed here: python3, node + npm, cargo (rustup). Registries used: Debian
# (apt), PyPI (pip), npm, crates.io. Go builds in GOPATH mode against Debian's gorilla package,
# so the Go module proxy is never contacted.
set -euo pipefail
cd "$(dirname "$0")"; . ./env.sh
mkdir -p "$PEERS_STATE/bin"
log() { printf '\n== %s\n' "$*"; }
T0=$SECONDS

sec_apt() {
  local pkgs=(nginx libnginx-mod-nchan golang-go golang-github-gorilla-websocket-dev) missing=()
  # python3-venv only when the python3 on PATH cannot make a venv with pip (Debian's python3).
  python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
  log "apt: ${pkgs[*]}"
  for p in "${pkgs[@]}"; do dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then echo "all installed"; return; fi
  # nginx's postinst must not start the system nginx on 0.0.0.0:80: make invoke-rc.d refuse
  # (only if no policy-rc.d exists yet; ours is removed afterwards). We run nginx by hand.
  local added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; added_policy=1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ $added_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

sec_python() {
  local V=17.4   # websockets version the comparison was run with
  log "python: venv $PEERS_STATE/venv with websockets==$V"
  [ -x "$PEERS_STATE/venv/bin/python" ] || python3 -m venv "$PEERS_STATE/venv"
  if [ "$("$PEERS_STATE/venv/bin/python" -c 'import websockets; print(websockets.__version__)' 2>/dev/null)" != "$V" ]; then
    PIP_CACHE_DIR="$PEERS_STATE/pip-cache" "$PEERS_STATE/venv/bin/pip" install -q --disable-pip-version-check "websockets==$V"
  fi
  "$PEERS_STATE/venv/bin/python" -c 'import websockets; print("websockets", websockets.__version__)'
}

sec_node() {
  local N="$PEERS_STATE/node"
  log "node: ws + bufferutil from node-ws/package-lock.json into $N"
  mkdir -p "$N"
  if [ -f node-ws/package-lock.json ] && cmp -s node-ws/package-lock.json "$N/package-lock.json" \
     && cmp -s node-ws/package.json "$N/package.json" && [ -d "$N/node_modules/ws" ]; then
    echo "up to date"
  else
    cp node-ws/package.json "$N/"
    export npm_config_cache="$PEERS_STATE/npm-cache"
    if [ -f node-ws/package-lock.json ]; then
      cp node-ws/package-lock.json "$N/"
      (cd "$N" && npm ci --no-audit --no-fund --loglevel=error)
    else   # first run only: resolve, then keep the lockfile in the repo
      (cd "$N" && npm install --no-audit --no-fund --loglevel=error)
      cp "$N/package-lock.json" node-ws/package-lock.json
    fi
  fi
  # bufferutil silently falls back to JS when its native prebuild does not load: check the prebuild.
  (cd "$N" && node -e "const p = require('node-gyp-build').path(require('path').dirname(require.resolve('bufferutil')));
    require(p); console.log('ws', require('ws/package.json').version, '+ bufferutil native', p)")
}

sec_go() {
  local B="$PEERS_STATE/bin/go-gorilla-hub"
  log "go: gorilla hub -> $B (GOPATH mode, Debian's gorilla/websocket)"
  if [ -x "$B" ] && [ "$B" -nt go-gorilla/main.go ]; then echo "up to date"; return; fi
  (cd go-gorilla && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOPROXY=off \
     GOCACHE="$PEERS_STATE/go-cache" go build -o "$B" main.go)
  echo "built $B"
}

sec_rust() {
  local T="$PEERS_STATE/cargo-target-rust-hub"
  log "rust: tokio-tungstenite hub -> $PEERS_STATE/bin/rust-tungstenite-hub"
  # Own CARGO_HOME (registry cache) and target dir under $PEERS_STATE; --locked to our Cargo.lock.
  (cd rust-tungstenite && CARGO_HOME="$PEERS_STATE/cargo-home" CARGO_TARGET_DIR="$T" \
     cargo build --release --locked --quiet)
  local B="$PEERS_STATE/bin/rust-tungstenite-hub"
  cmp -s "$T/release/rust-tungstenite-hub" "$B" || { cp "$T/release/rust-tungstenite-hub" "$B.tmp"; mv "$B.tmp" "$B"; }
  echo "ok: $B"
}

sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(apt python node go rust)
for s in "${sections[@]}"; do
  case "$s" in apt|python|node|go|rust) "sec_$s" ;; *) echo "unknown section: $s (apt python node go rust)" >&2; exit 2 ;; esac
done
log "done: ${sections[*]} in $((SECONDS - T0)) s"
