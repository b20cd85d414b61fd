//! What a running pipeline reports about itself: the [`StatusBoard`] the
//! pipeline thread rewrites about twice a second and the HTTP API reads
//! (`/v1/status`, `/healthz`, `/readyz`), and the Prometheus metrics set
//! from the same numbers (`/metrics`).
//!
//! Health is what an orchestrator acts on: unhealthy while the source cannot
//! reach its brokers, after the pipeline failed, or when the pipeline thread
//! has not reported for [`STALE_AFTER`] (stuck on a store or a plugin).
//! Ready means running with input assigned (a Kafka source in its group).

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pipeline::RunStats;
use crate::record::now_ms;

/// A running pipeline that has not reported for this long is unhealthy.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Where the run is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    #[default]
    Starting,
    Running,
    /// The input ended or the host was asked to stop; everything is committed.
    Stopped,
    Failed,
}

/// What a source says about itself (see [`crate::sources::Source::status`]).
#[derive(Clone, Debug, Default)]
pub struct SourceStatus {
    /// Why the source cannot read right now; empty when it can.
    pub problems: Vec<String>,
    /// Whether it has input to read (a consumer group assigned partitions).
    pub ready: bool,
    pub partitions: Vec<SourcePartition>,
}

/// One source partition as the source sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcePartition {
    pub topic: String,
    pub partition: i32,
    /// The next offset the pipeline will get.
    pub next_offset: Option<i64>,
    /// The broker's high watermark (offset of the next message produced).
    pub high_watermark: Option<i64>,
}

/// One source partition on the status page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    pub next_offset: Option<i64>,
    pub high_watermark: Option<i64>,
    /// Messages in the partition the pipeline has not processed yet.
    pub lag: Option<i64>,
    /// This partition's event-time watermark (ms since the epoch).
    pub watermark: Option<i64>,
    /// Idle partitions do not hold the pipeline watermark back.
    pub idle: bool,
    /// Records read from this partition in this run.
    pub records: u64,
    /// Over the last reporting interval.
    pub records_per_second: f64,
}

/// The status page.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PipelineStatus {
    pub pipeline: String,
    pub source: String,
    pub state: RunState,
    pub healthy: bool,
    pub ready: bool,
    /// Why it is unhealthy; empty when healthy.
    pub problems: Vec<String>,
    pub records_in: u64,
    pub events_out: u64,
    pub dead_lettered: u64,
    pub checkpoints: u64,
    pub rollbacks: u64,
    /// Checkpoints fenced by another host (see `RunStats::fenced`).
    pub fenced: u64,
    /// Times the store lost acknowledged checkpoints (see
    /// `RunStats::store_regressions`).
    pub store_regressions: u64,
    /// The pipeline's event-time watermark.
    pub watermark: Option<i64>,
    /// The watermark completeness was last decided by: the same one on a
    /// single host; over every host's partitions when several share the
    /// pipeline (`pipeline.instance`). Set at checkpoints.
    pub completeness_watermark: Option<i64>,
    pub partitions: Vec<PartitionStatus>,
    /// When the pipeline thread last wrote this (ms since the epoch).
    pub updated_at: i64,
    #[serde(skip)]
    updated: Option<Instant>,
}

/// One pipeline's status, written by its thread and read by the API.
#[derive(Debug, Default)]
pub struct StatusBoard {
    status: RwLock<PipelineStatus>,
}

impl StatusBoard {
    pub fn new(pipeline: &str, source: &str) -> Self {
        StatusBoard {
            status: RwLock::new(PipelineStatus {
                pipeline: pipeline.to_string(),
                source: source.to_string(),
                problems: vec!["starting".to_string()],
                updated_at: now_ms(),
                updated: Some(Instant::now()),
                ..PipelineStatus::default()
            }),
        }
    }

    /// Replaces the status (the pipeline thread); the pipeline and source
    /// names stay the board's.
    pub fn publish(&self, mut status: PipelineStatus) {
        status.updated_at = now_ms();
        status.updated = Some(Instant::now());
        status.healthy = status.problems.is_empty();
        let mut current = self.status.write().unwrap_or_else(|e| e.into_inner());
        status.pipeline = std::mem::take(&mut current.pipeline);
        status.source = std::mem::take(&mut current.source);
        *current = status;
    }

    /// Marks the run as ended (stopped, or failed with the reason).
    pub fn finish(&self, failure: Option<String>) {
        let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
        s.state = if failure.is_some() {
            RunState::Failed
        } else {
            RunState::Stopped
        };
        s.problems = failure.into_iter().collect();
        s.healthy = s.problems.is_empty();
        s.ready = false;
        s.updated_at = now_ms();
        s.updated = Some(Instant::now());
    }

    /// The current status, with staleness taken into account.
    pub fn read(&self) -> PipelineStatus {
        let mut s = self
            .status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let age = s.updated.map_or(Duration::ZERO, |u| u.elapsed());
        if matches!(s.state, RunState::Running | RunState::Starting) && age >= STALE_AFTER {
            s.problems.push(format!(
                "the pipeline has not reported for {}s (stuck on the store or a plugin?)",
                age.as_secs()
            ));
            s.healthy = false;
            s.ready = false;
        }
        s
    }
}

/// Builds the status the pipeline publishes and sets the Prometheus
/// metrics from it; keeps per-partition record counts and the previous
/// sample for rates.
#[derive(Debug, Default)]
pub struct StatusReporter {
    records: RecordsByPartition,
    /// The previous report's time and counts, for rates.
    last: Option<(Instant, RecordsByPartition)>,
}

/// Records read per (topic, partition).
type RecordsByPartition = BTreeMap<(String, i32), u64>;

impl StatusReporter {
    /// Counts `n` records read from a partition.
    pub fn count(&mut self, topic: &str, partition: i32, n: u64) {
        *self
            .records
            .entry((topic.to_string(), partition))
            .or_insert(0) += n;
    }

    /// A status from the source's view, the watermarks and the run's
    /// counters (names are filled in by [`StatusBoard::publish`]).
    pub fn report(
        &mut self,
        source: SourceStatus,
        watermarks: &crate::window::Watermarks,
        stats: &RunStats,
    ) -> PipelineStatus {
        let now = Instant::now();
        let marks = watermarks.snapshot();
        let mut keys: Vec<(String, i32)> = self.records.keys().cloned().collect();
        keys.extend(
            source
                .partitions
                .iter()
                .map(|p| (p.topic.clone(), p.partition)),
        );
        keys.extend(marks.keys().cloned());
        keys.sort();
        keys.dedup();
        let dt = self
            .last
            .as_ref()
            .map(|(at, _)| now.duration_since(*at).as_secs_f64());
        let partitions = keys
            .into_iter()
            .filter(|(topic, _)| !topic.is_empty())
            .map(|key| {
                let from_source = source
                    .partitions
                    .iter()
                    .find(|p| p.topic == key.0 && p.partition == key.1);
                let records = self.records.get(&key).copied().unwrap_or(0);
                let before = self
                    .last
                    .as_ref()
                    .and_then(|(_, r)| r.get(&key).copied())
                    .unwrap_or(0);
                let rate = dt
                    .filter(|d| *d > 0.0)
                    .map_or(0.0, |d| (records - before) as f64 / d);
                let next_offset = from_source.and_then(|p| p.next_offset);
                let high_watermark = from_source.and_then(|p| p.high_watermark);
                let lag = high_watermark.map(|h| (h - next_offset.unwrap_or(0)).max(0));
                let crate::window::PartitionMark { watermark, idle } = marks
                    .get(&key)
                    .copied()
                    .unwrap_or(crate::window::PartitionMark::HELD);
                PartitionStatus {
                    topic: key.0,
                    partition: key.1,
                    next_offset,
                    high_watermark,
                    lag,
                    watermark,
                    idle,
                    records,
                    records_per_second: rate,
                }
            })
            .collect::<Vec<_>>();
        self.last = Some((now, self.records.clone()));
        let status = PipelineStatus {
            pipeline: String::new(),
            source: String::new(),
            state: RunState::Running,
            healthy: source.problems.is_empty(),
            ready: source.ready,
            problems: source.problems,
            records_in: stats.records_in,
            events_out: stats.events_out,
            dead_lettered: stats.dead_lettered,
            checkpoints: stats.checkpoints,
            rollbacks: stats.rollbacks,
            fenced: stats.fenced,
            store_regressions: stats.store_regressions,
            watermark: watermarks.last(),
            completeness_watermark: None,
            partitions,
            updated_at: now_ms(),
            updated: Some(now),
        };
        set_metrics(&status);
        status
    }
}

/// Sets the Prometheus metrics from a status (no-ops without a recorder).
fn set_metrics(s: &PipelineStatus) {
    let p = s.pipeline.clone();
    metrics::counter!("tessera_records_in_total", "pipeline" => p.clone()).absolute(s.records_in);
    metrics::counter!("tessera_events_out_total", "pipeline" => p.clone()).absolute(s.events_out);
    metrics::counter!("tessera_dead_letters_total", "pipeline" => p.clone())
        .absolute(s.dead_lettered);
    metrics::counter!("tessera_checkpoints_total", "pipeline" => p.clone()).absolute(s.checkpoints);
    metrics::counter!("tessera_rollbacks_total", "pipeline" => p.clone()).absolute(s.rollbacks);
    metrics::counter!("tessera_fenced_checkpoints_total", "pipeline" => p.clone())
        .absolute(s.fenced);
    metrics::counter!("tessera_store_regressions_total", "pipeline" => p.clone())
        .absolute(s.store_regressions);
    metrics::gauge!("tessera_healthy", "pipeline" => p.clone()).set(f64::from(u8::from(s.healthy)));
    if let Some(w) = s.watermark {
        metrics::gauge!("tessera_watermark_milliseconds", "pipeline" => p.clone()).set(w as f64);
    }
    for part in &s.partitions {
        let labels = [
            ("pipeline", p.clone()),
            ("topic", part.topic.clone()),
            ("partition", part.partition.to_string()),
        ];
        metrics::counter!("tessera_source_records_total", &labels).absolute(part.records);
        if let Some(lag) = part.lag {
            metrics::gauge!("tessera_source_lag_records", &labels).set(lag as f64);
        }
        if let Some(w) = part.watermark {
            metrics::gauge!("tessera_source_watermark_milliseconds", &labels).set(w as f64);
        }
        metrics::gauge!("tessera_source_idle", &labels).set(f64::from(u8::from(part.idle)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Watermarks;

    #[test]
    fn lag_rates_and_watermarks_per_partition() {
        let board = StatusBoard::new("p", "kafka");
        let mut r = StatusReporter::default();
        let mut w = Watermarks::new(10, None);
        w.observe("t", 0, 1_000);
        w.observe("t", 1, 500);
        w.current();
        r.count("t", 0, 40);
        let source = SourceStatus {
            problems: vec![],
            ready: true,
            partitions: vec![
                SourcePartition {
                    topic: "t".into(),
                    partition: 0,
                    next_offset: Some(40),
                    high_watermark: Some(100),
                },
                SourcePartition {
                    topic: "t".into(),
                    partition: 2,
                    next_offset: None,
                    high_watermark: Some(7),
                },
            ],
        };
        let s = r.report(source, &w, &RunStats::default());
        board.publish(s);
        let s = board.read();
        assert!(s.healthy && s.ready);
        assert_eq!(s.watermark, Some(490));
        let p: Vec<_> = s
            .partitions
            .iter()
            .map(|p| (p.partition, p.records, p.lag, p.watermark))
            .collect();
        assert_eq!(
            p,
            vec![
                (0, 40, Some(60), Some(990)),
                (1, 0, None, Some(490)),
                (2, 0, Some(7), None)
            ]
        );
    }

    #[test]
    fn problems_make_it_unhealthy_and_a_failure_sticks() {
        let board = StatusBoard::new("p", "kafka");
        assert!(!board.read().healthy, "starting is not healthy yet");
        let mut r = StatusReporter::default();
        let w = Watermarks::new(0, None);
        let source = SourceStatus {
            problems: vec!["all brokers down".into()],
            ..SourceStatus::default()
        };
        board.publish(r.report(source, &w, &RunStats::default()));
        let s = board.read();
        assert!(!s.healthy);
        assert_eq!(s.problems, vec!["all brokers down".to_string()]);
        board.publish(r.report(SourceStatus::default(), &w, &RunStats::default()));
        assert!(board.read().healthy);
        board.finish(Some("store failed".into()));
        let s = board.read();
        assert_eq!((s.state, s.healthy), (RunState::Failed, false));
    }
}
