#!/usr/bin/env bash
# The quickstart: builds the host and the plugins, runs the example pipeline
# (ShareChat-style windowed counters over examples/data/events.ndjson) on
# embedded defaults, and answers a few window queries.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-plugins.sh --quiet
cargo build --release --quiet -p tessera
TESSERA=${CARGO_TARGET_DIR:-target}/release/tessera
rm -rf examples/out
echo "== running the pipeline over examples/data/events.ndjson"
"$TESSERA" run --config examples/quickstart.toml
echo
echo "== likes of post-0 over the last 2h, at 03:00 UTC (tiles: largest first)"
"$TESSERA" query --config examples/quickstart.toml --feature likes_per_post --entity post-0 --window 2h --at 2026-11-23T03:00:00Z
echo
echo "== interactions of user-7 over the last 30m, at 02:47:30 UTC"
"$TESSERA" query --config examples/quickstart.toml --feature interactions_per_user --entity user-7 --window 30m --at 2026-11-23T02:47:30Z
echo
echo "dead letters: examples/out/dead-letter.ndjson ($(wc -l < examples/out/dead-letter.ndjson) records, with reasons)"
echo "SMB output (Avro, 16 buckets by user, one directory per hour): examples/out/smb/interactions"
echo "  $(grep -c . examples/out/smb/interactions/_commits.ndjson) partition commits in examples/out/smb/interactions/_commits.ndjson"
echo "late events routed aside: examples/out/side-output.ndjson ($(wc -l < examples/out/side-output.ndjson))"
echo "serve the HTTP API: $TESSERA serve --config examples/quickstart.toml"
echo "  then: curl 'http://127.0.0.1:8080/v1/features/likes_per_post/entities/post-0?window=2h&at=2026-11-23T03:00:00Z'"
