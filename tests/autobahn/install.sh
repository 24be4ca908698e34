#!/usr/bin/env bash
# Installs the original Autobahn|Testsuite (`wstest`, autobahntestsuite 25.10.1, Python 2 only) for
# tests/autobahn/run.sh. Debian bookworm has no python2, so CPython 2.7.18 comes from Debian 11
# bullseye .debs: fetched with `apt-get download` under a private apt state and unpacked with
# `dpkg -x` into $AUTOBAHN_STATE (default /tmp/takhin-autobahn). Nothing is installed system-wide;
# the system's apt sources and dpkg database are left as they are. Then pip 20.3.4 (the last pip for
# Python 2) from its PyPI wheel, and autobahntestsuite with its pinned dependencies (autobahn
# 0.10.9, Twisted 19.10.0; the C extensions are compiled against the unpacked headers). Those pins
# include what the fuzzing client needs for wss:// (run.sh --tls): pyOpenSSL 19.1.0,
# cryptography 3.3.2 (its manylinux cp27 wheel, with OpenSSL 1.1.1i inside) and
# service-identity 18.1.0; the last lines check that they import.
#
# Needs: apt-get, dpkg, python3 (for pip download), gcc. Idempotent: a second run takes a second.
# About 2 minutes from scratch.
set -euo pipefail
. "$(dirname "$0")/env.sh"
R="$AUTOBAHN_STATE/py27/root"
tls_check() {   # wss:// support in wstest's Python: Twisted's TLS on pyOpenSSL
    PYTHONHOME="$R/usr" LD_LIBRARY_PATH="$R/usr/lib/x86_64-linux-gnu" "$R/usr/bin/python2.7" \
        -W ignore -c 'import OpenSSL, service_identity, twisted.internet.ssl as s; s.ClientContextFactory().getContext(); print("pyOpenSSL " + OpenSSL.__version__ + ", " + OpenSSL.SSL.SSLeay_version(OpenSSL.SSL.SSLEAY_VERSION))'
}
if [ -x "$R/usr/local/bin/wstest" ]; then "$AUTOBAHN_DIR/wstest.sh" -a | tail -1; tls_check; exit 0; fi
command -v gcc >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends gcc libc6-dev; }
A="$AUTOBAHN_STATE/apt-bullseye"
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/etc/preferences.d" "$A/etc/sources.list.d" \
         "$AUTOBAHN_STATE/py27/debs" "$R"
touch "$A/status"
echo "deb http://deb.debian.org/debian bullseye main" > "$A/etc/sources.list"
O=(-o "Dir::Etc::SourceList=$A/etc/sources.list" -o "Dir::Etc::SourceParts=$A/etc/sources.list.d"
   -o "Dir::Etc::Preferences=$A/etc/preferences" -o "Dir::Etc::PreferencesParts=$A/etc/preferences.d"
   -o "Dir::State::Lists=$A/lists" -o "Dir::State::status=$A/status" -o "Dir::Cache=$A/cache"
   -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root")
apt-get -q "${O[@]}" update
(cd "$AUTOBAHN_STATE/py27/debs" && apt-get -q "${O[@]}" download python2.7 python2.7-minimal \
    libpython2.7-minimal libpython2.7-stdlib libpython2.7 libpython2.7-dev python2.7-dev libssl1.1 libffi7)
for d in "$AUTOBAHN_STATE"/py27/debs/*.deb; do dpkg -x "$d" "$R"; done
python3 -m pip download -q --no-deps -d "$AUTOBAHN_STATE/py27/wheels" pip==20.3.4
export PYTHONHOME="$R/usr" LD_LIBRARY_PATH="$R/usr/lib/x86_64-linux-gnu" \
       PIP_CACHE_DIR="$AUTOBAHN_STATE/py27/pipcache" \
       CFLAGS="-I$R/usr/include -I$R/usr/include/python2.7" LDFLAGS="-L$R/usr/lib/x86_64-linux-gnu"
"$R/usr/bin/python2.7" "$AUTOBAHN_STATE/py27/wheels/pip-20.3.4-py2.py3-none-any.whl/pip" install -q \
    --no-warn-script-location --no-python-version-warning pip==20.3.4 setuptools==44.1.1 wheel==0.37.1
"$R/usr/bin/python2.7" -m pip install -q --no-warn-script-location --no-python-version-warning \
    autobahntestsuite==25.10.1
unset PYTHONHOME LD_LIBRARY_PATH CFLAGS LDFLAGS
"$AUTOBAHN_DIR/wstest.sh" -a | tail -1
tls_check
