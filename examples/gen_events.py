#!/usr/bin/env python3
"""Generates the ShareChat-style example stream (deterministic).

Events: like / view / share / comment on posts by users, three hours from
2026-11-23T00:00:00Z, a little out of order, with a few late events and a few
malformed lines (they end up in the dead letter). Usage:
    python3 examples/gen_events.py N > examples/data/events.ndjson
"""
import json
import random
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
rng = random.Random(42)
start = 1795392000000  # 2026-11-23T00:00:00Z
span = 3 * 3600 * 1000
types = ["view"] * 6 + ["like"] * 3 + ["share", "comment"]
posts = [f"post-{i}" for i in range(200)]
for i in range(n):
    t = start + span * i // n + rng.randint(-3000, 3000)
    if i % 997 == 500:
        t -= rng.choice([60_000, 20 * 60_000, 2 * 3600_000])  # late: 1 min, 20 min, 2 h
    if i % 2503 == 1000:
        print('{"ts": ' + str(t) + ', "type": "like", "post_id": ')  # truncated JSON
        continue
    if i % 4001 == 2000:
        print(json.dumps({"type": "view", "post_id": "post-1"}))  # no event time
        continue
    post = posts[min(int(rng.paretovariate(1.2)) - 1, len(posts) - 1)]
    ev = {"ts": t, "type": rng.choice(types), "post_id": post, "user_id": f"user-{rng.randrange(1000)}"}
    if ev["type"] == "view":
        ev["dwell_ms"] = rng.randint(200, 60_000)
    print(json.dumps(ev, separators=(",", ":")))
