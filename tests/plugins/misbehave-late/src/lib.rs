//! A late-data handler that misbehaves on purpose: with config `"trap"` it
//! panics on every call, with `"short"` it returns one decision too few.

use tessera_sdk::*;

pub struct BadLate {
    trap: bool,
}

impl LateHandler for BadLate {
    fn init(config: &str) -> Result<Self, String> {
        Ok(BadLate {
            trap: config.contains("trap"),
        })
    }

    fn decide(&mut self, batch: &LateBatch) -> Vec<LateDecision> {
        if self.trap {
            panic!("late handler trap on purpose");
        }
        vec![LateDecision::Accept; batch.events.len().saturating_sub(1)]
    }
}

export_late_handler!(BadLate);
