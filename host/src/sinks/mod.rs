//! Sinks for records that leave the tile path: the dead letter (records a
//! stage rejected, with the reason) and the side output (late events a
//! late-data handler routed aside). Both are append-only NDJSON files that
//! are flushed and synced before each checkpoint commits, so a committed
//! position never points past a dead letter that was not written.
//!
//! `smb/` holds the sort-merge-bucket outputs (issue #3, in progress).

mod ndjson;
pub mod smb;

pub use ndjson::{DeadLetter, NdjsonSink};
