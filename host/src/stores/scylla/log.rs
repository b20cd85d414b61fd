//! The byte layout of checkpoint log entries: tile deltas in chunks, and the
//! positions in the header.
//!
//! A chunk is a version byte (1), then tiles, each
//! `feature u32 LE | entity length varint | entity | size_ms varint |
//! start zigzag varint | count u64 | sum, min, max f64 | last_time i64 |
//! last f64` (all LE). Positions are `count varint`, then per position
//! `key length varint | key | value length varint | value`.

use crate::stores::StoreError;
use crate::varint;
use crate::window::{TileAgg, TileDeltas};

const CHUNK_VERSION: u8 = 1;

/// Target size of one chunk row (well under the servers' mutation limits).
pub const CHUNK_BYTES: usize = 512 * 1024;

/// One tile delta of a log entry.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedTile {
    pub feature_id: u32,
    pub entity: Vec<u8>,
    pub size_ms: i64,
    pub start: i64,
    pub agg: TileAgg,
}

fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: "checkpoint log entry",
        message: message.into(),
    }
}

/// The deltas as chunks of about [`CHUNK_BYTES`], in the deltas' order.
pub fn encode_deltas(deltas: &TileDeltas) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut chunk = vec![CHUNK_VERSION];
    for d in &deltas.tiles {
        if chunk.len() >= CHUNK_BYTES {
            chunks.push(std::mem::replace(&mut chunk, vec![CHUNK_VERSION]));
        }
        let entity = deltas.entity(d);
        chunk.extend_from_slice(&d.feature_id.to_le_bytes());
        varint::put_u64(&mut chunk, entity.len() as u64);
        chunk.extend_from_slice(entity);
        varint::put_u64(&mut chunk, d.size_ms as u64);
        varint::put_i64(&mut chunk, d.start);
        let a = &d.agg;
        chunk.extend_from_slice(&a.count.to_le_bytes());
        for f in [a.sum, a.min, a.max] {
            chunk.extend_from_slice(&f.to_le_bytes());
        }
        chunk.extend_from_slice(&a.last_time.to_le_bytes());
        chunk.extend_from_slice(&a.last.to_le_bytes());
    }
    if chunk.len() > 1 {
        chunks.push(chunk);
    }
    chunks
}

fn take<'a>(b: &'a [u8], i: &mut usize, n: usize) -> Result<&'a [u8], StoreError> {
    let s = b
        .get(*i..*i + n)
        .ok_or_else(|| corrupt("chunk ends inside a tile"))?;
    *i += n;
    Ok(s)
}

fn le8(b: &[u8]) -> [u8; 8] {
    b.try_into().expect("8 bytes")
}

/// Decodes one chunk, appending its tiles to `out`.
pub fn decode_chunk(b: &[u8], out: &mut Vec<LoggedTile>) -> Result<(), StoreError> {
    match b.first() {
        Some(&CHUNK_VERSION) => {}
        Some(v) => {
            return Err(corrupt(format!(
                "chunk version {v}, this build reads {CHUNK_VERSION}"
            )))
        }
        None => return Err(corrupt("empty chunk")),
    }
    let mut i = 1;
    while i < b.len() {
        let feature_id = u32::from_le_bytes(take(b, &mut i, 4)?.try_into().expect("4 bytes"));
        let len = varint::get_u64(b, &mut i).ok_or_else(|| corrupt("bad entity length"))?;
        let entity = take(
            b,
            &mut i,
            usize::try_from(len).map_err(|_| corrupt("entity too long"))?,
        )?
        .to_vec();
        let size_ms = varint::get_u64(b, &mut i).ok_or_else(|| corrupt("bad tile size"))? as i64;
        let start = varint::get_i64(b, &mut i).ok_or_else(|| corrupt("bad tile start"))?;
        let f = take(b, &mut i, TileAgg::ENCODED_LEN)?;
        let f64_at = |k: usize| f64::from_le_bytes(le8(&f[k..k + 8]));
        let agg = TileAgg {
            count: u64::from_le_bytes(le8(&f[0..8])),
            sum: f64_at(8),
            min: f64_at(16),
            max: f64_at(24),
            last_time: i64::from_le_bytes(le8(&f[32..40])),
            last: f64_at(40),
        };
        out.push(LoggedTile {
            feature_id,
            entity,
            size_ms,
            start,
            agg,
        });
    }
    Ok(())
}

pub fn encode_positions(positions: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    varint::put_u64(&mut out, positions.len() as u64);
    for (k, v) in positions {
        varint::put_u64(&mut out, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
        varint::put_u64(&mut out, v.len() as u64);
        out.extend_from_slice(v);
    }
    out
}

pub fn decode_positions(b: &[u8]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut i = 0;
    let n = varint::get_u64(b, &mut i).ok_or_else(|| corrupt("bad position count"))?;
    let mut out = Vec::new();
    for _ in 0..n {
        let mut field = || -> Result<&[u8], StoreError> {
            let len = varint::get_u64(b, &mut i).ok_or_else(|| corrupt("bad position length"))?;
            take(
                b,
                &mut i,
                usize::try_from(len).map_err(|_| corrupt("position too long"))?,
            )
        };
        let key = String::from_utf8(field()?.to_vec())
            .map_err(|_| corrupt("position key is not UTF-8"))?;
        let value = field()?.to_vec();
        out.push((key, value));
    }
    if i != b.len() {
        return Err(corrupt("trailing bytes after the positions"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_bytes_are_errors() {
        let mut input = Vec::new();
        for i in 0..30_000u32 {
            let mut agg = TileAgg::of(i as f64 * 0.5, i as i64 - 7);
            agg.add(-1.0, 3);
            input.push((
                i % 7,
                format!("entity-{}", i % 1000).into_bytes(),
                60_000,
                (i as i64 - 15_000) * 60_000,
                agg,
            ));
        }
        let deltas = TileDeltas::from_unsorted(input);
        let chunks = encode_deltas(&deltas);
        assert!(chunks.len() > 1, "30k tiles span several chunks");
        let mut out = Vec::new();
        for c in &chunks {
            decode_chunk(c, &mut out).unwrap();
        }
        assert_eq!(out.len(), deltas.len());
        for (o, d) in out.iter().zip(&deltas.tiles) {
            assert_eq!(
                (o.feature_id, o.entity.as_slice(), o.size_ms, o.start, o.agg),
                (d.feature_id, deltas.entity(d), d.size_ms, d.start, d.agg)
            );
        }
        let cut = &chunks[0][..chunks[0].len() - 3];
        assert!(decode_chunk(cut, &mut Vec::new()).is_err());
        assert!(decode_chunk(&[9, 1, 2], &mut Vec::new()).is_err());

        let positions = vec![
            ("kafka:t:0".to_string(), 42u64.to_be_bytes().to_vec()),
            ("dead-letter".into(), vec![]),
        ];
        assert_eq!(
            decode_positions(&encode_positions(&positions)).unwrap(),
            positions
        );
        let mut bad = encode_positions(&positions);
        bad.push(0);
        assert!(decode_positions(&bad).is_err());
        assert!(decode_positions(&[5]).is_err());
    }
}
