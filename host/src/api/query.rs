//! Answering "feature F of entity E over the last W (ending at T)" from tiles.

use serde::Serialize;

use crate::stores::{StoreError, StoredFeature, TileStore};
use crate::window::{cover, TileAgg, TileRange};

/// The answer to a window query, with the interval it actually covers.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FeatureAnswer {
    pub feature: String,
    pub entity: String,
    pub aggregation: String,
    /// `null` when nothing fell in the window and the aggregation has no
    /// neutral value (min, max, last, mean).
    pub value: Option<f64>,
    /// Updates aggregated.
    pub count: u64,
    pub window_ms: i64,
    pub at_ms: i64,
    /// Interval covered, `[start, end)` in ms since the Unix epoch: the window
    /// aligned to the smallest tile.
    pub covered_start_ms: i64,
    pub covered_end_ms: i64,
    /// Tile runs read, largest tiles first.
    pub tiles: Vec<TileRange>,
}

pub fn answer(
    store: &dyn TileStore,
    feature: &StoredFeature,
    entity: &str,
    window_ms: i64,
    at_ms: i64,
) -> Result<FeatureAnswer, StoreError> {
    let c = cover(at_ms, window_ms, &feature.sizes_ms());
    let mut agg = TileAgg::EMPTY;
    for r in &c.ranges {
        for (_, tile) in
            store.read_tiles(feature.id, entity.as_bytes(), r.size_ms, r.start, r.end)?
        {
            agg.merge(&tile);
        }
    }
    Ok(FeatureAnswer {
        feature: feature.name.clone(),
        entity: entity.to_string(),
        aggregation: feature.aggregation.clone(),
        value: agg.value(feature.aggregation()),
        count: agg.count,
        window_ms,
        at_ms,
        covered_start_ms: c.start,
        covered_end_ms: c.end,
        tiles: c.ranges,
    })
}

/// Parses a window such as `30m`, `2h`, `1d` into milliseconds.
pub fn parse_window(text: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("window `{text}`: {e} (use e.g. 30m, 2h, 1d)"))?;
    let ms = d.as_millis();
    if ms == 0 || ms > 10 * 365 * 86_400_000 {
        return Err(format!("window `{text}` must be between 1ms and 10 years"));
    }
    Ok(ms as i64)
}

/// Parses a point in time: milliseconds since the Unix epoch, or RFC 3339.
pub fn parse_at(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text.trim())
        .map_err(|e| format!("time `{text}`: {e} (use ms since the epoch or RFC 3339)"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("time `{text}` is before 1970"))
        })
        .map(|d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_times_parse() {
        assert_eq!(parse_window("2h"), Ok(7_200_000));
        assert!(parse_window("0s").is_err());
        assert!(parse_window("soon").is_err());
        assert_eq!(parse_at("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_at("1970-01-01T00:00:01Z"), Ok(1000));
        assert!(parse_at("yesterday").is_err());
    }
}
