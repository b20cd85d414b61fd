//! A late-data handler with a policy unlike the default's: an event at most
//! `accept_within_ms` (its config, a number; default 900000) behind the
//! watermark is accepted, a later one is dropped (counted by the host, not
//! written anywhere).

use tessera_sdk::*;

pub struct DropBeyond {
    accept_within_ms: i64,
}

impl LateHandler for DropBeyond {
    fn init(config: &str) -> Result<Self, String> {
        let text = config.trim().trim_matches('"');
        let accept_within_ms = if text.is_empty() {
            900_000
        } else {
            text.parse()
                .map_err(|e| format!("late-drop config `{text}`: {e}"))?
        };
        Ok(DropBeyond { accept_within_ms })
    }

    fn decide(&mut self, batch: &LateBatch) -> Vec<LateDecision> {
        batch
            .lateness_ms
            .iter()
            .map(|late| {
                if *late <= self.accept_within_ms {
                    LateDecision::Accept
                } else {
                    LateDecision::Drop
                }
            })
            .collect()
    }
}

export_late_handler!(DropBeyond);
