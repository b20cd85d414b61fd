#!/usr/bin/env bash
# Ingestion into a store and serving latency, for the embedded store and a
# local Apache Cassandra 5.0 (the CQL stand-in for ScyllaDB, started here by
# tests/servers/cassandra.sh and stopped at the end).
#
# For each store: (1) `tessera run` loads N generated events spread over 7
# days (10,000 posts, 100,000 users; likes and views per post, interactions
# per user, tiles 1m / 30m / 1d): events/s (first record to last) and tiles
# written/s; (2) `tessera run --serve` backfills another N events over the
# same 7 days while the serving client (host/examples/serving-load.rs, one
# keep-alive connection, closed loop) asks for 7-day windows of random
# posts: COUNT single calls (one feature of one entity) and COUNT/10 batch
# calls (100 entities x 2 features); (3) once the backfill has ended, the
# same calls again on the same idle process. Prints p50/p99 of each and the
# under-ingestion/idle p99 ratio; a phase whose backfill ended before its
# calls did is flagged. Usage: scripts/bench-serving.sh [N] [COUNT]
# (STORES="embedded" or "cassandra" runs one store alone; WRITE_CONCURRENCY
# sets the CQL store's store.write_concurrency, default 2; DB_CPUS and
# HOST_CPUS, lists for taskset such as 1 and 0, pin Cassandra and the
# host with the serving client to their own CPUs, as on separate machines.)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
COUNT=${2:-3000}
./scripts/build-plugins.sh --quiet
cargo build --release --quiet -p tessera --bin tessera --example serving-load
TARGET=${CARGO_TARGET_DIR:-target}
# Command prefixes (not a function: a function run with & is a subshell,
# and $! would name it instead of the host the script signals).
PIN_DB=() PIN_HOST=()
[ -n "${DB_CPUS:-}" ] && PIN_DB=(taskset -c "$DB_CPUS")
[ -n "${HOST_CPUS:-}" ] && PIN_HOST=(taskset -c "$HOST_CPUS")
TESSERA=$PWD/$TARGET/release/tessera
LOAD=$PWD/$TARGET/release/examples/serving-load
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
node=""
trap '[ -n "$node" ] && { kill $node 2>/dev/null; wait $node 2>/dev/null || true; }; rm -rf "$work"' EXIT

# Events over the 7 days before AT, posts and users Zipf-like, a few seconds
# out of order; two different streams (load and backfill).
AT=1795392000000 # 2026-11-23T00:00:00Z: the windows end here
gen() {
  python3 - "$1" "$2" "$AT" <<'PY'
import math, random, sys
n, seed, at = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
span = 7 * 86_400_000
types = ["view"] * 6 + ["like"] * 3 + ["share", "comment"]
out = sys.stdout
for i in range(n):
    t = at - span + span * i // n + rng.randint(-3000, 3000)
    post = int(math.exp(rng.random() * math.log(10_001))) - 1
    user = int(math.exp(rng.random() * math.log(100_001))) - 1
    out.write('{"ts":%d,"type":"%s","post_id":"post-%d","user_id":"user-%d","dwell_ms":%d}\n'
              % (t, rng.choice(types), post, user, rng.randrange(60_000)))
PY
}
gen "$N" 1 > "$work/load.ndjson"
gen "$N" 2 > "$work/backfill.ndjson"

config() { # STORE_SECTION NAME INPUT API_PORT
  cat <<TOML
[pipeline]
name = "$2"
checkpoint_interval = "2s"
[source]
type = "file"
path = "$3"
[parser]
name = "json-parser"
path = "$PWD/$TARGET/wasm32-wasip2/release/json_parser.wasm"
config = { time_field = "ts", type_field = "type", entity_fields = ["post_id", "user_id"], fields = { dwell_ms = "float64" } }
[[features]]
name = "windowed-counter"
path = "$PWD/$TARGET/wasm32-wasip2/release/windowed_counter.wasm"
config = { features = [
  { name = "likes_per_post", entity = "post_id", event_types = ["like"], tiles = ["1m", "30m", "1d"], windows = ["7d"] },
  { name = "views_per_post", entity = "post_id", event_types = ["view"], tiles = ["1m", "30m", "1d"], windows = ["7d"] },
  { name = "interactions_per_user", entity = "user_id", event_types = ["like", "view", "share", "comment"], tiles = ["1m", "30m", "1d"], windows = ["7d"] },
] }
[watermark]
out_of_orderness = "1h"
[runtime]
cache_dir = "$work/plugin-cache"
[dead_letter]
path = "$work/$2-dead-letter.ndjson"
[side_output]
path = "$work/$2-side-output.ndjson"
[api]
listen = "127.0.0.1:$4"
$1
TOML
}
py_field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, {"s": v}))' "$1" "$2"; }
status_state() { curl -sf "http://127.0.0.1:$1/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null || echo none; }

for store in ${STORES:-embedded cassandra}; do
  if [ $store = embedded ]; then
    section=$(printf '[store]\ntype = "embedded"\npath = "%s"' "$work/tiles.redb")
  else
    # Started only now, so the embedded figures are not shared with a JVM.
    cql_port=$(free_port)
    "${PIN_DB[@]}" tests/servers/cassandra.sh "$work/cassandra" "$cql_port" "$(free_port)" > "$work/cassandra.log" 2>&1 &
    node=$!
    until grep -q "Startup complete" "$work/cassandra.log"; do
      kill -0 $node 2>/dev/null || { echo "Cassandra did not start:"; tail -20 "$work/cassandra.log"; exit 1; }
      sleep 1
    done
    section=$(printf '[store]\ntype = "scylla"\ncontact_points = ["127.0.0.1:%s"]\nkeyspace = "bench"\nwrite_concurrency = %s\n[store.job]\nusername = "cassandra"\npassword = "cassandra"\n[store.serving]\nusername = "cassandra"\npassword = "cassandra"' "$cql_port" "${WRITE_CONCURRENCY:-2}")
  fi
  port=$(free_port)
  config "$section" "$store-load" "$work/load.ndjson" "$port" > "$work/$store-load.toml"
  config "$section" "$store-backfill" "$work/backfill.ndjson" "$port" > "$work/$store-backfill.toml"
  # (1) The load.
  stats=$("${PIN_HOST[@]}" "$TESSERA" run --json --config "$work/$store-load.toml" 2>"$work/$store-load.err") \
    || { echo "tessera run ($store load) failed:"; tail -12 "$work/$store-load.err"; exit 1; }
  echo "$store load: $(py_field "$stats" 's["records_in"]') events, $(printf '%.0f' "$(py_field "$stats" 's["records_in"] / s["reading"]')") events/s, $(py_field "$stats" 's["tiles_written"]') tiles, $(printf '%.0f' "$(py_field "$stats" 's["tiles_written"] / s["elapsed"]')") tiles written/s ($(printf '%.1f' "$(py_field "$stats" 's["elapsed"]')") s)"
  # (2) Serving during the backfill, (3) then idle on the same process.
  "${PIN_HOST[@]}" "$TESSERA" run --serve --json --config "$work/$store-backfill.toml" >"$work/$store-backfill.json" 2>"$work/$store-backfill.err" &
  host=$!
  until [ "$(status_state "$port")" = running ]; do
    kill -0 $host 2>/dev/null || { echo "tessera run ($store backfill) failed:"; tail -12 "$work/$store-backfill.err"; exit 1; }
    sleep 0.2
  done
  for phase in ingesting idle; do
    if [ $phase = idle ]; then
      until [ "$(status_state "$port")" = stopped ]; do sleep 0.5; done
    fi
    for mode in single batch; do
      count=$COUNT
      [ $mode = batch ] && count=$((COUNT / 10))
      out=$("${PIN_HOST[@]}" "$LOAD" "127.0.0.1:$port" $mode $count 10000 $AT)
      state=$(status_state "$port")
      flag=""
      [ $phase = ingesting ] && [ "$state" != running ] && flag=" (the backfill ended before these calls did)"
      echo "$store $phase $mode: p50 $(printf '%.0f' "$(py_field "$out" 's["p50_us"]')") µs, p99 $(printf '%.0f' "$(py_field "$out" 's["p99_us"]')") µs, $(py_field "$out" 's["requests"]') calls$flag"
      echo "$out" > "$work/$store-$phase-$mode.json"
    done
  done
  kill -INT $host; wait $host || true
  stats=$(cat "$work/$store-backfill.json")
  echo "$store backfill (while serving): $(printf '%.0f' "$(py_field "$stats" 's["records_in"] / s["reading"]')") events/s, $(printf '%.0f' "$(py_field "$stats" 's["tiles_written"] / s["elapsed"]')") tiles written/s"
  for mode in single batch; do
    python3 - "$work/$store-ingesting-$mode.json" "$work/$store-idle-$mode.json" "$store" "$mode" <<'PY'
import json, sys
busy, idle = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{sys.argv[3]} {sys.argv[4]}: p99 under ingestion / idle = {busy['p99_us'] / idle['p99_us']:.2f}x")
PY
  done
done
