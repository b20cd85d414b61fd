#!/usr/bin/env python3
"""Known bucket vectors for Tessera's SMB bucketer, computed independently of
it with Python's mmh3 (a binding of the reference MurmurHash3 C code).

For each key: the Beam nested encoding (unsigned LEB128 byte length, then
UTF-8), Guava murmur3_32 asInt (= mmh3.hash, signed), Guava murmur3_128 asInt
(= first 4 bytes little-endian of mmh3.hash_bytes, x64 variant), and the
bucket abs(h) % 8 with Java's Math.abs. Usage (needs `pip install mmh3`):
    python3 scripts/smb-vectors.py > host/src/sinks/smb/testdata/bucket-vectors.tsv
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from smb_check import as_int, java_bucket, nested  # noqa: E402

keys = ["", "a", "user-1", "post-12345", "café", "日本語のキー", "🎉 emoji", "x" * 127, "y" * 128, "z" * 300]
keys += ["k" * n for n in range(1, 40)]  # every tail length of 4- and 16-byte blocks
keys += [f"user-{i}" for i in range(0, 1000, 97)]
print("# key (JSON)\tmurmur3_32 asInt\tmurmur3_128 asInt\tbucket of 8 (32)\tbucket of 8 (128)")
for k in keys:
    e = nested(k)
    h32, h128 = as_int("MURMUR3_32", e), as_int("MURMUR3_128", e)
    print(f"{json.dumps(k, ensure_ascii=False)}\t{h32}\t{h128}\t{java_bucket(h32, 8)}\t{java_bucket(h128, 8)}")
