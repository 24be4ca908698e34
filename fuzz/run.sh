#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 20); exits non-zero on a crash.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Only stable Rust is needed. cargo-fuzz's default AddressSanitizer build passes `-Zsanitizer`,
# so it runs with RUSTC_BOOTSTRAP=1; FUZZ_SANITIZER=none builds without ASan on plain stable
# (coverage-guided all the same, but memory errors in unsafe code go unnoticed).
set -euo pipefail

secs=${1:-20}
shift || true
cd "$(dirname "$0")"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_message request_head ws_frames)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

sanitizer=${FUZZ_SANITIZER:-address}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
args=(--sanitizer "$sanitizer")

# Inputs up to a little over the hub's 16 KiB head cap, so the 431 path is reachable.
max_len() {
    case $1 in
        request_head) echo 20000 ;;
        ws_frames) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

cargo fuzz build "${args[@]}"

failed=()
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    mkdir -p "work/$t"
    # New inputs go to work/<target>; the seeds in corpus/<target> are only read.
    if ! cargo fuzz run "${args[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 \
        -print_final_stats=1; then
        echo "!! $t crashed: see fuzz/artifacts/$t/" >&2
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzzed ${targets[*]} for ${secs}s each: no crash"
