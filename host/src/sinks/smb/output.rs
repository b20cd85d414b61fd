//! One SMB output over event time: records go to the hourly (or daily)
//! partition of their event time, into that partition's open *segment* (a
//! [`PartitionWriter`]); a segment is sealed when the caller says its
//! partition's time is over, then published. A segment published for a
//! partition that was already committed (late data) goes into a new sibling
//! directory (`hour=03.late-0001`, ...) with its own complete file set and
//! `metadata.json`, so readers merge the original and its siblings. Every
//! published directory carries a commit marker naming its segment, and every
//! commit is appended to `_commits.ndjson` beside the partitions (partition,
//! directory, whether it amends, records, event-time range, landing time,
//! segment): the record late-data consumers list amendments from. The memory
//! budget holds for the output as a whole: over it, the segment buffering
//! the most spills a sorted run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use super::journal::{new_segment_id, OutputState, SegmentLog, SegmentState};
use super::store::OutputRoot;
use super::writer::{io_err, PartitionWriter, SmbError, SmbSpec};

/// How event time is cut into partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    #[default]
    Hourly,
    Daily,
}

impl Granularity {
    pub fn millis(self) -> i64 {
        match self {
            Granularity::Hourly => 3_600_000,
            Granularity::Daily => 86_400_000,
        }
    }

    /// The partition's directory, relative to the output: `date=YYYY-MM-DD/hour=HH` or `date=YYYY-MM-DD`.
    pub fn dir_of(self, start_ms: i64) -> PathBuf {
        let days = start_ms.div_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        let date = PathBuf::from(format!("date={y:04}-{m:02}-{d:02}"));
        match self {
            Granularity::Hourly => date.join(format!(
                "hour={:02}",
                start_ms.rem_euclid(86_400_000) / 3_600_000
            )),
            Granularity::Daily => date,
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One line of `_commits.ndjson`, and the commit marker
/// (`_tessera_commit.json`) inside the directory it describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedPartition {
    /// The partition directory relative to the output (`date=.../hour=..`).
    pub partition: String,
    /// The directory written, relative to the output: the partition itself,
    /// or a late-data sibling of it.
    pub dir: String,
    /// Whether this commit amends a partition committed before.
    pub amends: bool,
    pub records: u64,
    pub event_time_start_ms: i64,
    pub event_time_end_ms: i64,
    /// Wall-clock time of the commit (ms since the epoch).
    pub landed_at_ms: i64,
    /// The segment published (see `journal.rs`); unique across runs.
    #[serde(default)]
    pub segment: String,
}

/// The commit marker's file name inside a published directory. Beam's
/// readers open only the bucket files `metadata.json` names.
pub const COMMIT_MARKER: &str = "_tessera_commit.json";

/// The records one partition received between two seals.
struct Segment {
    id: String,
    start: i64,
    /// For a late segment (its partition was past the seal horizon when it
    /// opened): the horizon then. It is sealed once the horizon has moved
    /// `amend_every` further, so late events are collected into a few
    /// siblings instead of one per checkpoint.
    late_since: Option<i64>,
    writer: PartitionWriter,
}

/// Partitions of one output being written.
///
/// Records go to the open segment of their partition. Committing is in two
/// steps, so a pipeline can tie it to its checkpoints: [`seal_until`]
/// closes the segments of partitions whose time is over (no I/O), and
/// [`publish_sealed`] writes them out, each into the partition's directory
/// or, when that is committed already, its next late-data sibling. With a
/// journal ([`SmbOutput::recover`]) every record is also logged, and
/// [`sync`] makes the logs durable and returns the state a checkpoint stores.
///
/// [`seal_until`]: SmbOutput::seal_until
/// [`publish_sealed`]: SmbOutput::publish_sealed
/// [`sync`]: SmbOutput::sync
pub struct SmbOutput {
    root: OutputRoot,
    spec: SmbSpec,
    granularity: Granularity,
    open: BTreeMap<i64, Segment>,
    /// Sealed segments waiting to be published, in seal order.
    sealed: Vec<Segment>,
    /// Where segment logs live; `None`: not durable (library use, tests).
    journal: Option<PathBuf>,
    /// Bytes buffered in memory over every segment.
    buffered: usize,
    /// The largest `until` given to [`SmbOutput::seal_until`].
    horizon: i64,
    /// How far the horizon moves before a late segment is sealed.
    amend_every_ms: i64,
    /// Publications since the last [`SmbOutput::take_published`], including
    /// those before a failed [`SmbOutput::publish_sealed`].
    published: Vec<CommittedPartition>,
}

impl SmbOutput {
    /// An output at `root` without a journal; the spec is checked now, so a
    /// bad layout fails before any record.
    pub fn new(
        root: OutputRoot,
        spec: SmbSpec,
        granularity: Granularity,
    ) -> Result<Self, SmbError> {
        spec.check()?;
        Ok(SmbOutput {
            root,
            spec,
            granularity,
            open: BTreeMap::new(),
            sealed: Vec::new(),
            journal: None,
            buffered: 0,
            horizon: i64::MIN,
            amend_every_ms: 0,
            published: Vec::new(),
        })
    }

    /// Late segments (records for a partition already sealed) are sealed
    /// once the seal horizon has moved this much further; 0 (the default)
    /// seals them at the next [`seal_until`](Self::seal_until).
    pub fn set_amend_every(&mut self, ms: i64) {
        self.amend_every_ms = ms.max(0);
    }

    /// An output whose records are logged under `journal`, resumed from the
    /// state a checkpoint committed (`None` for a new output): each logged
    /// segment is cut back to its committed length and replayed, a sealed
    /// segment whose directory already carries its commit marker is
    /// finished (its `_commits.ndjson` line is added if the crash came
    /// before it), and logs the state does not name are removed.
    pub fn recover(
        root: OutputRoot,
        spec: SmbSpec,
        granularity: Granularity,
        journal: &Path,
        state: Option<&OutputState>,
    ) -> Result<Self, SmbError> {
        let mut out = SmbOutput::new(root, spec, granularity)?;
        std::fs::create_dir_all(journal).map_err(io_err(journal))?;
        let empty = OutputState::default();
        let state = state.unwrap_or(&empty);
        if state.version != OutputState::VERSION && !state.segments.is_empty() {
            return Err(SmbError::Journal(format!(
                "state version {} is not {}",
                state.version,
                OutputState::VERSION
            )));
        }
        let keep: Vec<&str> = state.segments.iter().map(|s| s.id.as_str()).collect();
        super::journal::remove_orphans(journal, &keep)?;
        out.journal = Some(journal.to_path_buf());
        out.horizon = state.horizon_ms.unwrap_or(i64::MIN);
        for seg in &state.segments {
            if seg.sealed {
                if let Some(done) = out.published_as(seg)? {
                    out.ensure_commit_line(&done)?;
                    let _ = std::fs::remove_file(SegmentLog::path_of(journal, &seg.id));
                    continue;
                }
            }
            let mut writer = out.new_writer(&seg.id)?;
            let log = SegmentLog::recover(journal, &seg.id, seg.log_len, |k, d| {
                writer.add_encoded(k, d)
            })?;
            writer.set_log(log);
            out.buffered += writer.buffered_bytes();
            let segment = Segment {
                id: seg.id.clone(),
                start: seg.partition_start_ms,
                late_since: seg.late_since_ms,
                writer,
            };
            if seg.sealed {
                out.sealed.push(segment);
            } else if out.open.insert(seg.partition_start_ms, segment).is_some() {
                return Err(SmbError::Journal(format!(
                    "two open segments for partition {}",
                    seg.partition_start_ms
                )));
            }
        }
        out.spill_over_budget()?;
        Ok(out)
    }

    fn new_writer(&self, id: &str) -> Result<PartitionWriter, SmbError> {
        PartitionWriter::new(self.spec.clone(), &self.root.spill_dir().join(id))
    }

    /// The partition start of event time `t`.
    pub fn partition_of(&self, t: i64) -> i64 {
        let size = self.granularity.millis();
        t.div_euclid(size) * size
    }

    /// The open segment of the partition starting at `start`, opened if need be.
    fn segment(&mut self, start: i64) -> Result<&mut Segment, SmbError> {
        if !self.open.contains_key(&start) {
            let id = new_segment_id();
            let mut writer = self.new_writer(&id)?;
            if let Some(dir) = &self.journal {
                writer.set_log(SegmentLog::create(dir, &id)?);
            }
            let size = self.granularity.millis();
            let late_since = (start.saturating_add(size) <= self.horizon).then_some(self.horizon);
            self.open.insert(
                start,
                Segment {
                    id,
                    start,
                    late_since,
                    writer,
                },
            );
        }
        Ok(self.open.get_mut(&start).expect("inserted"))
    }

    /// Adds a record to the partition of its event time; a bad record is
    /// refused with the reason and changes nothing.
    pub fn add(&mut self, event_time_ms: i64, record: &Value) -> Result<(), SmbError> {
        let start = self.partition_of(event_time_ms);
        let seg = self.segment(start)?;
        let before = seg.writer.buffered_bytes();
        seg.writer.add(record)?;
        self.account(before, start)
    }

    /// Adds a record already encoded in Avro binary (see
    /// [`PartitionWriter::add_encoded`]).
    pub fn add_encoded(
        &mut self,
        event_time_ms: i64,
        key: &str,
        datum: &[u8],
    ) -> Result<(), SmbError> {
        let start = self.partition_of(event_time_ms);
        let seg = self.segment(start)?;
        let before = seg.writer.buffered_bytes();
        seg.writer.add_encoded(key, datum)?;
        self.account(before, start)
    }

    /// Counts what the segment of `start` buffered since `before`, and
    /// spills when the output as a whole is over its memory budget.
    fn account(&mut self, before: usize, start: i64) -> Result<(), SmbError> {
        let after = self.open[&start].writer.buffered_bytes();
        self.buffered = (self.buffered + after).saturating_sub(before);
        self.spill_over_budget()
    }

    /// While over the budget, spills the segment holding the most.
    fn spill_over_budget(&mut self) -> Result<(), SmbError> {
        while self.buffered > self.spec.memory_budget {
            let largest = self
                .open
                .values_mut()
                .chain(self.sealed.iter_mut())
                .max_by_key(|s| s.writer.buffered_bytes())
                .filter(|s| s.writer.buffered_bytes() > 0);
            let Some(seg) = largest else {
                self.buffered = 0;
                break;
            };
            let freed = seg.writer.buffered_bytes();
            seg.writer.spill()?;
            self.buffered -= freed;
        }
        Ok(())
    }

    /// Every commit so far, from `_commits.ndjson`.
    pub fn commit_log(&self) -> Result<Vec<CommittedPartition>, SmbError> {
        self.root
            .read_commit_log()?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| SmbError::Schema(format!("_commits.ndjson: {e}")))
            })
            .collect()
    }

    /// Start times of the partitions holding records not yet published.
    pub fn open_partitions(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .open
            .keys()
            .copied()
            .chain(self.sealed.iter().map(|s| s.start))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Seals the open segments of every partition that ends at or before
    /// `until_ms` (e.g. the watermark minus the allowed lateness): they take
    /// no more records (later ones open a new segment, published as a
    /// late-data sibling). A late segment is sealed once `until_ms` is
    /// `amend_every` past where it was when the segment opened (and always
    /// for `i64::MAX`, the end of input). Returns how many were sealed.
    pub fn seal_until(&mut self, until_ms: i64) -> usize {
        let size = self.granularity.millis();
        self.horizon = self.horizon.max(until_ms);
        let amend_every = self.amend_every_ms;
        let due: Vec<i64> = self
            .open
            .iter()
            .filter(|(start, seg)| match seg.late_since {
                _ if until_ms == i64::MAX => true,
                Some(since) => until_ms >= since.saturating_add(amend_every),
                None => start.saturating_add(size) <= until_ms,
            })
            .map(|(start, _)| *start)
            .collect();
        for s in &due {
            let seg = self.open.remove(s).expect("open");
            self.sealed.push(seg);
        }
        due.len()
    }

    /// Whether sealed segments wait to be published.
    pub fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// Flushes and syncs every segment log and returns the state to commit
    /// with the checkpoint (empty without a journal).
    pub fn sync(&mut self) -> Result<OutputState, SmbError> {
        let mut segments = Vec::new();
        for (seg, sealed) in self
            .sealed
            .iter_mut()
            .map(|s| (s, true))
            .chain(self.open.values_mut().map(|s| (s, false)))
        {
            let records = seg.writer.records();
            if let Some(log) = seg.writer.log_mut() {
                segments.push(SegmentState {
                    id: seg.id.clone(),
                    partition_start_ms: seg.start,
                    log_len: log.sync()?,
                    records,
                    sealed,
                    late_since_ms: seg.late_since,
                });
            }
        }
        Ok(OutputState {
            version: OutputState::VERSION,
            segments,
            horizon_ms: (self.horizon > i64::MIN).then_some(self.horizon),
        })
    }

    /// Publishes the sealed segments in the order they were sealed; stops
    /// at the first failure (the rest stay sealed, for a retry).
    pub fn publish_sealed(&mut self) -> Result<Vec<CommittedPartition>, SmbError> {
        let mut done = Vec::new();
        while !self.sealed.is_empty() {
            let seg = self.sealed.remove(0);
            let buffered = seg.writer.buffered_bytes();
            match self.publish(seg) {
                Ok(c) => {
                    self.buffered = self.buffered.saturating_sub(buffered);
                    self.published.push(c.clone());
                    done.push(c);
                }
                Err((e, seg)) => {
                    if let Some(seg) = seg {
                        self.sealed.insert(0, *seg);
                    }
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    /// Where the output lives.
    pub fn root(&self) -> &OutputRoot {
        &self.root
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The directories published since the last call, in order (also those
    /// a failed [`SmbOutput::publish_sealed`] got out before failing).
    pub fn take_published(&mut self) -> Vec<CommittedPartition> {
        std::mem::take(&mut self.published)
    }

    /// Seals and publishes every partition that ends at or before `until_ms`.
    pub fn commit_until(&mut self, until_ms: i64) -> Result<Vec<CommittedPartition>, SmbError> {
        self.seal_until(until_ms);
        self.publish_sealed()
    }

    /// Seals and publishes every partition (end of input).
    pub fn commit_all(&mut self) -> Result<Vec<CommittedPartition>, SmbError> {
        self.commit_until(i64::MAX)
    }

    /// `base` or its `n`-th late-data sibling.
    fn sibling(base: &str, n: u32) -> String {
        if n == 0 {
            base.to_string()
        } else {
            format!("{base}.late-{n:04}")
        }
    }

    fn base_dir(&self, start: i64) -> String {
        self.granularity
            .dir_of(start)
            .to_string_lossy()
            .into_owned()
    }

    /// The commit of segment `seg`, when a directory of its partition
    /// carries its marker.
    fn published_as(&self, seg: &SegmentState) -> Result<Option<CommittedPartition>, SmbError> {
        let base = self.base_dir(seg.partition_start_ms);
        for n in 0..self.committed_count(&base)? {
            let dir = Self::sibling(&base, n);
            if let Some(bytes) = self.root.read_file(&dir, COMMIT_MARKER)? {
                let c: CommittedPartition = serde_json::from_slice(&bytes)
                    .map_err(|e| SmbError::Journal(format!("{dir}/{COMMIT_MARKER}: {e}")))?;
                if c.segment == seg.id {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }

    /// How many directories of partition `base` are committed: the
    /// partition itself and its siblings, up to the first free one.
    fn committed_count(&self, base: &str) -> Result<u32, SmbError> {
        let mut n = 0;
        while self.root.is_committed(&Self::sibling(base, n))? {
            n += 1;
        }
        Ok(n)
    }

    /// Appends `c` to `_commits.ndjson` unless its segment is there already.
    fn ensure_commit_line(&self, c: &CommittedPartition) -> Result<(), SmbError> {
        if self.commit_log()?.iter().any(|l| l.segment == c.segment) {
            return Ok(());
        }
        self.root
            .append_commit_line(&serde_json::to_string(c).expect("serializes"))
    }

    /// Publishes one segment into the first free directory of its partition.
    #[allow(clippy::type_complexity)]
    fn publish(
        &mut self,
        mut seg: Segment,
    ) -> Result<CommittedPartition, (SmbError, Option<Box<Segment>>)> {
        let base = self.base_dir(seg.start);
        // The partition itself, or the first free late-data sibling.
        let n = match self.committed_count(&base) {
            Ok(n) => n,
            Err(e) => return Err((e, Some(Box::new(seg)))),
        };
        let dir = Self::sibling(&base, n);
        let committed = CommittedPartition {
            partition: base,
            dir: dir.clone(),
            amends: n > 0,
            records: seg.writer.records(),
            event_time_start_ms: seg.start,
            event_time_end_ms: seg.start + self.granularity.millis(),
            landed_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            segment: seg.id.clone(),
        };
        let marker = serde_json::to_string(&committed).expect("serializes");
        let log = seg.writer.take_log();
        // The writer is consumed by the commit: on failure the segment is
        // rebuilt from its log when there is one, else its records are lost
        // to this output (library use without a journal).
        let id = seg.id.clone();
        let start = seg.start;
        let late_since = seg.late_since;
        let result = seg
            .writer
            .commit_with(&self.root, &dir, &[(COMMIT_MARKER, marker.as_bytes())])
            .and_then(|_| {
                super::writer::failpoint("smb-after-publish");
                self.root.append_commit_line(&marker)
            })
            .inspect(|()| super::writer::failpoint("smb-after-commit-line"));
        match result {
            Ok(()) => {
                if let Some(log) = log {
                    let _ = log.remove();
                }
                Ok(committed)
            }
            Err(e) => {
                let retry = match (log, &self.journal) {
                    (Some(log), Some(journal)) => {
                        let len = log.len();
                        drop(log);
                        self.rebuild(journal.clone(), &id, start, late_since, len)
                            .ok()
                    }
                    _ => None,
                };
                Err((e, retry.map(Box::new)))
            }
        }
    }

    /// A sealed segment read back from its log (after a failed publish).
    fn rebuild(
        &self,
        journal: PathBuf,
        id: &str,
        start: i64,
        late_since: Option<i64>,
        len: u64,
    ) -> Result<Segment, SmbError> {
        let mut writer = self.new_writer(id)?;
        let log = SegmentLog::recover(&journal, id, len, |k, d| writer.add_encoded(k, d))?;
        writer.set_log(log);
        Ok(Segment {
            id: id.to_string(),
            start,
            late_since,
            writer,
        })
    }

    /// Every committed directory of one partition (the original first, then
    /// its late siblings) as local directories a reader merges (downloaded
    /// when the output is in an object store).
    pub fn committed_dirs(&self, partition_start_ms: i64) -> Result<Vec<PathBuf>, SmbError> {
        let base = self.base_dir(partition_start_ms);
        let mut dirs = Vec::new();
        for n in 0.. {
            let rel = Self::sibling(&base, n);
            if !self.root.is_committed(&rel)? {
                if n == 0 {
                    continue;
                }
                break;
            }
            dirs.push(self.root.local_copy(&rel)?);
        }
        Ok(dirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_directories_follow_the_calendar() {
        let h = Granularity::Hourly;
        assert_eq!(h.dir_of(0), PathBuf::from("date=1970-01-01/hour=00"));
        assert_eq!(
            h.dir_of(1_795_402_800_000),
            PathBuf::from("date=2026-11-23/hour=03")
        );
        assert_eq!(
            h.dir_of(951_782_400_000),
            PathBuf::from("date=2000-02-29/hour=00")
        );
        assert_eq!(
            h.dir_of(-3_600_000),
            PathBuf::from("date=1969-12-31/hour=23")
        );
        assert_eq!(
            Granularity::Daily.dir_of(1_795_402_800_000),
            PathBuf::from("date=2026-11-23")
        );
        // Every day of 1900..2100 against a day-by-day count.
        let (mut y, mut m, mut d) = (1900i64, 1u32, 1u32);
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for days in -25_567..47_482 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let len = [
                31,
                if leap(y) { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][m as usize - 1];
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
