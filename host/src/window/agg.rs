//! The value kept per tile, and how two of them merge.

use serde::Serialize;

use crate::record::Aggregation;

/// Count, sum, min, max and last value of the updates that fell into a tile.
/// Merging is associative and commutative except for `last`, which keeps the
/// value with the larger event time (ties: the later merge wins).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TileAgg {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last_time: i64,
    pub last: f64,
}

impl TileAgg {
    pub const ENCODED_LEN: usize = 48;

    /// The aggregate of nothing.
    pub const EMPTY: TileAgg = TileAgg {
        count: 0,
        sum: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        last_time: i64::MIN,
        last: 0.0,
    };

    /// The aggregate of one update.
    pub fn of(value: f64, event_time: i64) -> Self {
        TileAgg {
            count: 1,
            sum: value,
            min: value,
            max: value,
            last_time: event_time,
            last: value,
        }
    }

    #[inline]
    pub fn add(&mut self, value: f64, event_time: i64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if event_time >= self.last_time {
            self.last_time = event_time;
            self.last = value;
        }
    }

    #[inline]
    pub fn merge(&mut self, other: &TileAgg) {
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last_time >= self.last_time {
            self.last_time = other.last_time;
            self.last = other.last;
        }
    }

    /// The answer for `aggregation`, `None` when nothing was aggregated and
    /// the aggregation has no neutral value (min, max, last, mean).
    pub fn value(&self, aggregation: Aggregation) -> Option<f64> {
        match aggregation {
            Aggregation::Count => Some(self.count as f64),
            Aggregation::Sum => Some(self.sum),
            _ if self.count == 0 => None,
            Aggregation::Min => Some(self.min),
            Aggregation::Max => Some(self.max),
            Aggregation::Last => Some(self.last),
            Aggregation::Mean => Some(self.sum / self.count as f64),
        }
    }

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..8].copy_from_slice(&self.count.to_le_bytes());
        out[8..16].copy_from_slice(&self.sum.to_le_bytes());
        out[16..24].copy_from_slice(&self.min.to_le_bytes());
        out[24..32].copy_from_slice(&self.max.to_le_bytes());
        out[32..40].copy_from_slice(&self.last_time.to_le_bytes());
        out[40..48].copy_from_slice(&self.last.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let f = |i: usize| <[u8; 8]>::try_from(&bytes[i..i + 8]).unwrap();
        Some(TileAgg {
            count: u64::from_le_bytes(f(0)),
            sum: f64::from_le_bytes(f(8)),
            min: f64::from_le_bytes(f(16)),
            max: f64::from_le_bytes(f(24)),
            last_time: i64::from_le_bytes(f(32)),
            last: f64::from_le_bytes(f(40)),
        })
    }
}

impl Default for TileAgg {
    fn default() -> Self {
        TileAgg::EMPTY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_equals_adding_everything() {
        let values = [(3.0, 10), (-1.0, 30), (7.5, 20), (2.0, 30)];
        let mut all = TileAgg::EMPTY;
        for (v, t) in values {
            all.add(v, t);
        }
        let mut a = TileAgg::EMPTY;
        a.add(3.0, 10);
        a.add(-1.0, 30);
        let mut b = TileAgg::EMPTY;
        b.add(7.5, 20);
        b.add(2.0, 30);
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(all.value(Aggregation::Count), Some(4.0));
        assert_eq!(all.value(Aggregation::Sum), Some(11.5));
        assert_eq!(all.value(Aggregation::Min), Some(-1.0));
        assert_eq!(all.value(Aggregation::Max), Some(7.5));
        assert_eq!(all.value(Aggregation::Last), Some(2.0));
        assert_eq!(all.value(Aggregation::Mean), Some(11.5 / 4.0));
        assert_eq!(TileAgg::EMPTY.value(Aggregation::Max), None);
        assert_eq!(TileAgg::decode(&all.encode()), Some(all));
    }
}
