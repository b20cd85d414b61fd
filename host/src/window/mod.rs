//! Tiles and windows: the time model of features.
//!
//! A feature's timeline is cut into aligned tiles of several sizes (e.g. 1m,
//! 30m, 1d; a tile of size S starts at a multiple of S since the Unix epoch).
//! Every tile keeps a [`TileAgg`] — count, sum, min, max and last — so any
//! aggregation is answered from it. A window query ("the last 2h") is covered
//! by tiles, largest first ([`cover`]); the [`Tiler`] folds feature updates
//! into tile deltas that a store merges.

mod agg;
mod cover;
mod entities;
mod tiler;
mod watermark;

pub use agg::TileAgg;
pub use cover::{cover, Cover, TileRange};
pub use entities::{EntityInterner, EntityKeys};
pub use tiler::{FeatureDef, TileDelta, TileDeltas, Tiler, UpdateRejection};
pub use watermark::{combine as combine_marks, PartitionMark, Watermarks};

/// Start of the tile of `size_ms` that contains `t_ms` (floor, also for negative times).
#[inline]
pub fn tile_start(t_ms: i64, size_ms: i64) -> i64 {
    t_ms.div_euclid(size_ms) * size_ms
}
