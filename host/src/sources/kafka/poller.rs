//! The consumer thread: polls librdkafka, sorts messages into one raw batch
//! per partition and hands full batches to the pipeline over a bounded
//! channel, so reading overlaps processing (the pipeline thread never waits
//! on `poll`).
//!
//! A batch is handed out when it reaches the pipeline's batch size, when
//! its first record has waited `linger`, or when a poll comes up dry. When
//! the channel is full the thread waits for room, which is back-pressure
//! enough while the pipeline works through its batches. When it stays full
//! for [`PAUSE_AFTER`] (a pipeline retrying a commit against a store that is
//! down) the thread pauses every assigned partition and goes back to
//! polling, for rebalance callbacks and so that the group never sees a
//! consumer that stopped polling; it resumes them once the pipeline takes a
//! batch again. (Pausing drops librdkafka's prefetched messages, which are
//! fetched again on resume, so it is not done for short waits.)
//!
//! Every batch carries the epoch it was read in. A roll-back (revocation or
//! fenced checkpoint) starts a new epoch: the thread drops what it holds,
//! seeks every assigned partition to its committed position, and the
//! pipeline side drops any batch of an older epoch still in the channel.

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TryRecvError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::context::GroupContext;
use crate::record::{now_ms, RawBatch, RawBatchBuilder};

/// How long one poll waits at most (the thread checks its commands and
/// lingering batches in between).
const POLL_SLICE: Duration = Duration::from_millis(50);

/// How long a full channel is waited on before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Records between two looks at how long pending batches have waited.
const LINGER_CHECK_EVERY: u32 = 256;

/// A batch of one partition, read in `epoch`.
pub(super) struct Polled {
    pub(super) epoch: u64,
    pub(super) batch: RawBatch,
}

/// What the pipeline side asks of the consumer thread.
pub(super) enum Command {
    /// Drop everything held, seek every assigned partition to its committed
    /// position, and tag what is read from now on with this epoch.
    Rewind(u64),
}

/// What the pipeline side and the consumer thread share besides the channels.
pub(super) struct Shared {
    pub(super) consumer: BaseConsumer<GroupContext>,
    /// The pipeline's batch size (it passes it with every read).
    pub(super) max_records: AtomicUsize,
    pub(super) stop: AtomicBool,
}

/// One partition's records not handed out yet.
struct Pending {
    topic: String,
    partition: i32,
    builder: RawBatchBuilder,
    since: Instant,
}

pub(super) struct Poller {
    shared: Arc<Shared>,
    batches: Sender<Polled>,
    commands: Receiver<Command>,
    linger: Duration,
    epoch: u64,
    pending: Vec<Pending>,
    /// Full batches the channel had no room for, oldest first.
    held: VecDeque<RawBatch>,
    paused: bool,
    /// Every partition paused since the last resume.
    paused_parts: Vec<(String, i32)>,
    /// A poll came up dry: the next message marks the brokers up (sooner
    /// than the next statistics).
    saw_no_message: bool,
    /// Records per batch handed out last, to size the next builder.
    last_len: usize,
    last_bytes: usize,
    since_linger_check: u32,
}

impl Poller {
    pub(super) fn new(
        shared: Arc<Shared>,
        batches: Sender<Polled>,
        commands: Receiver<Command>,
        linger: Duration,
    ) -> Self {
        Poller {
            shared,
            batches,
            commands,
            linger,
            epoch: 0,
            pending: Vec::new(),
            held: VecDeque::new(),
            paused: false,
            paused_parts: Vec::new(),
            saw_no_message: true,
            last_len: 0,
            last_bytes: 0,
            since_linger_check: 0,
        }
    }

    /// Polls until told to stop or the pipeline side is gone.
    pub(super) fn run(mut self) {
        while !self.shared.stop.load(Ordering::Acquire) {
            match self.commands.try_recv() {
                Ok(Command::Rewind(epoch)) => self.rewind(epoch),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return,
            }
            if !self.hand_out_held() {
                return;
            }
            self.poll_once();
        }
    }

    /// Sends held batches, waiting up to [`PAUSE_AFTER`] for room; pauses
    /// the partitions when that is not enough, resumes them once all are
    /// sent. `false` when the pipeline side is gone.
    fn hand_out_held(&mut self) -> bool {
        while let Some(batch) = self.held.pop_front() {
            let polled = Polled {
                epoch: self.epoch,
                batch,
            };
            let wait = if self.paused {
                Duration::from_millis(10)
            } else {
                PAUSE_AFTER
            };
            match self.batches.send_timeout(polled, wait) {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(p)) => {
                    self.held.push_front(p.batch);
                    // Paused again every time: a rebalance may have
                    // assigned partitions since.
                    self.set_paused(true);
                    return true;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
        if self.paused {
            self.set_paused(false);
        }
        true
    }

    /// Pauses every assigned partition, or resumes every partition it
    /// paused and every assigned one. librdkafka keeps a partition's pause
    /// across a revocation and a new assignment, so a resume must name the
    /// partitions paused then, not only those assigned now (a partition
    /// paused, revoked and assigned again would otherwise never deliver).
    fn set_paused(&mut self, pause: bool) {
        let consumer = &self.shared.consumer;
        let mut parts: Vec<(String, i32)> = consumer
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            })
            .unwrap_or_default();
        if pause {
            for p in &parts {
                if !self.paused_parts.contains(p) {
                    self.paused_parts.push(p.clone());
                }
            }
        } else {
            for p in self.paused_parts.drain(..) {
                if !parts.contains(&p) {
                    parts.push(p);
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in &parts {
            tpl.add_partition(topic, *p);
        }
        let result = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match result {
            Err(e) => tracing::warn!(error = %e, pause, "pausing or resuming partitions failed"),
            Ok(()) if pause && !self.paused => tracing::info!(
                waited = ?PAUSE_AFTER,
                "the pipeline takes no batches: partitions paused (the consumer keeps polling)"
            ),
            Ok(()) if !pause && self.paused => tracing::info!("partitions resumed"),
            Ok(()) => {}
        }
        self.paused = pause;
    }

    fn poll_once(&mut self) {
        let timeout = if self.held.is_empty() {
            POLL_SLICE.min(self.linger)
        } else {
            // Waiting for room in the channel: poll only for callbacks.
            Duration::from_millis(10)
        };
        match self.shared.consumer.poll(timeout) {
            None => {
                self.saw_no_message = true;
                // Nothing more right now: hand out what there is.
                while let Some(i) = self.fullest() {
                    self.hold(i);
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka poll failed; retrying"),
            Some(Ok(m)) => {
                if self.saw_no_message {
                    self.saw_no_message = false;
                    let ctx = self.shared.consumer.context();
                    ctx.health.lock().expect("not poisoned").up = Some(true);
                }
                let (topic, partition) = (m.topic(), m.partition());
                let i = match self
                    .pending
                    .iter()
                    .position(|p| p.partition == partition && p.topic == topic)
                {
                    Some(i) => i,
                    None => {
                        self.pending.push(Pending {
                            topic: topic.to_string(),
                            partition,
                            builder: RawBatchBuilder::with_capacity(
                                topic,
                                partition,
                                self.last_len,
                                self.last_bytes,
                            ),
                            since: Instant::now(),
                        });
                        self.pending.len() - 1
                    }
                };
                let b = &mut self.pending[i].builder;
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
                if b.len() >= self.shared.max_records.load(Ordering::Relaxed) {
                    self.hold(i);
                }
                // Batches of partitions that trickle: out once they linger
                // (looked at every few records: the clock is not free).
                self.since_linger_check += 1;
                if self.since_linger_check >= LINGER_CHECK_EVERY {
                    self.since_linger_check = 0;
                    let now = Instant::now();
                    while let Some(i) = self
                        .pending
                        .iter()
                        .position(|p| now.duration_since(p.since) >= self.linger)
                    {
                        self.hold(i);
                    }
                }
            }
        }
    }

    /// The pending batch with the most records, if any.
    fn fullest(&self) -> Option<usize> {
        (0..self.pending.len()).max_by_key(|i| self.pending[*i].builder.len())
    }

    /// Moves pending batch `i` to the batches to hand out.
    fn hold(&mut self, i: usize) {
        let p = self.pending.swap_remove(i);
        self.last_len = p.builder.len();
        self.last_bytes = p.builder.payload_bytes();
        self.held.push_back(p.builder.finish());
    }

    /// See [`Command::Rewind`].
    fn rewind(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.pending.clear();
        self.held.clear();
        let ctx = self.shared.consumer.context();
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in ctx.assigned() {
            let offset = match ctx.committed(&topic, p) {
                Some(n) => Offset::Offset(n),
                None => Offset::Beginning,
            };
            let _ = tpl.add_partition_offset(&topic, p, offset);
        }
        if tpl.count() > 0 {
            if let Err(e) = self
                .shared
                .consumer
                .seek_partitions(tpl, Duration::from_secs(10))
            {
                tracing::error!(error = %e, "seeking back to committed positions failed");
            }
        }
        if self.paused {
            self.set_paused(false);
        }
    }
}
