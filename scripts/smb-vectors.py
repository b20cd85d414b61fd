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
import struct

import mmh3


def nested(key: str) -> bytes:
    b = key.encode("utf-8")
    n, out = len(b), bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + b


def java_bucket(h: int, buckets: int) -> int:
    a = -h if h < 0 else h  # never MIN_VALUE among these keys (asserted below)
    assert a < 2**31
    return a % buckets


keys = ["", "a", "user-1", "post-12345", "café", "日本語のキー", "🎉 emoji", "x" * 127, "y" * 128, "z" * 300]
keys += ["k" * n for n in range(1, 40)]  # every tail length of 4- and 16-byte blocks
keys += [f"user-{i}" for i in range(0, 1000, 97)]
print("# key (JSON)\tmurmur3_32 asInt\tmurmur3_128 asInt\tbucket of 8 (32)\tbucket of 8 (128)")
for k in keys:
    e = nested(k)
    h32 = mmh3.hash(e, 0, signed=True)
    h128 = struct.unpack("<i", mmh3.hash_bytes(e, 0, x64arch=True)[:4])[0]
    print(f"{json.dumps(k, ensure_ascii=False)}\t{h32}\t{h128}\t{java_bucket(h32, 8)}\t{java_bucket(h128, 8)}")
