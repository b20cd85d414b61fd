//! The tile output's partition ledger: for each event-time partition (hourly
//! or daily, `[completeness]`) how many events it holds, when the pipeline
//! watermark made it complete (its end plus `allowed_lateness` behind the
//! watermark), and each amendment: accepted late events that landed in it
//! after that. Every completion and amendment gets the next *change number*
//! of the pipeline instance, the cursor the change log (`/v1/changes`) is
//! read by. Records go into the checkpoint as positions under
//! `ledger[@instance]/tiles/`, so they are exactly as durable as the tiles
//! they describe: a roll-back or a crash loses the same uncommitted events
//! from both, and a restart reads the ledger back.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::CompletenessConfig;
use crate::stores::{StoreError, TileStore};

/// The output the ledger describes, as named in change-log records.
pub const TILES_OUTPUT: &str = "tiles";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("change log file {}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A completion or an amendment: the change number it landed under and the
/// wall-clock time of the checkpoint that committed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Landed {
    pub change: u64,
    pub landed_ms: i64,
}

/// Late events accepted into a partition that was already complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amendment {
    #[serde(flatten)]
    pub landed: Landed,
    pub events: u64,
}

/// One event-time partition of the tile output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Every event counted into it, amendments included.
    pub events: u64,
    /// Landing (commit) time of its first and of its latest events.
    pub first_landed_ms: i64,
    pub last_landed_ms: i64,
    /// When the watermark made it complete; `None` while open.
    pub completed: Option<Landed>,
    pub amendments: Vec<Amendment>,
}

/// What the ledger holds as committed: the partitions by start, and how
/// far event time is complete (empty partitions included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    /// Every partition ending at or before this is complete.
    pub complete_through_ms: Option<i64>,
    pub partitions: BTreeMap<i64, PartitionRecord>,
}

impl LedgerState {
    /// Reads the committed ledger of the position prefix `prefix`.
    pub fn read(store: &dyn TileStore, pipeline: &str, prefix: &str) -> Result<Self, StoreError> {
        let mut state = LedgerState::default();
        for (key, value) in store.positions_under(pipeline, prefix)? {
            let corrupt = |e: serde_json::Error| StoreError::Corrupt {
                what: "partition ledger record",
                message: format!("{key}: {e}"),
            };
            let rest = &key[prefix.len()..];
            if rest == COMPLETE_THROUGH {
                state.complete_through_ms = serde_json::from_slice(&value).map_err(corrupt)?;
            } else if rest.starts_with(PARTITION) {
                let r: PartitionRecord = serde_json::from_slice(&value).map_err(corrupt)?;
                state.partitions.insert(r.start_ms, r);
            }
        }
        Ok(state)
    }

    /// The highest change number in it (0 for none).
    pub fn last_change(&self) -> u64 {
        self.partitions
            .values()
            .flat_map(|p| {
                p.completed
                    .iter()
                    .chain(p.amendments.iter().map(|a| &a.landed))
            })
            .map(|l| l.change)
            .max()
            .unwrap_or(0)
    }

    /// The completions and amendments numbered above `since`, by number.
    pub fn changes_since(&self, since: u64) -> Vec<ChangeRecord> {
        let mut out = Vec::new();
        for p in self.partitions.values() {
            if let Some(c) = p.completed.filter(|c| c.change > since) {
                let late: u64 = p.amendments.iter().map(|a| a.events).sum();
                out.push(ChangeRecord::of(
                    p,
                    ChangeKind::Complete,
                    c,
                    p.events - late,
                ));
            }
            for a in p.amendments.iter().filter(|a| a.landed.change > since) {
                out.push(ChangeRecord::of(p, ChangeKind::Amended, a.landed, a.events));
            }
        }
        out.sort_by_key(|c| c.change);
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The watermark passed the partition's end plus the allowed lateness.
    Complete,
    /// Late events landed in it after it was complete.
    Amended,
}

/// One line of the change log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub change: u64,
    pub output: String,
    pub kind: ChangeKind,
    pub partition_start_ms: i64,
    pub partition_end_ms: i64,
    /// Events it brought: all of the partition's for a completion, the late
    /// ones for an amendment.
    pub events: u64,
    pub landed_ms: i64,
}

impl ChangeRecord {
    fn of(p: &PartitionRecord, kind: ChangeKind, landed: Landed, events: u64) -> Self {
        ChangeRecord {
            change: landed.change,
            output: TILES_OUTPUT.to_string(),
            kind,
            partition_start_ms: p.start_ms,
            partition_end_ms: p.end_ms,
            events,
            landed_ms: landed.landed_ms,
        }
    }
}

const COMPLETE_THROUGH: &str = "complete_through";
const PARTITION: &str = "p/";

/// The position-key prefix of the ledger of `author` (`pipeline` or
/// `pipeline@instance`'s instance part, as `instance_key` makes it).
pub fn prefix(ledger_key: &str) -> String {
    format!("{ledger_key}/{TILES_OUTPUT}/")
}

/// A partition's key: its start as order-preserving hex.
fn partition_key(prefix: &str, start_ms: i64) -> String {
    format!("{prefix}{PARTITION}{:016x}", (start_ms as u64) ^ (1 << 63))
}

/// The change log as a JSON-lines file: after each commit the changes it
/// committed are appended; at start the file is repaired against the
/// committed ledger (a torn last line dropped, changes committed but not
/// yet written appended), so it ends up holding every change once.
struct ChangeLogFile {
    path: std::path::PathBuf,
    /// The highest change number written to it.
    written: u64,
}

impl ChangeLogFile {
    fn open(path: &std::path::Path, state: &LedgerState) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        // Whole lines only; a line past the committed ledger (written
        // before a roll-back) is dropped with everything after it.
        let mut keep = 0;
        let mut written = 0;
        let last = state.last_change();
        for line in text.split_inclusive(|b| *b == b'\n') {
            let change = line
                .ends_with(b"\n")
                .then(|| serde_json::from_slice::<ChangeRecord>(line).ok())
                .flatten()
                .map(|c| c.change);
            match change {
                Some(n) if n == written + 1 && n <= last => {
                    written = n;
                    keep += line.len();
                }
                _ => break,
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        file.set_len(keep as u64)?;
        let mut log = ChangeLogFile {
            path: path.to_path_buf(),
            written,
        };
        log.append(state)?;
        Ok(log)
    }

    /// Appends the changes of `state` above what was written.
    fn append(&mut self, state: &LedgerState) -> std::io::Result<()> {
        use std::io::Write;
        let changes = state.changes_since(self.written);
        if changes.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        for c in &changes {
            serde_json::to_writer(&mut out, c).map_err(std::io::Error::other)?;
            out.push(b'\n');
        }
        let mut file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        file.write_all(&out)?;
        file.sync_data()?;
        self.written = changes.last().map_or(self.written, |c| c.change);
        Ok(())
    }
}

/// The ledger as the pipeline keeps it: the committed state plus the
/// events counted since the last checkpoint.
pub struct Ledger {
    prefix: String,
    file: ChangeLogFile,
    granularity_ms: i64,
    allowed_lateness_ms: i64,
    state: LedgerState,
    next_change: u64,
    /// Events per partition start since the last checkpoint.
    pending: BTreeMap<i64, u64>,
}

impl Ledger {
    /// The committed ledger under `prefix`, resumed.
    pub fn resume(
        cfg: &CompletenessConfig,
        store: &dyn TileStore,
        pipeline: &str,
        prefix: String,
    ) -> Result<Self, LedgerError> {
        let state = LedgerState::read(store, pipeline, &prefix)?;
        let file = ChangeLogFile::open(&cfg.change_log_path, &state).map_err(|source| {
            LedgerError::File {
                path: cfg.change_log_path.clone(),
                source,
            }
        })?;
        Ok(Ledger {
            file,
            granularity_ms: cfg.granularity.millis(),
            allowed_lateness_ms: cfg.allowed_lateness.as_millis() as i64,
            next_change: state.last_change() + 1,
            state,
            prefix,
            pending: BTreeMap::new(),
        })
    }

    /// After the checkpoint from [`Ledger::checkpoint`] committed: appends
    /// its changes to the change-log file.
    pub fn committed(&mut self) -> Result<(), LedgerError> {
        if self.file.written + 1 == self.next_change {
            return Ok(()); // this checkpoint numbered no change
        }
        self.file
            .append(&self.state)
            .map_err(|source| LedgerError::File {
                path: self.file.path.clone(),
                source,
            })
    }

    /// Counts events (their event times) that go into the tiles.
    pub fn count(&mut self, event_times: &[i64]) {
        let g = self.granularity_ms;
        // Runs of one partition (nearly the whole batch, in time order)
        // cost one map update each, not one per event.
        let mut run: Option<(i64, u64)> = None;
        for t in event_times {
            let start = t.div_euclid(g) * g;
            match &mut run {
                Some((s, n)) if *s == start => *n += 1,
                _ => {
                    if let Some((s, n)) = run.replace((start, 1)) {
                        *self.pending.entry(s).or_insert(0) += n;
                    }
                }
            }
        }
        if let Some((s, n)) = run {
            *self.pending.entry(s).or_insert(0) += n;
        }
    }

    /// Folds the counted events into the records (amendments where their
    /// partition was complete already), completes the partitions the
    /// watermark has passed, and returns the changed records as positions
    /// for the checkpoint landing at `now_ms`. Until that commit lands the
    /// caller must not call it again without [`Ledger::resume`] (a failed
    /// commit rolls the pipeline back, which reads the ledger again).
    pub fn checkpoint(&mut self, watermark: Option<i64>, now_ms: i64) -> Vec<(String, Vec<u8>)> {
        let mut changed = BTreeSet::new();
        for (start, events) in std::mem::take(&mut self.pending) {
            let g = self.granularity_ms;
            let p = self
                .state
                .partitions
                .entry(start)
                .or_insert_with(|| PartitionRecord {
                    start_ms: start,
                    end_ms: start + g,
                    events: 0,
                    first_landed_ms: now_ms,
                    last_landed_ms: now_ms,
                    completed: None,
                    amendments: Vec::new(),
                });
            if p.completed.is_some() {
                p.amendments.push(Amendment {
                    landed: Landed {
                        change: self.next_change,
                        landed_ms: now_ms,
                    },
                    events,
                });
                self.next_change += 1;
            }
            p.events += events;
            p.last_landed_ms = now_ms;
            changed.insert(start);
        }
        let mut out = Vec::new();
        if let Some(wm) = watermark {
            let g = self.granularity_ms;
            // Partitions ending at or before this are complete.
            let through = (wm - self.allowed_lateness_ms).div_euclid(g) * g;
            if self.state.complete_through_ms.is_none_or(|c| c < through) {
                self.state.complete_through_ms = Some(through);
                out.push((
                    format!("{}{COMPLETE_THROUGH}", self.prefix),
                    serde_json::to_vec(&through).expect("an i64 serializes"),
                ));
            }
            for p in self.state.partitions.values_mut() {
                if p.completed.is_none() && p.end_ms <= through {
                    p.completed = Some(Landed {
                        change: self.next_change,
                        landed_ms: now_ms,
                    });
                    self.next_change += 1;
                    changed.insert(p.start_ms);
                }
            }
        }
        for start in changed {
            let record = &self.state.partitions[&start];
            out.push((
                partition_key(&self.prefix, start),
                serde_json::to_vec(record).expect("a record serializes"),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::{Checkpoint, EmbeddedStore};

    const H: i64 = 3_600_000;

    fn ledger(store: &dyn TileStore, dir: &std::path::Path, lateness_ms: u64) -> Ledger {
        let cfg = CompletenessConfig {
            allowed_lateness: std::time::Duration::from_millis(lateness_ms),
            change_log_path: dir.join("changes.ndjson"),
            ..CompletenessConfig::default()
        };
        Ledger::resume(&cfg, store, "p", prefix("ledger")).unwrap()
    }

    fn commit(store: &dyn TileStore, positions: Vec<(String, Vec<u8>)>) {
        store
            .commit(&Checkpoint {
                pipeline: "p".into(),
                positions,
                ..Checkpoint::default()
            })
            .unwrap();
    }

    #[test]
    fn partitions_complete_by_watermark_and_late_events_amend_them_under_new_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let mut l = ledger(&store, dir.path(), 10 * 60_000);
        l.count(&[10 * H + 5, 10 * H + 7, 11 * H + 1]);
        // Watermark 11:05: hour 10 ends 11:00, plus 10 min lateness: open.
        commit(&store, l.checkpoint(Some(11 * H + 5 * 60_000), 100));
        assert!(l.state.partitions[&(10 * H)].completed.is_none());
        // 11:20: hour 10 is complete (change 1); hour 11 is not.
        l.count(&[11 * H + 2]);
        commit(&store, l.checkpoint(Some(11 * H + 20 * 60_000), 200));
        // Two late events for hour 10 land: an amendment (change 2).
        l.count(&[10 * H + 9, 10 * H + 30]);
        commit(&store, l.checkpoint(Some(11 * H + 21 * 60_000), 300));
        let read = LedgerState::read(&store, "p", &prefix("ledger")).unwrap();
        assert_eq!(read, l.state);
        assert_eq!(read.complete_through_ms, Some(11 * H));
        let changes = read.changes_since(0);
        let summary: Vec<_> = changes
            .iter()
            .map(|c| {
                (
                    c.change,
                    c.kind,
                    c.partition_start_ms,
                    c.events,
                    c.landed_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, ChangeKind::Complete, 10 * H, 2, 200),
                (2, ChangeKind::Amended, 10 * H, 2, 300),
            ]
        );
        assert_eq!(read.partitions[&(10 * H)].events, 4);
        assert_eq!(read.changes_since(1).len(), 1);
        assert!(read.changes_since(2).is_empty());
        // Resumed, numbering goes on after the last change.
        let mut again = ledger(&store, dir.path(), 10 * 60_000);
        again.count(&[10 * H]);
        let positions = again.checkpoint(Some(11 * H + 22 * 60_000), 400);
        commit(&store, positions);
        let read = LedgerState::read(&store, "p", &prefix("ledger")).unwrap();
        assert_eq!(read.changes_since(2)[0].change, 3);
    }

    #[test]
    fn the_change_log_file_is_repaired_against_the_committed_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let path = dir.path().join("changes.ndjson");
        let mut l = ledger(&store, dir.path(), 0);
        for h in 0..4 {
            l.count(&[h * H]);
            commit(&store, l.checkpoint(Some((h + 1) * H), h));
            l.committed().unwrap();
        }
        let lines = |p: &std::path::Path| -> Vec<u64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<ChangeRecord>(l).unwrap().change)
                .collect()
        };
        assert_eq!(lines(&path), [1, 2, 3, 4]);
        // A crash after the commit of change 5, before its line; and a
        // torn half line of it.
        l.count(&[4 * H]);
        commit(&store, l.checkpoint(Some(5 * H), 9));
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"change\":5,\"out");
        std::fs::write(&path, &text).unwrap();
        drop(l);
        let _l = ledger(&store, dir.path(), 0);
        assert_eq!(lines(&path), [1, 2, 3, 4, 5]);
        // A line beyond the ledger (written before a roll-back) goes.
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"change\":6,\"output\":\"tiles\",\"kind\":\"complete\",\"partition_start_ms\":0,\"partition_end_ms\":1,\"events\":1,\"landed_ms\":1}\n");
        std::fs::write(&path, &text).unwrap();
        let _l = ledger(&store, dir.path(), 0);
        assert_eq!(lines(&path), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn uncommitted_counts_are_forgotten_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let mut l = ledger(&store, dir.path(), 0);
        l.count(&[5 * H]);
        commit(&store, l.checkpoint(Some(5 * H), 1));
        l.count(&[5 * H + 1]);
        let _lost = l.checkpoint(Some(7 * H), 2); // never committed
        let l = ledger(&store, dir.path(), 0);
        assert_eq!(l.state.partitions[&(5 * H)].events, 1);
        assert!(l.state.partitions[&(5 * H)].completed.is_none());
        assert_eq!(l.next_change, 1);
    }
}
