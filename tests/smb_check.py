#!/usr/bin/env python3
"""Independent check of one committed SMB partition directory, with fastavro
(Avro reader) and mmh3 (reference MurmurHash3): every bucket file named by
metadata.json exists, every record sits in the bucket Beam would compute for
its key, records are sorted by the nested-encoded key bytes, and the codec is
what was asked. Prints {"records": [[bucket, shard, key], ...], ...} as JSON.
Usage: smb_check.py DIR [CODEC]
"""
import datetime
import json
import os
import struct
import sys

import fastavro
import mmh3


def nested(key):
    b = key.encode("utf-8")
    n, out = len(b), bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + b


def as_int(hash_type, data):
    if hash_type == "MURMUR3_32":
        return mmh3.hash(data, 0, signed=True)
    return struct.unpack("<i", mmh3.hash_bytes(data, 0, x64arch=True)[:4])[0]


def java_bucket(h, num_buckets):
    """Math.abs(h) % n as Java computes it (the vectors never hit Integer.MIN_VALUE)."""
    return (-h if h < 0 else h) % num_buckets


def plain(o):
    """JSON for what fastavro decodes logical types and bytes into."""
    if isinstance(o, datetime.datetime):
        return (o - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    raise TypeError(type(o))


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def main():
    d = sys.argv[1]
    codec = sys.argv[2] if len(sys.argv) > 2 else "deflate"
    meta = json.load(open(os.path.join(d, "metadata.json")))
    assert meta["type"] == "org.apache.beam.sdk.extensions.smb.AvroBucketMetadata", meta
    nb, ns = meta["numBuckets"], meta["numShards"]
    assert nb & (nb - 1) == 0, nb
    expected = set()
    for b in range(nb):
        for s in range(ns):
            expected.add(f"bucket-{b:05d}-of-{nb:05d}.avro" if ns == 1 else f"bucket-{b:05d}-of-{nb:05d}-shard-{s:05d}-of-{ns:05d}.avro")
    present = {f for f in os.listdir(d) if f.endswith(".avro")}
    assert present == expected, (sorted(present ^ expected))
    records = []
    for b in range(nb):
        for s in range(ns):
            name = f"bucket-{b:05d}-of-{nb:05d}.avro" if ns == 1 else f"bucket-{b:05d}-of-{nb:05d}-shard-{s:05d}-of-{ns:05d}.avro"
            with open(os.path.join(d, name), "rb") as f:
                reader = fastavro.reader(f)
                assert reader.codec == codec, (name, reader.codec)
                prev = None
                for rec in reader:
                    key = rec
                    for part in meta["keyField"].split("."):
                        key = key[part]
                    enc = nested(key)
                    h = as_int(meta["hashType"], enc)
                    bucket = java_bucket(h, nb)
                    assert bucket == b, (name, key, bucket)
                    assert prev is None or prev <= enc, (name, prev, enc)
                    prev = enc
                    records.append([b, s, key, rec])
    print(json.dumps({"records": records}, default=plain))


if __name__ == "__main__":
    main()
