//! Reads a topic from the start as fast as librdkafka delivers it, and does
//! nothing with the messages: the ceiling a consumer on this machine gets
//! from the broker, for `scripts/bench-kafka.sh`. Prints records/s from the
//! first message to the last. Usage: kafka-consume BOOTSTRAP TOPIC COUNT [KEY=VALUE...]
//!
//! With `CONSUME_BATCH=N` it assigns every partition itself (no group
//! rebalances) and reads N messages per `rd_kafka_consume_batch_queue`
//! call instead of one per poll, as the source's partition feeds do.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: kafka-consume BOOTSTRAP TOPIC COUNT [KEY=VALUE...]"
    );
    let (bootstrap, topic, count): (&str, &str, u64) = (&args[1], &args[2], args[3].parse()?);
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", format!("consume-only-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for kv in &args[4..] {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("not KEY=VALUE: {kv}"))?;
        cfg.set(k, v);
    }
    let consumer: BaseConsumer = cfg.create()?;
    let (mut n, mut bytes) = (0u64, 0usize);
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    if let Some(size) = std::env::var("CONSUME_BATCH")
        .ok()
        .filter(|s| !s.is_empty())
    {
        use rdkafka::bindings as rd;
        let size: usize = size.parse()?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let parts = md.topics()[0].partitions().len() as i32;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let rk = consumer.client().native_ptr();
        let q = unsafe { rd::rd_kafka_queue_new(rk) };
        let ctopic = std::ffi::CString::new(topic)?;
        for p in 0..parts {
            unsafe {
                let pq = rd::rd_kafka_queue_get_partition(rk, ctopic.as_ptr(), p);
                rd::rd_kafka_queue_forward(pq, q);
                rd::rd_kafka_queue_destroy(pq);
            }
        }
        let mut buf: Vec<*mut rd::rd_kafka_message_t> = vec![std::ptr::null_mut(); size];
        while n < count && Instant::now() < deadline {
            let _ = consumer.poll(Duration::ZERO);
            let got = unsafe { rd::rd_kafka_consume_batch_queue(q, 100, buf.as_mut_ptr(), size) };
            for m in &buf[..got.max(0) as usize] {
                unsafe {
                    if (**m).err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                        first.get_or_insert_with(Instant::now);
                        bytes += (**m).len;
                        n += 1;
                    }
                    rd::rd_kafka_message_destroy(*m);
                }
            }
        }
        unsafe { rd::rd_kafka_queue_destroy(q) };
        let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        println!("{{\"records_in\": {n}, \"reading\": {secs}, \"bytes\": {bytes}}}");
        return Ok(());
    }
    consumer.subscribe(&[topic])?;
    while n < count && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    println!("{{\"records_in\": {n}, \"reading\": {secs}, \"bytes\": {bytes}}}");
    Ok(())
}
