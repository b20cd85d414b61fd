//! Sorted runs of tiles: how the embedded store writes a checkpoint without
//! a B-tree update per tile.
//!
//! A checkpoint's deltas, sorted by key, become one immutable *run*: a list
//! of blocks (~16 KiB of `[key length u16][key][48-byte TileAgg]` entries),
//! each stored under `run id | first key of the block`. Writing a run costs a
//! copy per tile and one B-tree insert per block. A read looks the key range
//! up in every live run (newest last, so `last` ties resolve to the newest)
//! and merges. Runs are merged in the same transaction when the newest ones
//! have grown comparable in size to the one before them (as RocksDB's
//! universal compaction does), which keeps the number of runs logarithmic in
//! the data and collapses a tile written by several checkpoints into one entry.
//!
//! Limit: a merge holds the runs being merged in memory.

use crate::window::TileAgg;

/// Target size of one block.
pub const BLOCK_BYTES: usize = 16 * 1024;

/// Newest runs merged together when at least this many are comparable.
const MIN_MERGE_WIDTH: usize = 4;
/// Above this many runs, the newest two are merged regardless.
const MAX_RUNS: usize = 16;

/// One (key, tile) entry of a run.
pub type Entry = (Vec<u8>, TileAgg);

/// Encoded blocks of a run: (first key, block bytes).
pub type Blocks = Vec<(Vec<u8>, Vec<u8>)>;

/// Encodes a sorted stream of entries into blocks, merging equal
/// consecutive keys (in arrival order), without an allocation per entry.
#[derive(Default)]
pub struct BlockWriter {
    blocks: Blocks,
    block: Vec<u8>,
    first: Vec<u8>,
    pending_key: Vec<u8>,
    pending: Option<TileAgg>,
    entries: u64,
}

impl BlockWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; keys must come in ascending order (equal keys merge).
    /// Returns false, adding nothing, when `key` is smaller than the last one.
    pub fn push(&mut self, key: &[u8], agg: &TileAgg) -> bool {
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
            let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_BYTES + 256));
            self.blocks.push((std::mem::take(&mut self.first), block));
        }
        if self.block.is_empty() {
            self.first.clear();
            self.first.extend_from_slice(&self.pending_key);
        }
        self.block
            .extend_from_slice(&(self.pending_key.len() as u16).to_le_bytes());
        self.block.extend_from_slice(&self.pending_key);
        self.block.extend_from_slice(&agg.encode());
        self.entries += 1;
    }

    /// The blocks (first key, bytes) and the number of entries.
    pub fn finish(mut self) -> (Blocks, u64) {
        self.flush_pending();
        if !self.block.is_empty() {
            self.blocks.push((self.first, self.block));
        }
        (self.blocks, self.entries)
    }
}

/// Walks the entries of one run's blocks in order.
pub struct RunCursor {
    blocks: Vec<Vec<u8>>,
    block: usize,
    offset: usize,
}

impl RunCursor {
    /// Fails when a block is malformed.
    pub fn new(blocks: Vec<Vec<u8>>) -> Option<Self> {
        if blocks.iter().any(|b| decode_block(b).is_none()) {
            return None;
        }
        Some(RunCursor {
            blocks,
            block: 0,
            offset: 0,
        })
    }

    /// The current entry (blocks were checked in `new`).
    pub fn peek(&self) -> Option<(&[u8], TileAgg)> {
        let b = self.blocks.get(self.block)?;
        let len = u16::from_le_bytes([b[self.offset], b[self.offset + 1]]) as usize;
        let key = &b[self.offset + 2..self.offset + 2 + len];
        let agg = TileAgg::decode(
            &b[self.offset + 2 + len..self.offset + 2 + len + TileAgg::ENCODED_LEN],
        )?;
        Some((key, agg))
    }

    pub fn advance(&mut self) {
        let Some(b) = self.blocks.get(self.block) else {
            return;
        };
        let len = u16::from_le_bytes([b[self.offset], b[self.offset + 1]]) as usize;
        self.offset += 2 + len + TileAgg::ENCODED_LEN;
        if self.offset >= b.len() {
            self.block += 1;
            self.offset = 0;
        }
    }
}

/// Merges runs given oldest first into `out`; on equal keys the older run's
/// entry goes first, so a newer `last` wins a tie.
pub fn merge_cursors(mut runs: Vec<RunCursor>, out: &mut BlockWriter) {
    loop {
        let mut best: Option<usize> = None;
        for i in 0..runs.len() {
            if let Some((k, _)) = runs[i].peek() {
                if best.is_none_or(|b| k < runs[b].peek().expect("best has an entry").0) {
                    best = Some(i);
                }
            }
        }
        let Some(i) = best else { break };
        let (key, agg) = runs[i].peek().expect("peeked");
        let pushed = out.push(key, &agg);
        debug_assert!(pushed, "runs are sorted");
        runs[i].advance();
    }
}

/// Splits sorted entries into encoded blocks, each with its first key (the
/// simple reference the tests check [`BlockWriter`] against).
#[cfg(test)]
pub fn encode_blocks(entries: &[Entry]) -> Blocks {
    let mut blocks = Vec::new();
    let mut block = Vec::with_capacity(BLOCK_BYTES + 256);
    let mut first: Option<&[u8]> = None;
    for (key, agg) in entries {
        if block.len() >= BLOCK_BYTES {
            blocks.push((
                first.take().unwrap_or_default().to_vec(),
                std::mem::replace(&mut block, Vec::with_capacity(BLOCK_BYTES + 256)),
            ));
        }
        if first.is_none() {
            first = Some(key);
        }
        block.extend_from_slice(&(key.len() as u16).to_le_bytes());
        block.extend_from_slice(key);
        block.extend_from_slice(&agg.encode());
    }
    if !block.is_empty() {
        blocks.push((first.unwrap_or_default().to_vec(), block));
    }
    blocks
}

/// Decodes a block's entries; `None` when it is malformed.
pub fn decode_block(block: &[u8]) -> Option<Vec<(&[u8], TileAgg)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < block.len() {
        let len = u16::from_le_bytes(block.get(i..i + 2)?.try_into().ok()?) as usize;
        let key = block.get(i + 2..i + 2 + len)?;
        let agg = TileAgg::decode(block.get(i + 2 + len..i + 2 + len + TileAgg::ENCODED_LEN)?)?;
        out.push((key, agg));
        i += 2 + len + TileAgg::ENCODED_LEN;
    }
    Some(out)
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

    #[test]
    fn blocks_round_trip_and_split() {
        let entries: Vec<Entry> = (0..2000u32)
            .map(|i| (format!("key-{i:06}").into_bytes(), agg(i as u64, 0)))
            .collect();
        let blocks = encode_blocks(&entries);
        assert!(blocks.len() > 4);
        let mut back = Vec::new();
        for (first, b) in &blocks {
            let d = decode_block(b).unwrap();
            assert_eq!(d[0].0, first.as_slice());
            back.extend(d.into_iter().map(|(k, a)| (k.to_vec(), a)));
        }
        assert_eq!(back, entries);
        assert!(decode_block(&[5, 0, 1]).is_none());
    }

    #[test]
    fn merges_keep_order_and_newest_last() {
        let a = vec![(b"a".to_vec(), agg(1, 5)), (b"c".to_vec(), agg(1, 5))];
        let b = vec![(b"b".to_vec(), agg(2, 1)), (b"c".to_vec(), agg(2, 5))];
        let m = merge_runs(vec![a, b]);
        assert_eq!(
            m.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
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
                        format!("k{:05}", x % 3000).into_bytes(),
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
        merge_cursors(cursors, &mut w);
        let (blocks, n) = w.finish();
        let got: Vec<Entry> = blocks
            .iter()
            .flat_map(|(_, b)| {
                decode_block(b)
                    .unwrap()
                    .into_iter()
                    .map(|(k, a)| (k.to_vec(), a))
            })
            .collect();
        assert_eq!(n as usize, got.len());
        assert_eq!(got, want);
        let mut w = BlockWriter::new();
        assert!(w.push(b"b", &TileAgg::of(1.0, 1)));
        assert!(
            !w.push(b"a", &TileAgg::of(1.0, 1)),
            "out of order is refused"
        );
    }
}
