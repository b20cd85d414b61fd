//! One assigned partition's own librdkafka queue, read in batches.
//!
//! librdkafka fetches every assigned partition into a queue of its own and
//! forwards them all to the consumer queue, where `poll` hands out one
//! message per call, in the order fetch responses arrived: a whole fetch of
//! one partition (up to `max.partition.fetch.bytes`), then the next one's.
//! Read that way, partitions run minutes of event time apart, so busy
//! entities' tiles are hit out of order, and every message costs a poll
//! (clock reads and a queue lock each; a quarter of the consumer thread's
//! time here).
//!
//! A [`PartitionFeed`] takes the partition's queue out of that forwarding
//! (as `rd_kafka_queue_forward(queue, NULL)`: librdkafka keeps the split
//! across revocations and new assignments) before the partition is
//! assigned, so none of its messages reach the consumer queue, and reads it
//! with `rd_kafka_consume_batch_queue`: up to a batch of one partition's
//! messages per call, outdated messages (from before a seek) already
//! dropped. The consumer thread reads its feeds in turn, so partitions
//! advance together. The consumer queue is still polled for rebalances,
//! statistics and errors. When a feed goes from empty to not empty,
//! librdkafka calls [`Wake::notify`], so a thread with nothing to read
//! sleeps until there is.

use std::ffi::{c_void, CStr, CString};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// Woken by librdkafka when one of the feeds it is attached to gets
/// messages after being empty.
#[derive(Default)]
pub(super) struct Wake {
    pending: Mutex<bool>,
    cond: Condvar,
}

impl Wake {
    /// Something arrived: a waiting [`wait`](Self::wait) returns.
    pub(super) fn notify(&self) {
        *self.pending.lock().expect("not poisoned") = true;
        self.cond.notify_all();
    }

    /// Forgets earlier notifications; call before looking at the feeds, so
    /// an arrival after the look is not missed by the next wait.
    pub(super) fn arm(&self) {
        *self.pending.lock().expect("not poisoned") = false;
    }

    /// Waits until notified since the last [`arm`](Self::arm), at most `timeout`.
    pub(super) fn wait(&self, timeout: Duration) {
        let pending = self.pending.lock().expect("not poisoned");
        let _unused = self
            .cond
            .wait_timeout_while(pending, timeout, |p| !*p)
            .expect("not poisoned");
    }
}

unsafe extern "C" fn wake_up(_rk: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Wake` a live feed holds an `Arc` of; the
    // callback is unset (under the queue's lock) before the feed lets go.
    let wake = unsafe { &*(opaque as *const Wake) };
    wake.notify();
}

/// Room for the message pointers of one read (kept between reads).
#[derive(Default)]
pub(super) struct ReadSlots(Vec<*mut rd::rd_kafka_message_t>);

// SAFETY: only null or already-destroyed pointers stay in it between reads.
unsafe impl Send for ReadSlots {}

/// A partition's queue, split from the consumer queue.
pub(super) struct PartitionFeed {
    pub(super) topic: String,
    pub(super) partition: i32,
    queue: *mut rd::rd_kafka_queue_t,
    wake: Arc<Wake>,
}

// SAFETY: librdkafka queue handles may be used from any thread; the feed
// only reads through its handle and destroys it once.
unsafe impl Send for PartitionFeed {}
unsafe impl Sync for PartitionFeed {}

impl PartitionFeed {
    /// Splits the partition's queue off the consumer queue. Call before the
    /// partition is assigned, so no message of it is forwarded first.
    /// `None` when librdkafka does not know the partition (it creates
    /// unknown ones, so only on a name with a NUL in it).
    pub(super) fn split<C: ConsumerContext>(
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
        wake: Arc<Wake>,
    ) -> Option<Self> {
        let name = CString::new(topic).ok()?;
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is the live consumer's handle; the queue returned
        // holds a reference of its own, released in `drop`.
        let queue = unsafe { rd::rd_kafka_queue_get_partition(rk, name.as_ptr(), partition) };
        if queue.is_null() {
            return None;
        }
        unsafe {
            rd::rd_kafka_queue_forward(queue, std::ptr::null_mut());
            rd::rd_kafka_queue_cb_event_enable(
                queue,
                Some(wake_up),
                Arc::as_ptr(&wake) as *mut c_void,
            );
        }
        Some(PartitionFeed {
            topic: topic.to_string(),
            partition,
            queue,
            wake,
        })
    }

    /// Whether this is the feed of `partition` of `topic`.
    pub(super) fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }

    /// Takes up to `max` messages without waiting and calls `each` with
    /// every one (a message of this partition, or an error librdkafka put
    /// on the queue); returns how many were taken.
    pub(super) fn read(
        &self,
        max: usize,
        slots: &mut ReadSlots,
        mut each: impl FnMut(Result<FeedMessage<'_>, String>),
    ) -> usize {
        let slots = &mut slots.0;
        slots.resize(max.max(1), std::ptr::null_mut());
        // SAFETY: `slots` has room for `max` pointers; each message returned
        // is ours until destroyed below.
        let n = unsafe { rd::rd_kafka_consume_batch_queue(self.queue, 0, slots.as_mut_ptr(), max) };
        let n = n.max(0) as usize;
        for &m in &slots[..n] {
            // SAFETY: a message returned by librdkafka, destroyed right after.
            let raw = unsafe { &*m };
            if raw.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                each(Ok(FeedMessage { raw }));
            } else {
                each(Err(message_error(raw)));
            }
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
        n
    }
}

impl Drop for PartitionFeed {
    fn drop(&mut self) {
        // SAFETY: the callback is unset before the handle goes, under the
        // queue's lock, so `wake_up` never sees a dropped `Wake`.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue, None, std::ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.queue);
        }
        let _ = &self.wake;
    }
}

/// What an error message on a feed says.
fn message_error(raw: &rd::rd_kafka_message_t) -> String {
    // SAFETY: librdkafka's error strings are static C strings.
    let what = unsafe { CStr::from_ptr(rd::rd_kafka_err2str(raw.err)) };
    let detail = if raw.payload.is_null() || raw.len == 0 {
        String::new()
    } else {
        // An error message's payload is librdkafka's text about it.
        let bytes = unsafe { std::slice::from_raw_parts(raw.payload as *const u8, raw.len) };
        format!(": {}", String::from_utf8_lossy(bytes))
    };
    format!("{}{detail}", what.to_string_lossy())
}

/// A message read from a feed, valid inside the `read` callback.
pub(super) struct FeedMessage<'a> {
    raw: &'a rd::rd_kafka_message_t,
}

impl FeedMessage<'_> {
    pub(super) fn offset(&self) -> i64 {
        self.raw.offset
    }

    /// The message timestamp (create or log-append time), if it has one.
    pub(super) fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message.
        let ts = unsafe { rd::rd_kafka_message_timestamp(self.raw, &mut kind) };
        (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && ts >= 0)
            .then_some(ts)
    }

    pub(super) fn key(&self) -> &[u8] {
        bytes(self.raw.key, self.raw.key_len)
    }

    pub(super) fn payload(&self) -> &[u8] {
        bytes(self.raw.payload, self.raw.len)
    }

    /// Calls `each` with every header (name, value; a null value as empty).
    pub(super) fn headers(&self, mut each: impl FnMut(&[u8], &[u8])) {
        let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: a live message; the headers belong to it.
        let err = unsafe { rd::rd_kafka_message_headers(self.raw, &mut hdrs) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
            return;
        }
        for idx in 0.. {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            let err =
                unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                return;
            }
            let name = unsafe { CStr::from_ptr(name) }.to_bytes();
            each(name, bytes(value as *mut c_void, size));
        }
    }
}

fn bytes<'a>(ptr: *mut c_void, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: librdkafka's (pointer, length) of a live message.
        unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
    }
}
