#!/usr/bin/env bash
# Builds every plugin we ship, and the test-only ones, as wasm32-wasip2
# components into target/wasm32-wasip2/release/*.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2 \
  -p json-parser -p windowed-counter -p late-default -p misbehave -p misbehave-late -p late-drop -p likes-counter "$@"
