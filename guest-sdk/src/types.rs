//! The WIT types of `tessera:plugin/types`, as plain Rust.
//!
//! These mirror, field for field, what `wit-bindgen` would generate for
//! `wit/tessera.wit`; the bindings are told to use them (`with:` in
//! `bindings.rs`), so the same values work in a wasm32 plugin and in a native
//! `cargo test` with no host. Keep them in the WIT's order and shape.

/// Variable-length byte strings packed in one blob: value `i` is
/// `data[offsets[i]..offsets[i + 1]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct BytesColumn {
    pub data: Vec<u8>,
    pub offsets: Vec<u32>,
}

/// A batch of raw records as a source delivers them.
#[derive(Clone, Debug, PartialEq)]
pub struct RawBatch {
    pub topic: String,
    pub partition: i32,
    pub offsets: Vec<i64>,
    pub timestamps: Vec<i64>,
    pub keys: BytesColumn,
    pub payloads: BytesColumn,
    pub header_index: Vec<u32>,
    pub header_names: BytesColumn,
    pub header_values: BytesColumn,
}

/// The values of one event-batch column.
#[derive(Clone, Debug, PartialEq)]
pub enum ColumnValues {
    Float64(Vec<f64>),
    Int64(Vec<i64>),
    Boolean(Vec<bool>),
    Utf8(BytesColumn),
}

/// One named, typed column; `present` is empty when every event has a value.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub present: Vec<u8>,
    pub values: ColumnValues,
}

/// Events, columnar.
#[derive(Clone, Debug, PartialEq)]
pub struct EventBatch {
    pub len: u32,
    pub source_row: Vec<u32>,
    pub event_time: Vec<i64>,
    pub event_type: Vec<u32>,
    pub type_names: Vec<String>,
    pub columns: Vec<Column>,
}

/// A raw record a parser rejected.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordError {
    pub row: u32,
    pub reason: String,
}

/// The result of one parse call.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseOutput {
    pub events: EventBatch,
    pub errors: Vec<RecordError>,
}

/// How a feature's tile values combine.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aggregation {
    Count,
    Sum,
    Min,
    Max,
    Last,
    Mean,
}

impl Aggregation {
    #[doc(hidden)]
    pub unsafe fn _lift(val: u8) -> Aggregation {
        match val {
            0 => Aggregation::Count,
            1 => Aggregation::Sum,
            2 => Aggregation::Min,
            3 => Aggregation::Max,
            4 => Aggregation::Last,
            _ => Aggregation::Mean,
        }
    }

    /// Parses the lower-case name used in configs (`count`, `sum`, ...).
    pub fn from_name(name: &str) -> Option<Aggregation> {
        Some(match name {
            "count" => Aggregation::Count,
            "sum" => Aggregation::Sum,
            "min" => Aggregation::Min,
            "max" => Aggregation::Max,
            "last" => Aggregation::Last,
            "mean" | "avg" => Aggregation::Mean,
            _ => return None,
        })
    }
}

/// A feature a feature plugin produces.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSpec {
    pub name: String,
    pub entity_field: String,
    pub aggregation: Aggregation,
    pub tile_sizes_secs: Vec<u32>,
    pub retention_secs: u64,
    pub windows_secs: Vec<u32>,
}

/// Feature updates: update `i` adds `value[i]` to feature `feature[i]` for
/// the entity and event time of input event `row[i]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpdateBatch {
    pub feature: Vec<u16>,
    pub row: Vec<u32>,
    pub value: Vec<f64>,
}

/// Events behind the watermark, with how late each one is.
#[derive(Clone, Debug, PartialEq)]
pub struct LateBatch {
    pub events: EventBatch,
    pub lateness_ms: Vec<i64>,
    pub watermark: i64,
}

/// What happens to one late event.
#[derive(Clone, Debug, PartialEq)]
pub enum LateDecision {
    Accept,
    Drop,
    SideOutput(String),
}
