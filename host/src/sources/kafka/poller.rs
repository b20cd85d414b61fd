//! The consumer thread: reads the assigned partitions' feeds (`feed.rs`),
//! a batch of one partition per read, and hands the batches to the
//! pipeline over a bounded channel, so reading overlaps processing (the
//! pipeline thread never waits on librdkafka). Between reads it polls the
//! consumer queue for rebalances, statistics and errors, and when no feed
//! has anything it sleeps until one has (or [`POLL_SLICE`]).
//!
//! Partitions are merged by time, as Kafka Streams does: every feed may
//! have one batch read ahead, and the batch handed out next is the one
//! whose first record has the oldest message timestamp (ties go round).
//! A partition whose first fetch arrives late, or that was read ahead of
//! the others, so waits while the others catch up instead of running
//! event time apart from them (which sends a busy entity's updates to
//! tiles out of order: measured, one partition's first fetch alone was an
//! hour of event time ahead of the other three for the rest of the run). A
//! feed with nothing to read does not hold the others back.
//!
//! A batch is full at the pipeline's batch size, or holds what its feed
//! had. When the channel is full the thread waits for room, which is
//! back-pressure enough while the pipeline works through its batches. When
//! it stays full for [`PAUSE_AFTER`] (a pipeline retrying a commit against a
//! store that is down) the thread pauses every assigned partition and goes
//! on polling the consumer queue, for rebalance callbacks and so that the
//! group never sees a consumer that stopped polling; it resumes them once
//! the pipeline takes a batch again. No feed is read while batches wait for
//! room, so memory is bounded by the channel, one batch per partition and
//! librdkafka's prefetch (`queued.max.messages.kbytes`).
//!
//! Every batch carries the epoch it was read in. A roll-back (revocation or
//! fenced checkpoint) starts a new epoch: the thread drops what it holds,
//! seeks every assigned partition to its committed position, and the
//! pipeline side drops any batch of an older epoch still in the channel.

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TryRecvError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::context::GroupContext;
use super::feed::{PartitionFeed, ReadSlots};
use crate::record::{now_ms, RawBatch, RawBatchBuilder};

/// How long the thread sleeps at most when no feed has anything (it
/// polls the consumer queue and checks its commands in between).
const POLL_SLICE: Duration = Duration::from_millis(50);

/// How long a full channel is waited on before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

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
    /// `source.consumer_nice`: applied to this thread and librdkafka's at
    /// every assignment (its broker threads start once it knows the brokers).
    pub(super) consumer_nice: AtomicI32,
}

/// An assigned partition's feed and the batch read ahead from it.
struct FeedState {
    feed: Arc<PartitionFeed>,
    ahead: Option<RawBatch>,
}

pub(super) struct Poller {
    shared: Arc<Shared>,
    batches: Sender<Polled>,
    commands: Receiver<Command>,
    /// The longest sleep when no feed has anything.
    idle_wait: Duration,
    epoch: u64,
    /// The feeds of the assigned partitions with the batch each has read
    /// ahead, and the context's version of the feeds this copy is of.
    feeds: Vec<FeedState>,
    feeds_version: u64,
    /// Where ties between feeds start looking (turns go round).
    next_feed: usize,
    /// Room for the message pointers of one read.
    slots: ReadSlots,
    /// Full batches the channel had no room for, oldest first.
    held: VecDeque<RawBatch>,
    paused: bool,
    /// Every partition paused since the last resume.
    paused_parts: Vec<(String, i32)>,
    /// A read came up dry: the next message marks the brokers up (sooner
    /// than the next statistics).
    saw_no_message: bool,
}

impl Poller {
    pub(super) fn new(
        shared: Arc<Shared>,
        batches: Sender<Polled>,
        commands: Receiver<Command>,
        idle_wait: Duration,
    ) -> Self {
        Poller {
            shared,
            batches,
            commands,
            idle_wait,
            epoch: 0,
            feeds: Vec::new(),
            feeds_version: u64::MAX,
            next_feed: 0,
            slots: ReadSlots::default(),
            held: VecDeque::new(),
            paused: false,
            paused_parts: Vec::new(),
            saw_no_message: true,
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

    /// One step: callbacks from the consumer queue, then (unless batches
    /// wait for room) a read of every feed with no batch ahead, and the
    /// oldest batch ahead handed out.
    fn poll_once(&mut self) {
        let wake = self.shared.consumer.context().wake.clone();
        wake.arm();
        // Rebalance, statistics and error callbacks run inside this poll.
        // A message reaches the consumer queue only if its partition's
        // queue could not be split off: it is handed out alone, in order.
        match self.shared.consumer.poll(Duration::ZERO) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka poll failed; retrying"),
            Some(Ok(m)) => {
                let mut b = RawBatchBuilder::new(m.topic(), m.partition());
                b.push(
                    m.offset(),
                    m.timestamp().to_millis().unwrap_or_else(now_ms),
                    m.key().unwrap_or(&[]),
                    m.payload().unwrap_or(&[]),
                );
                if let Some(headers) = m.headers() {
                    for h in headers.iter() {
                        b.header(h.key.as_bytes(), h.value.unwrap_or(&[]));
                    }
                }
                self.delivered();
                self.held.push_back(b.finish());
            }
        }
        self.refresh_feeds();
        if !self.held.is_empty() {
            // Waiting for room in the channel: callbacks only.
            std::thread::sleep(Duration::from_millis(10));
            return;
        }
        let max = self.shared.max_records.load(Ordering::Relaxed).max(1);
        for i in 0..self.feeds.len() {
            if self.feeds[i].ahead.is_none() {
                let feed = self.feeds[i].feed.clone();
                self.feeds[i].ahead = self.read_feed(&feed, max);
            }
        }
        match self.oldest_ahead() {
            Some(i) => {
                let batch = self.feeds[i].ahead.take().expect("a batch ahead");
                self.held.push_back(batch);
                self.next_feed = (i + 1) % self.feeds.len();
            }
            None => {
                self.saw_no_message = true;
                wake.wait(POLL_SLICE.min(self.idle_wait));
            }
        }
    }

    /// The feed whose batch ahead starts with the oldest message timestamp;
    /// among equals the first from `next_feed` on.
    fn oldest_ahead(&self) -> Option<usize> {
        let count = self.feeds.len();
        (0..count)
            .map(|turn| (self.next_feed + turn) % count)
            .filter_map(|i| {
                let first = *self.feeds[i].ahead.as_ref()?.timestamps.first()?;
                Some((first, i))
            })
            .min_by_key(|(first, _)| *first)
            .map(|(_, i)| i)
    }

    /// Takes the context's feeds when they changed (a rebalance), keeping
    /// the batch ahead of every feed still assigned.
    fn refresh_feeds(&mut self) {
        let ctx = self.shared.consumer.context();
        let version = ctx.feeds_version.load(Ordering::Acquire);
        if version == self.feeds_version {
            return;
        }
        let mut old = std::mem::take(&mut self.feeds);
        self.feeds = ctx
            .feeds()
            .into_iter()
            .map(|feed| {
                let ahead = old
                    .iter_mut()
                    .find(|s| Arc::ptr_eq(&s.feed, &feed))
                    .and_then(|s| s.ahead.take());
                FeedState { feed, ahead }
            })
            .collect();
        self.feeds_version = version;
        self.next_feed = 0;
        lower_fetching_threads(self.shared.consumer_nice.load(Ordering::Relaxed));
    }

    /// Reads up to `max` records of one feed into a batch; `None` when it
    /// had none.
    fn read_feed(&mut self, feed: &PartitionFeed, max: usize) -> Option<RawBatch> {
        let mut b = RawBatchBuilder::new(&feed.topic, feed.partition);
        let mut now = None;
        feed.read(max, &mut self.slots, |m| match m {
            Ok(m) => {
                let ts = m
                    .timestamp_ms()
                    .unwrap_or_else(|| *now.get_or_insert_with(now_ms));
                b.push(m.offset(), ts, m.key(), m.payload());
                m.headers(|name, value| b.header(name, value));
            }
            Err(e) => tracing::warn!(
                error = %e,
                topic = %feed.topic,
                partition = feed.partition,
                "Kafka consumer error; retrying"
            ),
        });
        if b.is_empty() {
            return None;
        }
        self.delivered();
        Some(b.finish())
    }

    /// A message arrived: the brokers are up.
    fn delivered(&mut self) {
        if self.saw_no_message {
            self.saw_no_message = false;
            let ctx = self.shared.consumer.context();
            ctx.health.lock().expect("not poisoned").up = Some(true);
        }
    }

    /// See [`Command::Rewind`].
    fn rewind(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.held.clear();
        for state in &mut self.feeds {
            state.ahead = None;
        }
        let ctx = self.shared.consumer.context();
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in ctx.assigned() {
            let offset = match ctx.take_over(&topic, p) {
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

/// Raises the Linux nice value of this thread and of librdkafka's threads
/// (named `rdk:*`) in this process to `nice`, when lower: they fetch ahead
/// of the pipeline thread, which is the critical path. Raising nice needs
/// no privilege; a thread already at `nice` or above is left alone.
#[cfg(target_os = "linux")]
fn lower_fetching_threads(nice: i32) {
    if nice <= 0 {
        return;
    }
    let renice = |tid: libc::id_t| {
        // SAFETY: plain syscalls on a thread id of this process.
        unsafe {
            *libc::__errno_location() = 0;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            if *libc::__errno_location() == 0 && now < nice {
                libc::setpriority(libc::PRIO_PROCESS, tid, nice);
            }
        }
    };
    // SAFETY: gettid has no preconditions.
    renice(unsafe { libc::gettid() } as libc::id_t);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if let (true, Some(tid)) = (
            comm.starts_with("rdk:"),
            task.file_name().to_str().and_then(|t| t.parse().ok()),
        ) {
            renice(tid);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_fetching_threads(_nice: i32) {}
