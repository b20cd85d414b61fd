//! Event-time watermarks.
//!
//! Per source partition (here: per topic/file and partition), the watermark is
//! the largest event time seen minus the configured out-of-orderness; the
//! pipeline watermark is the minimum over the partitions seen. An event older
//! than the pipeline watermark is late and goes to the late-data handler.
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
    /// Per partition: largest event time, and when it last delivered.
    partitions: HashMap<(String, i32), (i64, Instant)>,
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
            .or_insert((i64::MIN, now));
        e.0 = e.0.max(max_event_time);
        e.1 = now;
    }

    /// The watermark of one partition, if it has seen an event.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&(topic.to_string(), partition))
            .map(|(t, _)| t.saturating_sub(self.out_of_orderness_ms))
    }

    /// Every partition's watermark and whether it is idle now.
    pub fn snapshot(&self) -> HashMap<(String, i32), (i64, bool)> {
        let now = Instant::now();
        self.partitions
            .iter()
            .map(|(k, (t, seen))| {
                (
                    k.clone(),
                    (
                        t.saturating_sub(self.out_of_orderness_ms),
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
    /// maximum when all are idle), never below one returned before; `None`
    /// before any event.
    pub fn current(&mut self) -> Option<i64> {
        self.current_at(Instant::now())
    }

    fn current_at(&mut self, now: Instant) -> Option<i64> {
        let active = self
            .partitions
            .values()
            .filter(|(_, seen)| !self.idle_at(*seen, now))
            .map(|(t, _)| *t)
            .min();
        let max_event = active.or_else(|| self.partitions.values().map(|(t, _)| *t).max())?;
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
