//! End-to-end throughput: parse → feature → tiles → embedded store, with the
//! WASM plugins and with the same plugin code compiled natively into the
//! host, in one run (median of several, alternating, so machine noise hits
//! both alike).
//!
//! Run: `cargo bench -p tessera --bench pipeline` (builds the plugins first
//! with scripts/build-plugins.sh). `TESSERA_BENCH_EVENTS`,
//! `TESSERA_BENCH_RUNS` and `TESSERA_BENCH_CHECKPOINT` change the size
//! (default 1,000,000 events, 5 runs, a checkpoint every 500,000 updates);
//! `TESSERA_BENCH_ONLY="wasm (fuel + epoch)"` runs one path alone, for a
//! profiler (with `TESSERA_PERFMAP=1`, perf names the plugin functions).

use std::time::{Duration, Instant};

use tessera::config::{Quotas, RuntimeConfig};
use tessera::plugin::{bindings as hb, PluginRuntime, PluginSource};
use tessera::record::RawBatchBuilder;
use tessera::stores::{Checkpoint, EmbeddedStore, StoredFeature, TileStore};
use tessera::window::{FeatureDef, Tiler};
use tessera_sdk as sdk;
use tessera_sdk::{Feature as _, Parser as _};

mod common;
use common::{env_or, median};

const PARSER_CONFIG: &str = r#"{"time_field":"ts","type_field":"type","entity_fields":["post_id","user_id"],"fields":{"dwell_ms":"float64"}}"#;

/// ShareChat-style events as NDJSON lines (~95 bytes each): one hour of
/// event time, post and user popularity log-uniform (Zipf with s = 1) over
/// 100,000 posts and 1,000,000 users, a few seconds out of order.
fn generate(n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let types = ["view", "view", "view", "like", "like", "share", "comment"];
    let t0: i64 = 1_795_392_000_000;
    (0..n)
        .map(|i| {
            let ts = t0 + (i as i64) * 3_600_000 / n as i64 + (next() % 4000) as i64;
            let ty = types[(next() % types.len() as u64) as usize];
            let mut zipf = |n: f64| ((next() % 1_000_000) as f64 / 1e6 * (n + 1.0).ln()).exp() as u64 - 1;
            let post = zipf(100_000.0);
            let user = zipf(1_000_000.0);
            let dwell = next() % 60_000;
            format!(r#"{{"ts":{ts},"type":"{ty}","post_id":"post-{post}","user_id":"user-{user}","dwell_ms":{dwell}}}"#).into_bytes()
        })
        .collect()
}

/// Where the time went in one run.
#[derive(Default, Clone, Copy)]
struct Split {
    batches: Duration,
    parse: Duration,
    feature: Duration,
    tiles: Duration,
    store: Duration,
}

impl Split {
    fn total(&self) -> Duration {
        self.batches + self.parse + self.feature + self.tiles + self.store
    }
}

/// The two ways of running the same plugin code.
#[allow(clippy::large_enum_variant)]
enum Plugins {
    Wasm {
        parser: tessera::plugin::ParserPlugin,
        feature: tessera::plugin::FeaturePlugin,
    },
    Native {
        parser: json_parser::JsonParser,
        feature: windowed_counter::WindowedCounter,
    },
}

/// One run over all lines: (time split, updates, tile writes).
fn run_once(
    lines: &[Vec<u8>],
    plugins: &mut Plugins,
    specs: &[hb::FeatureSpec],
    batch: usize,
    checkpoint: u64,
) -> (Split, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("tiles.redb")).unwrap();
    let stored: Vec<StoredFeature> = specs
        .iter()
        .map(|s| StoredFeature::from_spec("counter", s))
        .collect();
    let ids = store.register_features(&stored).unwrap();
    let defs: Vec<FeatureDef> = ids
        .iter()
        .zip(specs)
        .zip(&stored)
        .map(|((id, spec), f)| FeatureDef {
            id: *id,
            plugin: "counter".into(),
            spec: spec.clone(),
            sizes_ms: f.sizes_ms(),
        })
        .collect();
    let mut tiler = Tiler::new();
    let mut split = Split::default();
    let mut updates_total = 0u64;
    let mut tile_writes = 0u64;
    let mut offset = 0i64;
    for chunk in lines.chunks(batch) {
        let t = Instant::now();
        let mut b = RawBatchBuilder::new("bench", 0);
        for line in chunk {
            offset += 1;
            b.push(offset, 0, b"", line);
        }
        let raw = b.finish();
        let t1 = Instant::now();
        split.batches += t1 - t;
        let (events, updates) = match plugins {
            Plugins::Wasm { parser, feature } => {
                let parsed = parser.parse(&raw).unwrap();
                let t2 = Instant::now();
                split.parse += t2 - t1;
                let updates = feature.process(&parsed.events).unwrap();
                split.feature += t2.elapsed();
                (parsed.events, updates)
            }
            Plugins::Native { parser, feature } => {
                let mut out = sdk::ParseOutputBuilder::new();
                parser.parse(&to_sdk_raw(raw), &mut out);
                let sdk_events = out.finish().events;
                let t2 = Instant::now();
                split.parse += t2 - t1;
                let mut u = sdk::Updates::with_capacity(sdk_events.len() * 2);
                feature.process(&sdk_events, &mut u).unwrap();
                let u = u.into_batch();
                split.feature += t2.elapsed();
                (
                    from_sdk_events(sdk_events),
                    hb::UpdateBatch {
                        feature: u.feature,
                        row: u.row,
                        value: u.value,
                    },
                )
            }
        };
        let t3 = Instant::now();
        let rejected = tiler.apply(&defs, &events, &updates);
        assert!(rejected.is_empty());
        updates_total += updates.row.len() as u64;
        let t4 = Instant::now();
        split.tiles += t4 - t3;
        if tiler.pending_updates() >= checkpoint {
            tile_writes += commit(&mut tiler, &store);
            split.store += t4.elapsed();
        }
    }
    let t = Instant::now();
    tile_writes += commit(&mut tiler, &store);
    split.store += t.elapsed();
    if matches!(plugins, Plugins::Native { .. })
        && !READS_DONE.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        measure_reads(&store, &stored, &ids);
    }
    (split, updates_total, tile_writes)
}

/// Drains the tiler into one store commit; returns the tiles written.
fn commit(tiler: &mut Tiler, store: &EmbeddedStore) -> u64 {
    let deltas = tiler.drain();
    let written = deltas.len() as u64;
    let checkpoint = Checkpoint {
        pipeline: "bench".into(),
        instance: String::new(),
        deltas,
        positions: vec![],
    };
    store.commit(&checkpoint).unwrap();
    tiler.recycle(checkpoint.deltas);
    written
}

static READS_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Serving-style window queries against the store just written: 2h windows
/// (tiles of all three sizes) for random posts and users, p50 and p99.
fn measure_reads(store: &EmbeddedStore, stored: &[StoredFeature], ids: &[u32]) {
    let mut x: u64 = 0xD1B54A32D192ED03;
    let mut lat = Vec::new();
    for i in 0..4000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (f, entity) = if i % 2 == 0 {
            (0, format!("post-{}", x % 1000))
        } else {
            (2, format!("user-{}", x % 10_000))
        };
        let mut feature = stored[f].clone();
        feature.id = ids[f];
        let at = 1_795_392_000_000 + (x % 3_600_000) as i64;
        let t = Instant::now();
        let a = tessera::api::query::answer(store, &feature, &entity, 2 * 3_600_000, at).unwrap();
        lat.push(t.elapsed());
        std::hint::black_box(a);
    }
    lat.sort();
    println!(
        "window reads on the store just written (2h windows, 3 tile sizes, 4000 queries): p50 {:?}, p99 {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
}

/// Moves a host batch into the SDK's types (same field types: no copy).
fn to_sdk_raw(r: hb::RawBatch) -> sdk::RawBatch {
    let bc = |c: hb::BytesColumn| sdk::BytesColumn {
        data: c.data,
        offsets: c.offsets,
    };
    sdk::RawBatch {
        topic: r.topic,
        partition: r.partition,
        offsets: r.offsets,
        timestamps: r.timestamps,
        keys: bc(r.keys),
        payloads: bc(r.payloads),
        header_index: r.header_index,
        header_names: bc(r.header_names),
        header_values: bc(r.header_values),
    }
}

fn from_sdk_events(e: sdk::EventBatch) -> hb::EventBatch {
    hb::EventBatch {
        len: e.len,
        source_row: e.source_row,
        event_time: e.event_time,
        event_type: e.event_type,
        type_names: e.type_names,
        columns: e
            .columns
            .into_iter()
            .map(|c| hb::Column {
                name: c.name,
                present: c.present,
                values: match c.values {
                    sdk::ColumnValues::Float64(v) => hb::ColumnValues::Float64(v),
                    sdk::ColumnValues::Int64(v) => hb::ColumnValues::Int64(v),
                    sdk::ColumnValues::Boolean(v) => hb::ColumnValues::Boolean(v),
                    sdk::ColumnValues::Utf8(b) => hb::ColumnValues::Utf8(hb::BytesColumn {
                        data: b.data,
                        offsets: b.offsets,
                    }),
                },
            })
            .collect(),
    }
}

fn main() {
    let n: usize = env_or("TESSERA_BENCH_EVENTS", 1_000_000);
    let runs: usize = env_or("TESSERA_BENCH_RUNS", 5);
    let checkpoint: u64 = env_or("TESSERA_BENCH_CHECKPOINT", 500_000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let status = std::process::Command::new(root.join("scripts/build-plugins.sh"))
        .arg("--quiet")
        .status()
        .unwrap();
    assert!(status.success());
    let wasm_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or(root.join("target"))
        .join("wasm32-wasip2/release");

    let lines = generate(n);
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let counter_config = windowed_counter::EXAMPLE_CONFIG;
    let (_, sdk_specs) = windowed_counter::WindowedCounter::init(counter_config).unwrap();
    let specs: Vec<hb::FeatureSpec> = sdk_specs
        .iter()
        .map(|s| hb::FeatureSpec {
            name: s.name.clone(),
            entity_field: s.entity_field.clone(),
            aggregation: hb::Aggregation::Count,
            tile_sizes_secs: s.tile_sizes_secs.clone(),
            retention_secs: s.retention_secs,
            windows_secs: s.windows_secs.clone(),
        })
        .collect();

    let load = |fuel: bool| {
        let rt = PluginRuntime::new(&RuntimeConfig {
            fuel,
            ..Default::default()
        })
        .unwrap();
        let src = |file: &str, config: &str| PluginSource {
            name: file.into(),
            version: None,
            bytes: std::fs::read(wasm_dir.join(file)).unwrap(),
            config_json: config.into(),
            quotas: Quotas::default(),
            quarantine: Default::default(),
        };
        let parser = rt
            .load_parser(&src("json_parser.wasm", PARSER_CONFIG))
            .unwrap();
        let feature = rt
            .load_feature(&src("windowed_counter.wasm", counter_config))
            .unwrap();
        (rt, Plugins::Wasm { parser, feature })
    };
    let (_rt_fuel, mut wasm_fuel) = load(true);
    let (_rt_epoch, mut wasm_epoch) = load(false);
    let mut native = Plugins::Native {
        parser: json_parser::JsonParser::init(PARSER_CONFIG).unwrap(),
        feature: windowed_counter::WindowedCounter::init(counter_config)
            .unwrap()
            .0,
    };

    println!("{n} events ({:.1} MB NDJSON), batches of 1024, checkpoint every {checkpoint} updates, {runs} runs, median", bytes as f64 / 1e6);
    let mut results: Vec<(&str, Vec<Split>)> = vec![
        ("native", vec![]),
        ("wasm (fuel + epoch)", vec![]),
        ("wasm (epoch only)", vec![]),
    ];
    // `TESSERA_BENCH_ONLY=<path name>` runs that path alone (for a profiler) and prints no table.
    let only = std::env::var("TESSERA_BENCH_ONLY").ok();
    let (mut updates, mut tiles) = (0, 0);
    for _ in 0..runs {
        for (i, plugins) in [&mut native, &mut wasm_fuel, &mut wasm_epoch]
            .into_iter()
            .enumerate()
        {
            if only.as_ref().is_some_and(|o| o != results[i].0) {
                continue;
            }
            let (split, u, t) = run_once(&lines, plugins, &specs, 1024, checkpoint);
            (updates, tiles) = (u, t);
            results[i].1.push(split);
        }
    }
    if only.is_some() {
        return;
    }
    let native_total = median(results[0].1.iter().map(Split::total).collect());
    println!("{updates} feature updates ({:.2} per event), each into 3 tile sizes; {tiles} tile writes to the store ({:.2} per event)", updates as f64 / n as f64, tiles as f64 / n as f64);
    println!();
    println!("| path | ns/event | events/s per core | vs native | parse | feature | tiles | store | batching |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, splits) in &results {
        let total = median(splits.iter().map(Split::total).collect());
        let per = |f: fn(&Split) -> Duration| {
            median(splits.iter().map(f).collect()).as_nanos() as f64 / n as f64
        };
        println!(
            "| {name} | {:.0} | {:.2} M | {:.2}× | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            total.as_nanos() as f64 / n as f64,
            n as f64 / total.as_secs_f64() / 1e6,
            native_total.as_secs_f64() / total.as_secs_f64(),
            per(|s| s.parse),
            per(|s| s.feature),
            per(|s| s.tiles),
            per(|s| s.store),
            per(|s| s.batches),
        );
    }
    println!();
    println!("(stage columns: median ns/event of each stage; 'vs native' is throughput relative to native, higher is better)");
}
