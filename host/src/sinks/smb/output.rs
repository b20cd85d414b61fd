//! One SMB output over event time: records go to the hourly (or daily)
//! partition of their event time, each partition is written by its own
//! [`PartitionWriter`] and committed when the caller says its time is over.
//! A record for a partition that was already committed (late data) opens a
//! new sibling directory (`hour=03.late-0001`, ...) with its own complete
//! file set and `metadata.json`, so readers merge the original and its
//! siblings. Every commit is appended to `_commits.ndjson` beside the
//! partitions (partition, directory, whether it amends, records, event-time
//! range, landing time): the record late-data consumers list amendments from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use super::store::OutputRoot;
use super::writer::{PartitionWriter, SmbError, SmbSpec};

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

/// One line of `_commits.ndjson`.
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
}

/// Partitions of one output being written.
pub struct SmbOutput {
    root: OutputRoot,
    spec: SmbSpec,
    granularity: Granularity,
    open: BTreeMap<i64, PartitionWriter>,
}

impl SmbOutput {
    /// An output at `root`; the spec is checked now, so a bad layout fails
    /// before any record.
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
        })
    }

    /// Adds a record to the partition of its event time; a bad record is
    /// refused with the reason and changes nothing.
    pub fn add(&mut self, event_time_ms: i64, record: &Value) -> Result<(), SmbError> {
        let size = self.granularity.millis();
        let start = event_time_ms.div_euclid(size) * size;
        if !self.open.contains_key(&start) {
            let spill = self.root.spill_dir().join(start.to_string());
            self.open
                .insert(start, PartitionWriter::new(self.spec.clone(), &spill)?);
        }
        self.open.get_mut(&start).expect("inserted").add(record)
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

    /// Start times of the partitions holding uncommitted records.
    pub fn open_partitions(&self) -> Vec<i64> {
        self.open.keys().copied().collect()
    }

    /// Commits every open partition that ends at or before `until_ms` (e.g.
    /// the watermark minus the allowed lateness).
    pub fn commit_until(&mut self, until_ms: i64) -> Result<Vec<CommittedPartition>, SmbError> {
        let size = self.granularity.millis();
        let due: Vec<i64> = self
            .open
            .keys()
            .copied()
            .filter(|s| s + size <= until_ms)
            .collect();
        due.into_iter().map(|s| self.commit_partition(s)).collect()
    }

    /// Commits every open partition (end of input).
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

    fn commit_partition(&mut self, start: i64) -> Result<CommittedPartition, SmbError> {
        let writer = self.open.remove(&start).expect("open partition");
        let base = self
            .granularity
            .dir_of(start)
            .to_string_lossy()
            .into_owned();
        // The partition itself, or the first free late-data sibling.
        let mut n = 0;
        while self.root.is_committed(&Self::sibling(&base, n))? {
            n += 1;
        }
        let dir = Self::sibling(&base, n);
        let summary = writer.commit_to(&self.root, &dir)?;
        let committed = CommittedPartition {
            partition: base,
            dir,
            amends: n > 0,
            records: summary.records,
            event_time_start_ms: start,
            event_time_end_ms: start + self.granularity.millis(),
            landed_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        };
        self.root
            .append_commit_line(&serde_json::to_string(&committed).expect("serializes"))?;
        Ok(committed)
    }

    /// Every committed directory of one partition (the original first, then
    /// its late siblings) as local directories a reader merges (downloaded
    /// when the output is in an object store).
    pub fn committed_dirs(&self, partition_start_ms: i64) -> Result<Vec<PathBuf>, SmbError> {
        let base = self
            .granularity
            .dir_of(partition_start_ms)
            .to_string_lossy()
            .into_owned();
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
