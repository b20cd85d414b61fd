//! Sources: where raw records come from.
//!
//! A [`Source`] hands out [`RawBatch`]es of at most N records and reports
//! positions that the pipeline commits together with the tiles those records
//! produced; on start a source resumes from the committed positions it is
//! given. Records the source itself cannot read (a corrupt Avro block, an
//! over-long line) come back as [`ReadError`]s for the dead letter, never
//! silently skipped.
//!
//! One folder per source kind: `file/` (NDJSON and Avro files, for local runs
//! and backfills) and `kafka/` (Kafka-API topics in a consumer group).

pub mod file;
pub mod kafka;

use crate::config::SourceConfig;
use crate::error::SourceError;
use crate::record::RawBatch;
use crate::stores::TileStore;
use crate::telemetry::status::SourceStatus;

pub use file::FileSource;
pub use kafka::KafkaSource;

/// A record (or part of a file) the source could not turn into a raw record.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadError {
    pub topic: String,
    pub offset: i64,
    pub reason: String,
    /// What could be read of it (may be truncated).
    pub payload: Vec<u8>,
}

/// One read: records for the plugins, and what could not be read.
#[derive(Debug)]
pub struct SourceBatch {
    pub raw: RawBatch,
    pub read_errors: Vec<ReadError>,
    /// The source lost partitions (a consumer-group rebalance) and went back
    /// to its committed positions: the pipeline must drop everything it has
    /// not committed. Such a batch holds no records.
    pub rolled_back: bool,
}

impl SourceBatch {
    /// No records this time (an unbounded source with nothing new).
    pub fn empty() -> Self {
        SourceBatch {
            raw: crate::record::RawBatchBuilder::new("", 0).finish(),
            read_errors: Vec::new(),
            rolled_back: false,
        }
    }

    /// See [`SourceBatch::rolled_back`].
    pub fn rolled_back() -> Self {
        SourceBatch {
            rolled_back: true,
            ..SourceBatch::empty()
        }
    }
}

pub trait Source: Send {
    /// The next batch of at most `max_records`, or `None` at the end of input.
    fn next_batch(&mut self, max_records: usize) -> Result<Option<SourceBatch>, SourceError>;

    /// Positions covering everything returned so far, to commit with its tiles.
    fn positions(&self) -> Vec<(String, Vec<u8>)>;

    /// Where the source is, for progress lines.
    fn describe_position(&self) -> String;

    /// Whether the end of [`next_batch`](Self::next_batch)'s input is the end
    /// of the data (files: outputs then seal every partition), rather than
    /// a pause of an unbounded stream.
    fn is_bounded(&self) -> bool {
        true
    }

    /// Told after the positions from [`positions`](Self::positions) were
    /// committed with their tiles (Kafka also tells its group, advisory).
    fn committed(&mut self) {}

    /// The partitions it has been given (Kafka: the group's assignment);
    /// each holds the watermark until it delivers. Empty for sources that
    /// hand out one partition at a time.
    fn assigned(&self) -> Vec<(String, i32)> {
        Vec::new()
    }

    /// Every partition of what it reads, held here or elsewhere (Kafka: the
    /// topics' partitions from the brokers' metadata, as of the last
    /// assignment). Several hosts over one pipeline decide completeness
    /// over these. Empty when unknown.
    fn partitions(&self) -> Vec<(String, i32)> {
        Vec::new()
    }

    /// Goes back to the committed positions of everything it reads, after a
    /// checkpoint was fenced (another host moved one of its positions).
    /// `false` when the source cannot, and the pipeline stops instead.
    fn rewind(&mut self) -> bool {
        false
    }

    /// Health, readiness and per-partition positions for the status page.
    fn status(&self) -> SourceStatus {
        SourceStatus {
            ready: true,
            ..SourceStatus::default()
        }
    }
}

/// Builds the configured source, resumed from the positions committed in `store`.
pub fn build(
    cfg: &SourceConfig,
    store: &std::sync::Arc<dyn TileStore>,
    pipeline: &str,
) -> Result<Box<dyn Source>, crate::error::PipelineError> {
    match cfg {
        SourceConfig::File { path, format } => Ok(Box::new(FileSource::open(
            path,
            *format,
            store.as_ref(),
            pipeline,
        )?)),
        SourceConfig::Kafka {
            topics,
            group_id,
            properties,
            poll_timeout,
            idle_exit,
            consumer_nice,
        } => Ok(Box::new(
            KafkaSource::open(
                topics,
                group_id.as_deref().unwrap_or(pipeline),
                properties,
                *poll_timeout,
                *idle_exit,
                store.clone(),
                pipeline,
            )?
            .with_consumer_nice(*consumer_nice),
        )),
    }
}
