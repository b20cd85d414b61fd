#!/usr/bin/env bash
# Kafka source throughput: the `tessera` binary over N generated quickstart
# events (default 1,000,000) read from a local Apache Kafka broker (4
# partitions) against the same events read from a file, same config
# otherwise (the quickstart's plugins and features, embedded store, no SMB
# output), and Tessera's Kafka source reading the topic with nothing
# behind it (the `kafka-consume` example: what the broker, librdkafka and
# the source deliver here without the pipeline), alternating, RUNS times each (default 3); prints median records/s
# and the ratios. The broker is started here (tests/servers/kafka.sh) and
# stopped at the end. Rates are over the time from the first record read to
# the last (the run's `reading` figure). Usage: scripts/bench-kafka.sh [N] [RUNS]
# (COMPRESSION=none|lz4|... the producer's codec, lz4 by default;
# LAG_SECONDS=0 skips the lag phase; RAW=1 makes consume-only a plain
# librdkafka consumer polling one message at a time instead of Tessera's
# Kafka source with no pipeline behind it).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
RUNS=${2:-3}
./scripts/build-plugins.sh --quiet
cargo build --release --quiet -p tessera --bin tessera --example kafka-produce --example kafka-consume
TARGET=${CARGO_TARGET_DIR:-target}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# records/s from a run summary (JSON): records over first-to-last-record time.
rate_of() { python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(s["records_in"]/s["reading"])' "$1"; }
TESSERA=$TARGET/release/tessera
work=$(mktemp -d)
port=$(free_port)
cport=$(free_port)
tests/servers/kafka.sh "$work/broker" "$port" "$cport" > "$work/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null || true; rm -rf "$work"' EXIT
until grep -q "Kafka Server started" "$work/broker.log"; do sleep 0.5; done
python3 examples/gen_events.py "$N" > "$work/events.ndjson"
"$TARGET/release/examples/kafka-produce" "127.0.0.1:$port" events 4 "$work/events.ndjson"
for variant in file kafka; do
  mkdir -p "$work/$variant"
  sed -e "s#data/events.ndjson#$work/events.ndjson#" -e "s#\"out/#\"$work/$variant/out/#" \
      -e "s#\.\./target#$PWD/$TARGET#" examples/quickstart.toml | sed '/^\[\[outputs\]\]/,$d' > "$work/$variant/tessera.toml"
  # Compiled plugins are cached, so host CPU time is the records' cost.
  printf '\n[runtime]\ncache_dir = "%s"\n' "$work/plugin-cache" >> "$work/$variant/tessera.toml"
done
# The consumer settings both Kafka variants use.
FETCH=("max.partition.fetch.bytes=8388608" "fetch.max.bytes=67108864")
python3 - "$work/kafka/tessera.toml" "$port" "${FETCH[@]}" <<'PY'
import re, sys
path, port, fetch = sys.argv[1], sys.argv[2], sys.argv[3:]
props = ", ".join([f'"bootstrap.servers" = "127.0.0.1:{port}"'] +
                  [f'"{k}" = "{v}"' for k, v in (kv.split("=", 1) for kv in fetch)])
text = open(path).read()
text = re.sub(r'\[source\]\ntype = "file"\npath = "[^"]*"\n',
    '[source]\ntype = "kafka"\ntopics = ["events"]\nidle_exit = "2s"\n'
    f'properties = {{ {props} }}\n', text)
open(path, "w").write(text)
PY
declare -A rates cpus
for i in $(seq "$RUNS"); do
  for variant in file kafka consume-only; do
    if [ "$variant" = consume-only ]; then
      stats=$("$TARGET/release/examples/kafka-consume" "127.0.0.1:$port" events "$N" "${FETCH[@]}")
      rate=$(rate_of "$stats")
      echo "run $i $variant: $(printf '%.0f' "$rate") records/s"
      rates[$variant]="${rates[$variant]:-} $rate"
      continue
    fi
    rm -rf "$work/$variant/out"
    # A fresh group each run reads the topic from the start.
    sed -i "s/^name = \"quickstart.*\"/name = \"quickstart-$i\"/" "$work/$variant/tessera.toml"
    # Host CPU time (user + system, all its threads) from bash's `time`.
    TIMEFORMAT='%U %S'
    { time "$TESSERA" run --json --config "$work/$variant/tessera.toml" >"$work/$variant.json" 2>"$work/$variant.err" \
      || { echo "tessera run ($variant) failed:"; tail -12 "$work/$variant.err"; exit 1; } ; } 2>"$work/$variant.time"
    stats=$(cat "$work/$variant.json")
    cpu=$(awk '{print $1 + $2}' "$work/$variant.time")
    # From the first record to the last: joining the group and the idle
    # wait at the end are not throughput.
    rate=$(rate_of "$stats")
    per_cpu=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["records_in"] / float(sys.argv[2]))' "$stats" "$cpu")
    echo "run $i $variant: $(printf '%.0f' "$rate") records/s, $(printf '%.0f' "$per_cpu") records per host CPU-second ($cpu s)"
    rates[$variant]="${rates[$variant]:-} $rate"
    cpus[$variant]="${cpus[$variant]:-} $per_cpu"
  done
done
kafka_median=$(python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1].split())))' "${rates[kafka]}")
python3 - "${rates[file]}" "${rates[kafka]}" "${rates[consume-only]}" <<'PY'
import statistics, sys
f, k, c = (statistics.median(map(float, a.split())) for a in sys.argv[1:4])
print(f"median: file source {f/1e6:.2f} M records/s, Kafka source {k/1e6:.2f} M records/s ({k/f:.2f}x file), "
      f"consume-only {c/1e6:.2f} M records/s (Kafka source at {k/c:.2f}x of it)")
PY
python3 - "${cpus[file]}" "${cpus[kafka]}" <<'PY'
import statistics, sys
f, k = (statistics.median(map(float, a.split())) for a in sys.argv[1:3])
print(f"median per host CPU-second (per core): file source {f/1e6:.2f} M records, Kafka source {k/1e6:.2f} M records ({k/f:.2f}x)")
PY

# Lag under a fixed produce rate: half and twice the Kafka source's median
# rate, for LAG_SECONDS (default 20) each. The host runs with --serve; every
# second its /v1/status gives the summed consumer lag and /proc its RSS.
LAG_SECONDS=${LAG_SECONDS:-20}
[ "$LAG_SECONDS" = 0 ] && exit 0
api_port=$(free_port)
for run in half:0.5 double:2; do
  label=${run%:*} frac=${run#*:}
  rate=$(python3 -c "print(int($kafka_median * $frac))")
  topic="lag-$label"
  cfg="$work/kafka/lag-$label.toml"
  sed -e "s/topics = \[\"events\"\]/topics = [\"$topic\"]/" -e "s/idle_exit = \"2s\"/idle_exit = \"5s\"/" \
      -e "s/^name = \"quickstart.*\"/name = \"quickstart-lag-$label\"/" "$work/kafka/tessera.toml" > "$cfg"
  printf '\n[api]\nlisten = "127.0.0.1:%s"\n' "$api_port" >> "$cfg"
  rm -rf "$work/kafka/out"
  "$TARGET/release/examples/kafka-produce" "127.0.0.1:$port" "$topic" 4 "$work/events.ndjson" 1 1 2>/dev/null
  "$TESSERA" run --serve --config "$cfg" 2>"$work/lag.err" &
  host=$!
  "$TARGET/release/examples/kafka-produce" "127.0.0.1:$port" "$topic" 4 "$work/events.ndjson" "$rate" $((rate * LAG_SECONDS)) 2>"$work/produce.err" &
  producer=$!
  samples="$work/lag-$label.samples"
  : > "$samples"
  drained=""
  started=$SECONDS
  while [ $((SECONDS - started)) -lt $((LAG_SECONDS * 4)) ]; do
    sleep 1
    t=$((SECONDS - started))
    kill -0 $host 2>/dev/null || { echo "tessera run (lag $label) failed:"; tail -5 "$work/lag.err"; exit 1; }
    status=$(curl -sf "http://127.0.0.1:$api_port/v1/status" || echo '{}')
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$host/status" 2>/dev/null || echo 0)
    lag=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(sum(p.get("lag") or 0 for p in s.get("partitions", [])))' "$status")
    echo "$t $lag $rss" >> "$samples"
    if ! kill -0 $producer 2>/dev/null && [ "$lag" = 0 ] && [ -z "$drained" ]; then drained=$t; break; fi
  done
  wait $producer || true
  kill -INT $host 2>/dev/null; wait $host 2>/dev/null || true
  python3 - "$samples" "$frac" "$rate" "$LAG_SECONDS" "${drained:-none}" "$(tail -1 "$work/produce.err")" <<'PY'
import statistics, sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
frac, rate, secs, drained, produced = sys.argv[2:7]
during = [r for r in rows if r[0] <= int(secs)] or rows
lags = [r[1] for r in during]
rss = max(r[2] for r in rows) / 1024
print(f"fixed rate {frac}x ({int(rate)/1e3:.0f} k records/s asked; {produced}): lag while producing "
      f"median {statistics.median(lags):.0f}, max {max(lags)} records; "
      f"drained {'%s s after start' % drained if drained != 'none' else 'not within the wait'}; max RSS {rss:.0f} MiB")
PY
done
