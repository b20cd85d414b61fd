#!/usr/bin/env bash
# The read cost of per-instance tile partials (issue #5's multi-host design):
# starts a local Apache Cassandra 5.0 (tests/servers/cassandra.sh, stopped at
# the end), has the `partials-read` example write the same 7 days of tiles as
# 1, 2 and 4 instances of one pipeline, and prints the p50/p99 of 7-day
# window answers on the serving session for each.
# Usage: scripts/bench-partials.sh [ENTITIES, default 100] [READS, default 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
ENTITIES=${1:-100}
READS=${2:-2000}
cargo build --release --quiet -p tessera --example partials-read
TARGET=${CARGO_TARGET_DIR:-target}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
cql_port=$(free_port)
tests/servers/cassandra.sh "$work/cassandra" "$cql_port" "$(free_port)" > "$work/cassandra.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null || true; rm -rf "$work"' EXIT
until grep -q "Startup complete" "$work/cassandra.log"; do
  kill -0 $node 2>/dev/null || { echo "Cassandra did not start:"; tail -20 "$work/cassandra.log"; exit 1; }
  sleep 1
done
# The superuser role appears shortly after the port opens.
for _ in $(seq 60); do
  if "$TARGET/release/examples/partials-read" "127.0.0.1:$cql_port" "$ENTITIES" "$READS"; then exit 0; fi
  sleep 2
done
echo "partials-read failed"; exit 1
