//! The serving API's own read cache: a [`TileStore`] in front of another
//! that keeps the tile runs and feature definitions it read, bounded in
//! tiles and for a TTL (moka), so hot entities cost one store read per TTL
//! however often ranking services ask for them, and serving never shares a
//! cache with the job's writes.
//!
//! It never serves anything older than its TTL; writes go straight to the
//! store underneath (the API does not write).

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::{Checkpoint, StoreError, StoredFeature, TileRead, TileRun, TileStore};
use crate::config::ServingCacheConfig;

pub struct ReadCache {
    inner: Arc<dyn TileStore>,
    runs: Cache<TileRead, Arc<TileRun>>,
    features: Cache<String, StoredFeature>,
}

impl ReadCache {
    /// `inner` behind a cache as configured, or `inner` itself when the
    /// cache is turned off.
    pub fn wrap(inner: Arc<dyn TileStore>, cfg: &ServingCacheConfig) -> Arc<dyn TileStore> {
        if cfg.max_tiles == 0 || cfg.ttl.is_zero() {
            return inner;
        }
        Arc::new(Self::new(inner, cfg.max_tiles, cfg.ttl))
    }

    pub fn new(inner: Arc<dyn TileStore>, max_tiles: u64, ttl: Duration) -> Self {
        ReadCache {
            inner,
            runs: Cache::builder()
                .max_capacity(max_tiles)
                // An empty run still takes an entry.
                .weigher(|_, run: &Arc<TileRun>| u32::try_from(run.len() + 1).unwrap_or(u32::MAX))
                .time_to_live(ttl)
                .build(),
            features: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
        }
    }
}

impl TileStore for ReadCache {
    fn register_features(&self, features: &[StoredFeature]) -> Result<Vec<u32>, StoreError> {
        self.features.invalidate_all();
        self.inner.register_features(features)
    }

    fn features(&self) -> Result<Vec<StoredFeature>, StoreError> {
        self.inner.features()
    }

    fn feature(&self, name: &str) -> Result<Option<StoredFeature>, StoreError> {
        if let Some(f) = self.features.get(name) {
            return Ok(Some(f));
        }
        // Unknown names are not cached: a feature registered meanwhile is
        // found at once.
        let found = self.inner.feature(name)?;
        if let Some(f) = &found {
            self.features.insert(name.to_string(), f.clone());
        }
        Ok(found)
    }

    fn commit(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.inner.commit(checkpoint)
    }

    fn read_tiles(
        &self,
        feature_id: u32,
        entity: &[u8],
        size_ms: i64,
        start: i64,
        end: i64,
    ) -> Result<TileRun, StoreError> {
        let read = TileRead {
            feature_id,
            entity: entity.to_vec(),
            size_ms,
            start,
            end,
        };
        let mut answer = self.read_tiles_many(std::slice::from_ref(&read));
        answer.pop().expect("one answer per read")
    }

    fn read_tiles_many(&self, reads: &[TileRead]) -> Vec<Result<TileRun, StoreError>> {
        let mut answers: Vec<Option<Result<TileRun, StoreError>>> = Vec::with_capacity(reads.len());
        let mut missed = Vec::new();
        for (i, r) in reads.iter().enumerate() {
            match self.runs.get(r) {
                Some(run) => answers.push(Some(Ok(run.as_ref().clone()))),
                None => {
                    answers.push(None);
                    missed.push(i);
                }
            }
        }
        if !missed.is_empty() {
            let asked: Vec<TileRead> = missed.iter().map(|&i| reads[i].clone()).collect();
            let read = self.inner.read_tiles_many(&asked);
            for ((i, r), result) in missed.into_iter().zip(asked).zip(read) {
                if let Ok(run) = &result {
                    self.runs.insert(r, Arc::new(run.clone()));
                }
                answers[i] = Some(result);
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every read answered"))
            .collect()
    }

    fn position(&self, pipeline: &str, source_key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.position(pipeline, source_key)
    }

    fn positions_under(
        &self,
        pipeline: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.positions_under(pipeline, prefix)
    }

    fn put_position(&self, pipeline: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.put_position(pipeline, key, value)
    }
}
