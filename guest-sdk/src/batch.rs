//! Reading and building batches: field lookups on [`EventBatch`], raw record
//! access on [`RawBatch`], and the builders a parser (or a test) fills.

use crate::types::*;

impl BytesColumn {
    /// An empty column (`offsets == [0]`).
    pub fn new() -> Self {
        BytesColumn {
            data: Vec::new(),
            offsets: vec![0],
        }
    }

    /// A column holding `values`.
    pub fn from_values<I, B>(values: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let mut c = BytesColumn::new();
        for v in values {
            c.push(v.as_ref());
        }
        c
    }

    pub fn push(&mut self, value: &[u8]) {
        self.data.extend_from_slice(value);
        self.offsets.push(self.data.len() as u32);
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i`, or `None` when `i` is out of range or the offsets are malformed.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let start = *self.offsets.get(i)? as usize;
        let end = *self.offsets.get(i + 1)? as usize;
        self.data.get(start..end)
    }
}

impl Default for BytesColumn {
    fn default() -> Self {
        Self::new()
    }
}

impl RawBatch {
    /// A batch of records with the given payloads (no keys, no headers),
    /// offsets counted from 0, for tests and file sources.
    pub fn from_payloads<I, B>(topic: &str, payloads: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let payloads = BytesColumn::from_values(payloads);
        let n = payloads.len();
        RawBatch {
            topic: topic.to_string(),
            partition: 0,
            offsets: (0..n as i64).collect(),
            timestamps: vec![0; n],
            keys: BytesColumn::from_values(std::iter::repeat_n(b"", n)),
            payloads,
            header_index: vec![0; n + 1],
            header_names: BytesColumn::new(),
            header_values: BytesColumn::new(),
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Payload of record `i` (empty when out of range).
    #[inline]
    pub fn payload(&self, i: usize) -> &[u8] {
        self.payloads.get(i).unwrap_or(&[])
    }

    /// Key of record `i` (empty when out of range or absent).
    pub fn key(&self, i: usize) -> &[u8] {
        self.keys.get(i).unwrap_or(&[])
    }

    /// Headers of record `i` as (name, value) pairs.
    pub fn headers(&self, i: usize) -> impl Iterator<Item = (&[u8], &[u8])> {
        let start = self.header_index.get(i).copied().unwrap_or(0) as usize;
        let end = self.header_index.get(i + 1).copied().unwrap_or(0) as usize;
        (start..end.max(start))
            .filter_map(move |h| Some((self.header_names.get(h)?, self.header_values.get(h)?)))
    }
}

/// A typed view of one column, found by name with [`EventBatch::column`].
#[derive(Clone, Copy, Debug)]
pub struct ColumnRef<'a> {
    pub column: &'a Column,
}

impl<'a> ColumnRef<'a> {
    /// Whether event `row` has a value in this column.
    #[inline]
    pub fn is_present(&self, row: usize) -> bool {
        self.column.present.is_empty() || self.column.present.get(row).is_some_and(|p| *p != 0)
    }

    /// The value at `row` as text, when the column is utf8 and the value present.
    #[inline]
    pub fn str(&self, row: usize) -> Option<&'a str> {
        self.bytes(row).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The value at `row` as bytes, when the column is utf8 and the value present.
    #[inline]
    pub fn bytes(&self, row: usize) -> Option<&'a [u8]> {
        match &self.column.values {
            ColumnValues::Utf8(c) if self.is_present(row) => c.get(row),
            _ => None,
        }
    }

    /// The value at `row` as a number (int64 and boolean columns convert).
    #[inline]
    pub fn f64(&self, row: usize) -> Option<f64> {
        if !self.is_present(row) {
            return None;
        }
        match &self.column.values {
            ColumnValues::Float64(v) => v.get(row).copied(),
            ColumnValues::Int64(v) => v.get(row).map(|x| *x as f64),
            ColumnValues::Boolean(v) => v.get(row).map(|x| if *x { 1.0 } else { 0.0 }),
            ColumnValues::Utf8(_) => None,
        }
    }

    /// The value at `row` as an integer, when the column is int64.
    #[inline]
    pub fn i64(&self, row: usize) -> Option<i64> {
        match &self.column.values {
            ColumnValues::Int64(v) if self.is_present(row) => v.get(row).copied(),
            _ => None,
        }
    }
}

impl EventBatch {
    /// An empty batch.
    pub fn empty() -> Self {
        EventBatchBuilder::new().finish()
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The column called `name`, if the batch has one.
    pub fn column(&self, name: &str) -> Option<ColumnRef<'_>> {
        self.columns
            .iter()
            .find(|c| c.name == name)
            .map(|column| ColumnRef { column })
    }

    /// The index in `type_names` of event type `name`, if any event has it.
    pub fn type_id(&self, name: &str) -> Option<u32> {
        self.type_names
            .iter()
            .position(|t| t == name)
            .map(|i| i as u32)
    }

    /// The event type name of event `row`.
    pub fn type_name(&self, row: usize) -> Option<&str> {
        let id = *self.event_type.get(row)? as usize;
        self.type_names.get(id).map(String::as_str)
    }

    /// Checks that every per-event list has `len` entries and every index is in
    /// range. The host calls this on everything a plugin returns.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.len as usize;
        if self.source_row.len() != n || self.event_time.len() != n || self.event_type.len() != n {
            return Err(format!(
                "event batch of len {n} has {} source rows, {} event times, {} event types",
                self.source_row.len(),
                self.event_time.len(),
                self.event_type.len()
            ));
        }
        if let Some(t) = self
            .event_type
            .iter()
            .find(|t| **t as usize >= self.type_names.len())
        {
            return Err(format!(
                "event type index {t} out of range ({} type names)",
                self.type_names.len()
            ));
        }
        for c in &self.columns {
            if !c.present.is_empty() && c.present.len() != n {
                return Err(format!(
                    "column `{}` has {} presence flags for {n} events",
                    c.name,
                    c.present.len()
                ));
            }
            let values = match &c.values {
                ColumnValues::Float64(v) => v.len(),
                ColumnValues::Int64(v) => v.len(),
                ColumnValues::Boolean(v) => v.len(),
                ColumnValues::Utf8(b) => {
                    if b.offsets.first().is_some_and(|o| *o != 0)
                        || b.offsets.windows(2).any(|w| w[0] > w[1])
                        || b.offsets
                            .last()
                            .is_some_and(|o| *o as usize != b.data.len())
                    {
                        return Err(format!("column `{}` has malformed offsets", c.name));
                    }
                    b.len()
                }
            };
            if values != n {
                return Err(format!(
                    "column `{}` has {values} values for {n} events",
                    c.name
                ));
            }
        }
        Ok(())
    }
}

/// The type of a column a builder creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Float64,
    Int64,
    Boolean,
    Utf8,
}

/// Builds an [`EventBatch`] one event at a time.
///
/// ```
/// use tessera_sdk::{EventBatchBuilder, ColumnType};
/// let mut b = EventBatchBuilder::new();
/// let post = b.add_column("post_id", ColumnType::Utf8);
/// let like = b.event_type("like");
/// b.begin_event(0, 1_700_000_000_000, like);
/// b.set_str(post, "p1");
/// let batch = b.finish();
/// assert_eq!(batch.column("post_id").unwrap().str(0), Some("p1"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct EventBatchBuilder {
    len: u32,
    source_row: Vec<u32>,
    event_time: Vec<i64>,
    event_type: Vec<u32>,
    type_names: Vec<String>,
    columns: Vec<Column>,
}

impl EventBatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves room for `events` more events, and `text_bytes` more bytes
    /// in each utf8 column, so a batch fills without reallocating.
    pub fn reserve(&mut self, events: usize, text_bytes: usize) {
        self.source_row.reserve(events);
        self.event_time.reserve(events);
        self.event_type.reserve(events);
        for c in &mut self.columns {
            c.present.reserve(events);
            match &mut c.values {
                ColumnValues::Float64(v) => v.reserve(events),
                ColumnValues::Int64(v) => v.reserve(events),
                ColumnValues::Boolean(v) => v.reserve(events),
                ColumnValues::Utf8(b) => {
                    b.offsets.reserve(events);
                    b.data.reserve(text_bytes);
                }
            }
        }
    }

    /// Adds a column (or returns the existing one of that name) and gives its index.
    pub fn add_column(&mut self, name: &str, ty: ColumnType) -> usize {
        if let Some(i) = self.columns.iter().position(|c| c.name == name) {
            return i;
        }
        let n = self.len as usize;
        let values = match ty {
            ColumnType::Float64 => ColumnValues::Float64(vec![0.0; n]),
            ColumnType::Int64 => ColumnValues::Int64(vec![0; n]),
            ColumnType::Boolean => ColumnValues::Boolean(vec![false; n]),
            ColumnType::Utf8 => {
                ColumnValues::Utf8(BytesColumn::from_values(std::iter::repeat_n(b"", n)))
            }
        };
        self.columns.push(Column {
            name: name.to_string(),
            present: vec![0; n],
            values,
        });
        self.columns.len() - 1
    }

    /// The index of event type `name` in this batch's dictionary, added if new.
    pub fn event_type(&mut self, name: &str) -> u32 {
        match self.type_names.iter().position(|t| t == name) {
            Some(i) => i as u32,
            None => {
                self.type_names.push(name.to_string());
                (self.type_names.len() - 1) as u32
            }
        }
    }

    /// Like [`event_type`](Self::event_type) for a name given as bytes; `None`
    /// when they are not UTF-8.
    pub fn event_type_bytes(&mut self, name: &[u8]) -> Option<u32> {
        if let Some(i) = self.type_names.iter().position(|t| t.as_bytes() == name) {
            return Some(i as u32);
        }
        Some(self.event_type(std::str::from_utf8(name).ok()?))
    }

    /// Starts an event; every column gets an absent value until set.
    pub fn begin_event(&mut self, source_row: u32, event_time_ms: i64, event_type: u32) {
        self.len += 1;
        self.source_row.push(source_row);
        self.event_time.push(event_time_ms);
        self.event_type.push(event_type);
        for c in &mut self.columns {
            c.present.push(0);
            match &mut c.values {
                ColumnValues::Float64(v) => v.push(0.0),
                ColumnValues::Int64(v) => v.push(0),
                ColumnValues::Boolean(v) => v.push(false),
                ColumnValues::Utf8(b) => b.offsets.push(b.data.len() as u32),
            }
        }
    }

    /// Removes the event begun last (e.g. when a parser finds an error half-way).
    pub fn cancel_event(&mut self) {
        if self.len == 0 {
            return;
        }
        self.len -= 1;
        self.source_row.pop();
        self.event_time.pop();
        self.event_type.pop();
        for c in &mut self.columns {
            c.present.pop();
            match &mut c.values {
                ColumnValues::Float64(v) => drop(v.pop()),
                ColumnValues::Int64(v) => drop(v.pop()),
                ColumnValues::Boolean(v) => drop(v.pop()),
                ColumnValues::Utf8(b) => {
                    b.offsets.pop();
                    let end = *b.offsets.last().unwrap_or(&0) as usize;
                    b.data.truncate(end);
                }
            }
        }
    }

    /// Changes the current event's time (when a parser meets it after other fields).
    pub fn set_event_time(&mut self, event_time_ms: i64) {
        if let Some(t) = self.event_time.last_mut() {
            *t = event_time_ms;
        }
    }

    /// Changes the current event's type.
    pub fn set_event_type(&mut self, event_type: u32) {
        if let Some(t) = self.event_type.last_mut() {
            *t = event_type;
        }
    }

    /// Sets utf8 column `col` of the current event.
    pub fn set_str(&mut self, col: usize, value: &str) {
        self.set_bytes(col, value.as_bytes())
    }

    /// Sets utf8 column `col` of the current event from bytes (which should be UTF-8).
    pub fn set_bytes(&mut self, col: usize, value: &[u8]) {
        if self.len == 0 {
            return;
        }
        let c = &mut self.columns[col];
        if let ColumnValues::Utf8(b) = &mut c.values {
            let n = b.offsets.len();
            let start = b.offsets[n - 2] as usize;
            b.data.truncate(start);
            b.data.extend_from_slice(value);
            b.offsets[n - 1] = b.data.len() as u32;
            *c.present.last_mut().unwrap() = 1;
        }
    }

    /// Sets float64 column `col` of the current event.
    pub fn set_f64(&mut self, col: usize, value: f64) {
        let c = &mut self.columns[col];
        if let (ColumnValues::Float64(v), Some(p)) = (&mut c.values, c.present.last_mut()) {
            *v.last_mut().unwrap() = value;
            *p = 1;
        }
    }

    /// Sets int64 column `col` of the current event.
    pub fn set_i64(&mut self, col: usize, value: i64) {
        let c = &mut self.columns[col];
        if let (ColumnValues::Int64(v), Some(p)) = (&mut c.values, c.present.last_mut()) {
            *v.last_mut().unwrap() = value;
            *p = 1;
        }
    }

    /// Sets boolean column `col` of the current event.
    pub fn set_bool(&mut self, col: usize, value: bool) {
        let c = &mut self.columns[col];
        if let (ColumnValues::Boolean(v), Some(p)) = (&mut c.values, c.present.last_mut()) {
            *v.last_mut().unwrap() = value;
            *p = 1;
        }
    }

    /// The type of column `col`.
    pub fn column_type(&self, col: usize) -> ColumnType {
        match self.columns[col].values {
            ColumnValues::Float64(_) => ColumnType::Float64,
            ColumnValues::Int64(_) => ColumnType::Int64,
            ColumnValues::Boolean(_) => ColumnType::Boolean,
            ColumnValues::Utf8(_) => ColumnType::Utf8,
        }
    }

    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The batch; columns where every event has a value drop their presence flags.
    pub fn finish(mut self) -> EventBatch {
        for c in &mut self.columns {
            if c.present.iter().all(|p| *p != 0) {
                c.present = Vec::new();
            }
        }
        EventBatch {
            len: self.len,
            source_row: self.source_row,
            event_time: self.event_time,
            event_type: self.event_type,
            type_names: self.type_names,
            columns: self.columns,
        }
    }

    /// Like [`finish`](Self::finish), leaving an empty builder with the same
    /// columns and types behind for the next batch.
    pub fn take(&mut self) -> EventBatch {
        let mut fresh = EventBatchBuilder::new();
        for c in &self.columns {
            let ty = match c.values {
                ColumnValues::Float64(_) => ColumnType::Float64,
                ColumnValues::Int64(_) => ColumnType::Int64,
                ColumnValues::Boolean(_) => ColumnType::Boolean,
                ColumnValues::Utf8(_) => ColumnType::Utf8,
            };
            fresh.add_column(&c.name, ty);
        }
        std::mem::replace(self, fresh).finish()
    }
}

/// Collects feature updates in a feature plugin's `process`.
#[derive(Clone, Debug, Default)]
pub struct Updates {
    pub(crate) batch: UpdateBatch,
}

impl Updates {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Updates {
            batch: UpdateBatch {
                feature: Vec::with_capacity(n),
                row: Vec::with_capacity(n),
                value: Vec::with_capacity(n),
            },
        }
    }

    /// Adds `value` to feature number `feature` (its index in the specs
    /// returned by `init`) for the entity and time of event `row`.
    #[inline]
    pub fn push(&mut self, feature: u16, row: usize, value: f64) {
        self.batch.feature.push(feature);
        self.batch.row.push(row as u32);
        self.batch.value.push(value);
    }

    pub fn len(&self) -> usize {
        self.batch.row.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.row.is_empty()
    }

    pub fn into_batch(self) -> UpdateBatch {
        self.batch
    }
}

/// Collects a parser's events and per-record errors.
#[derive(Clone, Debug, Default)]
pub struct ParseOutputBuilder {
    /// The events; use its methods to add them.
    pub events: EventBatchBuilder,
    errors: Vec<RecordError>,
}

impl ParseOutputBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that raw record `row` could not be parsed, and why.
    pub fn error(&mut self, row: usize, reason: impl Into<String>) {
        self.errors.push(RecordError {
            row: row as u32,
            reason: reason.into(),
        });
    }

    pub fn errors(&self) -> &[RecordError] {
        &self.errors
    }

    pub fn finish(self) -> ParseOutput {
        ParseOutput {
            events: self.events.finish(),
            errors: self.errors,
        }
    }

    /// Takes the output so far, keeping columns for the next batch.
    pub fn take(&mut self) -> ParseOutput {
        ParseOutput {
            events: self.events.take(),
            errors: std::mem::take(&mut self.errors),
        }
    }
}
