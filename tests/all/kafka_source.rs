//! The Kafka source driven directly, without a pipeline: what its consumer
//! thread does when the reader stops taking batches for a while.

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
