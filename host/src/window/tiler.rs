//! Folds feature updates into per-tile deltas between checkpoints.
//!
//! State is keyed by small integers (feature id, interned entity id, tile
//! size, tile start): each (feature, entity) has its open tiles in a flat
//! arena found through a dense index, tiles it closes are appended to a
//! list, and a drain sorts once into the store's key order. The entity
//! interner is reset at every drain, so memory is bounded by what one
//! checkpoint interval touches.

use foldhash::fast::FixedState;
use hashbrown::HashMap;

use super::entities::{EntityInterner, EntityKeys};
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
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileDelta {
    pub feature_id: u32,
    /// Index into [`TileDeltas::entities`].
    pub entity: u32,
    pub size_ms: i64,
    pub start: i64,
    pub agg: TileAgg,
}

impl TileDelta {
    /// The store's key order, given entities numbered in (length, bytes) order.
    fn key(&self) -> (u32, u32, i64, i64) {
        (self.feature_id, self.entity, self.size_ms, self.start)
    }
}

/// One checkpoint's tile changes: at most one delta per tile, in store key
/// order (feature id, entity by length then bytes, tile size, tile start).
/// Entities are stored once and referred to by index, so a drain costs no
/// allocation or reference count per tile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TileDeltas {
    /// Entity keys, ascending by (length, bytes).
    pub entities: EntityKeys,
    pub tiles: Vec<TileDelta>,
}

impl TileDeltas {
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// The entity key of a delta.
    pub fn entity(&self, d: &TileDelta) -> &[u8] {
        self.entities.get(d.entity as usize)
    }

    /// Deltas given in any order as (feature id, entity, size, start, agg);
    /// equal keys merge in the order given.
    pub fn from_unsorted(deltas: Vec<(u32, Vec<u8>, i64, i64, TileAgg)>) -> Self {
        let mut interner = EntityInterner::new();
        let mut tiles: Vec<TileDelta> = Vec::with_capacity(deltas.len());
        for (feature_id, entity, size_ms, start, agg) in deltas {
            tiles.push(TileDelta {
                feature_id,
                entity: interner.intern(&entity),
                size_ms,
                start,
                agg,
            });
        }
        let (entities, rank) = interner.take_sorted();
        for t in &mut tiles {
            t.entity = rank[t.entity as usize];
        }
        tiles.sort_by_key(TileDelta::key);
        TileDeltas {
            entities,
            tiles: fold_equal_keys(tiles),
        }
    }
}

/// Merges runs of equal keys (in order) in sorted deltas.
fn fold_equal_keys(tiles: Vec<TileDelta>) -> Vec<TileDelta> {
    let mut out: Vec<TileDelta> = Vec::with_capacity(tiles.len());
    for t in tiles {
        push_merging(&mut out, t);
    }
    out
}

/// Appends `t` to sorted deltas, merging it into the last one on an equal key.
#[inline]
fn push_merging(tiles: &mut Vec<TileDelta>, t: TileDelta) {
    match tiles.last_mut() {
        Some(last) if last.key() == t.key() => last.agg.merge(&t.agg),
        _ => tiles.push(t),
    }
}

/// An update the tiler could not apply (its event lacks the entity field).
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateRejection {
    pub row: u32,
    pub reason: String,
}

/// Closed and out-of-order tiles between drains, in arrival order. A key
/// may appear several times (the drain merges them in arrival order), but
/// an update for a tile spilled recently merges into that tile's entry
/// instead of adding one: a small direct-mapped table remembers the index
/// of the latest entry of each key hashed to it. Events merged from
/// several source partitions arrive behind their entity's open tile in
/// runs (a partition's batch covers time another already moved past), and
/// one entry per update made the spill, its sort and its fresh memory
/// three times the in-order source's.
struct Spill {
    deltas: Vec<TileDelta>,
    /// Key hash → index in `deltas` of the latest entry pushed with a key
    /// of that hash. Never reset: an index is used only when the entry
    /// there has the same key, and then no later entry has it (each push
    /// of a key overwrites its slot), so merging into it keeps arrival
    /// order.
    recent: Box<[u32]>,
}

/// Bits of the [`Spill::recent`] table (8192 slots, 32 KiB).
const RECENT_BITS: u32 = 13;

impl Default for Spill {
    fn default() -> Self {
        Spill {
            deltas: Vec::new(),
            recent: vec![u32::MAX; 1 << RECENT_BITS].into_boxed_slice(),
        }
    }
}

impl Spill {
    /// The slot of `d`'s key in [`Spill::recent`].
    #[inline]
    fn slot(d: &TileDelta) -> usize {
        let mixed = ((u64::from(d.feature_id) << 32) | u64::from(d.entity))
            ^ (d.start as u64).rotate_left(29)
            ^ d.size_ms as u64;
        (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - RECENT_BITS)) as usize
    }

    /// Appends `d`, or merges it into the latest entry of its key when the
    /// table still points there.
    #[inline]
    fn push(&mut self, d: TileDelta) {
        let h = Self::slot(&d);
        let latest = self.recent[h] as usize;
        if let Some(e) = self.deltas.get_mut(latest) {
            if e.key() == d.key() {
                e.agg.merge(&d.agg);
                return;
            }
        }
        self.recent[h] = self.deltas.len() as u32;
        self.deltas.push(d);
    }
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
/// the open one onto `spill`, an update for an earlier tile goes to `spill`
/// (merged into its key's latest entry when that was spilled recently, see
/// [`Spill`]). `spill` may hold a key several times (the drain merges them
/// in arrival order) but never an open tile's key.
#[derive(Default)]
pub struct Tiler {
    entities: EntityInterner,
    /// Per feature (by id): entity id → base of its open tiles in `open`,
    /// `NO_SLOT` when none. Entity ids are dense, so this is an index, not a
    /// hash lookup.
    slot_of: HashMap<u32, Vec<u32>, FixedState>,
    slots: Vec<Slot>,
    open: Vec<(i64, TileAgg)>,
    spill: Spill,
    feature_sizes: HashMap<u32, Vec<i64>, FixedState>,
    /// The delta list of the last drain, handed back by [`Tiler::recycle`].
    recycled: Vec<TileDelta>,
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
                            .map(|row| {
                                utf8_at(c, row).map_or(NO_ENTITY, |e| self.entities.intern(e))
                            })
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
                let cell = &mut self.open[base + k];
                // Most updates fall into the open tile: test that without a
                // division (a new slot's cell is empty and takes the slow path).
                if (t.wrapping_sub(cell.0) as u64) < size as u64 && cell.1.count != 0 {
                    cell.1.add(value, t);
                    continue;
                }
                let start = tile_start(t, size);
                if start > cell.0 {
                    if cell.1.count > 0 {
                        self.spill.push(TileDelta {
                            feature_id: def.id,
                            entity,
                            size_ms: size,
                            start: cell.0,
                            agg: cell.1,
                        });
                    }
                    *cell = (start, TileAgg::of(value, t));
                } else {
                    self.spill.push(TileDelta {
                        feature_id: def.id,
                        entity,
                        size_ms: size,
                        start,
                        agg: TileAgg::of(value, t),
                    });
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

    /// Takes every delta and resets the state, sorted in the store's key
    /// order with integer comparisons: spilled tiles sort once, open tiles
    /// come out per (feature, entity) slot, and the two sorted streams merge.
    pub fn drain(&mut self) -> TileDeltas {
        let (entities, rank) = self.entities.take_sorted();
        for t in &mut self.spill.deltas {
            t.entity = rank[t.entity as usize];
        }
        // Stable: equal keys keep arrival order, so `last` ties resolve as they came.
        self.spill.deltas.sort_by_key(TileDelta::key);
        let mut slots: Vec<(u64, u32)> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    (u64::from(s.feature_id) << 32) | u64::from(rank[s.entity as usize]),
                    i as u32,
                )
            })
            .collect();
        slots.sort_unstable_by_key(|(k, _)| *k);
        // Each feature's sizes in ascending order, as positions in its open cells.
        let size_order: HashMap<u32, Vec<(i64, usize)>, FixedState> = self
            .feature_sizes
            .iter()
            .map(|(id, sizes)| {
                let mut o: Vec<(i64, usize)> = sizes.iter().copied().zip(0..).collect();
                o.sort_unstable();
                (*id, o)
            })
            .collect();
        // A recycled buffer when there is one: fresh pages cost a fault each.
        let mut tiles = std::mem::take(&mut self.recycled);
        tiles.clear();
        tiles.reserve(self.spill.deltas.len() + self.open.len());
        let mut spilled = self.spill.deltas.iter().copied().peekable();
        for (_, i) in slots {
            let slot = &self.slots[i as usize];
            for &(size_ms, k) in &size_order[&slot.feature_id] {
                let (start, agg) = self.open[slot.base as usize + k];
                if agg.count == 0 {
                    continue;
                }
                let open = TileDelta {
                    feature_id: slot.feature_id,
                    entity: rank[slot.entity as usize],
                    size_ms,
                    start,
                    agg,
                };
                while let Some(t) = spilled.next_if(|t| t.key() < open.key()) {
                    push_merging(&mut tiles, t);
                }
                push_merging(&mut tiles, open);
            }
        }
        for t in spilled {
            push_merging(&mut tiles, t);
        }
        self.spill.deltas.clear();
        self.slots.clear();
        self.open.clear();
        for index in self.slot_of.values_mut() {
            index.clear();
        }
        self.updates = 0;
        TileDeltas { entities, tiles }
    }

    /// Hands a drained delta list back once it is committed, so the next
    /// drain reuses its memory.
    pub fn recycle(&mut self, deltas: TileDeltas) {
        if deltas.tiles.capacity() > self.recycled.capacity() {
            self.recycled = deltas.tiles;
        }
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

    type Tiles = std::collections::BTreeMap<(u32, Vec<u8>, i64, i64), TileAgg>;

    /// Drains into `merged`, checking the drain's promise: one delta per
    /// tile, in store key order.
    fn drain_into(tiler: &mut Tiler, merged: &mut Tiles) {
        let deltas = tiler.drain();
        let keys: Vec<_> = deltas
            .tiles
            .iter()
            .map(|d| {
                let e = deltas.entity(d);
                (d.feature_id, e.len(), e.to_vec(), d.size_ms, d.start)
            })
            .collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        assert_eq!(
            deltas,
            TileDeltas::from_unsorted(
                deltas
                    .tiles
                    .iter()
                    .map(|d| (
                        d.feature_id,
                        deltas.entity(d).to_vec(),
                        d.size_ms,
                        d.start,
                        d.agg
                    ))
                    .collect()
            )
        );
        for d in &deltas.tiles {
            merged
                .entry((d.feature_id, deltas.entity(d).to_vec(), d.size_ms, d.start))
                .or_insert(TileAgg::EMPTY)
                .merge(&d.agg);
        }
        tiler.recycle(deltas);
    }

    /// Updates behind the open tile merge into the spilled entry of their
    /// key, a new entry starts once another key took the table slot, and
    /// the entries of a key still fold in arrival order (ties on `last`
    /// go to the later update).
    #[test]
    fn spill_merges_runs_of_one_key_in_arrival_order() {
        let tile = |entity| TileDelta {
            feature_id: 0,
            entity,
            size_ms: 10,
            start: 0,
            agg: TileAgg::EMPTY,
        };
        let a = tile(1);
        let b = (2..)
            .map(tile)
            .find(|d| Spill::slot(d) == Spill::slot(&a))
            .expect("a key sharing a's slot");
        let at5 = |d: TileDelta, v: f64| TileDelta {
            agg: TileAgg::of(v, 5),
            ..d
        };
        let mut spill = Spill::default();
        spill.push(at5(a, 1.0));
        spill.push(at5(a, 2.0));
        assert_eq!(spill.deltas.len(), 1, "a run of one key is one entry");
        spill.push(at5(b, 3.0));
        spill.push(at5(a, 4.0));
        spill.push(at5(a, 5.0));
        let lasts: Vec<(u32, u64, f64)> = spill
            .deltas
            .iter()
            .map(|d| (d.entity, d.agg.count, d.agg.last))
            .collect();
        assert_eq!(lasts, [(1, 2, 2.0), (b.entity, 1, 3.0), (1, 2, 5.0)]);
        let mut folded = TileAgg::EMPTY;
        for d in spill.deltas.iter().filter(|d| d.key() == a.key()) {
            folded.merge(&d.agg);
        }
        assert_eq!((folded.count, folded.sum, folded.last), (4, 12.0, 5.0));
    }

    /// Random out-of-order updates, drained at random points, equal a brute-force fold.
    #[test]
    fn deltas_equal_brute_force_over_out_of_order_updates() {
        let defs = [def(0, &[100, 10]), def(1, &[30])];
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut tiler = Tiler::new();
        let mut merged: Tiles = Default::default();
        let mut brute: std::collections::BTreeMap<(u32, Vec<u8>, i64, i64), TileAgg> =
            Default::default();
        for round in 0..40 {
            let n = 50;
            let keys: Vec<String> = (0..n).map(|_| format!("e{}", rnd(7) * 7)).collect();
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
                drain_into(&mut tiler, &mut merged);
            }
        }
        drain_into(&mut tiler, &mut merged);
        assert_eq!(merged.len(), brute.len());
        for (k, want) in &brute {
            let got = &merged[k];
            assert_eq!(got, want, "{k:?}");
        }
    }
}
