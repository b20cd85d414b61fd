//! Answering "feature F of entity E over the last W (ending at T)" from
//! tiles, for one pair or for many entities × features at once.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::stores::{StoreError, StoredFeature, TileRead, TileRun, TileStore};
use crate::window::{cover, Cover, TileAgg, TileRange};

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
    let reads = reads_of(feature, &c, entity);
    let agg = fold(store.read_tiles_many(&reads))?;
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

/// The answer to a batch call: every asked feature of every asked entity
/// over one window.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BatchAnswer {
    pub window_ms: i64,
    pub at_ms: i64,
    /// The asked features in the asked order, with the tiles read for each
    /// (the same for every entity).
    pub features: Vec<BatchFeature>,
    /// One per asked entity, in the asked order.
    pub results: Vec<EntityValues>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BatchFeature {
    pub feature: String,
    pub aggregation: String,
    pub covered_start_ms: i64,
    pub covered_end_ms: i64,
    /// Tile runs read, largest tiles first.
    pub tiles: Vec<TileRange>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EntityValues {
    pub entity: String,
    /// By feature name.
    pub values: BTreeMap<String, FeatureValue>,
}

/// One feature of one entity: the value and the interval it covers.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FeatureValue {
    pub value: Option<f64>,
    pub count: u64,
    pub covered_start_ms: i64,
    pub covered_end_ms: i64,
}

/// Answers every feature of every entity over one window with one
/// [`TileStore::read_tiles_many`] call (concurrent range scans on a CQL
/// store).
pub fn answer_many(
    store: &dyn TileStore,
    features: &[StoredFeature],
    entities: &[String],
    window_ms: i64,
    at_ms: i64,
) -> Result<BatchAnswer, StoreError> {
    let covers: Vec<Cover> = features
        .iter()
        .map(|f| cover(at_ms, window_ms, &f.sizes_ms()))
        .collect();
    // Reads grouped by (entity, feature), each group's length remembered.
    let mut reads = Vec::new();
    let mut lengths = Vec::with_capacity(entities.len() * features.len());
    for entity in entities {
        for (f, c) in features.iter().zip(&covers) {
            let r = reads_of(f, c, entity);
            lengths.push(r.len());
            reads.extend(r);
        }
    }
    let mut runs = store.read_tiles_many(&reads).into_iter();
    let mut lengths = lengths.into_iter();
    let mut results = Vec::with_capacity(entities.len());
    for entity in entities {
        let mut values = BTreeMap::new();
        for (f, c) in features.iter().zip(&covers) {
            let n = lengths.next().expect("one length per pair");
            let agg = fold(runs.by_ref().take(n))?;
            values.insert(
                f.name.clone(),
                FeatureValue {
                    value: agg.value(f.aggregation()),
                    count: agg.count,
                    covered_start_ms: c.start,
                    covered_end_ms: c.end,
                },
            );
        }
        results.push(EntityValues {
            entity: entity.clone(),
            values,
        });
    }
    Ok(BatchAnswer {
        window_ms,
        at_ms,
        features: features
            .iter()
            .zip(covers)
            .map(|(f, c)| BatchFeature {
                feature: f.name.clone(),
                aggregation: f.aggregation.clone(),
                covered_start_ms: c.start,
                covered_end_ms: c.end,
                tiles: c.ranges,
            })
            .collect(),
        results,
    })
}

/// The range reads that cover `c` for one entity of one feature.
fn reads_of(feature: &StoredFeature, c: &Cover, entity: &str) -> Vec<TileRead> {
    c.ranges
        .iter()
        .map(|r| TileRead {
            feature_id: feature.id,
            entity: entity.as_bytes().to_vec(),
            size_ms: r.size_ms,
            start: r.start,
            end: r.end,
        })
        .collect()
}

/// Every tile of the runs merged into one aggregate.
fn fold(
    runs: impl IntoIterator<Item = Result<TileRun, StoreError>>,
) -> Result<TileAgg, StoreError> {
    let mut agg = TileAgg::EMPTY;
    for run in runs {
        for (_, tile) in run? {
            agg.merge(&tile);
        }
    }
    Ok(agg)
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
