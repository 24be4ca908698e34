#!/usr/bin/env bash
# Runs the installed `wstest` (see install.sh) on the unpacked CPython 2.7.
#   tests/autobahn/wstest.sh -a                 prints the versions
#   tests/autobahn/wstest.sh -m fuzzingclient -s SPEC.json
set -euo pipefail
. "$(dirname "$0")/env.sh"
R="$AUTOBAHN_STATE/py27/root"
export PYTHONHOME="$R/usr" LD_LIBRARY_PATH="$R/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$R/usr/bin/python2.7" "$R/usr/local/bin/wstest" "$@"
