//! Which bucket a key goes to, exactly as Beam's SMB extension (and so
//! Scio's `scio-smb`) computes it: the key's Beam *nested* encoding
//! (`StringUtf8Coder`: unsigned LEB128 length, then the UTF-8 bytes), hashed
//! with Guava's murmur3 (seed 0), `asInt()`, then `Math.abs(h) % numBuckets`
//! with Java's `Math.abs` (which leaves `i32::MIN` negative, so its bucket
//! is negative in Java too; Beam then indexes with it and fails, so such a
//! key is reported as an error here rather than silently placed).
//!
//! The murmur3 functions are the reference algorithms (Austin Appleby's
//! MurmurHash3_x86_32 and MurmurHash3_x64_128), which Guava implements;
//! `asInt()` of a 128-bit Guava hash is its first 4 bytes little-endian,
//! i.e. the low 32 bits of `h1`.

use serde::{Deserialize, Serialize};

/// The hash functions Beam's SMB metadata names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HashType {
    #[serde(rename = "MURMUR3_32")]
    Murmur3_32,
    #[default]
    #[serde(rename = "MURMUR3_128")]
    Murmur3_128,
}

impl HashType {
    /// Guava's `hashBytes(bytes).asInt()`.
    pub fn as_int(self, bytes: &[u8]) -> i32 {
        match self {
            HashType::Murmur3_32 => murmur3_32(bytes, 0) as i32,
            HashType::Murmur3_128 => murmur3_x64_128(bytes, 0).0 as u32 as i32,
        }
    }
}

/// Appends the Beam nested encoding of a string key (`StringUtf8Coder` in
/// a nested context): unsigned LEB128 varint of the byte length, then the bytes.
pub fn encode_key(key: &str, out: &mut Vec<u8>) {
    crate::varint::put_u64(out, key.len() as u64);
    out.extend_from_slice(key.as_bytes());
}

/// The bucket of an encoded key, or `None` for the one hash value Java's
/// `Math.abs` cannot make positive (`i32::MIN`, 1 in 2³² keys).
pub fn bucket_of(hash: HashType, encoded_key: &[u8], num_buckets: u32) -> Option<u32> {
    let h = hash.as_int(encoded_key).wrapping_abs();
    (h >= 0).then(|| (h % num_buckets as i32) as u32)
}

#[inline]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// MurmurHash3_x86_32.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes(c.try_into().expect("4 bytes"));
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    fmix32(h ^ data.len() as u32)
}

/// MurmurHash3_x64_128: (h1, h2); Guava's bytes are h1 then h2, little-endian.
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let (mut h1, mut h2) = (u64::from(seed), u64::from(seed));
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        let k1 = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
        let k2 = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = chunks.remainder();
    let (mut k1, mut k2) = (0u64, 0u64);
    for (i, b) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= u64::from(*b) << (8 * i);
        } else {
            k2 |= u64::from(*b) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    }
    if !tail.is_empty() {
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed independently of this code, with Python's `mmh3`
    /// (a C binding of the reference MurmurHash3) by
    /// `scripts/smb-vectors.py`: for each key, its nested encoding's
    /// `mmh3.hash(enc, 0, signed=True)` (Guava murmur3_32 `asInt`) and the
    /// first 4 bytes little-endian of `mmh3.hash_bytes(enc, 0, x64arch=True)`
    /// (Guava murmur3_128 `asInt`), and `abs(h) % 8` with Java semantics;
    /// cross-checked against Guava 33.5 itself by `scripts/SmbVectorsGuava.java`
    /// (60 vectors, 0 mismatches).
    const VECTORS: &str = include_str!("testdata/bucket-vectors.tsv");

    #[test]
    fn bucket_ids_match_independently_computed_vectors() {
        let mut n = 0;
        for line in VECTORS.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split('\t').collect();
            let key = serde_json::from_str::<String>(f[0]).unwrap();
            let (h32, h128): (i32, i32) = (f[1].parse().unwrap(), f[2].parse().unwrap());
            let (b32, b128): (u32, u32) = (f[3].parse().unwrap(), f[4].parse().unwrap());
            let mut enc = Vec::new();
            encode_key(&key, &mut enc);
            assert_eq!(HashType::Murmur3_32.as_int(&enc), h32, "{key:?}");
            assert_eq!(HashType::Murmur3_128.as_int(&enc), h128, "{key:?}");
            assert_eq!(
                bucket_of(HashType::Murmur3_32, &enc, 8),
                Some(b32),
                "{key:?}"
            );
            assert_eq!(
                bucket_of(HashType::Murmur3_128, &enc, 8),
                Some(b128),
                "{key:?}"
            );
            n += 1;
        }
        assert!(n >= 50, "{n} vectors");
    }

    #[test]
    fn nested_encoding_prefixes_a_leb128_length() {
        let mut out = Vec::new();
        encode_key("", &mut out);
        assert_eq!(out, [0]);
        out.clear();
        let long = "x".repeat(300);
        encode_key(&long, &mut out);
        assert_eq!(&out[..2], &[0xAC, 0x02]);
        assert_eq!(out.len(), 302);
    }
}
