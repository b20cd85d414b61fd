//! A feature plugin that misbehaves on purpose, to prove the host contains it.
//!
//! Behaviour is chosen per event by its type, or for every batch by config
//! (`{"always": "<type>"}`); other events are counted into feature 0 like a
//! well-behaved counter:
//! - `loop`: spins forever (CPU / wall-time quota)
//! - `bomb`: allocates without bound (memory quota)
//! - `trap`: panics (a trap)
//! - `flood`: returns 200,000 updates for one event (output quota)
//! - `garbage`: returns an update pointing at a row that does not exist
//! - `fail`: returns an error
//! - `log`: writes a log line through the host

use tessera_sdk::*;

pub struct Misbehave {
    always: Option<String>,
}

impl Feature for Misbehave {
    fn init(config: &str) -> Result<(Self, Vec<FeatureSpec>), String> {
        let always = config
            .split("\"always\"")
            .nth(1)
            .and_then(|rest| rest.split('"').nth(1))
            .map(str::to_string);
        if config.contains("fail-init") {
            return Err("init refused on purpose".into());
        }
        Ok((
            Misbehave { always },
            vec![FeatureSpec::count(
                "misbehave_count",
                "post_id",
                &[60, 3600],
            )],
        ))
    }

    fn process(&mut self, events: &EventBatch, out: &mut Updates) -> Result<(), String> {
        for row in 0..events.len() {
            let ty = self
                .always
                .as_deref()
                .or(events.type_name(row))
                .unwrap_or("");
            match ty {
                "loop" => {
                    let mut x: u64 = 0;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                "bomb" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "trap" => panic!("trap on purpose at row {row}"),
                "flood" => {
                    for _ in 0..200_000 {
                        out.push(0, row, 1.0);
                    }
                }
                "garbage" => out.push(0, events.len() + 7, 1.0),
                "fail" => return Err(format!("refused event {row} on purpose")),
                "log" => {
                    tessera_sdk::info!("hello from row {row}");
                    out.push(0, row, 1.0);
                }
                _ => out.push(0, row, 1.0),
            }
        }
        Ok(())
    }
}

export_feature!(Misbehave);
