//! The ScyllaDB tile store (any CQL server: Apache Cassandra in the tests),
//! behind the same [`TileStore`] trait as the embedded store.
//!
//! A CQL cluster has no multi-partition transactions, so a checkpoint is
//! made atomic by a *redo log* and kept exactly-once by making every write
//! idempotent by construction (the protocol, in full, is in
//! `docs/ARCHITECTURE.md`):
//!
//! 1. the checkpoint's tile deltas go into `checkpoint_chunks` under a
//!    random attempt id, then its header (positions, chunk count, a write
//!    timestamp) into `checkpoints` with `IF NOT EXISTS` on
//!    (writer, seq): that LWT is the commit point, and only one writer wins
//!    a sequence number;
//! 2. the entry is *applied*: each tile's partial of this writer becomes
//!    its old value merged with the delta, written as an absolute value with
//!    `applied_seq = seq` and `USING TIMESTAMP` the entry's timestamp; a tile
//!    whose `applied_seq` is already `>= seq` is skipped; then the positions,
//!    then the header is marked applied and the chunks dropped.
//!
//! Applying an entry twice, or two hosts applying it at once, writes the
//! same values with the same timestamps, and a stale write loses to a newer
//! one by timestamp whatever order they land in; so a crash anywhere only
//! means the next commit or read of that writer applies the entry again.
//!
//! Several host instances of one pipeline share its log; each entry names
//! its author and changes only that instance's partials. A position key
//! that another process's entry moved fences this process's checkpoints
//! over it until it reads the key again, so a partition's entries chain
//! whatever rebalances and zombie hosts do.
//!
//! The job keeps the tiles it writes in a bounded read-through cache
//! (moka; size and TTL from config): a merge reads the cache and, on a miss,
//! the store, which holds the truth. The job and the serving API use two
//! sessions, each with its own pools, execution profile and credentials;
//! on ScyllaDB each role can be attached to a service level.
//!
//! Files: `commit.rs` the log protocol (commit, catch-up, fencing, apply),
//! `log.rs` the bytes of log chunks and positions, `schema.rs` the
//! migrations, `session.rs` the two sessions; this file the store handle,
//! its prepared statements, the feature registry and the serving reads.

mod commit;
mod log;
mod schema;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use super::{Checkpoint, StoreError, StoredFeature, TileRead, TileRun, TileStore};
use crate::config::ScyllaConfig;
use crate::window::TileAgg;
use commit::Writer;

/// Range scans of one batch serving call in flight at once.
const CONCURRENT_READS: usize = 64;
/// The longest TTL CQL accepts (20 years).
const MAX_TTL_SECS: u64 = 630_720_000;

/// A CQL failure: the cluster is unreachable, timed out, or refused.
pub(crate) fn cql_err(op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Cql {
        op,
        message: e.to_string(),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Statements {
    read_tile: PreparedStatement,
    read_tiles_in: PreparedStatement,
    write_tile: PreparedStatement,
    insert_chunk: PreparedStatement,
    read_chunks: PreparedStatement,
    delete_chunks: PreparedStatement,
    delete_attempt: PreparedStatement,
    insert_header: PreparedStatement,
    log_tail: PreparedStatement,
    log_all: PreparedStatement,
    read_header: PreparedStatement,
    mark_applied: PreparedStatement,
    prune_log: PreparedStatement,
    write_position: PreparedStatement,
    read_position: PreparedStatement,
    read_positions_range: PreparedStatement,
    put_position: PreparedStatement,
    job_feature: PreparedStatement,
    job_features: PreparedStatement,
    insert_feature: PreparedStatement,
    update_feature: PreparedStatement,
    feature_ids: PreparedStatement,
    claim_feature_id: PreparedStatement,
    // Serving session.
    read_range: PreparedStatement,
    serving_feature: PreparedStatement,
    serving_features: PreparedStatement,
}

pub struct ScyllaStore {
    /// Runs the driver; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    job: Session,
    serving: Session,
    st: Statements,
    writers: Mutex<HashMap<String, Arc<Mutex<Writer>>>>,
    /// TTL in seconds per feature id (0: none), from its retention.
    ttls: RwLock<HashMap<u32, i32>>,
    cache_cfg: crate::config::TileCacheConfig,
    /// Tile partitions merged and written at once (`store.write_concurrency`).
    write_concurrency: usize,
    /// "ScyllaDB" or "Apache Cassandra" (or another CQL server).
    flavor: String,
}

impl Drop for ScyllaStore {
    fn drop(&mut self) {
        // Dropping a runtime may not block inside another runtime (the
        // serving API may hold the last reference).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ScyllaStore {
    /// Connects both sessions (retrying with back-off for
    /// `connect_retry`), creates the keyspace and tables and prepares the
    /// statements.
    pub fn open(cfg: &ScyllaConfig) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tessera-cql")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Open {
                path: cfg.contact_points.join(","),
                message: format!("cannot start the driver's runtime: {e}"),
            })?;
        let (job, serving, flavor) = rt.block_on(session::connect_both(cfg))?;
        let st = rt.block_on(prepare(&job, &serving, &cfg.keyspace))?;
        Ok(ScyllaStore {
            rt: Some(rt),
            job,
            serving,
            st,
            writers: Mutex::new(HashMap::new()),
            ttls: RwLock::new(HashMap::new()),
            cache_cfg: cfg.cache.clone(),
            write_concurrency: cfg.write_concurrency,
            flavor,
        })
    }

    /// Commits a checkpoint to the log without applying it: what a host
    /// that crashed right after the commit point leaves behind (for tests).
    #[doc(hidden)]
    pub fn commit_log_only(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let writer = self.writer(&checkpoint.pipeline);
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        self.block_on(self.commit_async(&mut w, checkpoint, false))
    }

    /// Which CQL server this is, as detected at connect.
    pub fn flavor(&self) -> &str {
        &self.flavor
    }

    /// One range scan of one tile partition on the serving session; the
    /// partials of a tile (one per writer) are merged.
    async fn read_run(
        &self,
        feature_id: u32,
        entity: &[u8],
        size_ms: i64,
        start: i64,
        end: i64,
    ) -> Result<TileRun, StoreError> {
        let mut rows = self
            .serving
            .execute_iter(
                self.st.read_range.clone(),
                (feature_id as i32, entity, size_ms, start, end),
            )
            .await
            .map_err(|e| cql_err("reading tiles", e))?
            .rows_stream::<TileRow>()
            .map_err(|e| cql_err("reading tiles", e))?;
        let mut out: TileRun = Vec::new();
        while let Some(row) = rows.next().await {
            let (partial, start) = tile_agg(row.map_err(|e| cql_err("reading tiles", e))?);
            // Partials of one tile (one per writer) are adjacent.
            match out.last_mut() {
                Some((s, agg)) if *s == start => agg.merge(&partial),
                _ => out.push((start, partial)),
            }
        }
        Ok(out)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt
            .as_ref()
            .expect("runtime lives until drop")
            .block_on(f)
    }

    /// The TTL of a feature's tiles of `size_ms`: its retention plus the
    /// tile's length, so a tile outlives the last window that needs it.
    async fn ttl(&self, feature_id: u32) -> Result<impl Fn(i64) -> i32, StoreError> {
        let known = self
            .ttls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&feature_id)
            .copied();
        let retention = match known {
            Some(r) => r,
            None => {
                let features = self.load_features(&self.job, &self.st.job_features).await?;
                self.remember_ttls(&features);
                self.ttls
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&feature_id)
                    .copied()
                    .unwrap_or(0)
            }
        };
        Ok(move |size_ms: i64| {
            if retention == 0 {
                0
            } else {
                (retention as u64 + (size_ms as u64).div_ceil(1000)).min(MAX_TTL_SECS) as i32
            }
        })
    }

    fn remember_ttls(&self, features: &[StoredFeature]) {
        let mut ttls = self.ttls.write().unwrap_or_else(|e| e.into_inner());
        for f in features {
            ttls.insert(f.id, f.retention_secs.min(MAX_TTL_SECS) as i32);
        }
    }

    async fn load_features(
        &self,
        session: &Session,
        stmt: &PreparedStatement,
    ) -> Result<Vec<StoredFeature>, StoreError> {
        let rows: Vec<(String,)> = session
            .execute_iter(stmt.clone(), ())
            .await
            .map_err(|e| cql_err("reading features", e))?
            .rows_stream::<(String,)>()
            .map_err(|e| cql_err("reading features", e))?
            .try_collect()
            .await
            .map_err(|e| cql_err("reading features", e))?;
        let mut out: Vec<StoredFeature> = rows
            .iter()
            .map(|(json,)| StoredFeature::from_json(json))
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|f| f.id);
        Ok(out)
    }

    async fn one_feature(
        &self,
        session: &Session,
        stmt: &PreparedStatement,
        name: &str,
    ) -> Result<Option<StoredFeature>, StoreError> {
        first_row::<(String,)>(session, stmt, (name,), "reading a feature")
            .await?
            .map(|(json,)| StoredFeature::from_json(&json))
            .transpose()
    }

    async fn register_one(&self, f: &StoredFeature) -> Result<u32, StoreError> {
        loop {
            if let Some(stored) = self
                .one_feature(&self.job, &self.st.job_feature, &f.name)
                .await?
            {
                if !stored.compatible_with(f) {
                    return Err(StoreError::FeatureConflict {
                        name: f.name.clone(),
                        stored: describe(&stored),
                        new: describe(f),
                    });
                }
                let updated = StoredFeature {
                    id: stored.id,
                    ..f.clone()
                };
                if updated != stored {
                    self.job
                        .execute_unpaged(
                            &self.st.update_feature,
                            (encode_feature(&updated), &f.name),
                        )
                        .await
                        .map_err(|e| cql_err("updating a feature", e))?;
                }
                return Ok(stored.id);
            }
            // Claim the next free id, then the name; a host racing us for
            // either makes us look again.
            let used: Vec<(i32,)> =
                rows(&self.job, &self.st.feature_ids, (), "reading feature ids").await?;
            let id = used.iter().map(|(id,)| *id).max().unwrap_or(0) + 1;
            if !lwt_applied(
                self.job
                    .execute_unpaged(&self.st.claim_feature_id, (id, &f.name))
                    .await
                    .map_err(|e| cql_err("claiming a feature id", e))?,
            )? {
                continue;
            }
            let new = StoredFeature {
                id: id as u32,
                ..f.clone()
            };
            if lwt_applied(
                self.job
                    .execute_unpaged(&self.st.insert_feature, (&f.name, id, encode_feature(&new)))
                    .await
                    .map_err(|e| cql_err("registering a feature", e))?,
            )? {
                return Ok(id as u32);
            }
        }
    }
}

/// A tile's columns (count, sum, min, max, last_time, last), then one
/// more (`applied_seq` or `start_ms`).
type TileRow = (i64, f64, f64, f64, i64, f64, i64);
/// (size_ms, start_ms, writer) then a [`TileRow`].
type WriterTileRow = (i64, i64, String, i64, f64, f64, f64, i64, f64, i64);

fn tile_agg((count, sum, min, max, last_time, last, more): TileRow) -> (TileAgg, i64) {
    let agg = TileAgg {
        count: count as u64,
        sum,
        min,
        max,
        last_time,
        last,
    };
    (agg, more)
}

/// Runs one statement (unpaged: for small results) and decodes its rows.
async fn rows<T>(
    session: &Session,
    stmt: &PreparedStatement,
    values: impl SerializeRow,
    op: &'static str,
) -> Result<Vec<T>, StoreError>
where
    T: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    let result = session
        .execute_unpaged(stmt, values)
        .await
        .map_err(|e| cql_err(op, e))?
        .into_rows_result()
        .map_err(|e| cql_err(op, e))?;
    let rows = result
        .rows::<T>()
        .map_err(|e| cql_err(op, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| cql_err(op, e));
    rows
}

/// The first row of one statement's result, if any.
async fn first_row<T>(
    session: &Session,
    stmt: &PreparedStatement,
    values: impl SerializeRow,
    op: &'static str,
) -> Result<Option<T>, StoreError>
where
    T: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    Ok(rows(session, stmt, values, op).await?.into_iter().next())
}

fn lwt_applied(result: scylla::response::query_result::QueryResult) -> Result<bool, StoreError> {
    let rows = result
        .into_rows_result()
        .map_err(|e| cql_err("reading an LWT result", e))?;
    let row = rows
        .maybe_first_row::<scylla::value::Row>()
        .map_err(|e| cql_err("reading an LWT result", e))?;
    Ok(matches!(
        row.and_then(|r| r.columns.into_iter().next().flatten()),
        Some(scylla::value::CqlValue::Boolean(true))
    ))
}

fn encode_feature(f: &StoredFeature) -> String {
    serde_json::to_string(f).expect("a feature serializes")
}

fn describe(f: &StoredFeature) -> String {
    format!(
        "entity {} sizes {:?}s aggregation {}",
        f.entity_field, f.tile_sizes_secs, f.aggregation
    )
}

async fn p(
    session: &Session,
    cql: String,
    idempotent: bool,
) -> Result<PreparedStatement, StoreError> {
    let mut s = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| cql_err("preparing a statement", e))?;
    s.set_is_idempotent(idempotent);
    Ok(s)
}

async fn prepare(job: &Session, serving: &Session, ks: &str) -> Result<Statements, StoreError> {
    let header_cols = "seq, attempt, chunks, ts, positions, applied, author";
    Ok(Statements {
        read_tile: p(job, format!("SELECT count, sum, min, max, last_time, last, applied_seq FROM {ks}.tiles WHERE feature_id = ? AND entity = ? AND size_ms = ? AND start_ms = ? AND writer = ?"), true).await?,
        read_tiles_in: p(job, format!("SELECT size_ms, start_ms, writer, count, sum, min, max, last_time, last, applied_seq FROM {ks}.tiles WHERE feature_id = ? AND entity = ? AND (size_ms, start_ms) IN ?"), true).await?,
        write_tile: p(job, format!("INSERT INTO {ks}.tiles (feature_id, entity, size_ms, start_ms, writer, count, sum, min, max, last_time, last, applied_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?"), true).await?,
        insert_chunk: p(job, format!("INSERT INTO {ks}.checkpoint_chunks (writer, seq, attempt, chunk, data) VALUES (?, ?, ?, ?, ?)"), true).await?,
        read_chunks: p(job, format!("SELECT chunk, data FROM {ks}.checkpoint_chunks WHERE writer = ? AND seq = ? AND attempt = ?"), true).await?,
        delete_chunks: p(job, format!("DELETE FROM {ks}.checkpoint_chunks WHERE writer = ? AND seq = ?"), true).await?,
        delete_attempt: p(job, format!("DELETE FROM {ks}.checkpoint_chunks WHERE writer = ? AND seq = ? AND attempt = ?"), true).await?,
        insert_header: p(job, format!("INSERT INTO {ks}.checkpoints (writer, seq, attempt, chunks, ts, positions, applied, author) VALUES (?, ?, ?, ?, ?, ?, false, ?) IF NOT EXISTS"), false).await?,
        log_tail: p(job, format!("SELECT {header_cols} FROM {ks}.checkpoints WHERE writer = ? AND seq >= ?"), true).await?,
        log_all: p(job, format!("SELECT {header_cols} FROM {ks}.checkpoints WHERE writer = ?"), true).await?,
        read_header: p(job, format!("SELECT {header_cols} FROM {ks}.checkpoints WHERE writer = ? AND seq = ?"), true).await?,
        mark_applied: p(job, format!("UPDATE {ks}.checkpoints SET applied = true WHERE writer = ? AND seq = ?"), true).await?,
        prune_log: p(job, format!("DELETE FROM {ks}.checkpoints WHERE writer = ? AND seq < ?"), true).await?,
        write_position: p(job, format!("INSERT INTO {ks}.positions (writer, key, position) VALUES (?, ?, ?) USING TIMESTAMP ?"), true).await?,
        read_position: p(job, format!("SELECT position FROM {ks}.positions WHERE writer = ? AND key = ?"), true).await?,
        read_positions_range: p(serving, format!("SELECT key, position FROM {ks}.positions WHERE writer = ? AND key >= ? AND key < ?"), true).await?,
        put_position: p(job, format!("INSERT INTO {ks}.positions (writer, key, position) VALUES (?, ?, ?)"), true).await?,
        job_feature: p(job, format!("SELECT definition FROM {ks}.features WHERE name = ?"), true).await?,
        job_features: p(job, format!("SELECT definition FROM {ks}.features"), true).await?,
        insert_feature: p(job, format!("INSERT INTO {ks}.features (name, id, definition) VALUES (?, ?, ?) IF NOT EXISTS"), false).await?,
        update_feature: p(job, format!("UPDATE {ks}.features SET definition = ? WHERE name = ?"), true).await?,
        feature_ids: p(job, format!("SELECT id FROM {ks}.feature_ids"), true).await?,
        claim_feature_id: p(job, format!("INSERT INTO {ks}.feature_ids (id, name) VALUES (?, ?) IF NOT EXISTS"), false).await?,
        read_range: p(serving, format!("SELECT count, sum, min, max, last_time, last, start_ms FROM {ks}.tiles WHERE feature_id = ? AND entity = ? AND size_ms = ? AND start_ms >= ? AND start_ms < ?"), true).await?,
        serving_feature: p(serving, format!("SELECT definition FROM {ks}.features WHERE name = ?"), true).await?,
        serving_features: p(serving, format!("SELECT definition FROM {ks}.features"), true).await?,
    })
}

impl TileStore for ScyllaStore {
    fn register_features(&self, features: &[StoredFeature]) -> Result<Vec<u32>, StoreError> {
        self.block_on(async {
            let mut ids = Vec::with_capacity(features.len());
            for f in features {
                let id = self.register_one(f).await?;
                self.remember_ttls(&[StoredFeature { id, ..f.clone() }]);
                ids.push(id);
            }
            Ok(ids)
        })
    }

    fn features(&self) -> Result<Vec<StoredFeature>, StoreError> {
        self.block_on(self.load_features(&self.serving, &self.st.serving_features))
    }

    fn feature(&self, name: &str) -> Result<Option<StoredFeature>, StoreError> {
        self.block_on(self.one_feature(&self.serving, &self.st.serving_feature, name))
    }

    fn commit(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let writer = self.writer(&checkpoint.pipeline);
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        self.block_on(self.commit_async(&mut w, checkpoint, true))
    }

    fn read_tiles(
        &self,
        feature_id: u32,
        entity: &[u8],
        size_ms: i64,
        start: i64,
        end: i64,
    ) -> Result<TileRun, StoreError> {
        self.block_on(self.read_run(feature_id, entity, size_ms, start, end))
    }

    fn read_tiles_many(&self, reads: &[TileRead]) -> Vec<Result<TileRun, StoreError>> {
        self.block_on(
            futures::stream::iter(reads)
                .map(|r| self.read_run(r.feature_id, &r.entity, r.size_ms, r.start, r.end))
                .buffered(CONCURRENT_READS)
                .collect(),
        )
    }

    fn position(&self, pipeline: &str, source_key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let writer = self.writer(pipeline);
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        self.block_on(self.read_position(&mut w, source_key))
    }

    /// Read on the serving session without catching up: what applied
    /// entries wrote, as consistent with the tiles as a tile read is.
    fn positions_under(
        &self,
        pipeline: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let end =
            crate::stores::prefix_end(prefix).unwrap_or_else(|| format!("{prefix}\u{10FFFF}"));
        self.block_on(async {
            self.serving
                .execute_iter(
                    self.st.read_positions_range.clone(),
                    (pipeline, prefix, &end),
                )
                .await
                .map_err(|e| cql_err("reading positions", e))?
                .rows_stream::<(String, Vec<u8>)>()
                .map_err(|e| cql_err("reading positions", e))?
                .try_collect()
                .await
                .map_err(|e| cql_err("reading positions", e))
        })
    }

    fn put_position(&self, pipeline: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.block_on(async {
            self.job
                .execute_unpaged(&self.st.put_position, (pipeline, key, value))
                .await
                .map_err(|e| cql_err("writing a position", e))
                .map(|_| ())
        })
    }
}
