#!/usr/bin/env bash
# Hot reload under load: upload-to-active time and the throughput dip while
# a plugin version is swapped in. `tessera run --serve` reads COPIES copies
# (hard links) of N generated quickstart events (defaults 1,000,000 x 16)
# with the quickstart's plugins; once it streams, the driver (Python, below)
# does SWAPS rounds 2 s apart: upload the windowed counter as a new version
# (its bytes plus a custom section naming the round, so every upload is a
# new component the host compiles) and activate it. It samples the host's
# /v1/status every 50 ms and prints, as medians and maxima over the rounds:
# upload ms (validate, compile, smoke call, store), activate ms (load, hand
# over, checkpoint, swap), upload-to-active, and the dip: the records/s in
# the second after each activation (and after each upload starts) against
# the same round's second before its upload, paired so the machine's drift
# between rounds cancels out. Then the shadow overhead: for each max_share in SHARES, SHADOW_ROUNDS
# rounds of 2 s with a shadow of the live version's own bytes (so nothing
# differs) and 2 s without; it prints the records/s while shadowed against
# the rate away from everything, and what the shadow reports (its time as a
# share of the live path's, records skipped, differing).
# Usage: scripts/bench-admin.sh [N] [COPIES] [SWAPS] [SHADOW_ROUNDS] [SHARES]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
COPIES=${2:-100}
SWAPS=${3:-10}
SHADOW_ROUNDS=${4:-3}
SHARES=${5:-10,0.25}
./scripts/build-plugins.sh --quiet
cargo build --release --quiet -p tessera --bin tessera
TARGET=${CARGO_TARGET_DIR:-target}
TESSERA=$PWD/$TARGET/release/tessera
work=$(mktemp -d)
host=""
trap '[ -n "$host" ] && { kill $host 2>/dev/null; wait $host 2>/dev/null || true; }; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/in"
python3 examples/gen_events.py "$N" > "$work/events.ndjson"
for i in $(seq "$COPIES"); do ln "$work/events.ndjson" "$work/in/events-$i.ndjson"; done
TOKEN=bench-admin-token-0123456789
# The quickstart without its SMB output; the copies repeat the same hours,
# so the watermark allows a day of disorder (no copy is late).
sed -e "s#data/events.ndjson#$work/in#" -e "s#\"out/#\"$work/out/#" \
    -e "s#\.\./target#$PWD/$TARGET#" -e 's#out_of_orderness = "10s"#out_of_orderness = "24h"#' \
    examples/quickstart.toml | sed '/^\[\[outputs\]\]/,$d' > "$work/tessera.toml"
cat >> "$work/tessera.toml" <<EOF

[runtime]
cache_dir = "$work/plugin-cache"

[api]
listen = "127.0.0.1:$port"

[admin]
registry_dir = "$work/registry"
tokens = [{ token = "$TOKEN", role = "admin" }]
EOF
# Compile the plugins into the cache first, so the measured run starts at once.
"$TESSERA" run --config "$work/tessera.toml" >/dev/null 2>&1 || true
rm -rf "$work/out" "$work/registry"
"$TESSERA" run --serve --json --config "$work/tessera.toml" > "$work/run.json" 2> "$work/run.err" &
host=$!
python3 - "$port" "$TOKEN" "$PWD/$TARGET/wasm32-wasip2/release/windowed_counter.wasm" "$SWAPS" "$((N * COPIES))" "$SHADOW_ROUNDS" "$SHARES" <<'PY'
import json, statistics, sys, threading, time, urllib.request

port, token, wasm, swaps, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
shadow_rounds, shares = int(sys.argv[6]), [float(x) for x in sys.argv[7].split(",")]
base = f"http://127.0.0.1:{port}"
component = open(wasm, "rb").read()

def call(method, path, body=None, ctype=None):
    req = urllib.request.Request(base + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if ctype:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())

def records():
    try:
        with urllib.request.urlopen(base + "/v1/status", timeout=5) as r:
            return json.loads(r.read())["records_in"]
    except Exception:
        return None

samples, done = [], threading.Event()
def sample():
    while not done.is_set():
        n = records()
        if n is not None:
            samples.append((time.monotonic(), n))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()

def leb(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def custom_section(name, data):
    payload = leb(len(name)) + name + data
    return b"\x00" + leb(len(payload)) + payload

while not samples or samples[-1][1] < total // 10:
    time.sleep(0.05)
uploads, activations, upload_ms, activate_ms = [], [], [], []
for i in range(1, swaps + 1):
    version = f"bench-{i}"
    body = component + custom_section(b"tessera-bench", version.encode())
    t0 = time.monotonic()
    call("PUT", f"/v1/plugins/windowed-counter/versions/{version}?world=feature", body, "application/wasm")
    t1 = time.monotonic()
    call("POST", "/v1/plugins/windowed-counter/activate", json.dumps({"version": version}).encode(), "application/json")
    t2 = time.monotonic()
    uploads.append(t0)
    activations.append(t1)
    upload_ms.append((t1 - t0) * 1000)
    activate_ms.append((t2 - t1) * 1000)
    if samples[-1][1] >= total:
        break
    time.sleep(2.5)

# Activations alone (versions uploaded and compiled above), and as a control
# a quota change to the same quotas (a hand-over with no swap or checkpoint).
alone, control = [], []
quotas = call("GET", "/v1/plugins/windowed-counter/quotas")
for i in range(swaps):
    if samples[-1][1] >= total * 0.6:
        break
    t = time.monotonic()
    call("POST", "/v1/plugins/windowed-counter/activate",
         json.dumps({"version": f"bench-{1 + i % 2}"}).encode(), "application/json")
    alone.append(t)
    time.sleep(2.0)
    t = time.monotonic()
    call("PUT", "/v1/plugins/windowed-counter/quotas", json.dumps(quotas).encode(), "application/json")
    control.append(t)
    time.sleep(2.0)

# Shadow rounds: the live version's bytes as another version, so the shadow
# does the same work and nothing differs.
shadowed = {share: [] for share in shares}
shadow_reports = {share: [] for share in shares}
body = component + custom_section(b"tessera-bench", b"shadow")
call("PUT", "/v1/plugins/windowed-counter/versions/shadow-same?world=feature", body, "application/wasm")
time.sleep(2.0)
for share in shares:
    for _ in range(shadow_rounds):
        if samples[-1][1] >= total * 0.9:
            break
        call("POST", "/v1/plugins/windowed-counter/shadow",
             json.dumps({"version": "shadow-same", "max_share": share}).encode(), "application/json")
        t1 = time.monotonic()
        time.sleep(2.0)
        t2 = time.monotonic()
        shadow_reports[share].append(call("DELETE", "/v1/plugins/windowed-counter/shadow")["report"])
        shadowed[share].append((t1 + 0.2, t2))
        time.sleep(2.0)
while samples[-1][1] < total:
    time.sleep(0.1)
done.set()

def rate(t_from, t_to):
    pts = [(t, n) for t, n in samples if t_from <= t <= t_to]
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

first = next(t for t, n in samples if n > 0)
last = next(t for t, n in samples if n >= total)
events = uploads + activations + alone + control
spans = [w for ws in shadowed.values() for w in ws]
quiet = []
t = first
while t + 0.5 <= last:
    if all(t + 0.5 <= e or t >= e + 1.0 for e in events) and all(t + 0.5 <= a - 0.2 or t >= b + 0.5 for a, b in spans):
        r = rate(t, t + 0.5)
        if r:
            quiet.append(r)
    t += 0.5
baseline = statistics.median(quiet) if quiet else float("nan")
u2a = [u + a for u, a in zip(upload_ms, activate_ms)]
print(f"rounds: {len(activations)} (records {total:,}; {len(quiet)} half-second windows away from uploads and swaps: median {baseline / 1e6:.2f} M records/s)")
print(f"upload (validate + compile + smoke + store): median {statistics.median(upload_ms):.0f} ms, max {max(upload_ms):.0f} ms")
print(f"activate (load + hand-over + checkpoint + swap): median {statistics.median(activate_ms):.0f} ms, max {max(activate_ms):.0f} ms")
print(f"upload-to-active: median {statistics.median(u2a):.0f} ms, max {max(u2a):.0f} ms")
before = [rate(u - 1.0, u) for u in uploads]
def paired(afters):
    return [1 - a / b for a, b in zip(afters, before) if a and b]
dips = paired([rate(a, a + 1.0) for a in activations])
if dips:
    print(f"records/s in the second after an activation vs the second before its upload: "
          f"dip median {100 * statistics.median(dips):.1f}%, worst {100 * max(dips):.1f}% ({len(dips)} rounds)")
for name, marks in [("an activation alone (uploaded before)", alone), ("a no-op quota change (the control)", control)]:
    d = [1 - a / b for a, b in ((rate(m, m + 1.0), rate(m - 1.0, m)) for m in marks) if a and b]
    if d:
        print(f"records/s in the second after {name} vs the second before it: "
              f"dip median {100 * statistics.median(d):.1f}%, worst {100 * max(d):.1f}% ({len(d)} rounds)")
dips = paired([rate(u, u + 1.0) for u in uploads])
if dips:
    print(f"records/s in the second after an upload starts (compiling on the other core), same pairing: "
          f"dip median {100 * statistics.median(dips):.1f}%, worst {100 * max(dips):.1f}%")
for share in shares:
    rates = [r for r in (rate(a, b) for a, b in shadowed[share]) if r]
    reps = shadow_reports[share]
    if not rates or not reps:
        continue
    used = [(r["shadow_seconds"] + r["interference_seconds"]) / r["live_seconds"] for r in reps if r["live_seconds"] > 0]
    skipped = [r["records_skipped"] / max(1, r["records_skipped"] + r["records_compared"]) for r in reps]
    differing = sum(r["records_differing"] for r in reps)
    for r in reps:
        print(f"  round: live {r['live_seconds']:.2f} s, shadow {r['shadow_seconds']:.2f} s + interference {r['interference_seconds']:.2f} s, compared {r['records_compared']:,}, skipped {r['records_skipped']:,}", file=sys.stderr)
    print(f"shadow max_share {share}: {len(rates)} rounds, records/s while shadowed median {statistics.median(rates) / 1e6:.2f} M "
          f"= {statistics.median(rates) / baseline:.2f}x the unshadowed rate; shadow cost (own work + interference) / live time median {statistics.median(used):.2f}, "
          f"records skipped median {100 * statistics.median(skipped):.0f}%, differing {differing}")
PY
kill -INT $host; wait $host || true
host=""
