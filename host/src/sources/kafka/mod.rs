//! The Kafka-API source (Apache Kafka, Redpanda, anything librdkafka speaks
//! to): one or more topics read in a consumer group through `rdkafka`.
//!
//! Positions: the next offset of every partition is committed with the
//! tiles (store key `kafka:<topic>:<partition>`), and when the group assigns
//! a partition the consumer starts there; Kafka's own committed offsets are
//! not used (`enable.auto.commit` and `enable.auto.offset.store` are forced
//! off). A partition the store has never seen starts at
//! `auto.offset.reset` (default `earliest`).
//!
//! Rebalances: records of a revoked partition may already sit in the
//! pipeline's uncommitted tiles, and the partition's next owner starts at the
//! committed offset. So a revocation asks the pipeline to *roll back* to its
//! last checkpoint: it drops what it has not committed, and the source seeks
//! every partition it keeps to its committed offset. Nothing is counted
//! twice; a rebalance costs at most one checkpoint interval of re-reading.
//!
//! Batches: a raw batch holds records of one partition; messages are sorted
//! into per-partition builders and the fullest is handed out. Memory stays
//! bounded: the pipeline pulls, and librdkafka's own prefetch is capped by
//! `queued.max.messages.kbytes` (passed through like every other property).
//! Ingestion time is the message timestamp (the broker's log-append time
//! when the topic uses it), else when the host read the message.
//!
//! Health: librdkafka reconnects to brokers by itself with back-off
//! (`reconnect.backoff.ms`, `reconnect.backoff.max.ms`); the source reports
//! unhealthy while no broker connection is up (librdkafka statistics every
//! `statistics.interval.ms`, default here 1 s, and its all-brokers-down
//! error), and per-partition high watermarks for the lag. After each
//! checkpoint the committed positions are also committed to the group
//! (asynchronously, advisory only: they let `kafka-consumer-groups.sh` and
//! lag monitors see progress; the host never reads them back).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use super::{Source, SourceBatch};
use crate::error::SourceError;
use crate::record::{now_ms, RawBatchBuilder};
use crate::stores::TileStore;
use crate::telemetry::status::{SourcePartition, SourceStatus};

/// How long a partition assignment waits for an unreachable store to give
/// the partition's committed position before the host stops.
const COMMITTED_RETRY: Duration = Duration::from_secs(300);

/// The store key of a partition's committed position.
pub fn position_key(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}:{partition}")
}

/// What rebalance callbacks tell the source (they run inside `poll`).
#[derive(Default)]
struct Assignment {
    /// Partitions currently assigned.
    assigned: Vec<(String, i32)>,
    /// When partitions were last assigned (idle time counts from then).
    assigned_at: Option<Instant>,
}

/// What librdkafka's statistics and error callbacks tell the source.
#[derive(Default)]
struct BrokerHealth {
    /// Whether a broker connection is up; `None` before the first report.
    up: Option<bool>,
    /// Broker name → state ("UP", "CONNECT", "DOWN", ...), from the last statistics.
    states: BTreeMap<String, String>,
    /// Per partition: the offset the next produced message gets (the last
    /// stable offset under `read_committed`, librdkafka's default).
    high: HashMap<(String, i32), i64>,
}

/// The consumer context: starts assigned partitions at their committed
/// positions, records revocations and broker health.
struct GroupContext {
    store: Arc<dyn TileStore>,
    pipeline: String,
    assignment: Mutex<Assignment>,
    /// Set by a revocation: the pipeline must roll back. Checked before
    /// every poll, so an atomic rather than the assignment's lock.
    revoked: AtomicBool,
    health: Mutex<BrokerHealth>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "rdkafka", facility = fac, "{log_message}")
            }
            L::Warning => tracing::warn!(target: "rdkafka", facility = fac, "{log_message}"),
            _ => tracing::debug!(target: "rdkafka", facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "rdkafka", %error, "{reason}");
        if let KafkaError::Global(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) = error {
            self.health.lock().expect("not poisoned").up = Some(false);
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut h = self.health.lock().expect("not poisoned");
        h.states = statistics
            .brokers
            .values()
            .map(|b| (b.name.clone(), b.state.clone()))
            .collect();
        h.up = Some(h.states.values().any(|s| s == "UP"));
        for (topic, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                let high = if part.ls_offset >= 0 {
                    part.ls_offset
                } else {
                    part.hi_offset
                };
                if *p >= 0 && high >= 0 {
                    h.high.insert((topic.clone(), *p), high);
                }
            }
        }
    }
}

impl GroupContext {
    /// The partitions assigned now.
    fn assigned(&self) -> Vec<(String, i32)> {
        self.assignment
            .lock()
            .expect("not poisoned")
            .assigned
            .clone()
    }

    /// The committed next offset of a partition, if the store has one.
    fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match self
                .store
                .position(&self.pipeline, &position_key(topic, partition))
            {
                Ok(v) => {
                    return v
                        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                        .map(i64::from_be_bytes)
                }
                // The store is unreachable for now: wait for it (the
                // partition cannot start anywhere else).
                Err(e) if e.is_transient() && started.elapsed() < COMMITTED_RETRY => {
                    tracing::warn!(error = %e, topic, partition, retry_in = ?delay, "cannot read the committed position yet");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    // Starting anywhere else could count records twice: stop.
                    tracing::error!(error = %e, topic, partition, "cannot read the committed position; the host stops");
                    std::process::exit(70);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr as E;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                for (topic, p) in &parts {
                    if let Some(next) = self.committed(topic, *p) {
                        let _ = tpl.set_partition_offset(topic, *p, Offset::Offset(next));
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
                tracing::info!(partitions = ?parts, "partitions assigned (starting at committed positions)");
                let mut a = self.assignment.lock().expect("not poisoned");
                a.assigned_at = Some(Instant::now());
                for part in parts {
                    if !a.assigned.contains(&part) {
                        a.assigned.push(part);
                    }
                }
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "unassigning partitions failed");
                }
                tracing::info!(partitions = ?parts, "partitions revoked: rolling back to the last checkpoint");
                let mut a = self.assignment.lock().expect("not poisoned");
                a.assigned.retain(|p| !parts.contains(p));
                self.revoked.store(true, Ordering::Release);
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                let _ = consumer.unassign();
                let mut a = self.assignment.lock().expect("not poisoned");
                a.assigned.clear();
                self.revoked.store(true, Ordering::Release);
            }
        }
    }
}

/// A Kafka-API source in a consumer group.
pub struct KafkaSource {
    consumer: BaseConsumer<GroupContext>,
    /// Next offset of every partition, covering the records handed out.
    next: BTreeMap<(String, i32), i64>,
    /// Records polled but not yet handed out, by partition (a few
    /// partitions per host: a list, searched without allocating).
    pending: Vec<((String, i32), RawBatchBuilder)>,
    poll_timeout: Duration,
    idle_exit: Option<Duration>,
    last_record: Instant,
    topics: Vec<String>,
    /// Set when a poll ran dry: the next message marks the brokers up
    /// (sooner than the next statistics).
    saw_no_message: bool,
}

impl KafkaSource {
    /// Joins the group and subscribes. `properties` go to librdkafka as
    /// given; `group.id` and the offset-commit settings are set here.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        topics: &[String],
        group_id: &str,
        properties: &BTreeMap<String, String>,
        poll_timeout: Duration,
        idle_exit: Option<Duration>,
        store: Arc<dyn TileStore>,
        pipeline: &str,
    ) -> Result<Self, SourceError> {
        let mut cfg = ClientConfig::new();
        cfg.set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "1000");
        for (k, v) in properties {
            cfg.set(k, v);
        }
        cfg.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        let context = GroupContext {
            store,
            pipeline: pipeline.to_string(),
            assignment: Mutex::new(Assignment::default()),
            revoked: AtomicBool::new(false),
            health: Mutex::new(BrokerHealth::default()),
        };
        let consumer: BaseConsumer<GroupContext> = cfg
            .create_with_context(context)
            .map_err(|e| SourceError::Kafka(format!("creating the consumer: {e}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| SourceError::Kafka(format!("subscribing to {topics:?}: {e}")))?;
        Ok(KafkaSource {
            consumer,
            next: BTreeMap::new(),
            pending: Vec::new(),
            poll_timeout,
            idle_exit,
            last_record: Instant::now(),
            topics: topics.to_vec(),
            saw_no_message: true,
        })
    }

    /// After a revocation: forget everything not committed and seek every
    /// partition still assigned to its committed position.
    fn roll_back(&mut self) {
        self.pending.clear();
        self.next.clear();
        let ctx = self.consumer.context();
        ctx.revoked.store(false, Ordering::Release);
        let assigned = ctx.assigned();
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in &assigned {
            let offset = match self.consumer.context().committed(topic, *p) {
                Some(n) => Offset::Offset(n),
                None => Offset::Beginning,
            };
            let _ = tpl.add_partition_offset(topic, *p, offset);
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.seek_partitions(tpl, Duration::from_secs(10)) {
                tracing::error!(error = %e, "seeking back to committed positions failed");
            }
        }
    }

    /// Hands out the fullest pending batch.
    fn take_fullest(&mut self) -> Option<SourceBatch> {
        let i = (0..self.pending.len()).max_by_key(|i| self.pending[*i].1.len())?;
        let (key, builder) = self.pending.swap_remove(i);
        let raw = builder.finish();
        if let Some(last) = raw.offsets.last() {
            self.next.insert(key, last + 1);
        }
        Some(SourceBatch {
            raw,
            read_errors: Vec::new(),
            rolled_back: false,
        })
    }
}

impl Source for KafkaSource {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<SourceBatch>, SourceError> {
        let deadline = Instant::now() + self.poll_timeout;
        loop {
            if self.consumer.context().revoked.load(Ordering::Acquire) {
                self.roll_back();
                return Ok(Some(SourceBatch::rolled_back()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if let Some(b) = self.take_fullest() {
                    return Ok(Some(b));
                }
                self.saw_no_message = true;
                // Idle: nothing read since the later of the last record and
                // the last assignment (never before the group assigned us).
                let assigned_at = self
                    .consumer
                    .context()
                    .assignment
                    .lock()
                    .expect("not poisoned")
                    .assigned_at;
                if let (Some(idle), Some(at)) = (self.idle_exit, assigned_at) {
                    if self.last_record.max(at).elapsed() >= idle {
                        return Ok(None);
                    }
                }
                return Ok(Some(SourceBatch::empty()));
            }
            match self.consumer.poll(left) {
                None => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka poll failed; retrying");
                }
                Some(Ok(m)) => {
                    self.last_record = Instant::now();
                    if self.saw_no_message {
                        self.saw_no_message = false;
                        self.consumer
                            .context()
                            .health
                            .lock()
                            .expect("not poisoned")
                            .up = Some(true);
                    }
                    let (topic, partition) = (m.topic(), m.partition());
                    let i = match self
                        .pending
                        .iter()
                        .position(|((t, p), _)| *p == partition && t == topic)
                    {
                        Some(i) => i,
                        None => {
                            let key = (topic.to_string(), partition);
                            self.pending
                                .push((key, RawBatchBuilder::new(topic, partition)));
                            self.pending.len() - 1
                        }
                    };
                    let b = &mut self.pending[i].1;
                    let ts = m.timestamp().to_millis().unwrap_or_else(now_ms);
                    b.push(
                        m.offset(),
                        ts,
                        m.key().unwrap_or(&[]),
                        m.payload().unwrap_or(&[]),
                    );
                    if let Some(headers) = m.headers() {
                        for h in headers.iter() {
                            b.header(h.key.as_bytes(), h.value.unwrap_or(&[]));
                        }
                    }
                    // Only the batch pushed to can have reached the size.
                    if b.len() >= max_records {
                        return Ok(self.take_fullest());
                    }
                }
            }
        }
    }

    fn positions(&self) -> Vec<(String, Vec<u8>)> {
        self.next
            .iter()
            .map(|((t, p), n)| (position_key(t, *p), n.to_be_bytes().to_vec()))
            .collect()
    }

    fn describe_position(&self) -> String {
        let parts: Vec<String> = self
            .next
            .iter()
            .map(|((t, p), n)| format!("{t}/{p}@{n}"))
            .collect();
        if parts.is_empty() {
            format!("{:?} (waiting for records)", self.topics)
        } else {
            parts.join(" ")
        }
    }

    fn is_bounded(&self) -> bool {
        false
    }

    fn assigned(&self) -> Vec<(String, i32)> {
        self.consumer.context().assigned()
    }

    fn rewind(&mut self) -> bool {
        self.roll_back();
        true
    }

    fn committed(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), next) in &self.next {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*next));
        }
        if tpl.count() > 0 {
            if let Err(e) = self
                .consumer
                .commit(&tpl, rdkafka::consumer::CommitMode::Async)
            {
                tracing::debug!(error = %e, "advisory offset commit to the group failed");
            }
        }
    }

    fn status(&self) -> SourceStatus {
        let ctx = self.consumer.context();
        let assigned = ctx.assigned();
        let h = ctx.health.lock().expect("not poisoned");
        let mut problems = Vec::new();
        match h.up {
            Some(true) => {}
            up => {
                let states: Vec<String> =
                    h.states.iter().map(|(b, s)| format!("{b} {s}")).collect();
                problems.push(format!(
                    "Kafka: {} (librdkafka reconnects with back-off){}",
                    if up.is_none() {
                        "no broker connection yet"
                    } else {
                        "no broker connection is up"
                    },
                    if states.is_empty() {
                        String::new()
                    } else {
                        format!("; brokers: {}", states.join(", "))
                    }
                ));
            }
        }
        let partitions = assigned
            .iter()
            .map(|key| SourcePartition {
                next_offset: self
                    .next
                    .get(key)
                    .copied()
                    .or_else(|| ctx.committed(&key.0, key.1)),
                high_watermark: h.high.get(key).copied(),
                topic: key.0.clone(),
                partition: key.1,
            })
            .collect();
        SourceStatus {
            ready: problems.is_empty() && !assigned.is_empty(),
            problems,
            partitions,
        }
    }
}
