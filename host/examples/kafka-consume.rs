//! Reads a topic from the start as fast as it is delivered and does nothing
//! with the records: how fast Tessera's Kafka source (partition feeds
//! merged by time, its consumer thread, the hand-over channel) delivers
//! from the broker here with no pipeline behind it, for
//! `scripts/bench-kafka.sh`. Prints records/s from the first record to the
//! last. Usage: kafka-consume BOOTSTRAP TOPIC COUNT [KEY=VALUE...] (the
//! librdkafka properties).
//!
//! With `RAW=1` it is a plain librdkafka consumer in a group instead,
//! polling one message at a time (what the source did before it read
//! partition feeds in batches).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use tessera::sources::{KafkaSource, Source};
use tessera::stores::{EmbeddedStore, TileStore};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: kafka-consume BOOTSTRAP TOPIC COUNT [KEY=VALUE...]"
    );
    let (bootstrap, topic, count): (&str, &str, u64) = (&args[1], &args[2], args[3].parse()?);
    let mut properties = BTreeMap::from([("bootstrap.servers".to_string(), bootstrap.to_string())]);
    for kv in &args[4..] {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("not KEY=VALUE: {kv}"))?;
        properties.insert(k.to_string(), v.to_string());
    }
    let group = format!("consume-only-{}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut n, mut bytes) = (0u64, 0usize);
    let mut first = None;
    if std::env::var("RAW").is_ok_and(|v| !v.is_empty()) {
        let mut cfg = ClientConfig::new();
        cfg.set("group.id", &group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false");
        for (k, v) in &properties {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer = cfg.create()?;
        consumer.subscribe(&[topic])?;
        while n < count && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m?;
                first.get_or_insert_with(Instant::now);
                bytes += m.payload().map_or(0, <[u8]>::len);
                n += 1;
            }
        }
    } else {
        // The source reads committed positions from a store: an empty one.
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn TileStore> = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb"))?);
        let mut source = KafkaSource::open(
            &[topic.to_string()],
            &group,
            &properties,
            Duration::from_millis(100),
            None,
            store,
            &group,
        )?;
        while n < count && Instant::now() < deadline {
            let Some(batch) = source.next_batch(1024)? else {
                break;
            };
            if !batch.raw.offsets.is_empty() {
                first.get_or_insert_with(Instant::now);
                bytes += batch.raw.payloads.data.len();
                n += batch.raw.offsets.len() as u64;
            }
        }
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    println!("{{\"records_in\": {n}, \"reading\": {secs}, \"bytes\": {bytes}}}");
    Ok(())
}
