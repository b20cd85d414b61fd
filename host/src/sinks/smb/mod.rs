//! Sort-merge-bucket (SMB) outputs in the layout Beam's SMB extension and
//! Scio's `scio-smb` read: per partition directory, `numBuckets` Avro files
//! whose records are sorted by the encoded key, and a `metadata.json`.
//!
//! - `bucketer.rs`: key encoding, Guava-compatible murmur3 and bucket ids.
//! - `metadata.rs`: `metadata.json` and the file names.
//! - `avro.rs`: an Avro container writer for already-encoded datums.
//! - `writer.rs`: one partition: bucket, sort (external), staged commit.
//! - `output.rs`: partitions by event time, late-data siblings, `_commits.ndjson`.
//! - `journal.rs`: segment logs and the state a checkpoint commits, so a
//!   pipeline's output survives crashes without losing or repeating records.
//! - `events.rs`: pipeline events to Avro records of the configured schema.
//! - `sink.rs`: the output as a pipeline stage (config, checkpoints, recovery).
//! - `store.rs`: local directories and S3-compatible object stores.
//! - `reader.rs`: reading outputs back and the sort-merge join.

pub mod avro;
pub mod bucketer;
pub mod events;
pub mod journal;
pub mod metadata;
pub mod output;
pub mod reader;
mod sink;
pub mod store;
pub mod writer;

pub use bucketer::{bucket_of, encode_key, HashType};
pub use events::EventEncoder;
pub use journal::{OutputState, SegmentState};
pub use metadata::{BucketMetadata, LayoutError};
pub use output::{CommittedPartition, Granularity, SmbOutput, COMMIT_MARKER};
pub use reader::{smb_join, JoinStats, SmbSource};
pub use sink::{CompletenessMarker, OutputStats, SmbSink, COMPLETENESS_MARKER};
pub use store::{local_partition_dirs, OutputRoot, S3Location};
pub use writer::{PartitionSummary, PartitionWriter, SmbError, SmbSpec};
