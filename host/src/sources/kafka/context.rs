//! The consumer's context: what librdkafka's callbacks (run inside `poll`
//! on the consumer thread) tell the source, and what they ask of the
//! pipeline.
//!
//! Assignment starts each partition at its committed position (read from
//! the store), its queue split off first so the consumer thread reads it
//! as a feed of its own (`feed.rs`). Revocation sets [`GroupContext::revoked`] and waits, bounded
//! by [`REVOKE_WAIT`], until the pipeline has rolled back, so the old owner
//! commits nothing of a partition once the group has handed it on (the
//! store's fencing covers a pipeline that cannot answer in time, e.g. one
//! stuck retrying a commit). Statistics and errors give broker health and
//! per-partition high watermarks for the lag.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use super::feed::{PartitionFeed, Wake};
use crate::stores::TileStore;

/// How long a partition assignment waits for an unreachable store to give
/// the partition's committed position before the host stops.
const COMMITTED_RETRY: Duration = Duration::from_secs(300);

/// How long a revocation waits for the pipeline to roll back before it lets
/// the rebalance go on.
const REVOKE_WAIT: Duration = Duration::from_secs(10);

/// The store key of a partition's committed position.
pub fn position_key(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}:{partition}")
}

/// What rebalance callbacks tell the source (they run inside `poll`).
#[derive(Default)]
pub(super) struct Assignment {
    /// Partitions currently assigned.
    pub(super) assigned: Vec<(String, i32)>,
    /// When partitions were last assigned (idle time counts from then).
    pub(super) assigned_at: Option<Instant>,
    /// The queue of every assigned partition, split off the consumer queue.
    pub(super) feeds: Vec<Arc<PartitionFeed>>,
    /// Every partition of the topics, from the metadata read at the last
    /// assignment (a topic's partition count changing starts a rebalance).
    pub(super) all: Vec<(String, i32)>,
}

/// What librdkafka's statistics and error callbacks tell the source.
#[derive(Default)]
pub(super) struct BrokerHealth {
    /// Whether a broker connection is up; `None` before the first report.
    pub(super) up: Option<bool>,
    /// Broker name → state ("UP", "CONNECT", "DOWN", ...), from the last statistics.
    pub(super) states: BTreeMap<String, String>,
    /// Per partition: the offset the next produced message gets (the last
    /// stable offset under `read_committed`, librdkafka's default).
    pub(super) high: HashMap<(String, i32), i64>,
}

/// The consumer context: starts assigned partitions at their committed
/// positions, records revocations and broker health.
pub(super) struct GroupContext {
    store: Arc<dyn TileStore>,
    pipeline: String,
    topics: Vec<String>,
    pub(super) assignment: Mutex<Assignment>,
    /// Bumped whenever the feeds change (the consumer thread then takes
    /// the new set).
    pub(super) feeds_version: AtomicU64,
    /// Woken when a feed gets messages.
    pub(super) wake: Arc<Wake>,
    /// Set by a revocation: the pipeline must roll back. Checked before
    /// every batch, so an atomic rather than the assignment's lock.
    pub(super) revoked: AtomicBool,
    /// Roll-backs the pipeline has done, and a wake-up for revocations
    /// waiting on the next one.
    rollbacks: Mutex<u64>,
    rolled_back: Condvar,
    /// The consumer is closing: revocations do not wait.
    pub(super) closing: AtomicBool,
    pub(super) health: Mutex<BrokerHealth>,
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
    pub(super) fn new(store: Arc<dyn TileStore>, pipeline: &str, topics: &[String]) -> Self {
        GroupContext {
            store,
            pipeline: pipeline.to_string(),
            topics: topics.to_vec(),
            assignment: Mutex::new(Assignment::default()),
            feeds_version: AtomicU64::new(0),
            wake: Arc::new(Wake::default()),
            revoked: AtomicBool::new(false),
            rollbacks: Mutex::new(0),
            rolled_back: Condvar::new(),
            closing: AtomicBool::new(false),
            health: Mutex::new(BrokerHealth::default()),
        }
    }

    /// The pipeline dropped what it had not committed: a waiting
    /// revocation may go on.
    pub(super) fn rolled_back(&self) {
        self.revoked.store(false, Ordering::Release);
        *self.rollbacks.lock().expect("not poisoned") += 1;
        self.rolled_back.notify_all();
    }

    /// Asks the pipeline to roll back and waits until it has (or
    /// [`REVOKE_WAIT`] passed, or the consumer is closing).
    fn await_roll_back(&self) {
        let rollbacks = self.rollbacks.lock().expect("not poisoned");
        let before = *rollbacks;
        self.revoked.store(true, Ordering::Release);
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let (_rollbacks, waited) = self
            .rolled_back
            .wait_timeout_while(rollbacks, REVOKE_WAIT, |n| {
                *n == before && !self.closing.load(Ordering::Acquire)
            })
            .expect("not poisoned");
        if waited.timed_out() {
            tracing::warn!(
                waited = ?REVOKE_WAIT,
                "the pipeline has not rolled back yet; the rebalance goes on (a checkpoint it commits later is fenced)"
            );
        }
    }

    /// The partitions assigned now.
    pub(super) fn assigned(&self) -> Vec<(String, i32)> {
        self.assignment
            .lock()
            .expect("not poisoned")
            .assigned
            .clone()
    }

    /// The feeds of the partitions assigned now.
    pub(super) fn feeds(&self) -> Vec<Arc<PartitionFeed>> {
        self.assignment.lock().expect("not poisoned").feeds.clone()
    }

    /// Lets go of every feed (before the consumer goes: a feed holds a
    /// librdkafka queue).
    pub(super) fn drop_feeds(&self) {
        self.assignment.lock().expect("not poisoned").feeds.clear();
        self.feeds_version.fetch_add(1, Ordering::AcqRel);
    }

    /// Every partition of the topics as of the last assignment.
    pub(super) fn partitions(&self) -> Vec<(String, i32)> {
        self.assignment.lock().expect("not poisoned").all.clone()
    }

    /// Reads the topics' partitions from the brokers' metadata (kept as
    /// they were when that fails: it is retried at the next assignment).
    fn read_partitions(&self, consumer: &BaseConsumer<Self>) {
        let mut all = Vec::new();
        for topic in &self.topics {
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                Ok(md) => all.extend(
                    md.topics()
                        .iter()
                        .filter(|t| t.name() == topic && t.error().is_none())
                        .flat_map(|t| t.partitions().iter().map(|p| (topic.clone(), p.id()))),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, topic, "reading the topic's partitions failed; keeping the last known");
                    return;
                }
            }
        }
        self.assignment.lock().expect("not poisoned").all = all;
    }

    /// The committed next offset of a partition, if the store has one.
    pub(super) fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.read_committed(topic, partition, &position_key(topic, partition))
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(i64::from_be_bytes)
    }

    /// Reads what the partition's last owner committed for it: its offset,
    /// and its watermark mark (read, not used: a CQL store fences a
    /// checkpoint that moves a key another host wrote since this one last
    /// read it, and the new owner writes the mark from its first checkpoint
    /// on; see `pipeline::completeness`).
    pub(super) fn take_over(&self, topic: &str, partition: i32) -> Option<i64> {
        let mark = crate::window::PartitionMark::key(topic, partition);
        let _ = self.read_committed(topic, partition, &mark);
        self.committed(topic, partition)
    }

    /// A committed position of a partition, waiting for a store that is
    /// unreachable for now; the host stops when the store refuses.
    fn read_committed(&self, topic: &str, partition: i32, key: &str) -> Option<Vec<u8>> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match self.store.position(&self.pipeline, key) {
                Ok(v) => return v,
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
                    if let Some(next) = self.take_over(topic, *p) {
                        let _ = tpl.set_partition_offset(topic, *p, Offset::Offset(next));
                    }
                }
                // Split before assigning: from the first fetch on, the
                // partition's messages stay in its own queue.
                {
                    let mut a = self.assignment.lock().expect("not poisoned");
                    for (topic, p) in &parts {
                        if a.feeds.iter().any(|f| f.is(topic, *p)) {
                            continue;
                        }
                        match PartitionFeed::split(consumer, topic, *p, self.wake.clone()) {
                            Some(feed) => a.feeds.push(Arc::new(feed)),
                            None => tracing::error!(
                                topic,
                                partition = p,
                                "cannot take the partition's queue"
                            ),
                        }
                    }
                }
                self.feeds_version.fetch_add(1, Ordering::AcqRel);
                self.read_partitions(consumer);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
                // A partition paused before it was revoked stays paused in
                // librdkafka; a new assignment starts it delivering (the
                // consumer thread pauses it again if the pipeline is still
                // behind).
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "resuming newly assigned partitions failed");
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
                {
                    let mut a = self.assignment.lock().expect("not poisoned");
                    a.assigned.retain(|p| !parts.contains(p));
                    a.feeds.retain(|f| !parts.iter().any(|(t, p)| f.is(t, *p)));
                }
                self.feeds_version.fetch_add(1, Ordering::AcqRel);
                self.await_roll_back();
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                let _ = consumer.unassign();
                let mut a = self.assignment.lock().expect("not poisoned");
                a.assigned.clear();
                a.feeds.clear();
                self.feeds_version.fetch_add(1, Ordering::AcqRel);
                self.revoked.store(true, Ordering::Release);
            }
        }
    }
}
