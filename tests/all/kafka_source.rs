//! The Kafka source driven directly, without a pipeline: what its consumer
//! thread does when the reader stops taking batches for a while, and in
//! which order it hands out the partitions' records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::record::bytes_at;
use tessera::sources::{KafkaSource, Source};
use tessera::stores::{EmbeddedStore, TileStore};

use crate::support;

const PARTITIONS: i32 = 4;
const RECORDS: i32 = 40_000;

/// `topic` with RECORDS records spread round-robin over PARTITIONS
/// (record i, payload `record i`, in partition i % PARTITIONS), and an
/// embedded store (in the returned directory) with nothing committed.
fn topic_with_records(topic: &str) -> (tempfile::TempDir, Arc<dyn TileStore>) {
    support::kafka_topic(topic, PARTITIONS);
    let messages: Vec<(i32, String, Vec<u8>)> = (0..RECORDS)
        .map(|i| {
            (
                i % PARTITIONS,
                format!("k{i}"),
                format!("record {i}").into_bytes(),
            )
        })
        .collect();
    support::kafka_produce(topic, &messages);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn TileStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("tiles.redb")).unwrap());
    (dir, store)
}

/// The reader takes one batch and then nothing for 3 s (a pipeline retrying
/// a commit): the consumer thread fills its channel, pauses the partitions
/// (its log says so), keeps polling, and resumes once the reader is back.
/// Every record arrives exactly once, in offset order per partition.
#[test]
fn a_stalled_reader_pauses_the_partitions_and_then_gets_every_record_once() {
    let log = support::captured_log();
    let topic = "stalled-reader";
    let group = "stalled-reader-group";
    let (_dir, store) = topic_with_records(topic);
    let properties = BTreeMap::from([(
        "bootstrap.servers".to_string(),
        support::kafka_bootstrap().to_string(),
    )]);
    let mut source = KafkaSource::open(
        &[topic.to_string()],
        group,
        &properties,
        Duration::from_millis(100),
        Some(Duration::from_secs(3)),
        store,
        "stalled-reader",
    )
    .unwrap();
    // Partition → payloads in the order read, checked against their offsets.
    let mut read: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    let mut take = |batch: &tessera::record::RawBatch| {
        for (i, offset) in batch.offsets.iter().enumerate() {
            let payload =
                String::from_utf8(bytes_at(&batch.payloads, i).unwrap().to_vec()).unwrap();
            read.entry(batch.partition)
                .or_default()
                .push((*offset, payload));
        }
    };
    let joined = Instant::now();
    loop {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "no records within 60 s"
        );
        let batch = source
            .next_batch(1000)
            .unwrap()
            .expect("an unbounded source");
        if !batch.raw.offsets.is_empty() {
            take(&batch.raw);
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    while let Some(batch) = source.next_batch(1000).unwrap() {
        assert!(!batch.rolled_back, "nothing was revoked");
        take(&batch.raw);
    }
    drop(source);
    let text = log.text();
    let ours = |what: &str| {
        text.lines()
            .any(|l| l.contains(what) && l.contains(&format!("group=\"{group}\"")))
    };
    let kafka_lines: Vec<&str> = text.lines().filter(|l| l.contains("kafka")).collect();
    assert!(
        ours("partitions paused"),
        "the consumer thread never paused; its log:\n{}",
        kafka_lines.join("\n")
    );
    assert!(
        ours("partitions resumed"),
        "the consumer thread never resumed"
    );
    // The oracle: partition p holds records p, p + 4, ... at offsets 0, 1, ...
    for p in 0..PARTITIONS {
        let got = read.remove(&p).unwrap_or_default();
        let want: Vec<(i64, String)> = (p..RECORDS)
            .step_by(PARTITIONS as usize)
            .enumerate()
            .map(|(offset, i)| (offset as i64, format!("record {i}")))
            .collect();
        assert_eq!(got.len(), want.len(), "partition {p}: records read");
        assert!(
            got == want,
            "partition {p}: records out of order, lost or read twice"
        );
    }
}

/// The reader stalls until its partitions are paused, and a second consumer
/// joins the group meanwhile: the first rolls back and is given half the
/// partitions, paused in librdkafka since before the revocation. Then the
/// second leaves and the first is given all of them again. From its last
/// roll-back on (nothing was committed: every partition starts at 0) it
/// reads every record of every partition exactly once: a partition paused
/// before a rebalance delivers again after it.
#[test]
fn partitions_paused_before_a_rebalance_deliver_after_it() {
    let topic = "paused-rebalance";
    let group = "paused-rebalance-group";
    let (_dir, store) = topic_with_records(topic);
    let properties = BTreeMap::from([
        (
            "bootstrap.servers".to_string(),
            support::kafka_bootstrap().to_string(),
        ),
        ("session.timeout.ms".to_string(), "6000".to_string()),
        ("heartbeat.interval.ms".to_string(), "500".to_string()),
    ]);
    let open = |idle: u64| {
        KafkaSource::open(
            &[topic.to_string()],
            group,
            &properties,
            Duration::from_millis(100),
            Some(Duration::from_secs(idle)),
            store.clone(),
            "paused-rebalance",
        )
        .unwrap()
    };
    let mut first = open(4);
    let started = Instant::now();
    while first
        .next_batch(1000)
        .unwrap()
        .unwrap()
        .raw
        .offsets
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no records within 60 s"
        );
    }
    // Stalled: the consumer thread pauses the partitions after 1 s.
    std::thread::sleep(Duration::from_secs(2));
    let second = open(600);
    // Still stalled while the group revokes the first's partitions (the
    // revocation waits for the roll-back it asks for).
    std::thread::sleep(Duration::from_secs(2));
    let mut since_roll_back: HashMap<i32, Vec<i64>> = HashMap::new();
    let mut read_until = |source: &mut KafkaSource, done: &dyn Fn(&KafkaSource) -> bool| {
        let started = Instant::now();
        while !done(source) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the group did not settle in 60 s"
            );
            let Some(batch) = source.next_batch(1000).unwrap() else {
                break;
            };
            if batch.rolled_back {
                since_roll_back.clear();
            }
            for offset in &batch.raw.offsets {
                since_roll_back
                    .entry(batch.raw.partition)
                    .or_default()
                    .push(*offset);
            }
        }
    };
    read_until(&mut first, &|s| s.assigned().len() == 2);
    drop(second);
    read_until(&mut first, &|s| s.assigned().len() == 4);
    // Then to the end (idle for 4 s).
    read_until(&mut first, &|_| false);
    for p in 0..PARTITIONS {
        let got = since_roll_back.remove(&p).unwrap_or_default();
        let want: Vec<i64> = (0..(RECORDS / PARTITIONS) as i64).collect();
        assert_eq!(
            got.len(),
            want.len(),
            "partition {p}: records read after the last roll-back"
        );
        assert!(
            got == want,
            "partition {p}: records out of order, lost or read twice"
        );
    }
}

/// Partitions are merged by message time: three partitions cover the same
/// 200 s of timestamps with 20,000, 10,000 and 5,000 records (so taking them
/// in turn by count, or a whole fetch at a time, would run them minutes
/// apart). The reader waits 2 s after its first batch, so every partition's
/// whole contents sit in librdkafka (one fetch each) while the consumer
/// thread has read ahead only what its channel holds. From then on the
/// partitions' progress in time never spreads by more than two batches'
/// span, until the first partition runs out. Every record arrives once, in
/// offset order, with its key, timestamp and headers.
#[test]
fn partitions_are_merged_by_message_time() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let topic = "merged-by-time";
    support::kafka_topic(topic, 3);
    let base = tessera::record::now_ms() - 600_000;
    // Partition p: records every STEP[p] ms over the same 200 s.
    const STEP: [i64; 3] = [10, 20, 40];
    let expected: Vec<Vec<(i64, String, i64)>> = (0..3)
        .map(|p| {
            (0..200_000 / STEP[p])
                .map(|i| (i, format!("p{p}-{i}"), base + i * STEP[p]))
                .collect()
        })
        .collect();
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_bootstrap())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (p, records) in expected.iter().enumerate() {
        for (i, key, ts) in records {
            let headers = OwnedHeaders::new().insert(Header {
                key: "n",
                value: Some(&i.to_string()),
            });
            let mut record = BaseRecord::to(topic)
                .partition(p as i32)
                .key(key)
                .payload("x")
                .timestamp(*ts)
                .headers(headers);
            while let Err((e, r)) = producer.send(record) {
                assert!(
                    matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ),
                    "producing: {e}"
                );
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn TileStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("tiles.redb")).unwrap());
    let properties = BTreeMap::from([
        (
            "bootstrap.servers".to_string(),
            support::kafka_bootstrap().to_string(),
        ),
        // A fetch holds a whole partition.
        (
            "max.partition.fetch.bytes".to_string(),
            "8388608".to_string(),
        ),
    ]);
    let mut source = KafkaSource::open(
        &[topic.to_string()],
        "merged-by-time-group",
        &properties,
        Duration::from_millis(100),
        Some(Duration::from_secs(3)),
        store,
        "merged-by-time",
    )
    .unwrap();
    const BATCH: usize = 200;
    // Per batch: partition, last timestamp; per partition: (offset, key, ts, header n).
    let mut order: Vec<(usize, i64)> = Vec::new();
    let mut read: Vec<Vec<(i64, String, i64, String)>> = vec![Vec::new(); 3];
    let started = Instant::now();
    while let Some(batch) = source.next_batch(BATCH).unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not read within 120 s"
        );
        assert!(!batch.rolled_back, "nothing was revoked");
        let raw = &batch.raw;
        if raw.offsets.is_empty() {
            continue;
        }
        assert!(raw.offsets.len() <= BATCH);
        let p = raw.partition as usize;
        for (i, offset) in raw.offsets.iter().enumerate() {
            let text = |c: &tessera::record::BytesColumn, j: usize| {
                String::from_utf8(bytes_at(c, j).unwrap().to_vec()).unwrap()
            };
            let (h0, h1) = (
                raw.header_index[i] as usize,
                raw.header_index[i + 1] as usize,
            );
            assert_eq!(h1 - h0, 1, "one header per record");
            assert_eq!(text(&raw.header_names, h0), "n");
            read[p].push((
                *offset,
                text(&raw.keys, i),
                raw.timestamps[i],
                text(&raw.header_values, h0),
            ));
        }
        order.push((p, *raw.timestamps.last().unwrap()));
        if order.len() == 1 {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    drop(source);
    for p in 0..3 {
        let want: Vec<(i64, String, i64, String)> = expected[p]
            .iter()
            .map(|(i, key, ts)| (*i, key.clone(), *ts, i.to_string()))
            .collect();
        assert_eq!(read[p].len(), want.len(), "partition {p}: records read");
        assert!(
            read[p] == want,
            "partition {p}: records out of order, lost, read twice or altered"
        );
    }
    // Progress in time per partition after each batch; the spread between
    // partitions once all have delivered, until the first runs out.
    let bound = 2 * BATCH as i64 * STEP.iter().max().unwrap();
    let last_ts: Vec<i64> = expected.iter().map(|r| r.last().unwrap().2).collect();
    let mut progress: [Option<i64>; 3] = [None; 3];
    let mut spreads = Vec::new();
    for &(p, ts) in &order {
        progress[p] = Some(ts);
        if progress
            .iter()
            .enumerate()
            .any(|(q, t)| *t == Some(last_ts[q]))
        {
            break;
        }
        if let [Some(a), Some(b), Some(c)] = progress {
            spreads.push(a.max(b).max(c) - a.min(b).min(c));
        }
    }
    let caught_up = spreads
        .iter()
        .position(|s| *s <= bound)
        .unwrap_or_else(|| panic!("the partitions never came within {bound} ms: {spreads:?}"));
    let after = &spreads[caught_up..];
    assert!(
        after.len() >= 20 && after.iter().all(|s| *s <= bound),
        "partitions ran apart after catching up (bound {bound} ms): {after:?}"
    );
}
