//! Errors at the library's boundaries, one enum per stage, each saying whose
//! fault it is. Plugin failures are not here: they are contained per batch
//! (see `plugin::PluginError`) and only stop the pipeline through a
//! quarantine policy.

use std::path::PathBuf;

use crate::plugin::PluginError;
use crate::stores::StoreError;

/// The config file could not be read, parsed, or is invalid (user's fault).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A source could not be opened or read (external: retry may help).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no input files in {0}")]
    NoFiles(PathBuf),
    #[error("Kafka: {0}")]
    Kafka(String),
}

/// A sink (dead letter, side output) could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a pipeline run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] crate::admin::registry::RegistryError),
    #[error("plugin `{plugin}` could not be loaded: {source}")]
    PluginLoad { plugin: String, source: PluginError },
    #[error("plugin `{plugin}` is quarantined after {failures} consecutive failures (last: {last}); the pipeline halts as configured, nothing after the last checkpoint was committed")]
    Quarantined {
        plugin: String,
        failures: u32,
        last: String,
    },
    #[error("features declared twice: `{0}` (feature names must be unique across plugins)")]
    DuplicateFeature(String),
    #[error("partition ledger: {0}")]
    Ledger(#[from] crate::pipeline::ledger::LedgerError),
    #[error("output `{output}`: {source}")]
    Output {
        output: String,
        source: crate::sinks::smb::SmbError,
    },
    #[error("feature `{feature}` of plugin `{plugin}` is invalid: {reason}")]
    InvalidFeature {
        plugin: String,
        feature: String,
        reason: String,
    },
}
