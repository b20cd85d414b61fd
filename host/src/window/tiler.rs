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
    pub entity: Box<[u8]>,
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

#[derive(Default)]
pub struct Tiler {
    interner: HashMap<Box<[u8]>, u32, FixedState>,
    entities: Vec<Box<[u8]>>,
    tiles: HashMap<(u32, u32, i64, i64), TileAgg, FixedState>,
    updates: u64,
}

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
        self.entities.push(entity.into());
        self.interner.insert(entity.into(), id);
        id
    }

    /// Applies one plugin's updates; `defs[i]` is the plugin's feature `i`.
    /// Updates whose event has no value in the feature's entity field are
    /// returned as rejections (the rest are applied).
    pub fn apply(&mut self, defs: &[FeatureDef], events: &EventBatch, updates: &UpdateBatch) -> Vec<UpdateRejection> {
        let entity_cols: Vec<_> = defs.iter().map(|d| column(events, &d.spec.entity_field)).collect();
        let mut rejections = Vec::new();
        for i in 0..updates.row.len() {
            let (f, row, value) = (updates.feature[i] as usize, updates.row[i] as usize, updates.value[i]);
            let def = &defs[f];
            let Some(entity) = entity_cols[f].and_then(|c| utf8_at(c, row)) else {
                rejections.push(UpdateRejection {
                    row: row as u32,
                    reason: format!("feature `{}`: event has no `{}` (entity field)", def.spec.name, def.spec.entity_field),
                });
                continue;
            };
            let entity = self.intern(entity);
            let t = events.event_time[row];
            for &size in &def.sizes_ms {
                self.tiles.entry((def.id, entity, size, tile_start(t, size))).or_insert(TileAgg::EMPTY).add(value, t);
            }
            self.updates += 1;
        }
        rejections
    }

    /// Tiles touched since the last drain.
    pub fn dirty_tiles(&self) -> usize {
        self.tiles.len()
    }

    /// Updates applied since the last drain.
    pub fn pending_updates(&self) -> u64 {
        self.updates
    }

    /// Takes every delta, sorted by key, and resets the state.
    pub fn drain(&mut self) -> Vec<TileDelta> {
        let entities = std::mem::take(&mut self.entities);
        self.interner.clear();
        self.updates = 0;
        let mut out: Vec<TileDelta> = self
            .tiles
            .drain()
            .map(|((feature_id, e, size_ms, start), agg)| TileDelta {
                feature_id,
                entity: entities[e as usize].clone(),
                size_ms,
                start,
                agg,
            })
            .collect();
        out.sort_by(|a, b| (a.feature_id, &a.entity, a.size_ms, a.start).cmp(&(b.feature_id, &b.entity, b.size_ms, b.start)));
        out
    }
}
