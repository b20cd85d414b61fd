//! File sources: NDJSON and Avro give the same tiles; malformed input goes to
//! the dead letter with a reason; a re-run over committed input counts nothing twice.

use apache_avro::{types::Record, Schema, Writer};

use crate::support::{self, Event};

const SCHEMA: &str = r#"{"type": "record", "name": "Event", "fields": [
  {"name": "ts", "type": "long"}, {"name": "type", "type": "string"},
  {"name": "post_id", "type": "string"}, {"name": "user_id", "type": "string"},
  {"name": "dwell_ms", "type": "long"}]}"#;

fn write_avro(path: &std::path::Path, events: &[Event]) {
    let schema = Schema::parse_str(SCHEMA).unwrap();
    let mut w = Writer::with_codec(
        &schema,
        Vec::new(),
        apache_avro::Codec::Deflate(Default::default()),
    )
    .unwrap();
    for e in events {
        let mut r = Record::new(&schema).unwrap();
        r.put("ts", e.ts);
        r.put("type", e.ty);
        r.put("post_id", e.post.as_str());
        r.put("user_id", e.user.as_str());
        r.put("dwell_ms", e.dwell);
        w.append_value(r).unwrap();
        if e.dwell % 97 == 0 {
            w.flush().unwrap(); // several blocks
        }
    }
    std::fs::write(path, w.into_inner().unwrap()).unwrap();
}

#[test]
fn avro_files_give_the_same_answers_as_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(17, 5_000, 2 * 3_600_000, 5_000, None);
    let input = dir.path().join("events.avro");
    write_avro(&input, &events);
    let (store, stats) = support::run(&support::config(
        dir.path(),
        &input,
        "",
        "[watermark]\nout_of_orderness = \"1h\"",
    ));
    assert_eq!(
        (stats.records_in, stats.events_out, stats.dead_lettered),
        (5_000, 5_000, 0)
    );
    crate::windows::check_windows(store.as_ref(), &events, 23, 200);
}

#[test]
fn corrupt_and_malformed_input_is_dead_lettered_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let events = support::events(19, 3_000, 3_600_000, 1_000, None);
    // a.ndjson: good lines with malformed ones between them.
    let mut lines: Vec<String> = events[..1_000].iter().map(Event::json).collect();
    lines.insert(10, "{\"ts\": 1, \"type\": \"like\", \"post_id\": ".into());
    lines.insert(20, "[1, 2, 3]".into());
    lines.insert(30, "{\"type\": \"like\", \"post_id\": \"p\"}".into());
    lines.insert(40, String::from_utf8_lossy(b"\xff\xfe binary").into_owned());
    lines.insert(50, "".into()); // blank lines are not records
    std::fs::write(input.join("a.ndjson"), lines.join("\n") + "\n").unwrap();
    // b.avro: valid header and first blocks, then garbage.
    let mut avro_path = input.join("b.avro");
    write_avro(&avro_path, &events[1_000..2_000]);
    let mut bytes = std::fs::read(&avro_path).unwrap();
    let cut = bytes.len() * 2 / 3;
    for b in &mut bytes[cut..cut + 64] {
        *b = 0xAB;
    }
    std::fs::write(&avro_path, &bytes).unwrap();
    // c.avro: not Avro at all.
    avro_path = input.join("c.avro");
    std::fs::write(&avro_path, b"this is not an avro file").unwrap();

    let (_store, stats) = support::run(&support::config(
        dir.path(),
        &input,
        "",
        "[watermark]\nout_of_orderness = \"1h\"",
    ));
    let dead = support::read_ndjson(&dir.path().join("dead-letter.ndjson"));
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("EOF while parsing")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("expected a JSON object") || r.contains("invalid type")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("missing event time")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("expected value") || r.contains("invalid JSON")),
        "{reasons:?}"
    );
    let corrupt: Vec<_> = dead
        .iter()
        .filter(|d| d["reason"].as_str().unwrap().contains("corrupt Avro data"))
        .collect();
    assert_eq!(corrupt.len(), 1, "{reasons:?}");
    assert_eq!(corrupt[0]["stage"], "source");
    assert!(
        dead.iter().any(|d| d["reason"]
            .as_str()
            .unwrap()
            .contains("not an Avro object container file")),
        "{reasons:?}"
    );
    // Every record is accounted for: turned into an event or dead-lettered.
    let avro_read = corrupt[0]["offset"].as_i64().unwrap() as u64 - 1;
    assert!(avro_read > 100 && avro_read < 1_000, "{avro_read}");
    assert_eq!(stats.records_in, stats.events_out + stats.dead_lettered);
    assert_eq!(stats.events_out, 1_000 + avro_read);
    assert_eq!(stats.dead_lettered, 4 + 1 + 1);
}

#[test]
fn running_again_over_committed_input_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(29, 4_000, 3_600_000, 1_000, None);
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let cfg = support::config(
        dir.path(),
        &input,
        "checkpoint_events = 1000",
        "[watermark]\nout_of_orderness = \"1h\"",
    );
    let (store, first) = support::run(&cfg);
    assert_eq!(first.records_in, 4_000);
    drop(store);
    let (store, second) = support::run(&cfg);
    assert_eq!(second.records_in, 0);
    crate::windows::check_windows(store.as_ref(), &events, 31, 100);
}
