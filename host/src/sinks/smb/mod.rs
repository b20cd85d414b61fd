//! Sort-merge-bucket (SMB) outputs in the layout Beam's SMB extension and
//! Scio's `scio-smb` read: per partition directory, `numBuckets` Avro files
//! whose records are sorted by the encoded key, and a `metadata.json`.
//!
//! - `bucketer.rs`: key encoding, Guava-compatible murmur3 and bucket ids.
//! - `metadata.rs`: `metadata.json` and the file names.
//!
//! Issue #3 builds the writer (sorter, Avro files, committer), storage
//! (local and S3), the reader and the sort-merge join on these.

pub mod avro;
pub mod bucketer;
pub mod metadata;
pub mod reader;
pub mod writer;

pub use bucketer::{bucket_of, encode_key, HashType};
pub use metadata::{BucketMetadata, LayoutError};
pub use reader::{smb_join, JoinStats, SmbSource};
pub use writer::{PartitionSummary, PartitionWriter, SmbError, SmbSpec};
