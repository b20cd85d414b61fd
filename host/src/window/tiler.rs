//! Folds feature updates into per-tile deltas between checkpoints.
//!
//! State is keyed by small integers (feature id, interned entity id, tile
//! size, tile start) so the per-update cost is one hash probe per tile size;
//! the entity interner is reset at every drain, so memory is bounded by what
//! one checkpoint interval touches.

use foldhash::fast::FixedState;
use hashbrown::HashMap;

use super::{tile_start, TileAgg};
use crate::record::{column, utf8_at, EventBatch, FeatureSpec, UpdateBatch};

/// A feature as the host knows it: a store-wide id, the spec the plugin
/// declared, and its tile sizes in milliseconds.
#[derive(Clone, Debug)]
pub struct FeatureDef {
    pub id: u32,
    pub plugin: String,
    pub spec: FeatureSpec,
    pub sizes_ms: Vec<i64>,
}

/// One tile's change since the last checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TileDelta {
    pub feature_id: u32,
    /// Shared by every delta of the same entity in one drain.
    pub entity: std::sync::Arc<[u8]>,
    pub size_ms: i64,
    pub start: i64,
    pub agg: TileAgg,
}

/// An update the tiler could not apply (its event lacks the entity field).
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateRejection {
    pub row: u32,
    pub reason: String,
}

/// Where a (feature, entity)'s open tiles live in `Tiler::open`.
struct Slot {
    feature_id: u32,
    entity: u32,
    base: u32,
}

/// Tile state between checkpoints. Each (feature, entity) has one open tile
/// per tile size in a flat arena; an update for the open tile is a plain add
/// (events mostly arrive in time order), an update for a later tile closes
/// the open one into `spill`, an update for an earlier tile goes to `spill`
/// directly. A tile key is in exactly one of the two places.
#[derive(Default)]
pub struct Tiler {
    interner: HashMap<std::sync::Arc<[u8]>, u32, FixedState>,
    entities: Vec<std::sync::Arc<[u8]>>,
    /// Per feature (by id): entity id → base of its open tiles in `open`,
    /// `NO_SLOT` when none. Entity ids are dense, so this is an index, not a
    /// hash lookup.
    slot_of: HashMap<u32, Vec<u32>, FixedState>,
    slots: Vec<Slot>,
    open: Vec<(i64, TileAgg)>,
    spill: HashMap<(u32, u32, i64, i64), TileAgg, FixedState>,
    feature_sizes: HashMap<u32, Vec<i64>, FixedState>,
    updates: u64,
}

/// Sentinel for "no value" in the per-batch entity id cache.
const NO_ENTITY: u32 = u32::MAX;
/// Sentinel for "no open tiles yet" in `Tiler::slot_of`.
const NO_SLOT: u32 = u32::MAX;

impl Tiler {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn intern(&mut self, entity: &[u8]) -> u32 {
        if let Some(id) = self.interner.get(entity) {
            return *id;
        }
        let id = self.entities.len() as u32;
        let bytes: std::sync::Arc<[u8]> = entity.into();
        self.entities.push(bytes.clone());
        self.interner.insert(bytes, id);
        id
    }

    /// Applies one plugin's updates; `defs[i]` is the plugin's feature `i`.
    /// Updates whose event has no value in the feature's entity field are
    /// returned as rejections (the rest are applied).
    pub fn apply(
        &mut self,
        defs: &[FeatureDef],
        events: &EventBatch,
        updates: &UpdateBatch,
    ) -> Vec<UpdateRejection> {
        // Intern each entity column once per batch, shared by the features that use it.
        let mut columns: Vec<(&str, Vec<u32>)> = Vec::new();
        let mut col_of_def = Vec::with_capacity(defs.len());
        for d in defs {
            let name = d.spec.entity_field.as_str();
            let idx = match columns.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    let ids = match column(events, name) {
                        Some(c) => (0..events.len as usize)
                            .map(|row| utf8_at(c, row).map_or(NO_ENTITY, |e| self.intern(e)))
                            .collect(),
                        None => Vec::new(),
                    };
                    columns.push((name, ids));
                    columns.len() - 1
                }
            };
            col_of_def.push(idx);
        }
        // Take each feature's slot index out of the map once per batch.
        let mut slot_index: Vec<Vec<u32>> = defs
            .iter()
            .map(|d| self.slot_of.remove(&d.id).unwrap_or_default())
            .collect();
        let mut rejections = Vec::new();
        for i in 0..updates.row.len() {
            let (f, row, value) = (
                updates.feature[i] as usize,
                updates.row[i] as usize,
                updates.value[i],
            );
            let def = &defs[f];
            let entity = columns[col_of_def[f]]
                .1
                .get(row)
                .copied()
                .unwrap_or(NO_ENTITY);
            if entity == NO_ENTITY {
                rejections.push(UpdateRejection {
                    row: row as u32,
                    reason: format!(
                        "feature `{}`: event has no `{}` (entity field)",
                        def.spec.name, def.spec.entity_field
                    ),
                });
                continue;
            }
            let t = events.event_time[row];
            let index = &mut slot_index[f];
            if index.len() <= entity as usize {
                index.resize(self.entities.len().max(entity as usize + 1), NO_SLOT);
            }
            // The index holds the slot's base in `open` directly: one memory
            // access fewer per update than going through `slots`.
            let mut base = index[entity as usize];
            if base == NO_SLOT {
                base = self.open.len() as u32;
                index[entity as usize] = base;
                self.feature_sizes
                    .entry(def.id)
                    .or_insert_with(|| def.sizes_ms.clone());
                self.slots.push(Slot {
                    feature_id: def.id,
                    entity,
                    base,
                });
                self.open
                    .extend(def.sizes_ms.iter().map(|_| (i64::MIN, TileAgg::EMPTY)));
            }
            let base = base as usize;
            for (k, &size) in def.sizes_ms.iter().enumerate() {
                let start = tile_start(t, size);
                let cell = &mut self.open[base + k];
                if cell.0 == start {
                    cell.1.add(value, t);
                } else if start > cell.0 {
                    if cell.1.count > 0 {
                        self.spill
                            .entry((def.id, entity, size, cell.0))
                            .or_insert(TileAgg::EMPTY)
                            .merge(&cell.1);
                    }
                    *cell = (start, TileAgg::of(value, t));
                } else {
                    self.spill
                        .entry((def.id, entity, size, start))
                        .or_insert(TileAgg::EMPTY)
                        .add(value, t);
                }
            }
            self.updates += 1;
        }
        for (d, index) in defs.iter().zip(slot_index) {
            self.slot_of.insert(d.id, index);
        }
        rejections
    }

    /// Updates applied since the last drain.
    pub fn pending_updates(&self) -> u64 {
        self.updates
    }

    /// Takes every delta and resets the state. Deltas come sorted by
    /// (feature id, entity length, entity bytes, tile size, tile start) —
    /// the embedded store's key order — using integer comparisons only.
    pub fn drain(&mut self) -> Vec<TileDelta> {
        let entities = std::mem::take(&mut self.entities);
        // Rank entities by (length, bytes) once, then sort tiles by integers.
        let mut order: Vec<u32> = (0..entities.len() as u32).collect();
        order.sort_unstable_by(|a, b| {
            let (x, y) = (&entities[*a as usize], &entities[*b as usize]);
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        });
        let mut rank = vec![0u32; entities.len()];
        for (r, e) in order.iter().enumerate() {
            rank[*e as usize] = r as u32;
        }
        let spill = std::mem::take(&mut self.spill);
        let mut tiles: Vec<((u32, u32, i64, i64), TileAgg)> =
            Vec::with_capacity(spill.len() + self.open.len());
        tiles.extend(
            spill
                .into_iter()
                .map(|((f, e, size, start), agg)| ((f, rank[e as usize], size, start), agg)),
        );
        // Open tiles go straight in: a key is never both open and spilled.
        for slot in self.slots.drain(..) {
            let sizes = &self.feature_sizes[&slot.feature_id];
            for (k, &size) in sizes.iter().enumerate() {
                let (start, agg) = self.open[slot.base as usize + k];
                if agg.count > 0 {
                    tiles.push((
                        (slot.feature_id, rank[slot.entity as usize], size, start),
                        agg,
                    ));
                }
            }
        }
        self.open.clear();
        self.slot_of.clear();
        self.interner.clear();
        self.updates = 0;
        tiles.sort_unstable_by_key(|(k, _)| *k);
        tiles
            .into_iter()
            .map(|((feature_id, r, size_ms, start), agg)| TileDelta {
                feature_id,
                entity: entities[order[r as usize] as usize].clone(),
                size_ms,
                start,
                agg,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BytesColumn, Column, ColumnValues};

    fn def(id: u32, sizes: &[i64]) -> FeatureDef {
        FeatureDef {
            id,
            plugin: "p".into(),
            spec: FeatureSpec {
                name: format!("f{id}"),
                entity_field: "k".into(),
                aggregation: crate::record::Aggregation::Sum,
                tile_sizes_secs: vec![],
                retention_secs: 0,
                windows_secs: vec![],
            },
            sizes_ms: sizes.to_vec(),
        }
    }

    /// Random out-of-order updates, drained at random points, equal a brute-force fold.
    #[test]
    fn deltas_equal_brute_force_over_out_of_order_updates() {
        let defs = [def(0, &[10, 100]), def(1, &[30])];
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut tiler = Tiler::new();
        let mut merged: std::collections::BTreeMap<(u32, Vec<u8>, i64, i64), TileAgg> =
            Default::default();
        let mut brute: std::collections::BTreeMap<(u32, Vec<u8>, i64, i64), TileAgg> =
            Default::default();
        for round in 0..40 {
            let n = 50;
            let keys: Vec<String> = (0..n).map(|_| format!("e{}", rnd(7))).collect();
            let times: Vec<i64> = (0..n)
                .map(|i| round * 40 + i as i64 - rnd(60) as i64)
                .collect();
            let mut present = vec![1u8; n];
            present[3] = 0;
            let events = EventBatch {
                len: n as u32,
                source_row: (0..n as u32).collect(),
                event_time: times.clone(),
                event_type: vec![0; n],
                type_names: vec!["t".into()],
                columns: vec![Column {
                    name: "k".into(),
                    present: present.clone(),
                    values: ColumnValues::Utf8(BytesColumn {
                        data: keys.concat().into_bytes(),
                        offsets: std::iter::once(0)
                            .chain(keys.iter().scan(0u32, |o, k| {
                                *o += k.len() as u32;
                                Some(*o)
                            }))
                            .collect(),
                    }),
                }],
            };
            let mut updates = UpdateBatch {
                feature: vec![],
                row: vec![],
                value: vec![],
            };
            for row in 0..n {
                for f in 0..2u16 {
                    if rnd(3) > 0 {
                        updates.feature.push(f);
                        updates.row.push(row as u32);
                        updates.value.push(rnd(100) as f64 - 50.0);
                    }
                }
            }
            let rejected = tiler.apply(&defs, &events, &updates);
            assert!(rejected.iter().all(|r| r.row == 3));
            for i in 0..updates.row.len() {
                let row = updates.row[i] as usize;
                if row == 3 {
                    continue;
                }
                let d = &defs[updates.feature[i] as usize];
                for &size in &d.sizes_ms {
                    let key = (
                        d.id,
                        keys[row].as_bytes().to_vec(),
                        size,
                        tile_start(times[row], size),
                    );
                    brute
                        .entry(key)
                        .or_insert(TileAgg::EMPTY)
                        .add(updates.value[i], times[row]);
                }
            }
            if rnd(4) == 0 {
                for d in tiler.drain() {
                    merged
                        .entry((d.feature_id, d.entity.to_vec(), d.size_ms, d.start))
                        .or_insert(TileAgg::EMPTY)
                        .merge(&d.agg);
                }
            }
        }
        for d in tiler.drain() {
            merged
                .entry((d.feature_id, d.entity.to_vec(), d.size_ms, d.start))
                .or_insert(TileAgg::EMPTY)
                .merge(&d.agg);
        }
        assert_eq!(merged.len(), brute.len());
        for (k, want) in &brute {
            let got = &merged[k];
            assert_eq!(got, want, "{k:?}");
        }
    }
}
