//! The partition ledger of every output: for each event-time partition
//! (hourly or daily) how many events it holds, when it became complete, and
//! each amendment. For the tile output (`tiles`) a partition is complete
//! when the pipeline watermark passes its end plus `[completeness]
//! allowed_lateness`, and accepted late events landing in it after that
//! amend it. For an SMB output a partition is complete when its directory is
//! published (the output's own watermark rule) and each late-data sibling
//! published after that is an amendment naming its directory; how far its
//! event time is complete (empty hours included) is what it published
//! through. Every completion and amendment gets the next *change number* of
//! the pipeline instance, the cursor the change log (`/v1/changes`) is read
//! by. Records go into the checkpoint as positions under
//! `ledger[@instance]/output/<name>/`, so they are exactly as durable as the
//! tiles they describe: a roll-back or a crash loses the same uncommitted
//! events from both, and a restart reads the ledger back. SMB commits land
//! after the checkpoint that sealed them; they are recorded by the next one,
//! and at start every line of an output's `_commits.ndjson` whose directory
//! the ledger lacks is recorded again (a crash in between loses none).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::CompletenessConfig;
use crate::sinks::smb::CommittedPartition;
use crate::stores::{StoreError, TileStore};

/// The tile output's name in change-log records (no SMB output may take it).
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
/// wall-clock time it landed (the checkpoint that committed it; for an SMB
/// output, the directory's publication).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Landed {
    pub change: u64,
    pub landed_ms: i64,
}

/// Late events that landed in a partition already complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amendment {
    #[serde(flatten)]
    pub landed: Landed,
    pub events: u64,
    /// The late-data sibling directory holding them (SMB outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// One event-time partition of an output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Every event counted into it, amendments included.
    pub events: u64,
    /// Landing time of its first and of its latest events.
    pub first_landed_ms: i64,
    pub last_landed_ms: i64,
    /// When it became complete; `None` while open.
    pub completed: Option<Landed>,
    /// The directory that completed it (SMB outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    pub amendments: Vec<Amendment>,
}

impl PartitionRecord {
    fn new(start_ms: i64, end_ms: i64, landed_ms: i64) -> Self {
        PartitionRecord {
            start_ms,
            end_ms,
            events: 0,
            first_landed_ms: landed_ms,
            last_landed_ms: landed_ms,
            completed: None,
            dir: None,
            amendments: Vec::new(),
        }
    }

    /// Whether SMB directory `dir` is recorded in it.
    fn holds_dir(&self, dir: &str) -> bool {
        self.dir.as_deref() == Some(dir)
            || self
                .amendments
                .iter()
                .any(|a| a.dir.as_deref() == Some(dir))
    }
}

/// One output's committed partitions by start, and how far its event time
/// is complete (empty partitions included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLedger {
    /// Every partition ending at or before this is complete.
    pub complete_through_ms: Option<i64>,
    pub partitions: BTreeMap<i64, PartitionRecord>,
}

/// The committed ledgers of one pipeline instance, by output name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    pub outputs: BTreeMap<String, OutputLedger>,
}

impl LedgerState {
    /// Reads the committed ledgers under the position prefix `base`.
    pub fn read(store: &dyn TileStore, pipeline: &str, base: &str) -> Result<Self, StoreError> {
        let mut state = LedgerState::default();
        let outputs = format!("{base}{OUTPUT}");
        for (key, value) in store.positions_under(pipeline, &outputs)? {
            let corrupt = |e: String| StoreError::Corrupt {
                what: "partition ledger record",
                message: format!("{key}: {e}"),
            };
            let Some((output, rest)) = key[outputs.len()..].split_once('/') else {
                return Err(corrupt("no output name".into()));
            };
            let ledger = state.outputs.entry(output.to_string()).or_default();
            if rest == COMPLETE_THROUGH {
                ledger.complete_through_ms =
                    serde_json::from_slice(&value).map_err(|e| corrupt(e.to_string()))?;
            } else if rest.starts_with(PARTITION) {
                let r: PartitionRecord =
                    serde_json::from_slice(&value).map_err(|e| corrupt(e.to_string()))?;
                ledger.partitions.insert(r.start_ms, r);
            }
        }
        Ok(state)
    }

    /// The highest change number in it (0 for none).
    pub fn last_change(&self) -> u64 {
        self.outputs
            .values()
            .flat_map(|o| o.partitions.values())
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
        for (output, ledger) in &self.outputs {
            for p in ledger.partitions.values() {
                if let Some(c) = p.completed.filter(|c| c.change > since) {
                    let late: u64 = p.amendments.iter().map(|a| a.events).sum();
                    out.push(ChangeRecord {
                        dir: p.dir.clone(),
                        ..ChangeRecord::of(output, p, ChangeKind::Complete, c, p.events - late)
                    });
                }
                for a in p.amendments.iter().filter(|a| a.landed.change > since) {
                    out.push(ChangeRecord {
                        dir: a.dir.clone(),
                        ..ChangeRecord::of(output, p, ChangeKind::Amended, a.landed, a.events)
                    });
                }
            }
        }
        out.sort_by_key(|c| c.change);
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The partition became complete.
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
    /// The directory that holds them (SMB outputs): the partition's own
    /// for a completion, a late-data sibling for an amendment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

impl ChangeRecord {
    fn of(
        output: &str,
        p: &PartitionRecord,
        kind: ChangeKind,
        landed: Landed,
        events: u64,
    ) -> Self {
        ChangeRecord {
            change: landed.change,
            output: output.to_string(),
            kind,
            partition_start_ms: p.start_ms,
            partition_end_ms: p.end_ms,
            events,
            landed_ms: landed.landed_ms,
            dir: None,
        }
    }
}

const OUTPUT: &str = "output/";
const COMPLETE_THROUGH: &str = "complete_through";
const PARTITION: &str = "p/";

/// The position-key prefix of the ledgers of a pipeline instance, given its
/// own key (`ledger` or `ledger@instance`, as `instance_key` makes it).
/// Consumers' high watermarks live under it too (`consumer/<name>`).
pub fn base(ledger_key: &str) -> String {
    format!("{ledger_key}/")
}

/// The key prefix of one output's records.
fn output_prefix(base: &str, output: &str) -> String {
    format!("{base}{OUTPUT}{output}/")
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

/// The ledgers as the pipeline keeps them: the committed state plus what
/// happened since the last checkpoint (events counted into the tiles, SMB
/// directories published, how far SMB outputs published).
pub struct Ledger {
    base: String,
    file: ChangeLogFile,
    granularity_ms: i64,
    allowed_lateness_ms: i64,
    state: LedgerState,
    next_change: u64,
    /// Tile events per partition start since the last checkpoint.
    pending: BTreeMap<i64, u64>,
    /// SMB commits not yet recorded, in publication order, by output.
    published: Vec<(String, CommittedPartition)>,
    /// How far each SMB output has published (see [`Ledger::published_through`]).
    published_through: BTreeMap<String, i64>,
}

impl Ledger {
    /// The committed ledgers under `base`, resumed.
    pub fn resume(
        cfg: &CompletenessConfig,
        store: &dyn TileStore,
        pipeline: &str,
        base: String,
    ) -> Result<Self, LedgerError> {
        let state = LedgerState::read(store, pipeline, &base)?;
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
            base,
            pending: BTreeMap::new(),
            published: Vec::new(),
            published_through: BTreeMap::new(),
        })
    }

    /// The committed (and, since the last checkpoint, recorded) ledgers.
    pub fn state(&self) -> &LedgerState {
        &self.state
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

    /// Directories SMB output `output` published (or, at start, every line
    /// of its commit log): those not recorded yet are, by the next
    /// checkpoint. Recording is by directory, so a commit given twice is
    /// recorded once.
    pub fn published(
        &mut self,
        output: &str,
        commits: impl IntoIterator<Item = CommittedPartition>,
    ) {
        for c in commits {
            let recorded = self
                .state
                .outputs
                .get(output)
                .and_then(|o| o.partitions.get(&c.event_time_start_ms))
                .is_some_and(|p| p.holds_dir(&c.dir));
            let pending = self
                .published
                .iter()
                .any(|(o, p)| o == output && p.dir == c.dir);
            if !recorded && !pending {
                self.published.push((output.to_string(), c));
            }
        }
    }

    /// SMB output `output` has published every partition ending at or
    /// before `through_ms` (empty ones have nothing to publish).
    pub fn published_through(&mut self, output: &str, through_ms: i64) {
        let recorded = self
            .state
            .outputs
            .get(output)
            .and_then(|o| o.complete_through_ms);
        if recorded.is_some_and(|r| r >= through_ms) {
            return;
        }
        let t = self
            .published_through
            .entry(output.to_string())
            .or_insert(through_ms);
        *t = (*t).max(through_ms);
    }

    /// Whether SMB publications wait to be recorded by a checkpoint.
    pub fn has_unrecorded(&self) -> bool {
        !self.published.is_empty() || !self.published_through.is_empty()
    }

    /// Folds what happened since the last checkpoint into the records:
    /// counted tile events (amendments where their partition was complete
    /// already), tile partitions the watermark has passed, and SMB
    /// directories published; returns the changed records as positions for
    /// the checkpoint landing at `now_ms`. Until that commit lands the
    /// caller must not call it again without [`Ledger::resume`] (a failed
    /// commit rolls the pipeline back, which reads the ledger again).
    pub fn checkpoint(&mut self, watermark: Option<i64>, now_ms: i64) -> Vec<(String, Vec<u8>)> {
        let mut changed: BTreeSet<(String, i64)> = BTreeSet::new();
        let mut out = Vec::new();
        let g = self.granularity_ms;
        let tiles = self
            .state
            .outputs
            .entry(TILES_OUTPUT.to_string())
            .or_default();
        for (start, events) in std::mem::take(&mut self.pending) {
            let p = tiles
                .partitions
                .entry(start)
                .or_insert_with(|| PartitionRecord::new(start, start + g, now_ms));
            if p.completed.is_some() {
                p.amendments.push(Amendment {
                    landed: Landed {
                        change: self.next_change,
                        landed_ms: now_ms,
                    },
                    events,
                    dir: None,
                });
                self.next_change += 1;
            }
            p.events += events;
            p.last_landed_ms = now_ms;
            changed.insert((TILES_OUTPUT.to_string(), start));
        }
        if let Some(wm) = watermark {
            // Partitions ending at or before this are complete.
            let through = (wm - self.allowed_lateness_ms).div_euclid(g) * g;
            if advance(&mut tiles.complete_through_ms, through) {
                out.push(complete_through(&self.base, TILES_OUTPUT, through));
            }
            for p in tiles.partitions.values_mut() {
                if p.completed.is_none() && p.end_ms <= through {
                    p.completed = Some(Landed {
                        change: self.next_change,
                        landed_ms: now_ms,
                    });
                    self.next_change += 1;
                    changed.insert((TILES_OUTPUT.to_string(), p.start_ms));
                }
            }
        }
        for (output, c) in std::mem::take(&mut self.published) {
            let ledger = self.state.outputs.entry(output.clone()).or_default();
            let p = ledger
                .partitions
                .entry(c.event_time_start_ms)
                .or_insert_with(|| {
                    PartitionRecord::new(c.event_time_start_ms, c.event_time_end_ms, c.landed_at_ms)
                });
            let landed = Landed {
                change: self.next_change,
                landed_ms: c.landed_at_ms,
            };
            self.next_change += 1;
            if p.completed.is_none() {
                p.completed = Some(landed);
                p.dir = Some(c.dir);
            } else {
                p.amendments.push(Amendment {
                    landed,
                    events: c.records,
                    dir: Some(c.dir),
                });
            }
            p.events += c.records;
            p.first_landed_ms = p.first_landed_ms.min(c.landed_at_ms);
            p.last_landed_ms = p.last_landed_ms.max(c.landed_at_ms);
            changed.insert((output, c.event_time_start_ms));
        }
        for (output, through) in std::mem::take(&mut self.published_through) {
            let ledger = self.state.outputs.entry(output.clone()).or_default();
            if advance(&mut ledger.complete_through_ms, through) {
                out.push(complete_through(&self.base, &output, through));
            }
        }
        for (output, start) in changed {
            let record = &self.state.outputs[&output].partitions[&start];
            out.push((
                partition_key(&output_prefix(&self.base, &output), start),
                serde_json::to_vec(record).expect("a record serializes"),
            ));
        }
        out
    }
}

/// Moves `current` up to `to`; whether it moved.
fn advance(current: &mut Option<i64>, to: i64) -> bool {
    let moved = current.is_none_or(|c| c < to);
    if moved {
        *current = Some(to);
    }
    moved
}

/// The position recording how far `output` is complete.
fn complete_through(base: &str, output: &str, through: i64) -> (String, Vec<u8>) {
    (
        format!("{}{COMPLETE_THROUGH}", output_prefix(base, output)),
        serde_json::to_vec(&through).expect("an i64 serializes"),
    )
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
        Ledger::resume(&cfg, store, "p", base("ledger")).unwrap()
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
        assert!(l.state.outputs[TILES_OUTPUT].partitions[&(10 * H)]
            .completed
            .is_none());
        // 11:20: hour 10 is complete (change 1); hour 11 is not.
        l.count(&[11 * H + 2]);
        commit(&store, l.checkpoint(Some(11 * H + 20 * 60_000), 200));
        // Two late events for hour 10 land: an amendment (change 2).
        l.count(&[10 * H + 9, 10 * H + 30]);
        commit(&store, l.checkpoint(Some(11 * H + 21 * 60_000), 300));
        let read = LedgerState::read(&store, "p", &base("ledger")).unwrap();
        assert_eq!(read, l.state);
        assert_eq!(read.outputs[TILES_OUTPUT].complete_through_ms, Some(11 * H));
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
        assert_eq!(read.outputs[TILES_OUTPUT].partitions[&(10 * H)].events, 4);
        assert_eq!(read.changes_since(1).len(), 1);
        assert!(read.changes_since(2).is_empty());
        // Resumed, numbering goes on after the last change.
        let mut again = ledger(&store, dir.path(), 10 * 60_000);
        again.count(&[10 * H]);
        let positions = again.checkpoint(Some(11 * H + 22 * 60_000), 400);
        commit(&store, positions);
        let read = LedgerState::read(&store, "p", &base("ledger")).unwrap();
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
        assert_eq!(l.state.outputs[TILES_OUTPUT].partitions[&(5 * H)].events, 1);
        assert!(l.state.outputs[TILES_OUTPUT].partitions[&(5 * H)]
            .completed
            .is_none());
        assert_eq!(l.next_change, 1);
    }

    fn commit_of(dir: &str, start: i64, records: u64, landed: i64) -> CommittedPartition {
        CommittedPartition {
            partition: dir.split(".late-").next().unwrap().to_string(),
            dir: dir.to_string(),
            amends: dir.contains(".late-"),
            records,
            event_time_start_ms: start,
            event_time_end_ms: start + H,
            landed_at_ms: landed,
            segment: format!("seg-{dir}"),
        }
    }

    #[test]
    fn smb_directories_complete_and_amend_their_partitions_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let mut l = ledger(&store, dir.path(), 0);
        l.count(&[2 * H]);
        l.published("views", [commit_of("h=02", 2 * H, 5, 70)]);
        l.published_through("views", 3 * H);
        commit(&store, l.checkpoint(Some(3 * H), 100));
        l.committed().unwrap();
        // A sibling, then at restart the whole commit log again (the
        // sibling's publication raced the crash): recorded once.
        l.published("views", [commit_of("h=02.late-0001", 2 * H, 2, 150)]);
        commit(&store, l.checkpoint(Some(3 * H), 200));
        let mut again = ledger(&store, dir.path(), 0);
        again.published(
            "views",
            [
                commit_of("h=02", 2 * H, 5, 70),
                commit_of("h=02.late-0001", 2 * H, 2, 150),
                commit_of("h=02.late-0002", 2 * H, 1, 210),
            ],
        );
        again.published_through("views", 2 * H); // behind: no regression
        commit(&store, again.checkpoint(Some(3 * H), 300));
        let read = LedgerState::read(&store, "p", &base("ledger")).unwrap();
        let summary: Vec<_> = read
            .changes_since(0)
            .into_iter()
            .map(|c| (c.change, c.output, c.kind, c.events, c.landed_ms, c.dir))
            .collect();
        let views = |n, kind, events, landed, dir: &str| {
            (
                n,
                "views".to_string(),
                kind,
                events,
                landed,
                Some(dir.to_string()),
            )
        };
        assert_eq!(
            summary,
            vec![
                (
                    1,
                    TILES_OUTPUT.to_string(),
                    ChangeKind::Complete,
                    1,
                    100,
                    None
                ),
                views(2, ChangeKind::Complete, 5, 70, "h=02"),
                views(3, ChangeKind::Amended, 2, 150, "h=02.late-0001"),
                views(4, ChangeKind::Amended, 1, 210, "h=02.late-0002"),
            ]
        );
        let v = &read.outputs["views"];
        assert_eq!(v.complete_through_ms, Some(3 * H));
        assert_eq!(v.partitions[&(2 * H)].events, 8);
        assert_eq!(
            (
                v.partitions[&(2 * H)].first_landed_ms,
                v.partitions[&(2 * H)].last_landed_ms
            ),
            (70, 210)
        );
    }
}
