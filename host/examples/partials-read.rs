//! The read cost of per-instance tile partials on a CQL store, for
//! `scripts/bench-partials.sh`: the same tiles written by 1, 2 and 4 host
//! instances of one pipeline (each instance its own partial of every tile),
//! then 7-day window answers for random entities timed on the serving
//! session, cache off. Prints one JSON line per instance count.
//! Usage: partials-read CONTACT_POINT [ENTITIES, default 100] [READS, default 2000]

use std::time::{Duration, Instant};

use tessera::api::query;
use tessera::config::StoreConfig;
use tessera::stores::{self, Checkpoint, StoredFeature};
use tessera::window::{TileAgg, TileDeltas};

const DAY_MS: i64 = 86_400_000;
const SIZES_MS: [i64; 3] = [60_000, 1_800_000, DAY_MS];
/// One update per entity every 10 minutes over 7 days.
const STEP_MS: i64 = 600_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 2,
        "usage: partials-read CONTACT_POINT [ENTITIES] [READS]"
    );
    let contact = &args[1];
    let entities: usize = args.get(2).map_or(Ok(100), |a| a.parse())?;
    let reads: usize = args.get(3).map_or(Ok(2000), |a| a.parse())?;
    let t0 = 1_700_000_000_000 / DAY_MS * DAY_MS;
    for instances in [1usize, 2, 4] {
        let section = format!(
            "[store]\ntype = \"scylla\"\ncontact_points = [\"{contact}\"]\nkeyspace = \"partials_{instances}\"\n\
             [store.job]\nusername = \"cassandra\"\npassword = \"cassandra\"\n\
             [store.serving]\nusername = \"cassandra\"\npassword = \"cassandra\"\n"
        );
        #[derive(serde::Deserialize)]
        struct Wrapper {
            store: StoreConfig,
        }
        let cfg = toml::from_str::<Wrapper>(&section)?.store;
        let store = stores::open(&cfg)?;
        let id = store.register_features(&[StoredFeature {
            id: 0,
            name: "sum".into(),
            plugin: "bench".into(),
            entity_field: "user".into(),
            aggregation: "sum".into(),
            tile_sizes_secs: vec![60, 1800, 86_400],
            retention_secs: 30 * 86_400,
            windows_secs: vec![7 * 86_400],
        }])?[0];
        let written = Instant::now();
        let mut tiles = 0usize;
        for i in 0..instances {
            let instance = format!("i{i}");
            // One checkpoint per day of updates.
            for day in 0..7 {
                let mut deltas = Vec::new();
                for e in 0..entities {
                    let entity = format!("user-{e}").into_bytes();
                    let mut t = t0 + day * DAY_MS;
                    while t < t0 + (day + 1) * DAY_MS {
                        for size in SIZES_MS {
                            deltas.push((
                                id,
                                entity.clone(),
                                size,
                                t / size * size,
                                TileAgg::of(1.0, t),
                            ));
                        }
                        t += STEP_MS;
                    }
                }
                let deltas = TileDeltas::from_unsorted(deltas);
                tiles += deltas.len();
                store.commit(&Checkpoint {
                    pipeline: "bench".into(),
                    instance: instance.clone(),
                    deltas,
                    positions: vec![(format!("kafka:bench:{i}"), day.to_be_bytes().to_vec())],
                })?;
            }
        }
        let write_secs = written.elapsed().as_secs_f64();
        let f = store.feature("sum")?.expect("registered");
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut took: Vec<Duration> = Vec::with_capacity(reads);
        for _ in 0..reads {
            let entity = format!("user-{}", next() % entities as u64);
            // A 7-day window ending somewhere in the last day.
            let at = t0 + 6 * DAY_MS + (next() % DAY_MS as u64) as i64;
            let started = Instant::now();
            let a = query::answer(store.as_ref(), &f, &entity, 7 * DAY_MS, at)?;
            took.push(started.elapsed());
            anyhow::ensure!(
                (a.count as usize).is_multiple_of(instances) && a.count > 0,
                "{entity}: count {} is not a multiple of {instances} instances",
                a.count
            );
        }
        took.sort();
        let q = |p: f64| {
            took[((took.len() as f64 * p) as usize).min(took.len() - 1)].as_secs_f64() * 1e6
        };
        println!(
            "{{\"instances\": {instances}, \"tiles_written\": {tiles}, \"write_secs\": {write_secs:.1}, \"reads\": {reads}, \"p50_us\": {:.0}, \"p99_us\": {:.0}}}",
            q(0.5),
            q(0.99)
        );
    }
    Ok(())
}
