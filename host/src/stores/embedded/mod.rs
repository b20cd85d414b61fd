//! The embedded tile store: one redb file.
//!
//! Why redb: pure Rust, ACID transactions with a single writer and MVCC
//! readers (a checkpoint commits tiles and source positions together while
//! the serving API keeps reading), ordered byte keys for range scans, and a
//! single file. Its commit is durable (fsync) by default. See
//! `BENCHMARKS.md` for the measured checkpoint and query cost.
//!
//! Layout (all keys big-endian so byte order is numeric order):
//! - `tiles`: feature id u32 | entity length u32 | entity | tile size ms u64 |
//!   tile start (i64 with the sign bit flipped) → 48-byte [`TileAgg`]
//! - `features`: name → JSON [`StoredFeature`]
//! - `positions`: `pipeline/source-key` → opaque source position

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use super::{Checkpoint, StoreError, StoredFeature, TileStore};
use crate::window::TileAgg;

const TILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tiles");
const FEATURES: TableDefinition<&str, &str> = TableDefinition::new("features");
const POSITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("positions");

pub struct EmbeddedStore {
    db: Database,
}

fn store_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Embedded(e.into())
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
        let open_err = |message: String| StoreError::Open { path: path.display().to_string(), message };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| open_err(e.to_string()))?;
        let tx = db.begin_write().map_err(store_err)?;
        tx.open_table(TILES).map_err(store_err)?;
        tx.open_table(FEATURES).map_err(store_err)?;
        tx.open_table(POSITIONS).map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(EmbeddedStore { db })
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
                let f: StoredFeature = serde_json::from_str(v.value())
                    .map_err(|e| StoreError::Corrupt { what: "feature", message: e.to_string() })?;
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
                let json = serde_json::to_string(&f).map_err(|e| StoreError::Corrupt { what: "feature", message: e.to_string() })?;
                table.insert(f.name.as_str(), json.as_str()).map_err(store_err)?;
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
            out.push(
                serde_json::from_str(v.value()).map_err(|e| StoreError::Corrupt { what: "feature", message: e.to_string() })?,
            );
        }
        Ok(out)
    }

    fn commit(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        // Encode and sort by key first: B-tree inserts in key order touch
        // each page once instead of jumping around the file.
        let mut keyed: Vec<(Vec<u8>, &TileAgg)> = cp
            .deltas
            .iter()
            .map(|d| {
                let mut key = Vec::with_capacity(24 + d.entity.len());
                tile_prefix(d.feature_id, &d.entity, d.size_ms, &mut key);
                key.extend_from_slice(&encode_start(d.start));
                (key, &d.agg)
            })
            .collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let tx = self.db.begin_write().map_err(store_err)?;
        {
            let mut tiles = tx.open_table(TILES).map_err(store_err)?;
            for (key, delta) in &keyed {
                let mut agg = match tiles.get(key.as_slice()).map_err(store_err)? {
                    Some(v) => TileAgg::decode(v.value())
                        .ok_or_else(|| StoreError::Corrupt { what: "tile", message: format!("{} bytes", v.value().len()) })?,
                    None => TileAgg::EMPTY,
                };
                agg.merge(delta);
                tiles.insert(key.as_slice(), agg.encode().as_slice()).map_err(store_err)?;
            }
            let mut positions = tx.open_table(POSITIONS).map_err(store_err)?;
            for (source, pos) in &cp.positions {
                positions.insert(format!("{}/{}", cp.pipeline, source).as_str(), pos.as_slice()).map_err(store_err)?;
            }
        }
        tx.commit().map_err(store_err)
    }

    fn read_tiles(&self, feature_id: u32, entity: &[u8], size_ms: i64, start: i64, end: i64) -> Result<Vec<(i64, TileAgg)>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(TILES).map_err(store_err)?;
        let mut lo = Vec::with_capacity(64);
        tile_prefix(feature_id, entity, size_ms, &mut lo);
        let mut hi = lo.clone();
        lo.extend_from_slice(&encode_start(start));
        hi.extend_from_slice(&encode_start(end));
        let mut out = Vec::new();
        for row in table.range(lo.as_slice()..hi.as_slice()).map_err(store_err)? {
            let (k, v) = row.map_err(store_err)?;
            let agg = TileAgg::decode(v.value())
                .ok_or_else(|| StoreError::Corrupt { what: "tile", message: format!("{} bytes", v.value().len()) })?;
            out.push((decode_start(k.value()), agg));
        }
        Ok(out)
    }

    fn position(&self, pipeline: &str, source_key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let table = tx.open_table(POSITIONS).map_err(store_err)?;
        Ok(table.get(format!("{pipeline}/{source_key}").as_str()).map_err(store_err)?.map(|v| v.value().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::TileDelta;

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
        let ids = store.register_features(&[feature("a", vec![60]), feature("b", vec![60])]).unwrap();
        assert_eq!(ids, vec![0, 1]);
        let delta = |start: i64, n: u64| TileDelta {
            feature_id: 0,
            entity: b"e1".to_vec().into(),
            size_ms: 60_000,
            start,
            agg: TileAgg { count: n, sum: n as f64, min: 1.0, max: 1.0, last_time: start, last: 1.0 },
        };
        let cp = Checkpoint { pipeline: "p".into(), deltas: vec![delta(-60_000, 1), delta(0, 2), delta(60_000, 3)], positions: vec![("f".into(), b"10".to_vec())] };
        store.commit(&cp).unwrap();
        store.commit(&Checkpoint { pipeline: "p".into(), deltas: vec![delta(0, 5)], positions: vec![("f".into(), b"20".to_vec())] }).unwrap();
        let tiles = store.read_tiles(0, b"e1", 60_000, -60_000, 60_000).unwrap();
        assert_eq!(tiles.iter().map(|(s, a)| (*s, a.count)).collect::<Vec<_>>(), vec![(-60_000, 1), (0, 7)]);
        assert!(store.read_tiles(0, b"e", 60_000, -60_000, 120_000).unwrap().is_empty(), "entity prefix must not match");
        assert!(store.read_tiles(1, b"e1", 60_000, -60_000, 120_000).unwrap().is_empty());
        assert_eq!(store.position("p", "f").unwrap(), Some(b"20".to_vec()));
        // Ids are stable, a compatible re-registration keeps them, an incompatible one fails.
        drop(store);
        let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
        assert_eq!(store.register_features(&[feature("b", vec![60]), feature("c", vec![60])]).unwrap(), vec![1, 2]);
        assert!(matches!(store.register_features(&[feature("a", vec![60, 3600])]), Err(StoreError::FeatureConflict { .. })));
        assert_eq!(store.features().unwrap().len(), 3);
    }
}
