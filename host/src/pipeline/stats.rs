//! Counters of a run, and the progress snapshot shown while it goes.

use serde::Serialize;
use std::time::Duration;

/// What a run did. Every raw record ends up counted exactly once as either
/// parsed into events (`events_out` counts those events), dead-lettered, or
/// filtered by the parser on purpose.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunStats {
    /// Raw records read (including ones the source could not read).
    pub records_in: u64,
    /// Events that reached the feature plugins.
    pub events_out: u64,
    /// Feature updates folded into tiles.
    pub updates: u64,
    /// Records (or events) written to the dead letter.
    pub dead_lettered: u64,
    pub late_accepted: u64,
    pub late_dropped: u64,
    pub late_side_output: u64,
    /// Tile writes committed to the store.
    pub tiles_written: u64,
    /// Records written to outputs (SMB files), and output partitions
    /// (directories) committed.
    pub output_records: u64,
    pub output_partitions: u64,
    pub checkpoints: u64,
    /// Times the pipeline went back to its last checkpoint (rebalances,
    /// fenced checkpoints).
    pub rollbacks: u64,
    /// Checkpoints refused because another host had moved one of their
    /// positions (then rolled back and re-read).
    pub fenced: u64,
    /// Times the store turned out to have lost checkpoints it acknowledged
    /// (then rolled back and re-read from the positions it holds).
    pub store_regressions: u64,
    /// Commits retried because the store was unreachable or slow.
    pub store_retries: u64,
    #[serde(with = "secs")]
    pub elapsed: Duration,
    /// From the first record read to the last: `elapsed` without waiting
    /// for a consumer group or for records that do not come.
    #[serde(with = "secs")]
    pub reading: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl RunStats {
    /// One-paragraph summary for the end of a run.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "records in: {}  events out: {}  updates: {}  dead-lettered: {}  late (accepted/dropped/side output): {}/{}/{}  tiles written: {}  output records/partitions: {}/{}  checkpoints: {}  time: {:.2}s  ({:.0} records/s)",
            self.records_in,
            self.events_out,
            self.updates,
            self.dead_lettered,
            self.late_accepted,
            self.late_dropped,
            self.late_side_output,
            self.tiles_written,
            self.output_records,
            self.output_partitions,
            self.checkpoints,
            secs,
            self.records_in as f64 / secs
        )
    }
}

/// A snapshot for progress lines.
#[derive(Clone, Debug)]
pub struct Progress {
    pub records_in: u64,
    pub events_out: u64,
    pub dead_lettered: u64,
    pub elapsed: Duration,
    pub position: String,
    pub watermark: Option<i64>,
}

impl Progress {
    pub fn rate(&self) -> f64 {
        self.records_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}
