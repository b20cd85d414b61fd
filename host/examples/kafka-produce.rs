//! Produces the lines of an NDJSON file to a topic (created with the given
//! partition count), as fast as the broker takes them, for
//! `scripts/bench-kafka.sh`. Usage: kafka-produce BOOTSTRAP TOPIC PARTITIONS FILE

use std::io::BufRead;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 5,
        "usage: kafka-produce BOOTSTRAP TOPIC PARTITIONS FILE"
    );
    let (bootstrap, topic, partitions, file) = (&args[1], &args[2], args[3].parse()?, &args[4]);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    futures::executor::block_on(admin.create_topics([&t], &AdminOptions::new()))?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let started = Instant::now();
    let mut n = 0u64;
    for line in std::io::BufReader::new(std::fs::File::open(file)?).lines() {
        let line = line?;
        let key = n.to_string();
        let mut record = BaseRecord::to(topic).key(&key).payload(&line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        n += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    eprintln!(
        "produced {n} records to {topic} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
