//! Which embedded store for tiles? Measures the two access paths on redb and
//! fjall with Tessera's key layout: a checkpoint (read-merge-write of N tile
//! deltas in key order, one atomic commit with fsync) and a window read (one
//! range scan of ~30 tiles of one entity), p50/p99.
//!
//! Run: `cargo run --release -p store-choice` (TILES=n per checkpoint, default 200000).

use std::time::{Duration, Instant};

use redb::ReadableTable;

const TILE: usize = 48;

fn key(feature: u32, entity: u64, size_ms: u64, start: i64) -> Vec<u8> {
    let e = format!("user-{entity}");
    let mut k = Vec::with_capacity(24 + e.len());
    k.extend_from_slice(&feature.to_be_bytes());
    k.extend_from_slice(&(e.len() as u32).to_be_bytes());
    k.extend_from_slice(e.as_bytes());
    k.extend_from_slice(&size_ms.to_be_bytes());
    k.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    k
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Log-uniform over 0..n (Zipf with s = 1).
    fn zipf(&mut self, n: u64) -> u64 {
        (((self.next() % 1_000_000) as f64 / 1e6 * ((n + 1) as f64).ln()).exp() as u64)
            .saturating_sub(1)
    }
}

/// Checkpoint `c` of a stream: tile deltas for minute tiles in the c-th
/// 5-minute stretch of event time, entities Zipf over 1M, sorted, distinct.
fn checkpoint_keys(c: u64, n: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let minute = c * 5 + rng.next() % 5;
            key(1, rng.zipf(1_000_000), 60_000, (minute * 60_000) as i64)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn merge(old: Option<&[u8]>) -> [u8; TILE] {
    let mut out = [1u8; TILE];
    if let Some(o) = old {
        out[0] = o[0].wrapping_add(1);
    }
    out
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// 2,000 window reads (one entity's 30 minute tiles, Zipf entities), timed.
fn window_reads(mut read: impl FnMut(&[u8], &[u8]) -> usize) -> Vec<Duration> {
    let mut rng = Rng(99);
    (0..2000)
        .map(|_| {
            let e = rng.zipf(1000);
            let lo = key(1, e, 60_000, 0);
            let hi = key(1, e, 60_000, 30 * 60_000);
            let t = Instant::now();
            std::hint::black_box(read(&lo, &hi));
            t.elapsed()
        })
        .collect()
}

/// One table row: checkpoint cost per tile (median, last) and read p50/p99.
fn report(store: &str, per_tile: &[Duration], reads: Vec<Duration>) {
    println!(
        "| {store} | {:.2} | {:.2} | {:?} | {:?} |",
        pct(per_tile.to_vec(), 0.5).as_nanos() as f64 / 1000.0,
        per_tile.last().unwrap().as_nanos() as f64 / 1000.0,
        pct(reads.clone(), 0.5),
        pct(reads, 0.99)
    );
}

fn main() {
    let n: usize = std::env::var("TILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let checkpoints = 8;
    let dir = tempfile::tempdir().unwrap();
    println!("{checkpoints} checkpoints of ~{n} tile deltas (Zipf entities over 1M), then 2000 window reads");
    println!(
        "| store | checkpoint µs/tile (median) | last checkpoint µs/tile | window read p50 | p99 |"
    );
    println!("|---|---|---|---|---|");

    // redb
    {
        const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("tiles");
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let mut rng = Rng(7);
        let mut per_tile = Vec::new();
        for c in 0..checkpoints {
            let keys = checkpoint_keys(c, n, &mut rng);
            let t = Instant::now();
            let tx = db.begin_write().unwrap();
            {
                let mut table = tx.open_table(T).unwrap();
                for k in &keys {
                    let v = merge(table.get(k.as_slice()).unwrap().as_ref().map(|g| g.value()));
                    table.insert(k.as_slice(), v.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
            per_tile.push(t.elapsed() / keys.len() as u32);
        }
        let reads = window_reads(|lo, hi| {
            let tx = db.begin_read().unwrap();
            let table = tx.open_table(T).unwrap();
            table.range(lo..hi).unwrap().count()
        });
        report("redb 2.6", &per_tile, reads);
    }

    // fjall
    {
        let keyspace = fjall::Config::new(dir.path().join("fj")).open().unwrap();
        let part = keyspace
            .open_partition("tiles", Default::default())
            .unwrap();
        let mut rng = Rng(7);
        let mut per_tile = Vec::new();
        for c in 0..checkpoints {
            let keys = checkpoint_keys(c, n, &mut rng);
            let t = Instant::now();
            let mut batch = keyspace.batch();
            for k in &keys {
                let v = merge(part.get(k).unwrap().as_deref());
                batch.insert(&part, k.as_slice(), v.as_slice());
            }
            batch.commit().unwrap();
            keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
            per_tile.push(t.elapsed() / keys.len() as u32);
        }
        let reads = window_reads(|lo, hi| part.range(lo..hi).count());
        report("fjall 2.11", &per_tile, reads);
    }
}
