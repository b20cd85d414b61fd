//! An SMB output as a pipeline stage: events (after late-data routing) of
//! the configured types become Avro records of the output's schema and go
//! to the partition of their event time; partitions are committed by the
//! watermark, in step with the pipeline's checkpoints, so that no event is
//! lost or written twice across crashes and restarts.
//!
//! The protocol (a two-phase commit, as Flink's file sinks do it):
//! 1. Every record is appended to its segment's log as it is added.
//! 2. At a checkpoint, segments of partitions the watermark has passed (plus
//!    the allowed lateness; all of them at the end of a bounded input) are
//!    *sealed*, every log is synced, and the output's state (segments, log
//!    lengths, sealed or not) is committed in the same store transaction as
//!    the tiles and source positions.
//! 3. After that commit, sealed segments are published (bucket files, the
//!    commit marker naming the segment, `metadata.json` last, a line in
//!    `_commits.ndjson`). A failed publish is retried at the next checkpoint.
//!
//! On restart the source resumes at the committed positions and each
//! segment is replayed from its log up to its committed length, so segments
//! hold exactly the records before those positions. A sealed segment whose
//! marker is already in a directory was published before the crash and is
//! not published again; one without is published now.
//!
//! Completeness: once every partition ending at or before a time is
//! published (the watermark passed them and nothing sealed waits), the
//! output says so in `_completeness.json` at its root, replaced whole and
//! never moved back, so a downstream job waits on it instead of a delay.

use super::events::EventEncoder;
use super::journal::OutputState;
use super::output::{CommittedPartition, SmbOutput};
use super::store::OutputRoot;
use super::writer::{io_err, SmbError};
use crate::config::SmbOutputConfig;
use crate::record::{EventBatch, RawBatch};

/// Counters of one output over a run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct OutputStats {
    pub records: u64,
    pub rejected: u64,
    pub partitions_committed: u64,
    pub publish_failures: u64,
}

/// One configured SMB output of a pipeline.
pub struct SmbSink {
    name: String,
    event_types: Vec<String>,
    allowed_lateness_ms: i64,
    encoder: EventEncoder,
    output: SmbOutput,
    datum: Vec<u8>,
    stats: OutputStats,
    granularity_ms: i64,
    /// Every partition ending at or before this was sealed by the watermark.
    sealed_through: Option<i64>,
    /// What `_completeness.json` says: every partition ending at or before
    /// this is published.
    published_through: Option<i64>,
}

/// The completeness marker's file name at the root of an output.
pub const COMPLETENESS_MARKER: &str = "_completeness.json";

/// The contents of `_completeness.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompletenessMarker {
    pub output: String,
    pub granularity: super::Granularity,
    /// Every partition ending at or before this is published; later data
    /// for them can only arrive as late-data siblings.
    pub complete_through_ms: i64,
    /// Wall-clock time the marker was written.
    pub updated_ms: i64,
}

impl SmbSink {
    /// The key under which the output's state is committed with checkpoints.
    pub fn state_key(name: &str) -> String {
        format!("output:{name}")
    }

    /// Opens the output and resumes it from its committed `state` (bytes
    /// as stored by a checkpoint; `None` for a new output).
    pub fn open(cfg: &SmbOutputConfig, state: Option<&[u8]>) -> Result<Self, SmbError> {
        let schema = match (&cfg.schema, &cfg.schema_file) {
            (Some(s), _) => s.clone(),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(io_err(path))?,
            (None, None) => return Err(SmbError::Schema("no schema configured".into())),
        };
        let encoder = EventEncoder::new(&schema, &cfg.key_field)
            .map_err(|problems| SmbError::Schema(problems.join("; ")))?;
        let work = cfg.work_dir();
        let root = match (&cfg.path, &cfg.s3) {
            (Some(path), _) => OutputRoot::local(path),
            (None, Some(s3)) => OutputRoot::s3(s3, &work.join("scratch"))?,
            (None, None) => return Err(SmbError::Schema("no location configured".into())),
        };
        let state: Option<OutputState> = state
            .map(serde_json::from_slice)
            .transpose()
            .map_err(|e| SmbError::Journal(format!("committed state of `{}`: {e}", cfg.name)))?;
        let mut output = SmbOutput::recover(
            root,
            cfg.spec(schema),
            cfg.granularity,
            &work.join("journal"),
            state.as_ref(),
        )?;
        output.set_amend_every(cfg.amend_every.as_millis() as i64);
        let published_through = root_marker(&output)?.map(|m| m.complete_through_ms);
        let mut sink = SmbSink {
            name: cfg.name.clone(),
            event_types: cfg.event_types.clone(),
            allowed_lateness_ms: cfg.allowed_lateness.as_millis() as i64,
            encoder,
            output,
            datum: Vec::new(),
            stats: OutputStats::default(),
            granularity_ms: cfg.granularity.millis(),
            sealed_through: None,
            published_through,
        };
        // Segments sealed by the last checkpoint but not yet published; when
        // that fails (storage down), checkpoints retry it.
        if let Err(e) = sink.publish() {
            tracing::warn!(output = %sink.name, error = %e, "publishing sealed SMB partitions failed; retrying at the next checkpoint");
        }
        Ok(sink)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &OutputStats {
        &self.stats
    }

    /// Writes the events of `events` this output takes; records it cannot
    /// write are returned as (event row, reason) for the dead letter.
    pub fn write(&mut self, raw: &RawBatch, events: &EventBatch) -> Vec<(usize, String)> {
        let wanted: Option<Vec<bool>> = (!self.event_types.is_empty()).then(|| {
            events
                .type_names
                .iter()
                .map(|t| self.event_types.iter().any(|w| w == t))
                .collect()
        });
        let columns = self.encoder.columns(events);
        let mut rejected = Vec::new();
        for row in 0..events.len as usize {
            if let Some(w) = &wanted {
                if !w
                    .get(events.event_type[row] as usize)
                    .copied()
                    .unwrap_or(false)
                {
                    continue;
                }
            }
            let result = self
                .encoder
                .encode(events, raw, &columns, row, &mut self.datum)
                .and_then(|key| {
                    // The encoder checked that the key is UTF-8.
                    let key = std::str::from_utf8(key).map_err(|e| e.to_string())?;
                    self.output
                        .add_encoded(events.event_time[row], key, &self.datum)
                        .map_err(|e| e.to_string())
                });
            match result {
                Ok(()) => self.stats.records += 1,
                Err(reason) => {
                    self.stats.rejected += 1;
                    rejected.push((row, format!("output `{}`: {reason}", self.name)));
                }
            }
        }
        rejected
    }

    /// Phase 1 of a checkpoint: seals the partitions the watermark has
    /// passed (every partition at the end of a bounded input), syncs the
    /// logs, and returns the state to commit with the checkpoint.
    pub fn prepare(
        &mut self,
        watermark: Option<i64>,
        end_of_input: bool,
    ) -> Result<(String, Vec<u8>), SmbError> {
        let until = if end_of_input {
            Some(i64::MAX)
        } else {
            watermark.map(|w| w.saturating_sub(self.allowed_lateness_ms))
        };
        if let Some(until) = until {
            self.output.seal_until(until);
        }
        if let Some(w) = watermark {
            let g = self.granularity_ms;
            let through = w.saturating_sub(self.allowed_lateness_ms).div_euclid(g) * g;
            self.sealed_through = self.sealed_through.max(Some(through));
        }
        let state = self.output.sync()?;
        Ok((
            Self::state_key(&self.name),
            serde_json::to_vec(&state).expect("serializes"),
        ))
    }

    /// Phase 2, after the checkpoint committed: publishes sealed segments,
    /// then moves `_completeness.json` up to what is published.
    pub fn publish(&mut self) -> Result<Vec<CommittedPartition>, SmbError> {
        let done = if self.output.has_sealed() {
            match self.output.publish_sealed() {
                Ok(done) => done,
                Err(e) => {
                    self.stats.publish_failures += 1;
                    return Err(e);
                }
            }
        } else {
            Vec::new()
        };
        self.stats.partitions_committed += done.len() as u64;
        for c in &done {
            tracing::info!(output = %self.name, dir = %c.dir, records = c.records, amends = c.amends, "SMB partition committed");
        }
        if let Some(through) = self
            .sealed_through
            .filter(|t| Some(*t) > self.published_through)
        {
            let marker = CompletenessMarker {
                output: self.name.clone(),
                granularity: self.output.granularity(),
                complete_through_ms: through,
                updated_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            };
            let bytes = serde_json::to_vec_pretty(&marker).expect("serializes");
            if let Err(e) = self
                .output
                .root()
                .write_root_file(COMPLETENESS_MARKER, &bytes)
            {
                self.stats.publish_failures += 1;
                return Err(e);
            }
            self.published_through = Some(through);
        }
        Ok(done)
    }

    /// Every partition ending at or before this is published.
    pub fn published_through(&self) -> Option<i64> {
        self.published_through
    }

    /// The directories published since the last call, in order.
    pub fn take_published(&mut self) -> Vec<CommittedPartition> {
        self.output.take_published()
    }

    /// Every commit so far, from `_commits.ndjson`.
    pub fn commit_log(&self) -> Result<Vec<CommittedPartition>, SmbError> {
        self.output.commit_log()
    }
}

/// The completeness marker at the root of `output`, if it has one.
fn root_marker(output: &SmbOutput) -> Result<Option<CompletenessMarker>, SmbError> {
    output
        .root()
        .read_root_file(COMPLETENESS_MARKER)?
        .map(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| SmbError::Journal(format!("{COMPLETENESS_MARKER}: {e}")))
        })
        .transpose()
}
