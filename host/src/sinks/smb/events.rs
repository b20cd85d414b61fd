//! Events to Avro records for a pipeline's SMB output: each field of the
//! configured record schema is filled from the event, by name, and encoded
//! straight into Avro binary from the batch's columns (no `Value` tree per
//! record).
//!
//! Where a field's value comes from:
//! - `event_time`: the event time (ms); `ingestion_time`: when the source
//!   read the raw record (ms); both `long`, `timestamp-millis` or
//!   `timestamp-micros`;
//! - `event_type`: the event type name (`string`);
//! - `payload`: the raw record's bytes (`bytes`, or `string` when UTF-8);
//! - any other name: the event column of that name.
//!
//! Field types: `string`, `long`, `int`, `double`, `float`, `boolean`,
//! `bytes` (payload only), the two timestamp logical types, and a union of
//! `null` with one of them (a missing or absent value becomes `null`).
//! Numbers convert where nothing is lost (an integral `float64` into a
//! `long`, an `int64` into a `double`); anything else rejects that record
//! with the reason, for the dead letter. The key field must be a top-level
//! string field.

use apache_avro::Schema;

use crate::record::{bytes_at, BytesColumn, Column, ColumnValues, EventBatch, RawBatch};
use crate::varint::put_i64;

/// The Avro type a field is encoded as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldType {
    String,
    Long,
    Int,
    Double,
    Float,
    Boolean,
    Bytes,
    TimestampMillis,
    TimestampMicros,
}

impl FieldType {
    fn of(schema: &Schema) -> Option<Self> {
        Some(match schema {
            Schema::String => FieldType::String,
            Schema::Long => FieldType::Long,
            Schema::Int => FieldType::Int,
            Schema::Double => FieldType::Double,
            Schema::Float => FieldType::Float,
            Schema::Boolean => FieldType::Boolean,
            Schema::Bytes => FieldType::Bytes,
            Schema::TimestampMillis => FieldType::TimestampMillis,
            Schema::TimestampMicros => FieldType::TimestampMicros,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Long => "long",
            FieldType::Int => "int",
            FieldType::Double => "double",
            FieldType::Float => "float",
            FieldType::Boolean => "boolean",
            FieldType::Bytes => "bytes",
            FieldType::TimestampMillis => "timestamp-millis",
            FieldType::TimestampMicros => "timestamp-micros",
        }
    }
}

/// Where a field's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FieldSource {
    EventTime,
    IngestionTime,
    EventType,
    Payload,
    Column(String),
}

#[derive(Clone, Debug)]
struct Field {
    name: String,
    ty: FieldType,
    /// For `["null", T]` / `[T, "null"]`: the union indexes of null and of T.
    nullable: Option<(i64, i64)>,
    source: FieldSource,
}

/// Encodes events of a batch as Avro datums of one record schema.
#[derive(Clone, Debug)]
pub struct EventEncoder {
    fields: Vec<Field>,
    key: usize,
}

/// A value of one event for one field, before encoding.
enum Cell<'a> {
    Absent,
    Long(i64),
    Double(f64),
    Bool(bool),
    Text(&'a [u8]),
}

impl EventEncoder {
    /// Checks every field of `schema_json` (a record) and the key field,
    /// reporting every problem at once.
    pub fn new(schema_json: &str, key_field: &str) -> Result<Self, Vec<String>> {
        let schema = Schema::parse_str(schema_json).map_err(|e| vec![format!("schema: {e}")])?;
        let Schema::Record(record) = &schema else {
            return Err(vec!["schema: the top level must be a record".into()]);
        };
        let mut problems = Vec::new();
        let mut fields = Vec::new();
        for f in &record.fields {
            let (inner, nullable) = match &f.schema {
                Schema::Union(u) => {
                    let v = u.variants();
                    match (v.len(), v.iter().position(|s| matches!(s, Schema::Null))) {
                        (2, Some(null)) => (&v[1 - null], Some((null as i64, 1 - null as i64))),
                        _ => {
                            problems.push(format!(
                                "field `{}`: only unions of null and one type are supported",
                                f.name
                            ));
                            continue;
                        }
                    }
                }
                s => (s, None),
            };
            let Some(ty) = FieldType::of(inner) else {
                problems.push(format!(
                    "field `{}`: type {inner:?} is not supported (string, long, int, double, float, boolean, bytes, timestamp-millis, timestamp-micros, or a union of null and one of them)",
                    f.name
                ));
                continue;
            };
            let source = match f.name.as_str() {
                "event_time" => FieldSource::EventTime,
                "ingestion_time" => FieldSource::IngestionTime,
                "event_type" => FieldSource::EventType,
                "payload" => FieldSource::Payload,
                other => FieldSource::Column(other.to_string()),
            };
            let fits = match &source {
                FieldSource::EventTime | FieldSource::IngestionTime => matches!(
                    ty,
                    FieldType::Long | FieldType::TimestampMillis | FieldType::TimestampMicros
                ),
                FieldSource::EventType => ty == FieldType::String,
                FieldSource::Payload => matches!(ty, FieldType::Bytes | FieldType::String),
                FieldSource::Column(_) => ty != FieldType::Bytes,
            };
            if !fits {
                problems.push(format!(
                    "field `{}` cannot be {}: event_time and ingestion_time are long or timestamps, event_type a string, payload bytes or string, and bytes is for payload only",
                    f.name,
                    ty.name()
                ));
                continue;
            }
            fields.push(Field {
                name: f.name.clone(),
                ty,
                nullable,
                source,
            });
        }
        let key = fields.iter().position(|f| f.name == key_field);
        match key.map(|k| &fields[k]) {
            None if key_field.contains('.') => problems.push(format!(
                "key field `{key_field}`: pipeline outputs take a top-level field (events are flat)"
            )),
            None => problems.push(format!(
                "key field `{key_field}` is not a field of the schema"
            )),
            Some(f) if f.ty != FieldType::String => problems.push(format!(
                "key field `{key_field}` must be a string (keyClass java.lang.String)"
            )),
            Some(_) => {}
        }
        if problems.is_empty() {
            Ok(EventEncoder {
                fields,
                key: key.expect("checked"),
            })
        } else {
            Err(problems)
        }
    }

    /// The columns of `events` each field reads, looked up once per batch.
    pub fn columns<'b>(&self, events: &'b EventBatch) -> Vec<Option<&'b Column>> {
        self.fields
            .iter()
            .map(|f| match &f.source {
                FieldSource::Column(name) => events.columns.iter().find(|c| &c.name == name),
                _ => None,
            })
            .collect()
    }

    /// Encodes event `row` of `events` (raw record `raw` row `source_row`)
    /// into `datum`, and returns its key. `columns` comes from
    /// [`EventEncoder::columns`] for this batch. On error `datum` holds
    /// garbage and the reason says which field failed.
    pub fn encode<'b>(
        &self,
        events: &'b EventBatch,
        raw: &'b RawBatch,
        columns: &[Option<&'b Column>],
        row: usize,
        datum: &mut Vec<u8>,
    ) -> Result<&'b [u8], String> {
        datum.clear();
        let mut key: &[u8] = &[];
        for (i, f) in self.fields.iter().enumerate() {
            let cell = match &f.source {
                FieldSource::EventTime => Cell::Long(events.event_time[row]),
                FieldSource::IngestionTime => {
                    let src = events.source_row[row] as usize;
                    raw.timestamps
                        .get(src)
                        .map_or(Cell::Absent, |t| Cell::Long(*t))
                }
                FieldSource::EventType => events
                    .type_names
                    .get(events.event_type[row] as usize)
                    .map_or(Cell::Absent, |t| Cell::Text(t.as_bytes())),
                FieldSource::Payload => {
                    let src = events.source_row[row] as usize;
                    bytes_at(&raw.payloads, src).map_or(Cell::Absent, Cell::Text)
                }
                FieldSource::Column(_) => columns[i].map_or(Cell::Absent, |c| cell_at(c, row)),
            };
            if i == self.key {
                match cell {
                    Cell::Text(t) => key = t,
                    Cell::Absent => return Err(format!("key field `{}` has no value", f.name)),
                    _ => {
                        return Err(format!(
                            "key field `{}` must come from a utf8 column",
                            f.name
                        ))
                    }
                }
            }
            encode_field(f, cell, datum)?;
        }
        Ok(key)
    }
}

fn cell_at(c: &Column, row: usize) -> Cell<'_> {
    if !c.present.is_empty() && c.present.get(row).is_none_or(|p| *p == 0) {
        return Cell::Absent;
    }
    match &c.values {
        ColumnValues::Int64(v) => v.get(row).map_or(Cell::Absent, |x| Cell::Long(*x)),
        ColumnValues::Float64(v) => v.get(row).map_or(Cell::Absent, |x| Cell::Double(*x)),
        ColumnValues::Boolean(v) => v.get(row).map_or(Cell::Absent, |x| Cell::Bool(*x)),
        ColumnValues::Utf8(b) => utf8(b, row),
    }
}

fn utf8(b: &BytesColumn, row: usize) -> Cell<'_> {
    bytes_at(b, row).map_or(Cell::Absent, Cell::Text)
}

/// Largest integer magnitude a `f64` holds exactly.
const EXACT_F64: f64 = 9_007_199_254_740_992.0;

fn encode_field(f: &Field, cell: Cell<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    if let Cell::Absent = cell {
        return match f.nullable {
            Some((null, _)) => {
                put_i64(out, null);
                Ok(())
            }
            None => Err(format!(
                "field `{}` ({}) has no value and is not nullable",
                f.name,
                f.ty.name()
            )),
        };
    }
    if let Some((_, value)) = f.nullable {
        put_i64(out, value);
    }
    let mismatch = |what: &str| format!("field `{}` ({}) cannot take {what}", f.name, f.ty.name());
    let integral = |x: f64| -> Result<i64, String> {
        if x.fract() == 0.0 && x.abs() <= EXACT_F64 {
            Ok(x as i64)
        } else {
            Err(mismatch(&format!("the non-integral or inexact number {x}")))
        }
    };
    match (f.ty, cell) {
        (FieldType::String, Cell::Text(t)) => {
            if std::str::from_utf8(t).is_err() {
                return Err(mismatch("bytes that are not UTF-8"));
            }
            put_i64(out, t.len() as i64);
            out.extend_from_slice(t);
        }
        (FieldType::Bytes, Cell::Text(t)) => {
            put_i64(out, t.len() as i64);
            out.extend_from_slice(t);
        }
        (FieldType::Long | FieldType::TimestampMillis, Cell::Long(x)) => put_i64(out, x),
        (FieldType::Long | FieldType::TimestampMillis, Cell::Double(x)) => {
            put_i64(out, integral(x)?)
        }
        (FieldType::TimestampMicros, c @ (Cell::Long(_) | Cell::Double(_))) => {
            let ms = match c {
                Cell::Long(x) => x,
                Cell::Double(x) => integral(x)?,
                _ => unreachable!(),
            };
            let us = ms
                .checked_mul(1000)
                .ok_or_else(|| mismatch(&format!("{ms} ms (overflows microseconds)")))?;
            put_i64(out, us);
        }
        (FieldType::Int, c @ (Cell::Long(_) | Cell::Double(_))) => {
            let x = match c {
                Cell::Long(x) => x,
                Cell::Double(x) => integral(x)?,
                _ => unreachable!(),
            };
            let x = i32::try_from(x).map_err(|_| mismatch(&format!("{x} (out of int range)")))?;
            put_i64(out, i64::from(x));
        }
        (FieldType::Double, Cell::Double(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (FieldType::Double, Cell::Long(x)) => out.extend_from_slice(&(x as f64).to_le_bytes()),
        (FieldType::Float, Cell::Double(x)) => out.extend_from_slice(&(x as f32).to_le_bytes()),
        (FieldType::Float, Cell::Long(x)) => out.extend_from_slice(&(x as f32).to_le_bytes()),
        (FieldType::Boolean, Cell::Bool(b)) => out.push(u8::from(b)),
        (_, Cell::Text(_)) => return Err(mismatch("text")),
        (_, Cell::Long(x)) => return Err(mismatch(&format!("the integer {x}"))),
        (_, Cell::Double(x)) => return Err(mismatch(&format!("the number {x}"))),
        (_, Cell::Bool(b)) => return Err(mismatch(&format!("the boolean {b}"))),
        (_, Cell::Absent) => unreachable!("handled above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RawBatchBuilder;
    use apache_avro::types::Value;

    const SCHEMA: &str = r#"{"type":"record","name":"E","fields":[
      {"name":"user_id","type":"string"},
      {"name":"post_id","type":["null","string"]},
      {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"}},
      {"name":"ingestion_time","type":"long"},
      {"name":"event_type","type":"string"},
      {"name":"dwell_ms","type":["long","null"]},
      {"name":"score","type":"double"},
      {"name":"n","type":"int"},
      {"name":"flag","type":["null","boolean"]},
      {"name":"payload","type":"bytes"}]}"#;

    fn batch() -> (EventBatch, RawBatch) {
        let mut raw = RawBatchBuilder::new("t", 0);
        raw.push(0, 111, b"", b"p0");
        raw.push(1, 222, b"", b"p1");
        let events = EventBatch {
            len: 2,
            source_row: vec![0, 1],
            event_time: vec![1000, 2000],
            event_type: vec![1, 0],
            type_names: vec!["like".into(), "view".into()],
            columns: vec![
                Column {
                    name: "user_id".into(),
                    present: vec![],
                    values: ColumnValues::Utf8(BytesColumn {
                        data: b"u1u2".to_vec(),
                        offsets: vec![0, 2, 4],
                    }),
                },
                Column {
                    name: "post_id".into(),
                    present: vec![1, 0],
                    values: ColumnValues::Utf8(BytesColumn {
                        data: b"p".to_vec(),
                        offsets: vec![0, 1, 1],
                    }),
                },
                Column {
                    name: "dwell_ms".into(),
                    present: vec![],
                    values: ColumnValues::Float64(vec![7.0, 1.5]),
                },
                Column {
                    name: "score".into(),
                    present: vec![],
                    values: ColumnValues::Int64(vec![3, 4]),
                },
                Column {
                    name: "n".into(),
                    present: vec![],
                    values: ColumnValues::Int64(vec![5, 1 << 40]),
                },
            ],
        };
        (events, raw.finish())
    }

    /// Decodes with apache-avro's own reader (independent of this encoder).
    fn decode(datum: &[u8]) -> Value {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut &datum[..])
            .unwrap()
    }

    #[test]
    fn events_encode_to_records_an_avro_reader_decodes() {
        let enc = EventEncoder::new(SCHEMA, "user_id").unwrap();
        let (events, raw) = batch();
        let cols = enc.columns(&events);
        let mut d = Vec::new();
        let key = enc.encode(&events, &raw, &cols, 0, &mut d).unwrap();
        assert_eq!(key, b"u1");
        let Value::Record(fields) = decode(&d) else {
            panic!()
        };
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("user_id"), Value::String("u1".into()));
        assert_eq!(
            get("post_id"),
            Value::Union(1, Box::new(Value::String("p".into())))
        );
        assert_eq!(get("event_time"), Value::TimestampMillis(1000));
        assert_eq!(get("ingestion_time"), Value::Long(111));
        assert_eq!(get("event_type"), Value::String("view".into()));
        assert_eq!(get("dwell_ms"), Value::Union(0, Box::new(Value::Long(7))));
        assert_eq!(get("score"), Value::Double(3.0));
        assert_eq!(get("n"), Value::Int(5));
        assert_eq!(get("flag"), Value::Union(0, Box::new(Value::Null)));
        assert_eq!(get("payload"), Value::Bytes(b"p0".to_vec()));
    }

    #[test]
    fn values_that_do_not_fit_reject_the_record_with_the_field() {
        let enc = EventEncoder::new(SCHEMA, "user_id").unwrap();
        let (events, raw) = batch();
        let cols = enc.columns(&events);
        let err = enc
            .encode(&events, &raw, &cols, 1, &mut Vec::new())
            .unwrap_err();
        assert!(err.contains("`dwell_ms`") && err.contains("1.5"), "{err}");
        let mut events2 = events.clone();
        events2.columns[2].values = ColumnValues::Float64(vec![7.0, 2.0]);
        let cols = enc.columns(&events2);
        let err = enc
            .encode(&events2, &raw, &cols, 1, &mut Vec::new())
            .unwrap_err();
        assert!(
            err.contains("`n`") && err.contains("out of int range"),
            "{err}"
        );
        // A missing non-nullable key.
        let mut no_key = events.clone();
        no_key.columns.remove(0);
        let cols = enc.columns(&no_key);
        let err = enc
            .encode(&no_key, &raw, &cols, 0, &mut Vec::new())
            .unwrap_err();
        assert!(err.contains("key field `user_id` has no value"), "{err}");
    }

    #[test]
    fn unsupported_schemas_list_every_problem() {
        let bad = r#"{"type":"record","name":"E","fields":[
          {"name":"a","type":{"type":"array","items":"long"}},
          {"name":"b","type":["null","string","long"]},
          {"name":"event_time","type":"string"},
          {"name":"k","type":"long"}]}"#;
        let problems = EventEncoder::new(bad, "k").unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[3].contains("must be a string"));
        assert!(EventEncoder::new(SCHEMA, "nope").unwrap_err()[0].contains("not a field"));
        assert!(EventEncoder::new(SCHEMA, "a.b").unwrap_err()[0].contains("top-level"));
        assert!(EventEncoder::new("\"long\"", "k").unwrap_err()[0].contains("record"));
    }
}
