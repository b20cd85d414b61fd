//! Sort-merge-bucket (SMB) outputs in the layout Beam's SMB extension and
//! Scio's `scio-smb` read: per partition directory, `numBuckets` Avro files
//! whose records are sorted by the encoded key, and a `metadata.json`.
//!
//! - `bucketer.rs`: key encoding, Guava-compatible murmur3 and bucket ids.
//! - `metadata.rs`: `metadata.json` and the file names.
//! - `avro.rs`: an Avro container writer for already-encoded datums.
//! - `writer.rs`: one partition: bucket, sort (external), staged commit.
//! - `output.rs`: partitions by event time, late-data siblings, `_commits.ndjson`.
//! - `store.rs`: local directories and S3-compatible object stores.
//! - `reader.rs`: reading outputs back and the sort-merge join.
//!
//! Still to come (issue #3): outputs in the pipeline config and run loop.

pub mod avro;
pub mod bucketer;
pub mod metadata;
pub mod output;
pub mod reader;
pub mod store;
pub mod writer;

pub use bucketer::{bucket_of, encode_key, HashType};
pub use metadata::{BucketMetadata, LayoutError};
pub use output::{CommittedPartition, Granularity, SmbOutput};
pub use reader::{smb_join, JoinStats, SmbSource};
pub use store::{local_partition_dirs, OutputRoot, S3Location};
pub use writer::{PartitionSummary, PartitionWriter, SmbError, SmbSpec};
