//! Event-time watermarks.
//!
//! Per source partition (here: per topic/file and partition), the watermark is
//! the largest event time seen minus the configured out-of-orderness; the
//! pipeline watermark is the minimum over the partitions seen. An event older
//! than the pipeline watermark is late and goes to the late-data handler.
//! (Idle-partition handling arrives with the Kafka source.)

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Watermarks {
    out_of_orderness_ms: i64,
    max_event_time: HashMap<(String, i32), i64>,
}

impl Watermarks {
    pub fn new(out_of_orderness_ms: i64) -> Self {
        Watermarks {
            out_of_orderness_ms,
            max_event_time: HashMap::new(),
        }
    }

    /// Notes the largest event time of a batch from one partition.
    pub fn observe(&mut self, topic: &str, partition: i32, max_event_time: i64) {
        let e = self
            .max_event_time
            .entry((topic.to_string(), partition))
            .or_insert(i64::MIN);
        *e = (*e).max(max_event_time);
    }

    /// The watermark of one partition, if it has seen an event.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<i64> {
        self.max_event_time
            .get(&(topic.to_string(), partition))
            .map(|t| t.saturating_sub(self.out_of_orderness_ms))
    }

    /// The pipeline watermark: the minimum over partitions, `None` before any event.
    pub fn current(&self) -> Option<i64> {
        self.max_event_time
            .values()
            .min()
            .map(|t| t.saturating_sub(self.out_of_orderness_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_partitions_minus_out_of_orderness() {
        let mut w = Watermarks::new(5);
        assert_eq!(w.current(), None);
        w.observe("a", 0, 100);
        w.observe("a", 1, 50);
        w.observe("a", 0, 90);
        assert_eq!(w.partition("a", 0), Some(95));
        assert_eq!(w.current(), Some(45));
    }
}
