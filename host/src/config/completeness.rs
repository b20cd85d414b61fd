//! The `[completeness]` table: how the tile output's event time is cut into
//! partitions and how long after its end the watermark must be before one
//! counts as complete (see `pipeline::ledger`), and where the change log of
//! every output is written. SMB outputs cut and complete their own
//! partitions (`granularity`, `allowed_lateness` of each `[[outputs]]`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

use crate::sinks::smb::Granularity;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompletenessConfig {
    /// Hourly (the default) or daily partitions.
    #[serde(default)]
    pub granularity: Granularity,
    /// A partition is complete once the pipeline watermark passes its end
    /// plus this; events for it after that are amendments.
    #[serde(default, with = "super::humantime_serde")]
    pub allowed_lateness: Duration,
    /// The change log as JSON lines (one `ChangeRecord` per line, by
    /// number), appended after each checkpoint commits.
    #[serde(default = "default_change_log_path")]
    pub change_log_path: PathBuf,
}

fn default_change_log_path() -> PathBuf {
    PathBuf::from(".tessera/changes.ndjson")
}

impl Default for CompletenessConfig {
    fn default() -> Self {
        CompletenessConfig {
            granularity: Granularity::Hourly,
            allowed_lateness: Duration::ZERO,
            change_log_path: default_change_log_path(),
        }
    }
}
