//! Variable-length integers, one implementation for every format that uses
//! them: unsigned LEB128 (Beam's coder lengths, the run blocks of the
//! embedded store) and zigzag-encoded signed LEB128 (Avro's `long`).

/// Appends `v` as unsigned LEB128.
#[inline]
pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded, then as LEB128 (Avro's `long`).
#[inline]
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Reads an unsigned LEB128 at `*i`, advancing `i`; `None` when the bytes
/// end first or it runs past 64 bits.
#[inline]
pub fn get_u64(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Reads a zigzag LEB128 at `*i` (see [`put_i64`]).
#[inline]
pub fn get_i64(b: &[u8], i: &mut usize) -> Option<i64> {
    let z = get_u64(b, i)?;
    Some(((z >> 1) as i64) ^ -((z & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_encodings() {
        let mut out = Vec::new();
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            out.clear();
            put_u64(&mut out, v);
            let mut i = 0;
            assert_eq!(get_u64(&out, &mut i), Some(v));
            assert_eq!(i, out.len());
        }
        out.clear();
        put_u64(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
        for v in [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX] {
            out.clear();
            put_i64(&mut out, v);
            let mut i = 0;
            assert_eq!(get_i64(&out, &mut i), Some(v));
        }
        out.clear();
        put_i64(&mut out, -1);
        assert_eq!(out, [0x01], "Avro zigzag: -1 is 1");
        assert_eq!(get_u64(&[0x80], &mut 0), None, "truncated");
        assert_eq!(get_u64(&[0xFF; 11], &mut 0), None, "over 64 bits");
    }
}
