//! Windowed counters, as in ShareChat's feature platform: likes and views per
//! post, interactions per user, each over windows such as 30m, 2h and 1d, kept
//! as tiles of 1m, 30m and 1d by the host.
//!
//! Config (JSON; empty means the ShareChat example below):
//! ```json
//! {"features": [
//!   {"name": "likes_per_post", "entity": "post_id", "event_types": ["like"],
//!    "tiles": ["1m", "30m", "1d"], "windows": ["30m", "2h", "1d"], "retention": "7d"},
//!   {"name": "dwell_per_post", "entity": "post_id", "event_types": ["view"],
//!    "aggregation": "sum", "value_field": "dwell_ms"}
//! ]}
//! ```
//! A feature counts (adds 1 per matching event) unless it names a
//! `value_field`, whose value is then fed to its aggregation. An empty
//! `event_types` matches every event.

use serde::Deserialize;
use tessera_sdk::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    features: Vec<FeatureConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureConfig {
    name: String,
    entity: String,
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default = "default_aggregation")]
    aggregation: String,
    #[serde(default)]
    value_field: Option<String>,
    #[serde(default = "default_tiles")]
    tiles: Vec<String>,
    #[serde(default = "default_windows")]
    windows: Vec<String>,
    #[serde(default = "default_retention")]
    retention: String,
}

fn default_aggregation() -> String {
    "count".into()
}
fn default_tiles() -> Vec<String> {
    vec!["1m".into(), "30m".into(), "1d".into()]
}
fn default_windows() -> Vec<String> {
    vec!["30m".into(), "2h".into(), "1d".into()]
}
fn default_retention() -> String {
    "7d".into()
}

/// The ShareChat example: likes and views per post, interactions per user.
pub const EXAMPLE_CONFIG: &str = r#"{"features": [
  {"name": "likes_per_post", "entity": "post_id", "event_types": ["like"]},
  {"name": "views_per_post", "entity": "post_id", "event_types": ["view"]},
  {"name": "interactions_per_user", "entity": "user_id", "event_types": ["like", "view", "share", "comment"]}
]}"#;

struct CompiledFeature {
    event_types: Vec<String>,
    value_field: Option<String>,
}

pub struct WindowedCounter {
    features: Vec<CompiledFeature>,
}

impl Feature for WindowedCounter {
    fn init(config: &str) -> Result<(Self, Vec<FeatureSpec>), String> {
        let text = if config.trim().is_empty() {
            EXAMPLE_CONFIG
        } else {
            config
        };
        let cfg: Config =
            serde_json::from_str(text).map_err(|e| format!("windowed-counter config: {e}"))?;
        if cfg.features.is_empty() || cfg.features.len() > u16::MAX as usize {
            return Err("windowed-counter config: `features` must list 1 to 65535 features".into());
        }
        let mut specs = Vec::new();
        let mut features = Vec::new();
        for f in cfg.features {
            let aggregation = Aggregation::from_name(&f.aggregation).ok_or_else(|| {
                format!(
                    "feature `{}`: unknown aggregation `{}`",
                    f.name, f.aggregation
                )
            })?;
            if aggregation != Aggregation::Count && f.value_field.is_none() {
                return Err(format!(
                    "feature `{}`: aggregation `{}` needs a `value_field`",
                    f.name, f.aggregation
                ));
            }
            let secs = |list: &[String]| -> Result<Vec<u32>, String> {
                list.iter()
                    .map(|d| {
                        parse_duration_secs(d).and_then(|s| {
                            u32::try_from(s).map_err(|_| format!("`{d}` is too long"))
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("feature `{}`: {e}", f.name))
            };
            specs.push(FeatureSpec {
                name: f.name.clone(),
                entity_field: f.entity.clone(),
                aggregation,
                tile_sizes_secs: secs(&f.tiles)?,
                retention_secs: parse_duration_secs(&f.retention)
                    .map_err(|e| format!("feature `{}`: {e}", f.name))?,
                windows_secs: secs(&f.windows)?,
            });
            features.push(CompiledFeature {
                event_types: f.event_types,
                value_field: f.value_field,
            });
        }
        Ok((WindowedCounter { features }, specs))
    }

    fn process(&mut self, events: &EventBatch, out: &mut Updates) -> Result<(), String> {
        // Per batch: which features each event type feeds (the type dictionary
        // is small), so the per-event loop is a table lookup.
        let mut by_type: Vec<Vec<u16>> = vec![Vec::new(); events.type_names.len()];
        for (fi, f) in self.features.iter().enumerate() {
            for (ti, t) in events.type_names.iter().enumerate() {
                if f.event_types.is_empty() || f.event_types.iter().any(|e| e == t) {
                    by_type[ti].push(fi as u16);
                }
            }
        }
        let values: Vec<Option<ColumnRef>> = self
            .features
            .iter()
            .map(|f| {
                f.value_field
                    .as_deref()
                    .and_then(|name| events.column(name))
            })
            .collect();
        for (row, ty) in events.event_type.iter().enumerate() {
            for &fi in &by_type[*ty as usize] {
                match (&self.features[fi as usize].value_field, values[fi as usize]) {
                    (None, _) => out.push(fi, row, 1.0),
                    (Some(_), Some(col)) => {
                        if let Some(v) = col.f64(row) {
                            out.push(fi, row, v)
                        }
                    }
                    (Some(_), None) => {}
                }
            }
        }
        Ok(())
    }
}

export_feature!(WindowedCounter);

#[cfg(test)]
mod tests {
    use super::*;

    fn events(rows: &[(&str, &str, &str, f64)]) -> EventBatch {
        let mut b = EventBatchBuilder::new();
        let post = b.add_column("post_id", ColumnType::Utf8);
        let user = b.add_column("user_id", ColumnType::Utf8);
        let dwell = b.add_column("dwell_ms", ColumnType::Float64);
        for (i, (ty, p, u, d)) in rows.iter().enumerate() {
            let t = b.event_type(ty);
            b.begin_event(i as u32, 1_000 * i as i64, t);
            b.set_str(post, p);
            b.set_str(user, u);
            b.set_f64(dwell, *d);
        }
        b.finish()
    }

    #[test]
    fn example_config_counts_likes_views_and_interactions() {
        let (mut p, specs) = WindowedCounter::init("").unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].tile_sizes_secs, vec![60, 1800, 86400]);
        let ev = events(&[
            ("like", "p1", "u1", 0.0),
            ("view", "p1", "u2", 0.0),
            ("share", "p2", "u1", 0.0),
            ("login", "", "u3", 0.0),
        ]);
        let mut out = Updates::new();
        p.process(&ev, &mut out).unwrap();
        let b = out.into_batch();
        let got: Vec<(u16, u32)> = b
            .feature
            .iter()
            .copied()
            .zip(b.row.iter().copied())
            .collect();
        assert_eq!(got, vec![(0, 0), (2, 0), (1, 1), (2, 1), (2, 2)]);
    }

    #[test]
    fn sum_feature_reads_value_field() {
        let cfg = r#"{"features":[{"name":"dwell","entity":"post_id","event_types":["view"],"aggregation":"sum","value_field":"dwell_ms"}]}"#;
        let (mut p, specs) = WindowedCounter::init(cfg).unwrap();
        assert_eq!(specs[0].aggregation, Aggregation::Sum);
        let ev = events(&[
            ("view", "p1", "u1", 250.0),
            ("like", "p1", "u1", 9.0),
            ("view", "p2", "u1", 40.0),
        ]);
        let mut out = Updates::new();
        p.process(&ev, &mut out).unwrap();
        assert_eq!(out.into_batch().value, vec![250.0, 40.0]);
    }

    #[test]
    fn bad_configs_are_rejected_with_reasons() {
        let err = |c: &str| WindowedCounter::init(c).err().unwrap();
        assert!(err("{").contains("config"));
        assert!(err(r#"{"features":[]}"#).contains("1 to 65535"));
        assert!(
            err(r#"{"features":[{"name":"a","entity":"e","aggregation":"median"}]}"#)
                .contains("unknown aggregation")
        );
        assert!(
            err(r#"{"features":[{"name":"a","entity":"e","aggregation":"sum"}]}"#)
                .contains("value_field")
        );
        assert!(err(r#"{"features":[{"name":"a","entity":"e","tiles":["5x"]}]}"#).contains("unit"));
    }
}
