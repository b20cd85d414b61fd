//! Sorted runs of tiles: how the embedded store writes a checkpoint without
//! a B-tree update per tile.
//!
//! A checkpoint's deltas, sorted by key, become one immutable *run*: a list
//! of blocks (~16 KiB each), each stored under `run id | first key of the
//! block`. Writing a run costs an encode per tile and one B-tree insert per
//! block. A read looks the key range up in every live run (newest last, so
//! `last` ties resolve to the newest) and merges. Runs are merged in the same
//! transaction when the newest ones have grown comparable in size to the one
//! before them (as RocksDB's universal compaction does), which keeps the
//! number of runs logarithmic in the data and collapses a tile written by
//! several checkpoints into one entry.
//!
//! Block format ([`FORMAT_VERSION`]), as LevelDB's blocks: a sequence of
//! entries, then the offsets of the restart entries (u32 LE each) and their
//! number (u32 LE). An entry is
//! `shared varint | unshared varint | unshared key bytes | tile`, where the
//! key is prefix-compressed against the previous key of the block except at
//! restart entries (every 16th, the first included), which share nothing; a
//! read binary-searches the restarts for its start key. The tile is
//! `flags u8 | count varint | [sum f64] | values | last_time zigzag varint`
//! with `last_time` relative to the tile start (the key's last 8 bytes).
//! `values` is one f64 when min = max = last (`UNIFORM`), none when that
//! value is 1.0 (`ONE`), else min, max and last; `sum` is left out when it
//! equals count × value (`SUM_IMPLIED`). A counter tile takes ~10 bytes
//! against 84 written plainly; the pipeline bench measures the difference.
//!
//! Limit: a merge holds the runs being merged in memory.

use crate::varint;
use crate::window::TileAgg;

/// Version of the block format above; the store refuses files of another.
pub const FORMAT_VERSION: u64 = 3;

/// Target size of one block.
pub const BLOCK_BYTES: usize = 16 * 1024;

/// Every this many entries a key is written whole (a restart point), so a
/// read binary-searches a block instead of decoding it from the start.
const RESTART_INTERVAL: u32 = 16;

/// Newest runs merged together when at least this many are comparable.
const MIN_MERGE_WIDTH: usize = 4;
/// Above this many runs, the newest two are merged regardless.
const MAX_RUNS: usize = 16;

/// One (key, tile) entry of a run.
#[cfg(test)]
pub type Entry = (Vec<u8>, TileAgg);

/// Encoded blocks of a run: (first key, block bytes).
pub type Blocks = Vec<(Vec<u8>, Vec<u8>)>;

/// A block that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedBlock;

const UNIFORM: u8 = 1;
const SUM_IMPLIED: u8 = 2;
const ONE: u8 = 4;

#[inline]
fn get_varint(b: &[u8], i: &mut usize) -> Result<u64, MalformedBlock> {
    varint::get_u64(b, i).ok_or(MalformedBlock)
}

fn get_f64(b: &[u8], i: &mut usize) -> Result<f64, MalformedBlock> {
    let bytes = b.get(*i..*i + 8).ok_or(MalformedBlock)?;
    *i += 8;
    Ok(f64::from_le_bytes(bytes.try_into().expect("8 bytes")))
}

/// The tile start a key ends with (see the key layout in `mod.rs`).
fn key_start(key: &[u8]) -> Result<i64, MalformedBlock> {
    let tail = key.len().checked_sub(8).ok_or(MalformedBlock)?;
    let b: [u8; 8] = key[tail..].try_into().expect("8 bytes");
    Ok((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

fn encode_tile(base: i64, agg: &TileAgg, out: &mut Vec<u8>) {
    let v = agg.last;
    let uniform = agg.min.to_bits() == v.to_bits() && agg.max.to_bits() == v.to_bits();
    let mut flags = 0;
    if uniform {
        flags |= UNIFORM;
        if (agg.count as f64 * v).to_bits() == agg.sum.to_bits() {
            flags |= SUM_IMPLIED;
        }
        if v.to_bits() == 1f64.to_bits() {
            flags |= ONE;
        }
    }
    out.push(flags);
    varint::put_u64(out, agg.count);
    if flags & SUM_IMPLIED == 0 {
        out.extend_from_slice(&agg.sum.to_le_bytes());
    }
    if !uniform {
        out.extend_from_slice(&agg.min.to_le_bytes());
        out.extend_from_slice(&agg.max.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    } else if flags & ONE == 0 {
        out.extend_from_slice(&v.to_le_bytes());
    }
    varint::put_i64(out, agg.last_time.wrapping_sub(base));
}

fn decode_tile(base: i64, b: &[u8], i: &mut usize) -> Result<TileAgg, MalformedBlock> {
    let flags = *b.get(*i).ok_or(MalformedBlock)?;
    *i += 1;
    if flags & !(UNIFORM | SUM_IMPLIED | ONE) != 0 || (flags & UNIFORM == 0 && flags != 0) {
        return Err(MalformedBlock);
    }
    let count = get_varint(b, i)?;
    let sum = if flags & SUM_IMPLIED == 0 {
        Some(get_f64(b, i)?)
    } else {
        None
    };
    let (min, max, last) = if flags & UNIFORM == 0 {
        (get_f64(b, i)?, get_f64(b, i)?, get_f64(b, i)?)
    } else {
        let v = if flags & ONE != 0 {
            1.0
        } else {
            get_f64(b, i)?
        };
        (v, v, v)
    };
    let delta = varint::get_i64(b, i).ok_or(MalformedBlock)?;
    Ok(TileAgg {
        count,
        sum: sum.unwrap_or(count as f64 * last),
        min,
        max,
        last_time: base.wrapping_add(delta),
        last,
    })
}

/// Length of the common prefix of two keys.
#[inline]
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_ne_bytes(a[i..i + 8].try_into().expect("8"));
        let y = u64::from_ne_bytes(b[i..i + 8].try_into().expect("8"));
        if x != y {
            break;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Encodes a sorted stream of entries into blocks, merging equal
/// consecutive keys (in arrival order), without an allocation per entry.
#[derive(Default)]
pub struct BlockWriter {
    blocks: Blocks,
    block: Vec<u8>,
    first: Vec<u8>,
    /// The last key written into `block` (prefix compression base).
    written_key: Vec<u8>,
    pending_key: Vec<u8>,
    pending: Option<TileAgg>,
    entries: u64,
    /// Offsets of the restart entries of `block`.
    restarts: Vec<u32>,
    block_entries: u32,
}

impl BlockWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; keys must come in ascending order (equal keys merge)
    /// and end with an encoded tile start. Returns false, adding nothing,
    /// when `key` is smaller than the last one or too short.
    pub fn push(&mut self, key: &[u8], agg: &TileAgg) -> bool {
        if key.len() < 8 {
            return false;
        }
        if let Some(p) = self.pending.as_mut() {
            match key.cmp(self.pending_key.as_slice()) {
                std::cmp::Ordering::Equal => {
                    p.merge(agg);
                    return true;
                }
                std::cmp::Ordering::Less => return false,
                std::cmp::Ordering::Greater => self.flush_pending(),
            }
        }
        self.pending_key.clear();
        self.pending_key.extend_from_slice(key);
        self.pending = Some(*agg);
        true
    }

    fn flush_pending(&mut self) {
        let Some(agg) = self.pending.take() else {
            return;
        };
        if self.block.len() >= BLOCK_BYTES {
            self.seal_block();
        }
        if self.block.is_empty() {
            self.first.clear();
            self.first.extend_from_slice(&self.pending_key);
        }
        let shared = if self.block_entries.is_multiple_of(RESTART_INTERVAL) {
            self.restarts.push(self.block.len() as u32);
            0
        } else {
            shared_prefix(&self.written_key, &self.pending_key)
        };
        self.block_entries += 1;
        varint::put_u64(&mut self.block, shared as u64);
        varint::put_u64(&mut self.block, (self.pending_key.len() - shared) as u64);
        self.block.extend_from_slice(&self.pending_key[shared..]);
        let base = key_start(&self.pending_key).expect("push checks the key length");
        encode_tile(base, &agg, &mut self.block);
        std::mem::swap(&mut self.written_key, &mut self.pending_key);
        self.entries += 1;
    }

    /// Appends the restart trailer to the current block and starts a new one.
    fn seal_block(&mut self) {
        if self.block.is_empty() {
            return;
        }
        for r in &self.restarts {
            self.block.extend_from_slice(&r.to_le_bytes());
        }
        self.block
            .extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_BYTES + 512));
        self.blocks.push((std::mem::take(&mut self.first), block));
        self.restarts.clear();
        self.block_entries = 0;
    }

    /// The blocks (first key, bytes) and the number of entries.
    pub fn finish(mut self) -> (Blocks, u64) {
        self.flush_pending();
        self.seal_block();
        (self.blocks, self.entries)
    }
}

/// Splits a block into its entries and its restart offsets.
fn split_block(block: &[u8]) -> Result<(&[u8], &[u8]), MalformedBlock> {
    let n_at = block.len().checked_sub(4).ok_or(MalformedBlock)?;
    let n = u32::from_le_bytes(block[n_at..].try_into().expect("4 bytes")) as usize;
    let restarts_at = n
        .checked_mul(4)
        .and_then(|b| n_at.checked_sub(b))
        .ok_or(MalformedBlock)?;
    Ok((&block[..restarts_at], &block[restarts_at..n_at]))
}

/// Reads one block's entries in order.
pub struct BlockReader<'a> {
    entries: &'a [u8],
    restarts: &'a [u8],
    offset: usize,
    key: Vec<u8>,
}

impl<'a> BlockReader<'a> {
    /// Fails when the restart trailer is malformed.
    pub fn new(block: &'a [u8]) -> Result<Self, MalformedBlock> {
        let (entries, restarts) = split_block(block)?;
        Ok(BlockReader {
            entries,
            restarts,
            offset: 0,
            key: Vec::with_capacity(64),
        })
    }

    /// Positions the reader so that the next entry is the last restart
    /// entry whose key is `<= target` (or the first entry): every entry
    /// before it is smaller than `target`.
    pub fn seek(&mut self, target: &[u8]) -> Result<(), MalformedBlock> {
        let n = self.restarts.len() / 4;
        let restart = |j: usize| -> Result<(usize, &[u8]), MalformedBlock> {
            let at =
                u32::from_le_bytes(self.restarts[j * 4..j * 4 + 4].try_into().expect("4")) as usize;
            let mut i = at;
            if get_varint(self.entries, &mut i)? != 0 {
                return Err(MalformedBlock);
            }
            let len = get_varint(self.entries, &mut i)? as usize;
            let key = self
                .entries
                .get(i..i.saturating_add(len))
                .ok_or(MalformedBlock)?;
            Ok((at, key))
        };
        // Binary search: restarts [0, lo] have keys <= target (or lo = 0).
        let (mut lo, mut hi) = (0usize, n);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if restart(mid)?.1 <= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.offset = if n == 0 { 0 } else { restart(lo)?.0 };
        self.key.clear();
        Ok(())
    }

    /// The next entry, `None` at the end, an error when the block is malformed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<(&[u8], TileAgg), MalformedBlock>> {
        if self.offset >= self.entries.len() {
            return None;
        }
        Some(
            decode_entry(self.entries, &mut self.offset, &mut self.key)
                .map(|agg| (self.key.as_slice(), agg)),
        )
    }
}

/// Decodes the entry at `*i` of `block`: rebuilds its key in `key` (which
/// holds the previous key of the block) and returns its tile.
fn decode_entry(block: &[u8], i: &mut usize, key: &mut Vec<u8>) -> Result<TileAgg, MalformedBlock> {
    let shared = get_varint(block, i)? as usize;
    let unshared = get_varint(block, i)? as usize;
    if shared > key.len() {
        return Err(MalformedBlock);
    }
    let tail = block
        .get(*i..i.saturating_add(unshared))
        .ok_or(MalformedBlock)?;
    *i += unshared;
    key.truncate(shared);
    key.extend_from_slice(tail);
    decode_tile(key_start(key)?, block, i)
}

/// Decodes a whole block (tests; reads use [`BlockReader`]).
#[cfg(test)]
pub fn decode_block(block: &[u8]) -> Result<Vec<Entry>, MalformedBlock> {
    let mut r = BlockReader::new(block)?;
    let mut out = Vec::new();
    while let Some(e) = r.next() {
        let (k, a) = e?;
        out.push((k.to_vec(), a));
    }
    Ok(out)
}

/// Walks the entries of one run's blocks in order.
pub struct RunCursor {
    blocks: Vec<Vec<u8>>,
    block: usize,
    offset: usize,
    /// Where the entries of the current block end (its restart trailer
    /// starts), once known.
    end: Option<usize>,
    key: Vec<u8>,
    current: Option<TileAgg>,
}

impl RunCursor {
    /// A cursor on the first entry; fails when that entry is malformed.
    pub fn new(blocks: Vec<Vec<u8>>) -> Result<Self, MalformedBlock> {
        let mut c = RunCursor {
            blocks,
            block: 0,
            offset: 0,
            end: None,
            key: Vec::with_capacity(64),
            current: None,
        };
        c.load()?;
        Ok(c)
    }

    /// Decodes the entry at (block, offset) into `key` and `current`.
    fn load(&mut self) -> Result<(), MalformedBlock> {
        loop {
            let Some(b) = self.blocks.get(self.block) else {
                self.current = None;
                return Ok(());
            };
            let end = match self.end {
                Some(end) => end,
                None => *self.end.insert(split_block(b)?.0.len()),
            };
            if self.offset < end {
                let entries = &b[..end];
                self.current = Some(decode_entry(entries, &mut self.offset, &mut self.key)?);
                return Ok(());
            }
            self.block += 1;
            self.offset = 0;
            self.end = None;
            self.key.clear();
        }
    }

    /// The current entry.
    pub fn peek(&self) -> Option<(&[u8], TileAgg)> {
        self.current.map(|a| (self.key.as_slice(), a))
    }

    /// Moves to the next entry; fails when it is malformed.
    pub fn advance(&mut self) -> Result<(), MalformedBlock> {
        if self.current.is_none() {
            return Ok(());
        }
        self.load()
    }
}

/// Merges runs given oldest first into `out`; on equal keys the older run's
/// entry goes first, so a newer `last` wins a tie.
pub fn merge_cursors(
    mut runs: Vec<RunCursor>,
    out: &mut BlockWriter,
) -> Result<(), MalformedBlock> {
    loop {
        let mut best: Option<usize> = None;
        for i in 0..runs.len() {
            if let Some((k, _)) = runs[i].peek() {
                if best.is_none_or(|b| k < runs[b].peek().expect("best has an entry").0) {
                    best = Some(i);
                }
            }
        }
        let Some(i) = best else { return Ok(()) };
        let (key, agg) = runs[i].peek().expect("peeked");
        let pushed = out.push(key, &agg);
        debug_assert!(pushed, "runs are sorted");
        runs[i].advance()?;
    }
}

/// Encodes sorted entries into blocks (tests).
#[cfg(test)]
pub fn encode_blocks(entries: &[Entry]) -> Blocks {
    let mut w = BlockWriter::new();
    for (k, a) in entries {
        assert!(w.push(k, a), "sorted tile keys");
    }
    w.finish().0
}

/// Merges sorted runs, given oldest first, into one sorted run in one pass;
/// equal keys merge in run order (a newer `last` wins a tie). The in-memory
/// reference the tests check [`merge_cursors`] against.
#[cfg(test)]
pub fn merge_runs(mut runs: Vec<Vec<Entry>>) -> Vec<Entry> {
    let total = runs.iter().map(Vec::len).sum();
    let mut out: Vec<Entry> = Vec::with_capacity(total);
    let mut pos = vec![0usize; runs.len()];
    loop {
        // The smallest head key; on equal keys the oldest run comes first.
        let mut best: Option<usize> = None;
        for i in 0..runs.len() {
            if pos[i] < runs[i].len() && best.is_none_or(|b| runs[i][pos[i]].0 < runs[b][pos[b]].0)
            {
                best = Some(i);
            }
        }
        let Some(i) = best else { break };
        let key = std::mem::take(&mut runs[i][pos[i]].0);
        let agg = runs[i][pos[i]].1;
        pos[i] += 1;
        match out.last_mut() {
            Some((k, a)) if *k == key => a.merge(&agg),
            _ => out.push((key, agg)),
        }
    }
    out
}

/// Sorts entries by key (unless they already are) and merges equal keys
/// (in their original order).
#[cfg(test)]
pub fn sort_entries(mut entries: Vec<Entry>) -> Vec<Entry> {
    if !entries.windows(2).all(|w| w[0].0 <= w[1].0) {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for (key, agg) in entries {
        match out.last_mut() {
            Some((k, a)) if *k == key => a.merge(&agg),
            _ => out.push((key, agg)),
        }
    }
    out
}

/// How many of the newest runs to merge, given run sizes oldest first (0 = none).
pub fn plan_merge(sizes: &[u64]) -> usize {
    let n = sizes.len();
    if n < 2 {
        return 0;
    }
    let mut total = sizes[n - 1];
    let mut k = 1;
    while k < n && sizes[n - 1 - k] <= 2 * total {
        total += sizes[n - 1 - k];
        k += 1;
    }
    if k >= MIN_MERGE_WIDTH || (k >= 2 && n > MAX_RUNS) {
        k
    } else if n > MAX_RUNS {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(n: u64, t: i64) -> TileAgg {
        TileAgg {
            count: n,
            sum: n as f64,
            min: 0.0,
            max: n as f64,
            last_time: t,
            last: n as f64,
        }
    }

    /// A key as the store builds them: some prefix, then an encoded tile start.
    pub(super) fn key(prefix: &str, start: i64) -> Vec<u8> {
        let mut k = prefix.as_bytes().to_vec();
        k.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
        k
    }

    #[test]
    fn blocks_round_trip_and_split() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Every flag combination of the tile encoding, and keys sharing
        // prefixes of every length.
        let specials = [1.0, 0.0, -0.0, 2.5, f64::NAN, f64::INFINITY, 1e300, -7.0];
        let entries: Vec<Entry> = (0..5000u32)
            .map(|i| {
                let start = (i as i64 / 3) * 60_000 - 1_000_000;
                let v = specials[(rnd() % 8) as usize];
                let n = 1 + rnd() % 1000;
                let a = match rnd() % 4 {
                    0 => TileAgg {
                        count: n,
                        sum: n as f64 * v,
                        min: v,
                        max: v,
                        last_time: start + (rnd() % 60_000) as i64,
                        last: v,
                    },
                    1 => TileAgg {
                        sum: v + 0.25,
                        ..TileAgg::of(v, start - 5)
                    },
                    2 => TileAgg {
                        last_time: i64::MIN,
                        ..agg(n, 0)
                    },
                    _ => TileAgg {
                        count: u64::MAX,
                        last_time: i64::MAX,
                        ..agg(n, 0)
                    },
                };
                (
                    key(&format!("key-{:03}-", i % 7 * 100 + i / 1000), start),
                    a,
                )
            })
            .collect();
        let mut entries = sort_entries(entries);
        entries.dedup_by(|a, b| a.0 == b.0);
        let blocks = encode_blocks(&entries);
        assert!(blocks.len() > 4);
        let mut back = Vec::new();
        for (first, b) in &blocks {
            let d = decode_block(b).unwrap();
            assert_eq!(d[0].0, first.as_slice());
            back.extend(d);
        }
        assert_eq!(back.len(), entries.len());
        for (got, want) in back.iter().zip(&entries) {
            assert_eq!(got.0, want.0);
            let (g, w) = (got.1.encode(), want.1.encode());
            assert_eq!(g, w, "bit-exact round trip of {:?}", want.1);
        }
        // Seeking lands at or before the first entry >= the target, never after it.
        for (_, b) in &blocks {
            let all = decode_block(b).unwrap();
            for _ in 0..50 {
                let target = match rnd() % 3 {
                    0 => all[(rnd() % all.len() as u64) as usize].0.clone(),
                    1 => key(
                        &format!("key-{:03}-", rnd() % 800),
                        (rnd() % 2000) as i64 * 1000 - 1_000_000,
                    ),
                    _ => vec![(rnd() % 256) as u8],
                };
                let mut r = BlockReader::new(b).unwrap();
                r.seek(&target).unwrap();
                let mut seen = Vec::new();
                while let Some(e) = r.next() {
                    let (k, a) = e.unwrap();
                    seen.push((k.to_vec(), a));
                }
                let want: Vec<&Entry> = all.iter().filter(|(k, _)| *k >= target).collect();
                let got: Vec<&Entry> = seen.iter().filter(|(k, _)| *k >= target).collect();
                assert_eq!(got.len(), want.len());
                assert!(got.iter().zip(&want).all(|(g, w)| g.0 == w.0));
                assert!(
                    seen.len() - got.len() <= RESTART_INTERVAL as usize,
                    "{} read before the target, {} after, block of {}",
                    seen.len() - got.len(),
                    got.len(),
                    all.len()
                );
            }
        }
        // Counter tiles of neighbouring keys take a few bytes each.
        let counters: Vec<Entry> = (0..1000)
            .map(|i| {
                let start = i * 60_000;
                let mut a = TileAgg::of(1.0, start + 59_999);
                for _ in 0..i % 200 {
                    a.add(1.0, start);
                }
                (key("\0\0\0\x01\0\0\0\x0auser-12345", start), a)
            })
            .collect();
        let packed: usize = encode_blocks(&counters).iter().map(|(_, b)| b.len()).sum();
        assert!(
            packed <= 12 * counters.len(),
            "{packed} bytes for 1000 counter tiles"
        );
        // Malformed input is an error, never a panic.
        assert!(decode_block(&[5, 0, 1]).is_err());
        for (_, b) in blocks.iter().take(2) {
            for cut in [1, 7, b.len() / 2, b.len() - 1] {
                assert!(decode_block(&b[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn merges_keep_order_and_newest_last() {
        let a = vec![(key("a", 0), agg(1, 5)), (key("c", 0), agg(1, 5))];
        let b = vec![(key("b", 0), agg(2, 1)), (key("c", 0), agg(2, 5))];
        let m = merge_runs(vec![a, b]);
        assert_eq!(
            m.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
            vec![key("a", 0), key("b", 0), key("c", 0)]
        );
        assert_eq!(m[2].1.count, 3);
        assert_eq!(m[2].1.last, 2.0, "the newer run wins a tie on event time");
    }

    #[test]
    fn merge_plan_keeps_runs_few() {
        let mut sizes: Vec<u64> = Vec::new();
        let mut rewritten = 0u64;
        for _ in 0..1000 {
            sizes.push(100);
            loop {
                let k = plan_merge(&sizes);
                if k == 0 {
                    break;
                }
                let merged: u64 = sizes.split_off(sizes.len() - k).iter().sum();
                rewritten += merged;
                sizes.push(merged);
            }
            assert!(sizes.len() <= MAX_RUNS + 1, "{sizes:?}");
        }
        // Each entry is rewritten a logarithmic number of times.
        assert!(rewritten / 100_000 <= 8, "{rewritten}");
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;

    #[test]
    fn writer_and_cursor_merge_like_merge_runs() {
        let run = |seed: u64, n: usize| -> Vec<Entry> {
            let mut x = seed;
            let mut v: Vec<Entry> = (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (
                        tests::key(&format!("k{:05}", x % 3000), (x % 5) as i64),
                        TileAgg::of(i as f64, (x % 7) as i64),
                    )
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            sort_entries(v)
        };
        let runs = vec![run(1, 2000), run(2, 500), run(3, 3000)];
        let want = merge_runs(runs.clone());
        let cursors = runs
            .iter()
            .map(|r| {
                RunCursor::new(encode_blocks(r).into_iter().map(|(_, b)| b).collect()).unwrap()
            })
            .collect();
        let mut w = BlockWriter::new();
        merge_cursors(cursors, &mut w).unwrap();
        let (blocks, n) = w.finish();
        let got: Vec<Entry> = blocks
            .iter()
            .flat_map(|(_, b)| decode_block(b).unwrap())
            .collect();
        assert_eq!(n as usize, got.len());
        assert_eq!(got, want);
        let mut w = BlockWriter::new();
        assert!(w.push(&tests::key("b", 0), &TileAgg::of(1.0, 1)));
        assert!(
            !w.push(&tests::key("a", 0), &TileAgg::of(1.0, 1)),
            "out of order is refused"
        );
        assert!(
            !w.push(b"short", &TileAgg::of(1.0, 1)),
            "a key needs a tile start"
        );
    }
}
