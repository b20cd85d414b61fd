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
//! last checkpoint (and waits until it has): it drops what it has not
//! committed, and the source seeks every partition it keeps to its
//! committed offset. Nothing is counted twice; a rebalance costs at most one
//! checkpoint interval of re-reading.
//!
//! Threads: a consumer thread (`poller.rs`) reads every assigned
//! partition's own queue in turn (`feed.rs`), a raw batch of one partition
//! per read; the pipeline takes the batches from a bounded channel, so
//! reading and processing overlap.
//! Memory stays bounded: when the channel is full the consumer thread
//! pauses its partitions (and keeps polling for the group's sake), and
//! librdkafka's own prefetch is capped by `queued.max.messages.kbytes`
//! (passed through like every other property). Callbacks and what they ask
//! of the pipeline are in `context.rs`.
//!
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

mod context;
mod feed;
mod poller;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Source, SourceBatch};
use crate::error::SourceError;
use crate::stores::TileStore;
use crate::telemetry::status::{SourcePartition, SourceStatus};
pub use context::position_key;
use context::GroupContext;
use poller::{Command, Polled, Poller, Shared};

/// Full batches the consumer thread may have waiting for the pipeline.
const CHANNEL_BATCHES: usize = 8;

/// How often a read waiting for a batch looks at the revocation flag.
const REVOKED_CHECK: Duration = Duration::from_millis(20);

/// A Kafka-API source in a consumer group.
pub struct KafkaSource {
    shared: Arc<Shared>,
    batches: Receiver<Polled>,
    commands: Sender<Command>,
    poller: Option<JoinHandle<()>>,
    /// Batches of older epochs are dropped (read before a roll-back).
    epoch: u64,
    /// Next offset of every partition, covering the records handed out.
    next: BTreeMap<(String, i32), i64>,
    poll_timeout: Duration,
    idle_exit: Option<Duration>,
    last_record: Instant,
    topics: Vec<String>,
}

/// Tunes glibc's allocator, which librdkafka allocates with (Rust code uses
/// mimalloc), once per process: fetch responses up to 32 MiB come from its
/// arenas instead of a fresh mapping each, and freed arena memory is kept
/// (up to 256 MiB at an arena's top, grown 64 MiB at a time) instead of
/// handed back to the kernel after every fetch. By default the broker
/// thread faulted fresh pages in for every fetch; with this its system
/// time fell by ~40% (28–35 to 16–19 ticks per 2 M records of the bench
/// topic, four alternating runs each), CPU the pipeline thread needs on
/// a small machine. The cost is that the process keeps
/// librdkafka's high-water mark of memory, which
/// `queued.max.messages.kbytes` and the fetch sizes bound.
fn keep_fetch_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets allocator parameters; it is called
            // once, and glibc serialises it with allocations.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
                libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            }
        });
    }
}

impl KafkaSource {
    /// Joins the group, subscribes and starts the consumer thread.
    /// `properties` go to librdkafka as given; `group.id` and the
    /// offset-commit settings are set here.
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
        keep_fetch_memory();
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
        let consumer: BaseConsumer<GroupContext> = cfg
            .create_with_context(GroupContext::new(store, pipeline, topics))
            .map_err(|e| SourceError::Kafka(format!("creating the consumer: {e}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| SourceError::Kafka(format!("subscribing to {topics:?}: {e}")))?;
        let shared = Arc::new(Shared {
            consumer,
            max_records: AtomicUsize::new(crate::config::default_batch_size()),
            stop: AtomicBool::new(false),
            consumer_nice: AtomicI32::new(0),
        });
        let (batch_tx, batches) = crossbeam_channel::bounded(CHANNEL_BATCHES);
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let poller = Poller::new(shared.clone(), batch_tx, command_rx, poll_timeout);
        let span = tracing::info_span!("kafka_consumer", group = group_id);
        let poller = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || span.in_scope(|| poller.run()))
            .map_err(|e| SourceError::Kafka(format!("starting the consumer thread: {e}")))?;
        Ok(KafkaSource {
            shared,
            batches,
            commands,
            poller: Some(poller),
            epoch: 0,
            next: BTreeMap::new(),
            poll_timeout,
            idle_exit,
            last_record: Instant::now(),
            topics: topics.to_vec(),
        })
    }

    /// Lowers the fetching threads' priority by `nice` (see
    /// `source.consumer_nice`), from the next assignment on.
    pub fn with_consumer_nice(self, nice: i32) -> Self {
        self.shared.consumer_nice.store(nice, Ordering::Relaxed);
        self
    }

    fn context(&self) -> &GroupContext {
        self.shared.consumer.context()
    }

    /// Forgets everything not committed; the consumer thread drops what it
    /// holds and seeks every partition still assigned to its committed
    /// position.
    fn roll_back(&mut self) {
        self.next.clear();
        self.epoch += 1;
        // The thread is gone only if the source is being dropped.
        let _ = self.commands.send(Command::Rewind(self.epoch));
        self.context().rolled_back();
    }

    /// Whether nothing has been read for `idle_exit` since the later of the
    /// last record and the last assignment (never before the group assigned
    /// partitions).
    fn idle_for_good(&self) -> bool {
        let assigned_at = self
            .context()
            .assignment
            .lock()
            .expect("not poisoned")
            .assigned_at;
        match (self.idle_exit, assigned_at) {
            (Some(idle), Some(at)) => self.last_record.max(at).elapsed() >= idle,
            _ => false,
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.context().closing.store(true, Ordering::Release);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        // The feeds' queues go before the consumer does.
        self.context().drop_feeds();
    }
}

impl Source for KafkaSource {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<SourceBatch>, SourceError> {
        self.shared
            .max_records
            .store(max_records, Ordering::Relaxed);
        let deadline = Instant::now() + self.poll_timeout;
        loop {
            if self.context().revoked.load(Ordering::Acquire) {
                self.roll_back();
                return Ok(Some(SourceBatch::rolled_back()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if self.idle_for_good() {
                    return Ok(None);
                }
                return Ok(Some(SourceBatch::empty()));
            }
            match self.batches.recv_timeout(left.min(REVOKED_CHECK)) {
                Ok(polled) if polled.epoch < self.epoch => {}
                Ok(Polled { batch, .. }) => {
                    self.last_record = Instant::now();
                    if let Some(last) = batch.offsets.last() {
                        self.next
                            .insert((batch.topic.clone(), batch.partition), last + 1);
                    }
                    return Ok(Some(SourceBatch {
                        raw: batch,
                        read_errors: Vec::new(),
                        rolled_back: false,
                    }));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(SourceError::Kafka(
                        "the consumer thread stopped".to_string(),
                    ))
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
        self.context().assigned()
    }

    fn rewind(&mut self) -> bool {
        self.roll_back();
        true
    }

    fn partitions(&self) -> Vec<(String, i32)> {
        self.context().partitions()
    }

    fn committed(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), next) in &self.next {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*next));
        }
        if tpl.count() > 0 {
            if let Err(e) = self
                .shared
                .consumer
                .commit(&tpl, rdkafka::consumer::CommitMode::Async)
            {
                tracing::debug!(error = %e, "advisory offset commit to the group failed");
            }
        }
    }

    fn status(&self) -> SourceStatus {
        let ctx = self.context();
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
