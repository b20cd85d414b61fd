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
//!
//! Several hosts over one pipeline (`pipeline.instance`): each reads some of
//! the source partitions, so its own watermark says nothing of the others'.
//! Each commits a [`PartitionMark`] per partition it holds with every
//! checkpoint (under a key shared by the instances, as the offsets are, so a
//! partition's next owner carries it on), and completeness is decided by
//! [`combine`] over every partition's mark: the same rule as one host's,
//! over the whole pipeline, whoever holds each partition now.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A source partition's watermark and idleness as the host holding it
/// last committed them (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionMark {
    /// `None` while the partition has delivered nothing (it holds).
    pub watermark: Option<i64>,
    pub idle: bool,
}

impl PartitionMark {
    /// The store key prefix of the marks of a pipeline.
    pub const KEY_PREFIX: &'static str = "watermark:";

    /// A mark that holds: a partition nobody has reported yet.
    pub const HELD: PartitionMark = PartitionMark {
        watermark: None,
        idle: false,
    };

    /// The store key of a partition's mark.
    pub fn key(topic: &str, partition: i32) -> String {
        format!("{}{topic}:{partition}", Self::KEY_PREFIX)
    }

    /// The (topic, partition) of a key [`key`](Self::key) made.
    pub fn parse_key(key: &str) -> Option<(String, i32)> {
        let (topic, partition) = key.strip_prefix(Self::KEY_PREFIX)?.rsplit_once(':')?;
        Some((topic.to_string(), partition.parse().ok()?))
    }

    /// Watermark (big-endian, `i64::MIN` for none) and an idle byte.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.watermark.unwrap_or(i64::MIN).to_be_bytes().to_vec();
        out.push(u8::from(self.idle));
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (wm, idle) = bytes.split_first_chunk::<8>()?;
        let watermark = i64::from_be_bytes(*wm);
        match idle {
            [flag @ (0 | 1)] => Some(PartitionMark {
                watermark: (watermark != i64::MIN).then_some(watermark),
                idle: *flag == 1,
            }),
            _ => None,
        }
    }
}

/// The watermark over partitions' marks, by the rule of
/// [`Watermarks::current`]: the minimum over partitions not idle, `None`
/// (hold where it was) while one of those has none; the largest when all
/// are idle; `None` with no marks.
pub fn combine(marks: impl IntoIterator<Item = PartitionMark>) -> Option<i64> {
    let (mut active, mut any_active, mut largest) = (Some(i64::MAX), false, None);
    for m in marks {
        if m.idle {
            largest = largest.max(m.watermark);
        } else {
            any_active = true;
            active = match (active, m.watermark) {
                (Some(a), Some(w)) => Some(a.min(w)),
                _ => None,
            };
            largest = largest.max(m.watermark);
        }
    }
    if any_active {
        active
    } else {
        largest
    }
}

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

    /// Every partition's mark now: its watermark (`None` while held) and
    /// whether it is idle.
    pub fn snapshot(&self) -> HashMap<(String, i32), PartitionMark> {
        let now = Instant::now();
        self.partitions
            .iter()
            .map(|(k, (t, seen))| (k.clone(), self.mark_at(*t, *seen, now)))
            .collect()
    }

    /// The mark of a partition whose largest event time is `max_event`
    /// and that last delivered at `seen`.
    fn mark_at(&self, max_event: Option<i64>, seen: Instant, now: Instant) -> PartitionMark {
        PartitionMark {
            watermark: max_event.map(|t| t.saturating_sub(self.out_of_orderness_ms)),
            idle: self.idle_at(seen, now),
        }
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
        let marks = self
            .partitions
            .values()
            .map(|(t, seen)| self.mark_at(*t, *seen, now));
        // `None`: a held active partition (the watermark stays) or no event yet.
        let Some(wm) = combine(marks) else {
            return self.floor;
        };
        let wm = self.floor.map_or(wm, |f| f.max(wm));
        self.floor = Some(wm);
        Some(wm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_combine_as_one_host_would_and_round_trip() {
        let m = |w: Option<i64>, idle| PartitionMark { watermark: w, idle };
        // Against one host's Watermarks over the same partitions.
        let t0 = Instant::now();
        let mut w = Watermarks::new(0, Some(Duration::from_secs(10)));
        w.observe_at("t", 0, 100, t0);
        w.observe_at("t", 1, 500, t0);
        w.hold_at("t", 2, t0 + Duration::from_secs(5));
        let marks = |w: &Watermarks, at: Instant| -> Vec<PartitionMark> {
            w.partitions
                .values()
                .map(|(t, seen)| m(*t, w.idle_at(*seen, at)))
                .collect()
        };
        for secs in [1, 12, 20] {
            let at = t0 + Duration::from_secs(secs);
            let want = {
                let mut fresh = Watermarks::new(0, Some(Duration::from_secs(10)));
                fresh.partitions = w.partitions.clone();
                fresh.current_at(at)
            };
            assert_eq!(combine(marks(&w, at)), want, "after {secs} s");
        }
        assert_eq!(combine([m(Some(7), false), m(None, false)]), None, "held");
        assert_eq!(combine([m(Some(7), false), m(None, true)]), Some(7));
        assert_eq!(combine([m(Some(7), true), m(Some(9), true)]), Some(9));
        assert_eq!(combine([m(Some(7), false), m(Some(9), true)]), Some(7));
        assert_eq!(combine([]), None);
        for mark in [m(Some(-5), true), m(None, false), m(Some(i64::MAX), false)] {
            assert_eq!(PartitionMark::decode(&mark.encode()), Some(mark));
        }
        assert_eq!(PartitionMark::decode(&[0; 8]), None);
        assert_eq!(PartitionMark::decode(&[0; 10]), None);
        assert_eq!(
            PartitionMark::parse_key(&PartitionMark::key("a.b-c", 12)),
            Some(("a.b-c".to_string(), 12))
        );
        assert_eq!(PartitionMark::parse_key("watermark:x"), None);
    }

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
