//! `metadata.json` and file names of one SMB partition directory, as Beam's
//! `AvroBucketMetadata` and `SMBFilenamePolicy` write them (Scio's
//! `scio-smb` uses both unchanged).

use serde::{Deserialize, Serialize};

use super::bucketer::HashType;

/// The class name Beam's SMB readers dispatch on.
pub const AVRO_METADATA_TYPE: &str = "org.apache.beam.sdk.extensions.smb.AvroBucketMetadata";

/// The contents of `metadata.json` (field names and order as Beam writes them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketMetadata {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub num_buckets: u32,
    pub num_shards: u32,
    pub key_class: String,
    pub hash_type: HashType,
    pub key_field: String,
    pub filename_prefix: String,
}

/// Why a bucket layout is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("num_buckets must be a power of two between 1 and 2^30, got {0}")]
    Buckets(u32),
    #[error("num_shards must be at least 1, got {0}")]
    Shards(u32),
    #[error("key_field must name a field")]
    KeyField,
    #[error("metadata.json: {0}")]
    Metadata(String),
}

impl BucketMetadata {
    /// Metadata for an Avro SMB output keyed by a string field.
    pub fn avro(
        num_buckets: u32,
        num_shards: u32,
        hash_type: HashType,
        key_field: &str,
    ) -> Result<Self, LayoutError> {
        let m = BucketMetadata {
            kind: AVRO_METADATA_TYPE.into(),
            version: 0,
            num_buckets,
            num_shards,
            key_class: "java.lang.String".into(),
            hash_type,
            key_field: key_field.into(),
            filename_prefix: "bucket".into(),
        };
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), LayoutError> {
        if !self.num_buckets.is_power_of_two() || self.num_buckets > 1 << 30 {
            return Err(LayoutError::Buckets(self.num_buckets));
        }
        if self.num_shards == 0 {
            return Err(LayoutError::Shards(self.num_shards));
        }
        if self.key_field.trim().is_empty() {
            return Err(LayoutError::KeyField);
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metadata serializes")
    }

    /// Parses and validates a `metadata.json`.
    pub fn from_json(text: &str) -> Result<Self, LayoutError> {
        let m: BucketMetadata =
            serde_json::from_str(text).map_err(|e| LayoutError::Metadata(e.to_string()))?;
        if m.kind != AVRO_METADATA_TYPE {
            return Err(LayoutError::Metadata(format!(
                "type `{}` is not {AVRO_METADATA_TYPE}",
                m.kind
            )));
        }
        m.validate()?;
        Ok(m)
    }

    /// The file name of one bucket shard.
    pub fn file_name(&self, bucket: u32, shard: u32) -> String {
        if self.num_shards == 1 {
            format!(
                "{}-{bucket:05}-of-{:05}.avro",
                self.filename_prefix, self.num_buckets
            )
        } else {
            format!(
                "{}-{bucket:05}-of-{:05}-shard-{shard:05}-of-{:05}.avro",
                self.filename_prefix, self.num_buckets, self.num_shards
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_names_are_what_beam_writes() {
        let m = BucketMetadata::avro(8, 1, HashType::Murmur3_128, "user_id").unwrap();
        assert_eq!(
            m.to_json(),
            r#"{"type":"org.apache.beam.sdk.extensions.smb.AvroBucketMetadata","version":0,"numBuckets":8,"numShards":1,"keyClass":"java.lang.String","hashType":"MURMUR3_128","keyField":"user_id","filenamePrefix":"bucket"}"#
        );
        assert_eq!(BucketMetadata::from_json(&m.to_json()), Ok(m.clone()));
        assert_eq!(m.file_name(3, 0), "bucket-00003-of-00008.avro");
        let sharded = BucketMetadata::avro(16, 4, HashType::Murmur3_32, "k").unwrap();
        assert_eq!(
            sharded.file_name(15, 2),
            "bucket-00015-of-00016-shard-00002-of-00004.avro"
        );
        assert!(sharded.to_json().contains(r#""hashType":"MURMUR3_32""#));
    }

    #[test]
    fn bad_layouts_are_refused_with_the_reason() {
        assert_eq!(
            BucketMetadata::avro(12, 1, HashType::Murmur3_128, "k"),
            Err(LayoutError::Buckets(12))
        );
        assert_eq!(
            BucketMetadata::avro(0, 1, HashType::Murmur3_128, "k"),
            Err(LayoutError::Buckets(0))
        );
        assert_eq!(
            BucketMetadata::avro(8, 0, HashType::Murmur3_128, "k"),
            Err(LayoutError::Shards(0))
        );
        assert_eq!(
            BucketMetadata::avro(8, 1, HashType::Murmur3_128, " "),
            Err(LayoutError::KeyField)
        );
        assert!(matches!(
            BucketMetadata::from_json("{}"),
            Err(LayoutError::Metadata(_))
        ));
        let other = r#"{"type":"org.apache.beam.sdk.extensions.smb.JsonBucketMetadata","version":0,"numBuckets":8,"numShards":1,"keyClass":"java.lang.String","hashType":"MURMUR3_128","keyField":"k","filenamePrefix":"bucket"}"#;
        assert!(
            matches!(BucketMetadata::from_json(other), Err(LayoutError::Metadata(m)) if m.contains("JsonBucketMetadata"))
        );
    }
}
