//! The default late-data handler: accept an event that is at most
//! `allowed_lateness` behind the watermark (its tile is amended), send a later
//! one to the side output with the reason.
//!
//! Config (JSON): `{"allowed_lateness": "1h"}` (default `1h`).

use serde::Deserialize;
use tessera_sdk::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_allowed")]
    allowed_lateness: String,
}

fn default_allowed() -> String {
    "1h".into()
}

pub struct AcceptWithinLateness {
    allowed_ms: i64,
}

impl LateHandler for AcceptWithinLateness {
    fn init(config: &str) -> Result<Self, String> {
        let text = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let cfg: Config =
            serde_json::from_str(text).map_err(|e| format!("late-default config: {e}"))?;
        let allowed_ms = parse_duration_ms(&cfg.allowed_lateness)? as i64;
        Ok(AcceptWithinLateness { allowed_ms })
    }

    fn decide(&mut self, batch: &LateBatch) -> Vec<LateDecision> {
        batch
            .lateness_ms
            .iter()
            .map(|late| {
                if *late <= self.allowed_ms {
                    LateDecision::Accept
                } else {
                    LateDecision::SideOutput(format!(
                        "{} ms behind the watermark, allowed {} ms",
                        late, self.allowed_ms
                    ))
                }
            })
            .collect()
    }
}

export_late_handler!(AcceptWithinLateness);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_within_allowed_lateness_else_side_output() {
        let mut h = AcceptWithinLateness::init(r#"{"allowed_lateness": "10m"}"#).unwrap();
        let mut b = EventBatchBuilder::new();
        for i in 0..3 {
            b.begin_event(i, 0, 0);
        }
        let batch = LateBatch {
            events: b.finish(),
            lateness_ms: vec![1, 600_000, 600_001],
            watermark: 0,
        };
        let d = h.decide(&batch);
        assert_eq!(d[0], LateDecision::Accept);
        assert_eq!(d[1], LateDecision::Accept);
        assert!(matches!(&d[2], LateDecision::SideOutput(r) if r.contains("600001 ms")));
        assert!(AcceptWithinLateness::init(r#"{"allowed_lateness": "soon"}"#).is_err());
    }
}
