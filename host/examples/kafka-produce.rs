//! Produces the lines of an NDJSON file to a topic (created with the given
//! partition count), as fast as the broker takes them or at RATE records/s
//! (COUNT records, going round the file), for `scripts/bench-kafka.sh`.
//! Usage: kafka-produce BOOTSTRAP TOPIC PARTITIONS FILE [RATE COUNT]
//! (`COMPRESSION` sets the producer's `compression.type`, lz4 by default).

use std::io::BufRead;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 5 || args.len() == 7,
        "usage: kafka-produce BOOTSTRAP TOPIC PARTITIONS FILE [RATE COUNT]"
    );
    let paced: Option<(f64, u64)> = match args.get(5..7) {
        Some([rate, count]) => Some((rate.parse()?, count.parse()?)),
        _ => None,
    };
    let (bootstrap, topic, partitions, file) = (&args[1], &args[2], args[3].parse()?, &args[4]);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    futures::executor::block_on(admin.create_topics([&t], &AdminOptions::new()))?;
    let compression = std::env::var("COMPRESSION").unwrap_or_else(|_| "lz4".into());
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", &compression)
        .create()?;
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(file)?)
        .lines()
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!lines.is_empty(), "{file} is empty");
    let total = paced.map_or(lines.len() as u64, |(_, count)| count);
    let started = Instant::now();
    let mut n = 0u64;
    while n < total {
        if let Some((rate, _)) = paced {
            // Ahead of schedule: wait until record n is due.
            let due = Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let line = &lines[(n % lines.len() as u64) as usize];
        let key = n.to_string();
        let mut record = BaseRecord::to(topic).key(&key).payload(line);
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
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {n} records to {topic} in {secs:.1}s ({:.0} records/s)",
        n as f64 / secs
    );
    Ok(())
}
