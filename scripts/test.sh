#!/usr/bin/env bash
# The whole test suite: builds the plugins for wasm32-wasip2 once, then runs
# every unit test (host, SDK, plugins natively) and the integration tests in
# tests/all (real plugins, the tessera binary).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh
cargo test --workspace --exclude misbehave "$@"
