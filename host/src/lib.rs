//! Tessera's host runtime.
//!
//! Data path: a source ([`sources`]) reads raw records in batches; the parser
//! plugin turns them into columnar events; events behind the watermark go to
//! the late-data plugin; feature plugins map events to feature updates; the
//! tiler ([`window`]) folds updates into tiles of several sizes; checkpoints
//! commit tile deltas with source positions to a tile store ([`stores`]);
//! the HTTP API ([`api`]) answers window queries by covering them with tiles.
//! Plugins run in wasmtime under per-plugin quotas ([`plugin`]); what any
//! stage rejects goes to the dead letter ([`sinks`]) with the reason.
//! [`pipeline`] wires it all; [`config`] is the one place for settings.

pub mod admin;
pub mod api;
pub mod config;
pub mod error;
pub mod pipeline;
pub mod plugin;
pub mod record;
pub mod sinks;
pub mod sources;
pub mod stores;
pub mod telemetry;
pub mod window;

mod varint;

pub use config::Config;
pub use error::PipelineError;
pub use pipeline::{Pipeline, RunStats};
