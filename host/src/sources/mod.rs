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
//! and backfills). Kafka-API topics come next.

pub mod file;

use crate::config::SourceConfig;
use crate::error::SourceError;
use crate::record::RawBatch;
use crate::stores::TileStore;

pub use file::FileSource;

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
}

pub trait Source: Send {
    /// The next batch of at most `max_records`, or `None` at the end of input.
    fn next_batch(&mut self, max_records: usize) -> Result<Option<SourceBatch>, SourceError>;

    /// Positions covering everything returned so far, to commit with its tiles.
    fn positions(&self) -> Vec<(String, Vec<u8>)>;

    /// Where the source is, for progress lines.
    fn describe_position(&self) -> String;
}

/// Builds the configured source, resumed from the positions committed in `store`.
pub fn build(
    cfg: &SourceConfig,
    store: &dyn TileStore,
    pipeline: &str,
) -> Result<Box<dyn Source>, crate::error::PipelineError> {
    match cfg {
        SourceConfig::File { path, format } => {
            Ok(Box::new(FileSource::open(path, *format, store, pipeline)?))
        }
    }
}
