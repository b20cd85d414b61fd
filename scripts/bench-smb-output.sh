#!/usr/bin/env bash
# What an SMB output costs end to end: the `tessera` binary over N generated
# quickstart events (default 1,000,000), with the quickstart config as is
# (four features + the SMB output of views and likes by user) and with the
# output removed, alternating, RUNS times each (default 3); prints the median
# records/s of each and their ratio. Usage: scripts/bench-smb-output.sh [N] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
RUNS=${2:-3}
./scripts/build-plugins.sh --quiet
cargo build --release --quiet -p tessera
TESSERA=${CARGO_TARGET_DIR:-target}/release/tessera
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 examples/gen_events.py "$N" > "$work/events.ndjson"
for variant in with without; do
  mkdir -p "$work/$variant"
  # Same config, paths into the work directory; "without" drops [[outputs]].
  sed -e "s#data/events.ndjson#$work/events.ndjson#" -e "s#\"out/#\"$work/$variant/out/#" \
      -e "s#\.\./target#$PWD/${CARGO_TARGET_DIR:-target}#" examples/quickstart.toml > "$work/$variant/tessera.toml"
  if [ "$variant" = without ]; then
    sed -i '/^\[\[outputs\]\]/,$d' "$work/$variant/tessera.toml"
  fi
done
declare -A rates
for i in $(seq "$RUNS"); do
  for variant in with without; do
    rm -rf "$work/$variant/out"
    stats=$("$TESSERA" run --json --config "$work/$variant/tessera.toml" 2>/dev/null)
    rate=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(s["records_in"]/s["elapsed"])' "$stats")
    echo "run $i $variant output: $(printf '%.0f' "$rate") records/s  $(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print("output records", s["output_records"], "partitions", s["output_partitions"])' "$stats")"
    rates[$variant]="${rates[$variant]:-} $rate"
  done
done
python3 - "${rates[with]}" "${rates[without]}" <<'PY'
import statistics, sys
w = statistics.median(map(float, sys.argv[1].split()))
wo = statistics.median(map(float, sys.argv[2].split()))
print(f"median: with the SMB output {w/1e6:.2f} M records/s, without {wo/1e6:.2f} M records/s: {w/wo:.2f}x")
PY
