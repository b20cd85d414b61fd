//! Records and events as the host holds them: the WIT batch types (generated
//! by wasmtime's bindgen, so they cross into plugins without conversion) plus
//! the helpers the host needs around them — building raw batches, checking
//! what a plugin returned, picking rows out of a batch.

pub use crate::plugin::bindings::{
    Aggregation, BytesColumn, Column, ColumnValues, EventBatch, FeatureSpec, LateBatch,
    LateDecision, ParseOutput, RawBatch, RecordError, UpdateBatch,
};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Value `i` of a packed bytes column, if in range.
#[inline]
pub fn bytes_at(c: &BytesColumn, i: usize) -> Option<&[u8]> {
    let start = *c.offsets.get(i)? as usize;
    let end = *c.offsets.get(i + 1)? as usize;
    c.data.get(start..end)
}

fn empty_bytes_column() -> BytesColumn {
    BytesColumn {
        data: Vec::new(),
        offsets: vec![0],
    }
}

fn push_bytes(c: &mut BytesColumn, v: &[u8]) {
    c.data.extend_from_slice(v);
    c.offsets.push(c.data.len() as u32);
}

/// Builds a [`RawBatch`] record by record.
pub struct RawBatchBuilder {
    batch: RawBatch,
}

impl RawBatchBuilder {
    pub fn new(topic: &str, partition: i32) -> Self {
        RawBatchBuilder {
            batch: RawBatch {
                topic: topic.to_string(),
                partition,
                offsets: Vec::new(),
                timestamps: Vec::new(),
                keys: empty_bytes_column(),
                payloads: empty_bytes_column(),
                header_index: vec![0],
                header_names: empty_bytes_column(),
                header_values: empty_bytes_column(),
            },
        }
    }

    /// Room for `records` records of `payload_bytes` payload in all (a
    /// source that knows its batch sizes grows no buffer record by record).
    pub fn with_capacity(
        topic: &str,
        partition: i32,
        records: usize,
        payload_bytes: usize,
    ) -> Self {
        let mut b = RawBatchBuilder::new(topic, partition);
        let batch = &mut b.batch;
        batch.offsets.reserve(records);
        batch.timestamps.reserve(records);
        batch.keys.offsets.reserve(records);
        batch.payloads.offsets.reserve(records);
        batch.payloads.data.reserve(payload_bytes);
        batch.header_index.reserve(records);
        b
    }

    pub fn push(&mut self, offset: i64, timestamp_ms: i64, key: &[u8], payload: &[u8]) {
        let b = &mut self.batch;
        b.offsets.push(offset);
        b.timestamps.push(timestamp_ms);
        push_bytes(&mut b.keys, key);
        push_bytes(&mut b.payloads, payload);
        let headers = b.header_names.offsets.len() as u32 - 1;
        b.header_index.push(headers);
    }

    /// Adds a header to the record pushed last.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        let b = &mut self.batch;
        push_bytes(&mut b.header_names, name);
        push_bytes(&mut b.header_values, value);
        if let Some(last) = b.header_index.last_mut() {
            *last += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.batch.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.offsets.is_empty()
    }

    pub fn payload_bytes(&self) -> usize {
        self.batch.payloads.data.len()
    }

    pub fn finish(self) -> RawBatch {
        self.batch
    }
}

/// The records of `batch` at `rows`, in that order.
pub fn select_raw(batch: &RawBatch, rows: &[u32]) -> RawBatch {
    let mut b = RawBatchBuilder::new(&batch.topic, batch.partition);
    for &r in rows {
        let r = r as usize;
        b.push(
            batch.offsets[r],
            batch.timestamps[r],
            bytes_at(&batch.keys, r).unwrap_or(&[]),
            bytes_at(&batch.payloads, r).unwrap_or(&[]),
        );
        let start = batch.header_index.get(r).copied().unwrap_or(0) as usize;
        let end = batch.header_index.get(r + 1).copied().unwrap_or(0) as usize;
        for h in start..end {
            b.header(
                bytes_at(&batch.header_names, h).unwrap_or(&[]),
                bytes_at(&batch.header_values, h).unwrap_or(&[]),
            );
        }
    }
    b.finish()
}

/// The events of `batch` at `rows`, in that order (type dictionary kept whole).
pub fn select_events(batch: &EventBatch, rows: &[u32]) -> EventBatch {
    let pick = |v: &Vec<u32>| rows.iter().map(|r| v[*r as usize]).collect::<Vec<_>>();
    let columns = batch
        .columns
        .iter()
        .map(|c| {
            let present = if c.present.is_empty() {
                Vec::new()
            } else {
                rows.iter().map(|r| c.present[*r as usize]).collect()
            };
            let values = match &c.values {
                ColumnValues::Float64(v) => {
                    ColumnValues::Float64(rows.iter().map(|r| v[*r as usize]).collect())
                }
                ColumnValues::Int64(v) => {
                    ColumnValues::Int64(rows.iter().map(|r| v[*r as usize]).collect())
                }
                ColumnValues::Boolean(v) => {
                    ColumnValues::Boolean(rows.iter().map(|r| v[*r as usize]).collect())
                }
                ColumnValues::Utf8(b) => {
                    let mut out = empty_bytes_column();
                    for r in rows {
                        push_bytes(&mut out, bytes_at(b, *r as usize).unwrap_or(&[]));
                    }
                    ColumnValues::Utf8(out)
                }
            };
            Column {
                name: c.name.clone(),
                present,
                values,
            }
        })
        .collect();
    EventBatch {
        len: rows.len() as u32,
        source_row: pick(&batch.source_row),
        event_time: rows.iter().map(|r| batch.event_time[*r as usize]).collect(),
        event_type: pick(&batch.event_type),
        type_names: batch.type_names.clone(),
        columns,
    }
}

/// The column called `name`.
pub fn column<'a>(batch: &'a EventBatch, name: &str) -> Option<&'a Column> {
    batch.columns.iter().find(|c| c.name == name)
}

/// The utf8 value of `col` at `row`, when present.
#[inline]
pub fn utf8_at(col: &Column, row: usize) -> Option<&[u8]> {
    if !col.present.is_empty() && col.present.get(row).is_none_or(|p| *p == 0) {
        return None;
    }
    match &col.values {
        ColumnValues::Utf8(b) => bytes_at(b, row),
        _ => None,
    }
}

/// Approximate size in bytes of an event batch (for output quotas).
pub fn event_batch_bytes(b: &EventBatch) -> usize {
    let n = b.len as usize;
    let mut bytes = n * 16 + b.type_names.iter().map(|t| t.len() + 8).sum::<usize>();
    for c in &b.columns {
        bytes += c.name.len() + c.present.len();
        bytes += match &c.values {
            ColumnValues::Float64(v) => v.len() * 8,
            ColumnValues::Int64(v) => v.len() * 8,
            ColumnValues::Boolean(v) => v.len(),
            ColumnValues::Utf8(b) => b.data.len() + b.offsets.len() * 4,
        };
    }
    bytes
}

/// Checks that every per-event list has `len` entries, type indexes are in
/// range and byte offsets are well-formed.
pub fn validate_event_batch(b: &EventBatch) -> Result<(), String> {
    let n = b.len as usize;
    if b.source_row.len() != n || b.event_time.len() != n || b.event_type.len() != n {
        return Err(format!(
            "event batch of len {n} has {} source rows, {} event times, {} event types",
            b.source_row.len(),
            b.event_time.len(),
            b.event_type.len()
        ));
    }
    if let Some(t) = b
        .event_type
        .iter()
        .find(|t| **t as usize >= b.type_names.len())
    {
        return Err(format!(
            "event type index {t} out of range ({} type names)",
            b.type_names.len()
        ));
    }
    for c in &b.columns {
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
            ColumnValues::Utf8(bc) => {
                if bc.offsets.first() != Some(&0)
                    || bc.offsets.windows(2).any(|w| w[0] > w[1])
                    || bc.offsets.last().map(|o| *o as usize) != Some(bc.data.len())
                {
                    return Err(format!("column `{}` has malformed offsets", c.name));
                }
                bc.offsets.len() - 1
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventBatch {
        EventBatch {
            len: 3,
            source_row: vec![0, 1, 1],
            event_time: vec![10, 20, 30],
            event_type: vec![0, 1, 0],
            type_names: vec!["a".into(), "b".into()],
            columns: vec![
                Column {
                    name: "k".into(),
                    present: vec![1, 0, 1],
                    values: ColumnValues::Utf8(BytesColumn {
                        data: b"xz".to_vec(),
                        offsets: vec![0, 1, 1, 2],
                    }),
                },
                Column {
                    name: "v".into(),
                    present: vec![],
                    values: ColumnValues::Float64(vec![1.0, 2.0, 3.0]),
                },
            ],
        }
    }

    #[test]
    fn select_keeps_values_and_presence() {
        let b = sample();
        assert!(validate_event_batch(&b).is_ok());
        let s = select_events(&b, &[2, 0]);
        assert!(validate_event_batch(&s).is_ok());
        assert_eq!(s.event_time, vec![30, 10]);
        let k = column(&s, "k").unwrap();
        assert_eq!(utf8_at(k, 0), Some(&b"z"[..]));
        assert_eq!(utf8_at(k, 1), Some(&b"x"[..]));
        assert_eq!(utf8_at(column(&b, "k").unwrap(), 1), None);
    }

    #[test]
    fn malformed_batches_are_caught() {
        let mut b = sample();
        b.event_type[1] = 9;
        assert!(validate_event_batch(&b)
            .unwrap_err()
            .contains("out of range"));
        let mut b = sample();
        b.columns[0].values = ColumnValues::Utf8(BytesColumn {
            data: b"xz".to_vec(),
            offsets: vec![0, 2, 1, 2],
        });
        assert!(validate_event_batch(&b)
            .unwrap_err()
            .contains("malformed offsets"));
        let mut b = sample();
        b.columns[1].values = ColumnValues::Float64(vec![1.0]);
        assert!(validate_event_batch(&b)
            .unwrap_err()
            .contains("1 values for 3"));
        let mut b = sample();
        b.len = 4;
        assert!(validate_event_batch(&b).is_err());
    }

    #[test]
    fn raw_builder_and_select() {
        let mut b = RawBatchBuilder::new("t", 2);
        b.push(5, 100, b"k1", b"p1");
        b.header(b"h", b"v");
        b.push(6, 101, b"", b"p2");
        let raw = b.finish();
        assert_eq!(raw.header_index, vec![0, 1, 1]);
        let s = select_raw(&raw, &[1, 0]);
        assert_eq!(s.offsets, vec![6, 5]);
        assert_eq!(bytes_at(&s.payloads, 1), Some(&b"p1"[..]));
        assert_eq!(s.header_index, vec![0, 0, 1]);
    }
}
