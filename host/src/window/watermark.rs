//! Event-time watermarks.
//!
//! Per source partition (here: per topic/file and partition), the watermark is
//! the largest event time seen minus the configured out-of-orderness; the
//! pipeline watermark is the minimum over the partitions seen. An event older
//! than the pipeline watermark is late and goes to the late-data handler.
//!
//! A partition the source was given but that has not delivered yet (a
//! Kafka partition just assigned) *holds* the watermark where it is, as
//! Flink's per-partition watermarks do: otherwise the first partition to
//! deliver a large fetch would move it past everything the others hold, and
//! their events would all be late.
//!
//! Idle partitions: a partition that delivered nothing for the idle timeout
//! (wall clock) stops holding the pipeline watermark back, so a stalled or
//! dead producer does not stop completeness; it counts again as soon as it
//! delivers. When every partition is idle, the watermark is the largest of
//! theirs (it never goes back).

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Watermarks {
    out_of_orderness_ms: i64,
    idle_timeout: Option<Duration>,
    /// Per partition: largest event time (`None`: held, nothing yet), and
    /// when it last delivered (or was held).
    partitions: HashMap<(String, i32), (Option<i64>, Instant)>,
    /// The largest watermark returned so far.
    floor: Option<i64>,
}

impl Watermarks {
    pub fn new(out_of_orderness_ms: i64, idle_timeout: Option<Duration>) -> Self {
        Watermarks {
            out_of_orderness_ms,
            idle_timeout,
            partitions: HashMap::new(),
            floor: None,
        }
    }

    /// Notes the largest event time of a batch from one partition.
    pub fn observe(&mut self, topic: &str, partition: i32, max_event_time: i64) {
        self.observe_at(topic, partition, max_event_time, Instant::now());
    }

    fn observe_at(&mut self, topic: &str, partition: i32, max_event_time: i64, now: Instant) {
        let e = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_insert((None, now));
        e.0 = Some(e.0.map_or(max_event_time, |t| t.max(max_event_time)));
        e.1 = now;
    }

    /// Notes a partition the source was given: until it delivers (or is
    /// idle for the timeout) it holds the pipeline watermark. A partition
    /// already known is left as it is.
    pub fn hold(&mut self, topic: &str, partition: i32) {
        self.hold_at(topic, partition, Instant::now());
    }

    fn hold_at(&mut self, topic: &str, partition: i32, now: Instant) {
        let known = self
            .partitions
            .keys()
            .any(|(t, p)| *p == partition && t == topic);
        if !known {
            self.partitions
                .insert((topic.to_string(), partition), (None, now));
        }
    }

    /// The watermark of one partition, if it has seen an event.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&(topic.to_string(), partition))
            .and_then(|(t, _)| t.map(|t| t.saturating_sub(self.out_of_orderness_ms)))
    }

    /// Every partition's watermark (`None` while held) and whether it is
    /// idle now.
    pub fn snapshot(&self) -> HashMap<(String, i32), (Option<i64>, bool)> {
        let now = Instant::now();
        self.partitions
            .iter()
            .map(|(k, (t, seen))| {
                (
                    k.clone(),
                    (
                        t.map(|t| t.saturating_sub(self.out_of_orderness_ms)),
                        self.idle_at(*seen, now),
                    ),
                )
            })
            .collect()
    }

    fn idle_at(&self, seen: Instant, now: Instant) -> bool {
        self.idle_timeout
            .is_some_and(|idle| now.saturating_duration_since(seen) >= idle)
    }

    /// The watermark [`current`](Self::current) returned last.
    pub fn last(&self) -> Option<i64> {
        self.floor
    }

    /// The pipeline watermark: the minimum over active partitions (the
    /// maximum when all are idle), never below one returned before; held
    /// where it was while an active partition has delivered nothing; `None`
    /// before any event.
    pub fn current(&mut self) -> Option<i64> {
        self.current_at(Instant::now())
    }

    fn current_at(&mut self, now: Instant) -> Option<i64> {
        let mut active = self
            .partitions
            .values()
            .filter(|(_, seen)| !self.idle_at(*seen, now))
            .peekable();
        let max_event = if active.peek().is_some() {
            // `None` (a held partition) sorts first: the watermark stays.
            match active.map(|(t, _)| *t).min().flatten() {
                Some(t) => t,
                None => return self.floor,
            }
        } else {
            self.partitions.values().filter_map(|(t, _)| *t).max()?
        };
        let wm = max_event.saturating_sub(self.out_of_orderness_ms);
        let wm = self.floor.map_or(wm, |f| f.max(wm));
        self.floor = Some(wm);
        Some(wm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_partitions_stop_holding_the_watermark_back_until_they_deliver() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut w = Watermarks::new(0, Some(Duration::from_secs(10)));
        w.observe_at("t", 0, 100, s(0));
        w.observe_at("t", 1, 500, s(0));
        assert_eq!(w.current_at(s(1)), Some(100));
        // Partition 0 is silent for 10 s: partition 1 alone sets it.
        w.observe_at("t", 1, 900, s(9));
        assert_eq!(w.current_at(s(11)), Some(900));
        // Partition 0 wakes with old events: it holds the watermark again,
        // but the watermark never goes back.
        w.observe_at("t", 0, 200, s(12));
        assert_eq!(w.current_at(s(12)), Some(900));
        w.observe_at("t", 1, 2000, s(13));
        w.observe_at("t", 0, 1500, s(13));
        assert_eq!(w.current_at(s(13)), Some(1500));
        // All idle: the largest.
        assert_eq!(w.current_at(s(60)), Some(2000));
        // No idle timeout: the minimum holds.
        let mut w = Watermarks::new(0, None);
        w.observe_at("t", 0, 100, s(0));
        w.observe_at("t", 1, 500, s(0));
        assert_eq!(w.current_at(s(1000)), Some(100));
    }

    #[test]
    fn a_held_partition_keeps_the_watermark_until_it_delivers_or_goes_idle() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut w = Watermarks::new(0, Some(Duration::from_secs(10)));
        w.hold_at("t", 1, s(0));
        w.observe_at("t", 0, 5000, s(0));
        assert_eq!(
            w.current_at(s(1)),
            None,
            "partition 1 has delivered nothing"
        );
        w.observe_at("t", 1, 300, s(2));
        assert_eq!(w.current_at(s(2)), Some(300));
        // Holding a known partition changes nothing.
        w.hold_at("t", 1, s(3));
        assert_eq!(w.current_at(s(3)), Some(300));
        // A partition assigned later holds it where it is ...
        w.hold_at("t", 2, s(4));
        w.observe_at("t", 1, 6000, s(5));
        assert_eq!(w.current_at(s(5)), Some(300));
        // ... until it has been silent for the idle timeout.
        w.observe_at("t", 0, 7000, s(13));
        w.observe_at("t", 1, 7000, s(13));
        assert_eq!(w.current_at(s(14)), Some(7000));
    }

    #[test]
    fn minimum_over_partitions_minus_out_of_orderness() {
        let mut w = Watermarks::new(5, None);
        assert_eq!(w.current(), None);
        w.observe("a", 0, 100);
        w.observe("a", 1, 50);
        w.observe("a", 0, 90);
        assert_eq!(w.partition("a", 0), Some(95));
        assert_eq!(w.current(), Some(45));
    }
}
