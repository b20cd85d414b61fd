//! The embedded tile store: one redb file.
//!
//! Why redb: pure Rust, ACID transactions with a single writer and MVCC
//! readers (a checkpoint commits tiles and source positions together while
//! the serving API keeps reading), ordered byte keys for range scans, and a
//! single file. Its commit is durable (fsync) by default. See
//! `BENCHMARKS.md` for the measured checkpoint and query cost.
//!
//! Tiles are not updated in place (a B-tree read-merge-write per tile costs
//! ~4 µs): each checkpoint writes its sorted deltas as a run of blocks, runs
//! merge as they accumulate, and reads merge the runs (see `runs.rs`).
//!
//! Tile key (big-endian, so byte order is numeric order): feature id u32 |
//! entity length u32 | entity | tile size ms u64 | tile start (i64 with the
//! sign bit flipped); one (feature, entity, size) is one contiguous key range.
//!
//! Tables:
//! - `tile_runs`: run id → number of entries (u64 LE); ids grow with time
//! - `tile_blocks`: run id u64 BE | first key of the block → block
//! - `features`: name → JSON [`StoredFeature`]
//! - `positions`: `pipeline/source-key` → opaque source position
//! - `meta`: `format` → the block format version (`runs::FORMAT_VERSION`)

mod runs;

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Checkpoint, StoreError, StoredFeature, TileStore};
use crate::window::TileAgg;

const RUNS: TableDefinition<u64, u64> = TableDefinition::new("tile_runs");
const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tile_blocks");
const FEATURES: TableDefinition<&str, &str> = TableDefinition::new("features");
const POSITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("positions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub struct EmbeddedStore {
    db: Database,
}

fn store_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Embedded(Box::new(e.into()))
}

fn tile_prefix(feature_id: u32, entity: &[u8], size_ms: i64, key: &mut Vec<u8>) {
    key.clear();
    key.extend_from_slice(&feature_id.to_be_bytes());
    key.extend_from_slice(&(entity.len() as u32).to_be_bytes());
    key.extend_from_slice(entity);
    key.extend_from_slice(&(size_ms as u64).to_be_bytes());
}

fn encode_start(start: i64) -> [u8; 8] {
    ((start as u64) ^ (1 << 63)).to_be_bytes()
}

fn decode_start(bytes: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[bytes.len() - 8..]);
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

impl EmbeddedStore {
    /// Opens (or creates) the store file, creating its directory and tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                open_err("another process has it open (a running `tessera run` or `tessera serve`?); the embedded store is single-process".into())
            }
            e => open_err(e.to_string()),
        })?;
        let tx = db.begin_write().map_err(store_err)?;
        tx.open_table(RUNS).map_err(store_err)?;
        tx.open_table(BLOCKS).map_err(store_err)?;
        tx.open_table(FEATURES).map_err(store_err)?;
        tx.open_table(POSITIONS).map_err(store_err)?;
        {
            let mut meta = tx.open_table(META).map_err(store_err)?;
            let format = meta.get("format").map_err(store_err)?.map(|v| v.value());
            let has_runs = !tx
                .open_table(RUNS)
                .map_err(store_err)?
                .is_empty()
                .map_err(store_err)?;
            match format {
                Some(runs::FORMAT_VERSION) => {}
                None if !has_runs => {
                    meta.insert("format", runs::FORMAT_VERSION).map_err(store_err)?;
                }
                other => {
                    return Err(open_err(format!(
                        "it holds tiles in block format {}, this build reads format {} (rebuild it from the sources, or use the build that wrote it)",
                        other.map_or("1".to_string(), |v| v.to_string()),
                        runs::FORMAT_VERSION
                    )))
                }
            }
        }
        tx.commit().map_err(store_err)?;
        Ok(EmbeddedStore { db })
    }
}

fn write_run(
    run_table: &mut redb::Table<u64, u64>,
    blocks: &mut redb::Table<&[u8], &[u8]>,
    id: u64,
    encoded: runs::Blocks,
    entries: u64,
) -> Result<(), StoreError> {
    let mut key = Vec::with_capacity(80);
    for (first, block) in encoded {
        key.clear();
        key.extend_from_slice(&id.to_be_bytes());
        key.extend_from_slice(&first);
        blocks
            .insert(key.as_slice(), block.as_slice())
            .map_err(store_err)?;
    }
    run_table.insert(id, entries).map_err(store_err)?;
    Ok(())
}

fn read_run(blocks: &redb::Table<&[u8], &[u8]>, id: u64) -> Result<runs::RunCursor, StoreError> {
    let (lo, hi) = (id.to_be_bytes(), (id + 1).to_be_bytes());
    let mut out = Vec::new();
    for r in blocks
        .range(lo.as_slice()..hi.as_slice())
        .map_err(store_err)?
    {
        out.push(r.map_err(store_err)?.1.value().to_vec());
    }
    runs::RunCursor::new(out).map_err(|_| corrupt_run(id))
}

fn corrupt_run(id: u64) -> StoreError {
    StoreError::Corrupt {
        what: "tile block",
        message: format!("run {id}"),
    }
}

impl TileStore for EmbeddedStore {
    fn register_features(&self, features: &[StoredFeature]) -> Result<Vec<u32>, StoreError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        let mut ids = Vec::new();
        {
            let mut table = tx.open_table(FEATURES).map_err(store_err)?;
            let mut next_id = 0u32;
            let mut existing = std::collections::HashMap::new();
            for row in table.iter().map_err(store_err)? {
                let (k, v) = row.map_err(store_err)?;
                let f = StoredFeature::from_json(v.value())?;
                next_id = next_id.max(f.id + 1);
                existing.insert(k.value().to_string(), f);
            }
            for f in features {
                let mut f = f.clone();
                match existing.get(&f.name) {
                    Some(old) if !old.compatible_with(&f) => {
                        return Err(StoreError::FeatureConflict {
                            name: f.name.clone(),
                            stored: serde_json::to_string(old).unwrap_or_default(),
                            new: serde_json::to_string(&f).unwrap_or_default(),
                        });
                    }
                    Some(old) => f.id = old.id,
                    None => {
                        f.id = next_id;
                        next_id += 1;
                    }
                }
                let json = serde_json::to_string(&f).map_err(|e| StoreError::Corrupt {
                    what: "feature",
                    message: e.to_string(),
                })?;
                table
                    .insert(f.name.as_str(), json.as_str())
                    .map_err(store_err)?;
                existing.insert(f.name.clone(), f.clone());
                ids.push(f.id);
            }
        }
        tx.commit().map_err(store_err)?;
        Ok(ids)
    }

    fn features(&self) -> Result<Vec<StoredFeature>, StoreError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(FEATURES).map_err(store_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(store_err)? {
            let (_, v) = row.map_err(store_err)?;
            out.push(StoredFeature::from_json(v.value())?);
        }
        Ok(out)
    }

    fn feature(&self, name: &str) -> Result<Option<StoredFeature>, StoreError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(FEATURES).map_err(store_err)?;
        let row = table.get(name).map_err(store_err)?;
        row.map(|v| StoredFeature::from_json(v.value())).transpose()
    }

    fn commit(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        // Deltas come in key order (`TileDeltas` promises it): encode them
        // straight into blocks, building each key prefix once per run of
        // tiles that share it.
        let mut fresh = runs::BlockWriter::new();
        let mut key = Vec::with_capacity(64);
        let mut prefix: Option<(u32, u32, i64)> = None;
        for d in &cp.deltas.tiles {
            if prefix != Some((d.feature_id, d.entity, d.size_ms)) {
                tile_prefix(d.feature_id, cp.deltas.entity(d), d.size_ms, &mut key);
                prefix = Some((d.feature_id, d.entity, d.size_ms));
            }
            key.extend_from_slice(&encode_start(d.start));
            if !fresh.push(&key, &d.agg) {
                return Err(StoreError::InvalidCheckpoint(
                    "tile deltas out of key order".into(),
                ));
            }
            key.truncate(key.len() - 8);
        }
        let (fresh_blocks, fresh_entries) = fresh.finish();
        let tx = self.db.begin_write().map_err(store_err)?;
        {
            let mut run_table = tx.open_table(RUNS).map_err(store_err)?;
            let mut blocks = tx.open_table(BLOCKS).map_err(store_err)?;
            let mut live: Vec<(u64, u64)> = Vec::new();
            for row in run_table.iter().map_err(store_err)? {
                let (id, n) = row.map_err(store_err)?;
                live.push((id.value(), n.value()));
            }
            if fresh_entries > 0 {
                let id = live.last().map_or(0, |(id, _)| id + 1);
                write_run(&mut run_table, &mut blocks, id, fresh_blocks, fresh_entries)?;
                live.push((id, fresh_entries));
            }
            loop {
                let sizes: Vec<u64> = live.iter().map(|(_, n)| *n).collect();
                let k = runs::plan_merge(&sizes);
                if k == 0 {
                    break;
                }
                let merging = live.split_off(live.len() - k);
                let mut cursors = Vec::with_capacity(k);
                for (id, _) in &merging {
                    cursors.push(read_run(&blocks, *id)?);
                    let (lo, hi) = (id.to_be_bytes(), (id + 1).to_be_bytes());
                    blocks
                        .retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                        .map_err(store_err)?;
                    run_table.remove(*id).map_err(store_err)?;
                }
                let mut merged = runs::BlockWriter::new();
                runs::merge_cursors(cursors, &mut merged).map_err(|_| corrupt_run(merging[0].0))?;
                let (merged_blocks, merged_entries) = merged.finish();
                // The merged run takes the oldest id, so it still reads before anything newer.
                let id = merging[0].0;
                write_run(
                    &mut run_table,
                    &mut blocks,
                    id,
                    merged_blocks,
                    merged_entries,
                )?;
                live.push((id, merged_entries));
            }
            let mut positions = tx.open_table(POSITIONS).map_err(store_err)?;
            for (source, pos) in &cp.positions {
                positions
                    .insert(
                        format!("{}/{}", cp.pipeline, source).as_str(),
                        pos.as_slice(),
                    )
                    .map_err(store_err)?;
            }
        }
        tx.commit().map_err(store_err)
    }

    fn read_tiles(
        &self,
        feature_id: u32,
        entity: &[u8],
        size_ms: i64,
        start: i64,
        end: i64,
    ) -> Result<Vec<(i64, TileAgg)>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut lo = Vec::with_capacity(64);
        tile_prefix(feature_id, entity, size_ms, &mut lo);
        let mut hi = lo.clone();
        lo.extend_from_slice(&encode_start(start));
        hi.extend_from_slice(&encode_start(end));
        let tx = self.db.begin_read().map_err(store_err)?;
        let run_table = tx.open_table(RUNS).map_err(store_err)?;
        let blocks = tx.open_table(BLOCKS).map_err(store_err)?;
        let mut tiles: std::collections::BTreeMap<i64, TileAgg> = Default::default();
        // Oldest run first, so merging applies runs in the order they were written.
        for row in run_table.iter().map_err(store_err)? {
            let (id, _) = row.map_err(store_err)?;
            let rid = id.value().to_be_bytes();
            let mut seek = rid.to_vec();
            seek.extend_from_slice(&lo);
            // The block holding `lo` is the last one whose first key is <= lo.
            let from = match blocks
                .range(rid.as_slice()..=seek.as_slice())
                .map_err(store_err)?
                .next_back()
            {
                Some(r) => r.map_err(store_err)?.0.value().to_vec(),
                None => rid.to_vec(),
            };
            for r in blocks.range(from.as_slice()..).map_err(store_err)? {
                let (k, v) = r.map_err(store_err)?;
                let k = k.value();
                if !k.starts_with(&rid) || &k[8..] >= hi.as_slice() {
                    break;
                }
                let mut block =
                    runs::BlockReader::new(v.value()).map_err(|_| corrupt_run(id.value()))?;
                block.seek(&lo).map_err(|_| corrupt_run(id.value()))?;
                while let Some(entry) = block.next() {
                    let (key, agg) = entry.map_err(|_| corrupt_run(id.value()))?;
                    if key >= hi.as_slice() {
                        break;
                    }
                    if key >= lo.as_slice() {
                        tiles
                            .entry(decode_start(key))
                            .or_insert(TileAgg::EMPTY)
                            .merge(&agg);
                    }
                }
            }
        }
        Ok(tiles.into_iter().collect())
    }

    fn position(&self, pipeline: &str, source_key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(POSITIONS).map_err(store_err)?;
        Ok(table
            .get(format!("{pipeline}/{source_key}").as_str())
            .map_err(store_err)?
            .map(|v| v.value().to_vec()))
    }

    fn positions_under(
        &self,
        pipeline: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(POSITIONS).map_err(store_err)?;
        let from = format!("{pipeline}/{prefix}");
        let mut out = Vec::new();
        for row in table.range(from.as_str()..).map_err(store_err)? {
            let (k, v) = row.map_err(store_err)?;
            let Some(key) = k.value().strip_prefix(&from) else {
                break;
            };
            out.push((format!("{prefix}{key}"), v.value().to_vec()));
        }
        Ok(out)
    }

    fn put_position(&self, pipeline: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(store_err)?;
        tx.open_table(POSITIONS)
            .map_err(store_err)?
            .insert(format!("{pipeline}/{key}").as_str(), value)
            .map_err(store_err)?;
        tx.commit().map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::TileDeltas;

    fn feature(name: &str, sizes: Vec<u32>) -> StoredFeature {
        StoredFeature {
            id: 0,
            name: name.into(),
            plugin: "p".into(),
            entity_field: "post_id".into(),
            aggregation: "count".into(),
            tile_sizes_secs: sizes,
            retention_secs: 60,
            windows_secs: vec![],
        }
    }

    #[test]
    fn commits_merge_and_ranges_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
        let ids = store
            .register_features(&[feature("a", vec![60]), feature("b", vec![60])])
            .unwrap();
        assert_eq!(ids, vec![0, 1]);
        let delta = |start: i64, n: u64| {
            let agg = TileAgg {
                count: n,
                sum: n as f64,
                min: 1.0,
                max: 1.0,
                last_time: start,
                last: 1.0,
            };
            (0, b"e1".to_vec(), 60_000, start, agg)
        };
        let cp = Checkpoint {
            pipeline: "p".into(),
            instance: String::new(),
            deltas: TileDeltas::from_unsorted(vec![
                delta(60_000, 3),
                delta(-60_000, 1),
                delta(0, 2),
            ]),
            positions: vec![("f".into(), b"10".to_vec())],
        };
        store.commit(&cp).unwrap();
        store
            .commit(&Checkpoint {
                pipeline: "p".into(),
                instance: String::new(),
                deltas: TileDeltas::from_unsorted(vec![delta(0, 5)]),
                positions: vec![("f".into(), b"20".to_vec())],
            })
            .unwrap();
        let tiles = store.read_tiles(0, b"e1", 60_000, -60_000, 60_000).unwrap();
        assert_eq!(
            tiles.iter().map(|(s, a)| (*s, a.count)).collect::<Vec<_>>(),
            vec![(-60_000, 1), (0, 7)]
        );
        assert!(
            store
                .read_tiles(0, b"e", 60_000, -60_000, 120_000)
                .unwrap()
                .is_empty(),
            "entity prefix must not match"
        );
        assert!(store
            .read_tiles(1, b"e1", 60_000, -60_000, 120_000)
            .unwrap()
            .is_empty());
        assert_eq!(store.position("p", "f").unwrap(), Some(b"20".to_vec()));
        // Ids are stable, a compatible re-registration keeps them, an incompatible one fails.
        drop(store);
        let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
        assert_eq!(
            store
                .register_features(&[feature("b", vec![60]), feature("c", vec![60])])
                .unwrap(),
            vec![1, 2]
        );
        assert!(matches!(
            store.register_features(&[feature("a", vec![60, 3600])]),
            Err(StoreError::FeatureConflict { .. })
        ));
        assert_eq!(store.features().unwrap().len(), 3);
        assert_eq!(store.feature("c").unwrap().map(|f| f.id), Some(2));
        assert_eq!(store.feature("nope").unwrap(), None);
    }

    #[test]
    fn a_store_in_use_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let _first = EmbeddedStore::open(&path).unwrap();
        let err = EmbeddedStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("another process has it open"), "{err}");
    }

    #[test]
    fn tiles_of_another_block_format_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        store
            .commit(&Checkpoint {
                pipeline: "p".into(),
                instance: String::new(),
                deltas: TileDeltas::from_unsorted(vec![(
                    0,
                    b"e".to_vec(),
                    60_000,
                    0,
                    TileAgg::of(1.0, 0),
                )]),
                positions: vec![],
            })
            .unwrap();
        let tx = store.db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert("format", 1).unwrap();
        tx.commit().unwrap();
        drop(store);
        let err = EmbeddedStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("block format 1"), "{err}");
    }

    /// Many checkpoints (enough to trigger run merges) read back like a brute-force sum.
    #[test]
    fn runs_merge_and_read_like_brute_force() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
        let mut brute: std::collections::BTreeMap<(Vec<u8>, i64), u64> = Default::default();
        let mut x: u64 = 88172645463325252;
        for round in 0..60 {
            let mut deltas = Vec::new();
            let n = if round % 7 == 0 { 3000 } else { 200 };
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let entity = format!("e{}", x % 50).into_bytes();
                let start = ((x >> 20) % 400) as i64 * 60_000 - 100 * 60_000;
                if !seen.insert((entity.clone(), start)) {
                    continue;
                }
                let c = 1 + (x >> 40) % 5;
                *brute.entry((entity.clone(), start)).or_default() += c;
                let agg = TileAgg {
                    count: c,
                    sum: c as f64,
                    min: 1.0,
                    max: 1.0,
                    last_time: start,
                    last: 1.0,
                };
                deltas.push((3, entity, 60_000, start, agg));
            }
            store
                .commit(&Checkpoint {
                    pipeline: "p".into(),
                    instance: String::new(),
                    deltas: TileDeltas::from_unsorted(deltas),
                    positions: vec![],
                })
                .unwrap();
        }
        let runs = {
            use redb::ReadableTableMetadata;
            store
                .db
                .begin_read()
                .unwrap()
                .open_table(RUNS)
                .unwrap()
                .len()
                .unwrap()
        };
        assert!(runs < 17, "{runs} runs");
        for e in 0..50 {
            let entity = format!("e{e}").into_bytes();
            for (lo, hi) in [
                (-200 * 60_000, 500 * 60_000),
                (-7 * 60_000, 13 * 60_000),
                (250 * 60_000, 251 * 60_000),
            ] {
                let got: Vec<(i64, u64)> = store
                    .read_tiles(3, &entity, 60_000, lo, hi)
                    .unwrap()
                    .into_iter()
                    .map(|(s, a)| (s, a.count))
                    .collect();
                let want: Vec<(i64, u64)> = brute
                    .range((entity.clone(), lo)..(entity.clone(), hi))
                    .map(|((_, s), c)| (*s, *c))
                    .collect();
                assert_eq!(got, want, "entity e{e} [{lo}, {hi})");
            }
        }
    }
}
