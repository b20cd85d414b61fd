//! Tile stores: where tiles, feature definitions and source positions live.
//!
//! The [`TileStore`] trait is what the pipeline and the serving API use. A
//! checkpoint writes tile deltas and the source positions that produced them
//! in one atomic commit, so a restart resumes exactly after the last
//! committed record: nothing lost, nothing counted twice. Stores merge a
//! delta into the stored tile (read, merge, write) inside that commit.
//!
//! `embedded` is a single redb file, the default for laptops and tests;
//! `scylla` is a ScyllaDB (or any CQL) cluster shared by several hosts,
//! where the atomic commit is a checkpoint log with idempotent tile writes.

mod embedded;
mod feature;
mod read_cache;
mod scylla;

pub use embedded::EmbeddedStore;
pub use feature::StoredFeature;
pub use read_cache::ReadCache;
pub use scylla::ScyllaStore;

use crate::window::{TileAgg, TileDeltas};

/// Why the store failed. Always external: the operation may be retried.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("embedded store: {0}")]
    Embedded(Box<redb::Error>),
    #[error("store holds a malformed {what}: {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("invalid checkpoint (nothing was written): {0}")]
    InvalidCheckpoint(String),
    #[error("CQL store, {op}: {message}")]
    Cql { op: &'static str, message: String },
    #[error("another host committed `{key}` of pipeline `{writer}` since this one last read it (a rebalance not seen here yet, two hosts over one input, or two processes under one pipeline.instance): nothing was written; re-read from the committed positions")]
    Fenced { writer: String, key: String },
    #[error("the store no longer holds checkpoint {seq} of pipeline `{writer}`, which it acknowledged as applied (a node that lost the unsynced tail of its commit log?): nothing was written; re-read from the positions it holds")]
    Regressed { writer: String, seq: i64 },
    #[error("feature `{name}` is already registered with a different definition: stored {stored}, new {new}")]
    FeatureConflict {
        name: String,
        stored: String,
        new: String,
    },
}

impl StoreError {
    /// Whether trying the same operation again may succeed (the store was
    /// unreachable or slow), as opposed to a refusal that will repeat.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Cql { .. })
    }
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Embedded(Box::new(e))
    }
}

/// One range of tiles to read: feature, entity and size, with
/// `start <= tile start < end` (the arguments of [`TileStore::read_tiles`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TileRead {
    pub feature_id: u32,
    pub entity: Vec<u8>,
    pub size_ms: i64,
    pub start: i64,
    pub end: i64,
}

/// Tiles read for one [`TileRead`]: (tile start, aggregate), ascending.
pub type TileRun = Vec<(i64, TileAgg)>;

/// What one checkpoint commits atomically.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub pipeline: String,
    /// The host instance committing it, when several hosts run the pipeline
    /// (`pipeline.instance`); empty for a single host. On a shared store
    /// each instance keeps its own partial of a tile.
    pub instance: String,
    pub deltas: TileDeltas,
    /// Opaque source positions by source key (e.g. a file path).
    pub positions: Vec<(String, Vec<u8>)>,
}

impl Checkpoint {
    /// The name this checkpoint's tile partials are written under: the
    /// pipeline, or `pipeline@instance`.
    pub fn author(&self) -> String {
        author(&self.pipeline, &self.instance)
    }
}

/// The name of one instance's tile partials and position keys: the
/// pipeline, or `pipeline@instance`.
pub fn author(pipeline: &str, instance: &str) -> String {
    if instance.is_empty() {
        pipeline.to_string()
    } else {
        format!("{pipeline}@{instance}")
    }
}

pub trait TileStore: Send + Sync {
    /// Registers features by name, keeping ids stable across runs; a feature
    /// whose definition changed in a way that breaks stored tiles (entity
    /// field or tile sizes) is an error.
    fn register_features(&self, features: &[StoredFeature]) -> Result<Vec<u32>, StoreError>;

    /// Every registered feature.
    fn features(&self) -> Result<Vec<StoredFeature>, StoreError>;

    /// One registered feature by name (a point lookup: serving calls this per query).
    fn feature(&self, name: &str) -> Result<Option<StoredFeature>, StoreError>;

    /// Merges the deltas into stored tiles and records the positions, atomically.
    fn commit(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// Tiles of one feature, entity and size with `start <= tile start < end`.
    fn read_tiles(
        &self,
        feature_id: u32,
        entity: &[u8],
        size_ms: i64,
        start: i64,
        end: i64,
    ) -> Result<TileRun, StoreError>;

    /// Several reads at once, answers in the order asked (the batch serving
    /// call). Stores that can issue them concurrently override this.
    fn read_tiles_many(&self, reads: &[TileRead]) -> Vec<Result<TileRun, StoreError>> {
        reads
            .iter()
            .map(|r| self.read_tiles(r.feature_id, &r.entity, r.size_ms, r.start, r.end))
            .collect()
    }

    /// The last committed position of a source, if any.
    fn position(&self, pipeline: &str, source_key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The committed positions whose key starts with `prefix`, by key (the
    /// change log's partition records): what applied checkpoints wrote.
    fn positions_under(
        &self,
        pipeline: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Writes one key outside any checkpoint: a key no checkpoint writes
    /// (a change-log consumer's committed high watermark).
    fn put_position(&self, pipeline: &str, key: &str, value: &[u8]) -> Result<(), StoreError>;
}

/// The smallest string above every string starting with `prefix` (an
/// exclusive upper bound for a prefix scan); `None` when there is none.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Opens the configured store.
pub fn open(cfg: &crate::config::StoreConfig) -> Result<std::sync::Arc<dyn TileStore>, StoreError> {
    match cfg {
        crate::config::StoreConfig::Embedded { path } => {
            Ok(std::sync::Arc::new(EmbeddedStore::open(path)?))
        }
        crate::config::StoreConfig::Scylla(c) => Ok(std::sync::Arc::new(ScyllaStore::open(c)?)),
    }
}
