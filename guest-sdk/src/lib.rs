//! Write Tessera plugins in Rust.
//!
//! A plugin implements one trait — [`Parser`], [`Feature`] or [`LateHandler`] —
//! and invokes the matching macro ([`export_parser!`], [`export_feature!`],
//! [`export_late_handler!`]), then builds with
//! `cargo build --release --target wasm32-wasip2`: the output is a WebAssembly
//! component for the `tessera:plugin` world, no `cargo-component` needed.
//!
//! The same code compiles natively, so a plugin is unit-tested with plain
//! `cargo test`: call the trait methods with batches made by
//! [`EventBatchBuilder`] or [`RawBatch::from_payloads`].
//!
//! ```ignore
//! use tessera_sdk::*;
//! struct Likes;
//! impl Feature for Likes {
//!     fn init(_config: &str) -> Result<(Self, Vec<FeatureSpec>), String> {
//!         Ok((Likes, vec![FeatureSpec::count("likes_per_post", "post_id", &[60, 1800, 86400])]))
//!     }
//!     fn process(&mut self, events: &EventBatch, out: &mut Updates) -> Result<(), String> {
//!         let Some(like) = events.type_id("like") else { return Ok(()) };
//!         for row in 0..events.len() {
//!             if events.event_type[row] == like { out.push(0, row, 1.0) }
//!         }
//!         Ok(())
//!     }
//! }
//! export_feature!(Likes);
//! ```

extern crate self as tessera_sdk;

mod batch;
mod config;
pub mod log;
pub mod types;

pub use batch::{ColumnRef, ColumnType, EventBatchBuilder, ParseOutputBuilder, Updates};
pub use config::{parse_duration_ms, parse_duration_secs};
pub use types::*;

/// A parser plugin: raw records (bytes) to events.
pub trait Parser: Sized + 'static {
    /// Builds the parser from its config (JSON text; empty when none was given).
    fn init(config: &str) -> Result<Self, String>;

    /// Parses a batch: add events to `out.events` (each with the raw row it
    /// came from) and report each record that cannot be parsed with
    /// `out.error(row, reason)`. A record with neither is filtered out.
    fn parse(&mut self, batch: &RawBatch, out: &mut ParseOutputBuilder);
}

/// A feature plugin: events to feature updates. The host keeps the tiles.
pub trait Feature: Sized + 'static {
    /// Builds the plugin from its config and declares the features it produces.
    fn init(config: &str) -> Result<(Self, Vec<FeatureSpec>), String>;

    /// Maps a batch of events to updates. An `Err` fails the whole batch
    /// (its events go to the dead letter with the message).
    fn process(&mut self, events: &EventBatch, out: &mut Updates) -> Result<(), String>;
}

/// A late-data handler: one decision per event that arrived behind the watermark.
pub trait LateHandler: Sized + 'static {
    fn init(config: &str) -> Result<Self, String>;

    /// Returns one decision per event of `batch.events`, in order.
    fn decide(&mut self, batch: &LateBatch) -> Vec<LateDecision>;
}

impl FeatureSpec {
    /// A count feature with no advertised windows and a 7-day retention.
    pub fn count(name: &str, entity_field: &str, tile_sizes_secs: &[u32]) -> Self {
        FeatureSpec {
            name: name.to_string(),
            entity_field: entity_field.to_string(),
            aggregation: Aggregation::Count,
            tile_sizes_secs: tile_sizes_secs.to_vec(),
            retention_secs: 7 * 86_400,
            windows_secs: Vec::new(),
        }
    }
}

#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::bindings::*;
    pub use crate::glue::*;
}

mod glue;

#[cfg(target_arch = "wasm32")]
mod bindings;
