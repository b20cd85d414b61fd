use super::*;

fn parse(config: &str, payloads: &[&str]) -> ParseOutput {
    let mut p = JsonParser::init(config).unwrap();
    let mut out = ParseOutputBuilder::new();
    p.parse(&RawBatch::from_payloads("t", payloads), &mut out);
    out.finish()
}

#[test]
fn maps_time_type_entities_and_fields() {
    let cfg = r#"{"fields": {"dwell_ms": "float64", "premium": "boolean", "n": "int64"}}"#;
    let out = parse(
        cfg,
        &[
            r#"{"ts": 1000, "type": "like", "post_id": "p1", "user_id": "u1", "extra": {"deep": [1,2]}}"#,
            r#"{"type": "view", "post_id": 42, "ts": 2000, "dwell_ms": 12.5, "premium": true, "n": 7}"#,
        ],
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let ev = &out.events;
    assert_eq!(ev.len, 2);
    assert_eq!(ev.event_time, vec![1000, 2000]);
    assert_eq!(ev.type_name(0), Some("like"));
    assert_eq!(ev.type_name(1), Some("view"));
    assert_eq!(ev.source_row, vec![0, 1]);
    let post = ev.column("post_id").unwrap();
    assert_eq!((post.str(0), post.str(1)), (Some("p1"), Some("42")));
    let user = ev.column("user_id").unwrap();
    assert_eq!((user.str(0), user.str(1)), (Some("u1"), None));
    assert_eq!(ev.column("dwell_ms").unwrap().f64(1), Some(12.5));
    assert_eq!(ev.column("dwell_ms").unwrap().f64(0), None);
    assert_eq!(ev.column("n").unwrap().i64(1), Some(7));
    assert!(ev.validate().is_ok());
}

#[test]
fn ndjson_and_arrays_make_several_events_per_record() {
    let out = parse("", &[
        "{\"ts\":1,\"type\":\"a\",\"post_id\":\"x\"}\n\n{\"ts\":2,\"type\":\"b\",\"post_id\":\"y\"}\n",
        r#"[{"ts":3,"type":"a","post_id":"z"},{"ts":4,"type":"a","post_id":"w"}]"#,
    ]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.events.event_time, vec![1, 2, 3, 4]);
    assert_eq!(out.events.source_row, vec![0, 0, 1, 1]);
}

#[test]
fn bad_records_become_errors_and_good_ones_survive() {
    let out = parse(
        "",
        &[
            r#"{"ts": 1, "type": "like", "post_id": "ok"}"#,
            r#"{"ts": 1, "type": "like", "post_id": "#,
            r#"{"type": "like", "post_id": "p"}"#,
            r#"{"ts": 5, "post_id": "p"}"#,
            r#"["not an object"]"#,
            "",
            r#"{"ts": "soon", "type": "like"}"#,
            "{\"ts\":1,\"type\":\"a\"}\n{broken",
            r#"{"ts": 2, "type": "like", "post_id": "ok2"} trailing"#,
        ],
    );
    let rows: Vec<u32> = out.errors.iter().map(|e| e.row).collect();
    assert_eq!(rows, vec![1, 2, 3, 4, 5, 6, 7, 8], "{:?}", out.errors);
    assert!(out.errors[1]
        .reason
        .contains("missing event time field `ts`"));
    assert!(out.errors[2]
        .reason
        .contains("missing event type field `type`"));
    assert!(out.errors[4].reason.contains("empty payload"));
    assert!(
        out.errors[6].reason.starts_with("line 2"),
        "{}",
        out.errors[6].reason
    );
    // Only the first record produced an event, and the half-parsed NDJSON record left nothing.
    assert_eq!(out.events.len, 1);
    assert_eq!(out.events.column("post_id").unwrap().str(0), Some("ok"));
    assert!(out.events.validate().is_ok());
}

#[test]
fn time_formats_and_default_type() {
    let out = parse(
        r#"{"time_format": "unix_s", "default_type": "click"}"#,
        &[r#"{"ts": 1.5}"#, r#"{"ts": "2"}"#],
    );
    assert_eq!(out.events.event_time, vec![1500, 2000]);
    assert_eq!(out.events.type_name(0), Some("click"));
    let out = parse(
        r#"{"time_format": "rfc3339", "time_field": "at"}"#,
        &[
            r#"{"at": "1970-01-01T00:00:01.5Z", "type": "x"}"#,
            r#"{"at": 5, "type": "x"}"#,
        ],
    );
    assert_eq!(out.events.event_time, vec![1500]);
    assert_eq!(out.errors.len(), 1);
}

#[test]
fn escaped_strings_are_decoded() {
    let out = parse(
        "",
        &[r#"{"ts": 1, "type": "l\u0069ke", "post_id": "a\"b"}"#],
    );
    assert_eq!(out.events.type_name(0), Some("like"));
    assert_eq!(out.events.column("post_id").unwrap().str(0), Some("a\"b"));
}

#[test]
fn bad_configs_are_rejected() {
    assert!(JsonParser::init(r#"{"time_format": "weird"}"#).is_err());
    assert!(JsonParser::init(r#"{"unknown": 1}"#).is_err());
    assert!(JsonParser::init(r#"{"entity_fields": ["ts"]}"#)
        .unwrap_err()
        .contains("mapped twice"));
    assert!(JsonParser::init(r#"{"fields": {"x": "decimal"}}"#).is_err());
}

/// Mapped keys longer than 8 bytes that share their first 8 bytes (the
/// packed part of the key lookup) still map to their own columns.
#[test]
fn long_keys_sharing_a_prefix_map_to_their_own_columns() {
    let cfg =
        r#"{"entity_fields": ["account_id_a", "account_id_b"], "fields": {"account_id": "int64"}}"#;
    let out = parse(
        cfg,
        &[
            r#"{"ts": 1, "type": "t", "account_id_b": "B", "account_id_a": "A", "account_id": 3, "account_id_c": "C"}"#,
        ],
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let ev = &out.events;
    assert_eq!(ev.column("account_id_a").unwrap().str(0), Some("A"));
    assert_eq!(ev.column("account_id_b").unwrap().str(0), Some("B"));
    assert_eq!(ev.column("account_id").unwrap().i64(0), Some(3));
}
