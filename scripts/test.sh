#!/usr/bin/env bash
# The whole test suite: builds the plugins for wasm32-wasip2 once, then runs
# every unit test (host, SDK, plugins natively) and the integration tests in
# tests/all (real plugins, the tessera binary). Ends with one total line.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --exclude misbehave --exclude misbehave-late --exclude store-choice "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit $status
