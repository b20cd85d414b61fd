//! The checkpoint log protocol of the CQL store (see the parent module and
//! `docs/ARCHITECTURE.md`): committing an entry (chunks, then the header's
//! LWT), catching up on entries this process has not seen (fencing keys
//! other processes moved), and applying an entry to its author's partials
//! with the read-through cache.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};

use super::log::{self, LoggedTile};
use super::{cql_err, first_row, lwt_applied, rows, tile_agg, ScyllaStore, TileRow, WriterTileRow};
use crate::stores::{Checkpoint, StoreError};
use crate::window::TileAgg;

/// Rows of one partition per unlogged batch.
const BATCH_ROWS: usize = 32;
/// Headers kept in the log behind the newest (older ones are pruned).
const LOG_KEPT: i64 = 64;
/// How long an entry of another process may stay unapplied before this one
/// applies it too (its author is normally applying it; a host that died
/// after the commit point leaves it to the others).
const APPLY_GRACE_MICROS: i64 = 30_000_000;

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn random_i64() -> i64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_micros());
    h.write_u32(std::process::id());
    h.finish() as i64
}

/// One header of the checkpoint log.
#[derive(Clone, Debug)]
struct Header {
    seq: i64,
    attempt: i64,
    chunks: i32,
    ts: i64,
    positions: Vec<u8>,
    applied: bool,
    /// Whose partials the entry changes (`pipeline@instance`); `None` for
    /// the log's writer itself (a single-host pipeline).
    author: Option<String>,
}

type HeaderRow = (i64, i64, i32, i64, Vec<u8>, Option<bool>, Option<String>);

impl From<HeaderRow> for Header {
    fn from((seq, attempt, chunks, ts, positions, applied, author): HeaderRow) -> Self {
        Header {
            seq,
            attempt,
            chunks,
            ts,
            positions,
            applied: applied.unwrap_or(false),
            author,
        }
    }
}

impl Header {
    /// The partials this entry changes: its author's, else the writer's.
    fn author<'a>(&'a self, writer: &'a str) -> &'a str {
        self.author.as_deref().unwrap_or(writer)
    }
}

/// A tile of one writer, as the cache keys it.
type TileKey = (u32, Arc<[u8]>, i64, i64);

/// Partials of one author as this process last wrote or read them, with
/// the entry that last changed each.
type PartialCache = moka::sync::Cache<TileKey, (TileAgg, i64)>;

/// What this process knows of one writer's log (a pipeline's, shared by
/// every host instance running it).
pub(super) struct Writer {
    name: String,
    /// Whether the log tail has been read since the store opened.
    initialized: bool,
    next_seq: i64,
    last_ts: i64,
    /// (seq, attempt) of headers this process tried to write for the
    /// checkpoint being committed (a timed-out LWT may still have landed).
    attempts: Vec<(i64, i64)>,
    /// Digest of that checkpoint, so a retry of the same one is recognised.
    attempt_digest: Option<u64>,
    /// Partials of the authors this process commits as, by author.
    caches: HashMap<String, PartialCache>,
    /// Entries of other processes seen unapplied while young (their
    /// author is applying them), applied here once `APPLY_GRACE_MICROS`
    /// old; the log is never pruned past them.
    unapplied: Vec<Header>,
    /// Position keys that entries of other processes moved since this one
    /// last read them: a checkpoint moving one of them is fenced.
    moved_elsewhere: std::collections::HashSet<String>,
    /// (seq, attempt) of the newest entry this process knows is applied.
    /// Every catch-up reads it again: a store that lost it (a single node
    /// dropping the unsynced tail of its commit log on a crash) has lost
    /// acknowledged writes, and what this process caches or has read past
    /// is no longer what the store holds.
    known_applied: Option<(i64, i64)>,
}

impl Writer {
    fn new(name: &str) -> Self {
        Writer {
            name: name.to_string(),
            initialized: false,
            next_seq: 1,
            last_ts: 0,
            attempts: Vec::new(),
            attempt_digest: None,
            caches: HashMap::new(),
            unapplied: Vec::new(),
            moved_elsewhere: Default::default(),
            known_applied: None,
        }
    }

    /// Notes that `h` is applied (it or a newer one is the newest known).
    fn applied(&mut self, h: &Header) {
        if self.known_applied.is_none_or(|(seq, _)| seq < h.seq) {
            self.known_applied = Some((h.seq, h.attempt));
        }
    }

    /// Forgets everything read from the store, as if it had just opened
    /// (the next catch-up reads the whole log); timestamps stay monotonic.
    fn forget(&mut self) {
        let last_ts = self.last_ts;
        *self = Writer::new(&self.name);
        self.last_ts = last_ts;
    }
}

impl ScyllaStore {
    pub(super) fn writer(&self, name: &str) -> Arc<Mutex<Writer>> {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        writers
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Writer::new(name))))
            .clone()
    }

    fn partial_cache(&self) -> PartialCache {
        moka::sync::Cache::builder()
            .max_capacity(self.cache_cfg.max_tiles)
            .time_to_idle(self.cache_cfg.ttl)
            .build()
    }

    /// Entries of `w`'s log this process has not seen, oldest first. The
    /// position keys that other processes' entries move are remembered (a
    /// later checkpoint moving one is fenced until it is read again). An
    /// entry not yet applied is applied here when it is this process's own
    /// or a previous process's of the same author, when it is older than
    /// the grace, or always when `reading` positions (they must be current);
    /// otherwise its author is still applying it and it is remembered. On
    /// the first call the whole (pruned) log is read, everything unapplied
    /// is applied, and nothing counts as unseen.
    async fn catch_up(&self, w: &mut Writer, reading: bool) -> Result<Vec<Header>, StoreError> {
        const OP: &str = "reading the checkpoint log";
        let rows: Vec<HeaderRow> = if w.initialized {
            let from = w
                .known_applied
                .map_or(w.next_seq, |(seq, _)| seq.min(w.next_seq));
            rows(&self.job, &self.st.log_tail, (&w.name, from), OP).await?
        } else {
            rows(&self.job, &self.st.log_all, (&w.name,), OP).await?
        };
        let mut headers: Vec<Header> = rows.into_iter().map(Header::from).collect();
        headers.sort_by_key(|h| h.seq);
        if w.initialized {
            if let Some((seq, attempt)) = w.known_applied {
                // Still there and applied, or pruned behind newer entries.
                let kept = match headers.iter().find(|h| h.seq == seq) {
                    Some(h) => h.attempt == attempt && h.applied,
                    None => headers.iter().any(|h| h.seq > seq),
                };
                if !kept {
                    w.forget();
                    return Err(StoreError::Regressed {
                        writer: w.name.clone(),
                        seq,
                    });
                }
            }
            // Entries before `next_seq` were seen already.
            headers.retain(|h| h.seq >= w.next_seq);
        }
        let now = now_micros();
        for h in &headers {
            let foreign = w.initialized && !w.attempts.contains(&(h.seq, h.attempt));
            let cache = w.caches.get(h.author(&w.name));
            let cached_author = cache.is_some();
            if foreign {
                if let Some(cache) = cache {
                    // Another process wrote partials this one caches.
                    cache.invalidate_all();
                }
                for (key, _) in log::decode_positions(&h.positions)? {
                    w.moved_elsewhere.insert(key);
                }
            }
            if !h.applied {
                if reading || !foreign || cached_author || now - h.ts >= APPLY_GRACE_MICROS {
                    self.apply(w, h, None).await?;
                    w.applied(h);
                } else {
                    w.unapplied.push(h.clone());
                }
            } else {
                w.applied(h);
            }
            w.next_seq = w.next_seq.max(h.seq + 1);
            w.last_ts = w.last_ts.max(h.ts);
        }
        self.apply_overdue(w, reading).await?;
        if !w.initialized {
            w.initialized = true;
            return Ok(Vec::new());
        }
        Ok(headers)
    }

    /// Applies the remembered entries of other processes that are past the
    /// grace (all of them when `reading`) and still unapplied.
    async fn apply_overdue(&self, w: &mut Writer, reading: bool) -> Result<(), StoreError> {
        let now = now_micros();
        let (due, wait): (Vec<Header>, Vec<Header>) = std::mem::take(&mut w.unapplied)
            .into_iter()
            .partition(|h| reading || now - h.ts >= APPLY_GRACE_MICROS);
        w.unapplied = wait;
        for (i, h) in due.iter().enumerate() {
            let result = async {
                let current: Option<Header> = first_row::<HeaderRow>(
                    &self.job,
                    &self.st.read_header,
                    (&w.name, h.seq),
                    "reading the checkpoint log",
                )
                .await?
                .map(Header::from);
                match current {
                    Some(c) if !c.applied && c.attempt == h.attempt => {
                        self.apply(w, &c, None).await?;
                        w.applied(&c);
                        Ok(())
                    }
                    _ => Ok(()), // applied (or pruned after it was) meanwhile
                }
            }
            .await;
            if let Err(e) = result {
                // Still owed: keep them so the log is not pruned past them.
                w.unapplied.extend(due[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Applies one log entry (see the module doc); `tiles` when the caller
    /// has them, else they are read from the chunks. A failure drops the
    /// author's cached partials.
    async fn apply(
        &self,
        w: &Writer,
        h: &Header,
        tiles: Option<Vec<LoggedTile>>,
    ) -> Result<(), StoreError> {
        let result = self.apply_entry(w, h, tiles).await;
        if result.is_err() {
            // Some tile writes may have been acknowledged and cached yet be
            // lost (a node that crashed before syncing them): whoever
            // finishes the entry reads the partials the store holds.
            if let Some(cache) = w.caches.get(h.author(&w.name)) {
                cache.invalidate_all();
            }
        }
        result
    }

    /// [`Self::apply`] without the clean-up on failure.
    async fn apply_entry(
        &self,
        w: &Writer,
        h: &Header,
        tiles: Option<Vec<LoggedTile>>,
    ) -> Result<(), StoreError> {
        let author = h.author(&w.name);
        let tiles = match tiles {
            Some(t) => t,
            None => match self.read_entry(&w.name, h).await? {
                Some(t) => t,
                None => return Ok(()), // applied (and cleaned up) by another process meanwhile
            },
        };
        let mut groups: Vec<&[LoggedTile]> = Vec::new();
        let mut from = 0;
        for i in 1..=tiles.len() {
            let boundary = i == tiles.len()
                || tiles[i].feature_id != tiles[from].feature_id
                || tiles[i].entity != tiles[from].entity
                || i - from == BATCH_ROWS;
            if boundary {
                groups.push(&tiles[from..i]);
                from = i;
            }
        }
        futures::stream::iter(groups)
            .map(|g| self.apply_partition(w, author, h, g))
            .buffer_unordered(self.write_concurrency)
            .try_collect::<()>()
            .await?;
        let positions = log::decode_positions(&h.positions)?;
        if !positions.is_empty() {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(positions.len());
            for (key, value) in &positions {
                batch.append_statement(self.st.write_position.clone());
                values.push((&w.name, key, value, h.ts));
            }
            batch.set_is_idempotent(true);
            self.job
                .batch(&batch, values)
                .await
                .map_err(|e| cql_err("writing positions", e))?;
        }
        self.job
            .execute_unpaged(&self.st.mark_applied, (&w.name, h.seq))
            .await
            .map_err(|e| cql_err("marking a checkpoint applied", e))?;
        self.job
            .execute_unpaged(&self.st.delete_chunks, (&w.name, h.seq))
            .await
            .map_err(|e| cql_err("dropping applied chunks", e))?;
        if h.seq % LOG_KEPT == 0 {
            // Never past an entry still owed by another process.
            let below = w
                .unapplied
                .iter()
                .map(|u| u.seq)
                .fold(h.seq - LOG_KEPT, i64::min);
            self.job
                .execute_unpaged(&self.st.prune_log, (&w.name, below))
                .await
                .map_err(|e| cql_err("pruning the checkpoint log", e))?;
        }
        Ok(())
    }

    /// Merges the deltas of one partition into `author`'s partials.
    async fn apply_partition(
        &self,
        w: &Writer,
        author: &str,
        h: &Header,
        tiles: &[LoggedTile],
    ) -> Result<(), StoreError> {
        let cache = w.caches.get(author);
        let entity: Arc<[u8]> = Arc::from(tiles[0].entity.as_slice());
        let keys: Vec<TileKey> = tiles
            .iter()
            .map(|t| (t.feature_id, entity.clone(), t.size_ms, t.start))
            .collect();
        let bases = self.bases(cache, author, &keys).await?;
        let ttl = self.ttl(tiles[0].feature_id).await?;
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::new();
        let mut written = Vec::new();
        for ((t, key), (base, applied_seq)) in tiles.iter().zip(keys).zip(bases) {
            if applied_seq >= h.seq {
                continue; // this entry (or a later one) is already in the tile
            }
            let mut v = base;
            v.merge(&t.agg);
            batch.append_statement(self.st.write_tile.clone());
            values.push((
                t.feature_id as i32,
                &t.entity,
                t.size_ms,
                t.start,
                author,
                v.count as i64,
                v.sum,
                v.min,
                v.max,
                v.last_time,
                v.last,
                h.seq,
                h.ts,
                ttl(t.size_ms),
            ));
            written.push((key, v));
        }
        if values.is_empty() {
            return Ok(());
        }
        batch.set_is_idempotent(true);
        self.job
            .batch(&batch, values)
            .await
            .map_err(|e| cql_err("writing tiles", e))?;
        if let Some(cache) = cache {
            for (key, v) in written {
                cache.insert(key, (v, h.seq));
            }
        }
        Ok(())
    }

    /// `author`'s partials of `keys` (one partition) as stored, each with
    /// the entry that last changed it: cache first, then the misses with
    /// one multi-column `IN` read (a cold entity's 1m, 30m and 1d tiles cost
    /// one round trip, not three).
    async fn bases(
        &self,
        cache: Option<&PartialCache>,
        author: &str,
        keys: &[TileKey],
    ) -> Result<Vec<(TileAgg, i64)>, StoreError> {
        let mut out: Vec<Option<(TileAgg, i64)>> =
            keys.iter().map(|k| cache.and_then(|c| c.get(k))).collect();
        let missed: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        match missed.as_slice() {
            [] => {}
            [i] => out[*i] = Some(self.stored_base(author, &keys[*i]).await?),
            _ => {
                let (feature_id, entity) = (keys[0].0 as i32, keys[0].1.as_ref());
                let wanted: Vec<(i64, i64)> =
                    missed.iter().map(|&i| (keys[i].2, keys[i].3)).collect();
                let found: Vec<WriterTileRow> = rows(
                    &self.job,
                    &self.st.read_tiles_in,
                    (feature_id, entity, &wanted),
                    "reading tiles",
                )
                .await?;
                let mine: HashMap<(i64, i64), (TileAgg, i64)> = found
                    .into_iter()
                    .filter(|r| r.2 == author)
                    .map(
                        |(size, start, _, count, sum, min, max, last_time, last, seq)| {
                            (
                                (size, start),
                                tile_agg((count, sum, min, max, last_time, last, seq)),
                            )
                        },
                    )
                    .collect();
                for i in missed {
                    let at = (keys[i].2, keys[i].3);
                    out[i] = Some(mine.get(&at).copied().unwrap_or((TileAgg::EMPTY, 0)));
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|b| b.expect("every key looked up"))
            .collect())
    }

    /// One partial of `author` as stored (one point read), with the entry
    /// that last changed it.
    async fn stored_base(&self, author: &str, key: &TileKey) -> Result<(TileAgg, i64), StoreError> {
        let row: Option<TileRow> = first_row(
            &self.job,
            &self.st.read_tile,
            (key.0 as i32, key.1.as_ref(), key.2, key.3, author),
            "reading a tile",
        )
        .await?;
        Ok(row.map_or((TileAgg::EMPTY, 0), tile_agg))
    }

    /// The tiles of an entry from its chunks; `None` when they are gone
    /// because the entry was applied meanwhile.
    async fn read_entry(
        &self,
        writer: &str,
        h: &Header,
    ) -> Result<Option<Vec<LoggedTile>>, StoreError> {
        let chunks: Vec<(i32, Vec<u8>)> = self
            .job
            .execute_iter(self.st.read_chunks.clone(), (writer, h.seq, h.attempt))
            .await
            .map_err(|e| cql_err("reading checkpoint chunks", e))?
            .rows_stream::<(i32, Vec<u8>)>()
            .map_err(|e| cql_err("reading checkpoint chunks", e))?
            .try_collect()
            .await
            .map_err(|e| cql_err("reading checkpoint chunks", e))?;
        if chunks.len() != h.chunks as usize
            || chunks.iter().enumerate().any(|(i, c)| c.0 != i as i32)
        {
            let now: Option<Header> = first_row::<HeaderRow>(
                &self.job,
                &self.st.read_header,
                (writer, h.seq),
                "reading the checkpoint log",
            )
            .await?
            .map(Header::from);
            if now.is_some_and(|n| n.applied) {
                return Ok(None);
            }
            return Err(StoreError::Corrupt {
                what: "checkpoint log entry",
                message: format!(
                    "writer `{writer}` entry {} has {} of its {} chunks",
                    h.seq,
                    chunks.len(),
                    h.chunks
                ),
            });
        }
        let mut tiles = Vec::new();
        for (_, data) in &chunks {
            log::decode_chunk(data, &mut tiles)?;
        }
        Ok(Some(tiles))
    }

    /// The last committed position of `source_key`, with the log caught up
    /// first (every entry seen is applied, so the position is current).
    pub(super) async fn read_position(
        &self,
        w: &mut Writer,
        source_key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.catch_up(w, true).await?;
        // Read now: a checkpoint moving it continues from here.
        w.moved_elsewhere.remove(source_key);
        let row: Option<(Vec<u8>,)> = first_row(
            &self.job,
            &self.st.read_position,
            (&w.name, source_key),
            "reading a position",
        )
        .await?;
        Ok(row.map(|(p,)| p))
    }

    pub(super) async fn commit_async(
        &self,
        w: &mut Writer,
        cp: &Checkpoint,
        apply: bool,
    ) -> Result<(), StoreError> {
        let chunks = log::encode_deltas(&cp.deltas);
        let positions = log::encode_positions(&cp.positions);
        let digest = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            chunks.hash(&mut h);
            positions.hash(&mut h);
            h.finish()
        };
        // The entry names its author unless it is the log's writer itself
        // (a single-host pipeline, as entries were before authors).
        let partials = cp.author();
        let author = (partials != w.name).then(|| partials.clone());
        w.caches
            .entry(partials)
            .or_insert_with(|| self.partial_cache());
        if w.attempt_digest != Some(digest) {
            // A different checkpoint than the one that failed before: an
            // earlier attempt that lands anyway counts as another writer's.
            w.attempts.clear();
            w.attempt_digest = Some(digest);
        }
        loop {
            let unseen = self.catch_up(w, false).await?;
            if unseen
                .iter()
                .any(|h| w.attempts.contains(&(h.seq, h.attempt)))
            {
                w.attempts.clear();
                w.attempt_digest = None;
                return Ok(()); // an earlier try of this checkpoint landed
            }
            if let Some((key, _)) = cp
                .positions
                .iter()
                .find(|(k, _)| w.moved_elsewhere.contains(k))
            {
                w.attempts.clear();
                w.attempt_digest = None;
                return Err(StoreError::Fenced {
                    writer: w.name.clone(),
                    key: key.clone(),
                });
            }
            let seq = w.next_seq;
            let attempt = random_i64();
            let ts = now_micros().max(w.last_ts + 1);
            w.attempts.push((seq, attempt));
            futures::stream::iter(chunks.iter().enumerate())
                .map(|(i, data)| {
                    self.job.execute_unpaged(
                        &self.st.insert_chunk,
                        (&w.name, seq, attempt, i as i32, data),
                    )
                })
                .buffer_unordered(8)
                .map_err(|e| cql_err("writing checkpoint chunks", e))
                .try_collect::<Vec<_>>()
                .await?;
            let won = lwt_applied(
                self.job
                    .execute_unpaged(
                        &self.st.insert_header,
                        (
                            &w.name,
                            seq,
                            attempt,
                            chunks.len() as i32,
                            ts,
                            &positions,
                            &author,
                        ),
                    )
                    .await
                    .map_err(|e| cql_err("committing a checkpoint", e))?,
            )?;
            if !won {
                // Another writer (or an earlier try of ours) has `seq`: drop
                // our chunks and look at what it wrote.
                w.attempts.retain(|a| *a != (seq, attempt));
                let _ = self
                    .job
                    .execute_unpaged(&self.st.delete_attempt, (&w.name, seq, attempt))
                    .await;
                continue;
            }
            let header = Header {
                seq,
                attempt,
                chunks: chunks.len() as i32,
                ts,
                positions,
                applied: false,
                author,
            };
            let tiles = cp
                .deltas
                .tiles
                .iter()
                .map(|d| LoggedTile {
                    feature_id: d.feature_id,
                    entity: cp.deltas.entity(d).to_vec(),
                    size_ms: d.size_ms,
                    start: d.start,
                    agg: d.agg,
                })
                .collect();
            // Committed from here on. Until it is applied the entry stays
            // among this checkpoint's attempts and `next_seq` stays on it:
            // a retry of the checkpoint after a failed apply finds it in
            // the log, finishes applying it and stops there, instead of
            // committing the same deltas again as a new entry.
            if apply {
                self.apply(w, &header, Some(tiles)).await?;
                w.applied(&header);
            }
            w.next_seq = seq + 1;
            w.last_ts = ts;
            w.attempts.clear();
            w.attempt_digest = None;
            return Ok(());
        }
    }
}
