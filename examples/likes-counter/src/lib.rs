//! Likes per post, in tiles of 1 minute, 30 minutes and 1 day.
//! Build: `cargo build --release --target wasm32-wasip2 -p likes-counter`.
use tessera_sdk::*;

pub struct Likes;

impl Feature for Likes {
    fn init(_config: &str) -> Result<(Self, Vec<FeatureSpec>), String> {
        Ok((
            Likes,
            vec![FeatureSpec::count(
                "likes_per_post",
                "post_id",
                &[60, 1800, 86400],
            )],
        ))
    }

    fn process(&mut self, events: &EventBatch, out: &mut Updates) -> Result<(), String> {
        let Some(like) = events.type_id("like") else {
            return Ok(());
        };
        for (row, ty) in events.event_type.iter().enumerate() {
            if *ty == like {
                out.push(0, row, 1.0);
            }
        }
        Ok(())
    }
}

export_feature!(Likes);

#[test]
fn counts_only_likes() {
    let mut b = EventBatchBuilder::new();
    for ty in ["like", "view", "like"] {
        let t = b.event_type(ty);
        b.begin_event(0, 0, t);
    }
    let (mut plugin, _) = Likes::init("").unwrap();
    let mut out = Updates::new();
    plugin.process(&b.finish(), &mut out).unwrap();
    assert_eq!(out.into_batch().row, vec![0, 2]);
}
