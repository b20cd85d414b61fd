#!/usr/bin/env bash
# The whole test suite: builds the plugins for wasm32-wasip2 once, then runs
# every unit test (host, SDK, plugins natively) and the integration tests in
# tests/all (real plugins, the tessera binary). Ends with one total line.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
# The container test builds the image with Debian's buildah: install it if
# it is missing (the test fails, saying so, where that is impossible).
if ! command -v buildah >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y --no-install-recommends buildah >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends buildah >/dev/null 2>&1; } \
        || echo "could not install buildah; the container test will fail" >&2
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --exclude misbehave --exclude misbehave-late --exclude store-choice "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit $status
