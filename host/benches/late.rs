//! Late data (#8): end-to-end throughput of the pipeline (file source →
//! WASM parser → late handler → WASM features → tiles → embedded store,
//! with the partition ledger) with 0%, 1% and 10% of events late, half of
//! them accepted into complete hours (amendments), half sent to the side
//! output; and what a change-log query costs over a month of hourly
//! partitions (read the ledger, list the changes above a high watermark).
//!
//! Run: `cargo bench -p tessera --bench late` (builds the plugins first
//! with scripts/build-plugins.sh). `TESSERA_BENCH_EVENTS` (default
//! 300,000) and `TESSERA_BENCH_RUNS` (default 3) change the size.

use std::path::Path;
use std::time::{Duration, Instant};

use tessera::api::changes::LedgerAt;

mod common;
use common::{env_or, median};

const H: i64 = 3_600_000;
const T0: i64 = 1_795_392_000_000;

/// `n` events over six hours, every `1/late_every`-th of them late: 20
/// minutes (accepted) or 2 hours (side output) behind, alternately.
fn write_events(path: &Path, n: usize, late_every: usize) {
    use std::io::Write;
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let types = ["view", "view", "like", "share", "comment"];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let mut ts = T0 + (i as i64) * 6 * H / n as i64 + (next() % 4000) as i64;
        if late_every > 0 && i % late_every == late_every - 1 {
            ts -= if (i / late_every).is_multiple_of(2) {
                20 * 60_000
            } else {
                2 * H
            };
        }
        let ty = types[(next() % types.len() as u64) as usize];
        writeln!(
            out,
            r#"{{"ts":{ts},"type":"{ty}","post_id":"post-{}","user_id":"user-{}","dwell_ms":{}}}"#,
            next() % 10_000,
            next() % 100_000,
            next() % 60_000
        )
        .unwrap();
    }
}

fn config(dir: &Path, input: &Path, plugins: &Path) -> String {
    let plugin = |name: &str| plugins.join(format!("{name}.wasm")).display().to_string();
    format!(
        r#"
[pipeline]
name = "bench"
batch_size = 4096
checkpoint_events = 20000

[source]
type = "file"
path = "{input}"

[parser]
name = "json-parser"
path = "{parser}"
config = {{ time_field = "ts", type_field = "type", entity_fields = ["post_id", "user_id"], fields = {{ dwell_ms = "float64" }} }}

[[features]]
name = "windowed-counter"
path = "{counter}"
config = {{ features = [
  {{ name = "likes_per_post", entity = "post_id", event_types = ["like"] }},
  {{ name = "views_per_post", entity = "post_id", event_types = ["view"] }},
  {{ name = "dwell_mean", entity = "user_id", aggregation = "mean", value_field = "dwell_ms" }},
] }}

[late]
name = "late-default"
path = "{late}"
config = {{ allowed_lateness = "30m" }}

[watermark]
out_of_orderness = "5s"

[store]
type = "embedded"
path = "{dir}/tiles.redb"

[dead_letter]
path = "{dir}/dead-letter.ndjson"

[side_output]
path = "{dir}/side-output.ndjson"

[completeness]
change_log_path = "{dir}/changes.ndjson"
"#,
        input = input.display(),
        dir = dir.display(),
        parser = plugin("json_parser"),
        counter = plugin("windowed_counter"),
        late = plugin("late_default"),
    )
}

fn plugin_dir() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new(root.join("scripts/build-plugins.sh"))
        .arg("--quiet")
        .status()
        .expect("running scripts/build-plugins.sh");
    assert!(status.success(), "building the plugins failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("wasm32-wasip2/release")
}

/// One run over a fresh store: (elapsed, stats).
fn run_once(input: &Path, plugins: &Path) -> (Duration, tessera::RunStats) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tessera::Config::parse(&config(dir.path(), input, plugins)).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    let mut p = tessera::Pipeline::build(cfg, store).unwrap();
    let started = Instant::now();
    let stats = p.run(&mut |_| {}).unwrap();
    (started.elapsed(), stats)
}

fn main() {
    let n: usize = env_or("TESSERA_BENCH_EVENTS", 300_000);
    let runs: usize = env_or("TESSERA_BENCH_RUNS", 3);
    let plugins = plugin_dir();
    let inputs = tempfile::tempdir().unwrap();
    let cases = [("0% late", 0usize), ("1% late", 100), ("10% late", 10)];
    let files: Vec<_> = cases
        .iter()
        .map(|(_, every)| {
            let p = inputs.path().join(format!("late-{every}.ndjson"));
            write_events(&p, n, *every);
            p
        })
        .collect();
    run_once(&files[0], &plugins); // warm-up: compiles the plugins
                                   // Alternating runs, so machine noise hits every case alike.
    let mut times = vec![Vec::new(); cases.len()];
    let mut last = vec![None; cases.len()];
    for _ in 0..runs {
        for (i, f) in files.iter().enumerate() {
            let (t, stats) = run_once(f, &plugins);
            times[i].push(t);
            last[i] = Some(stats);
        }
    }
    println!("{n} events, median of {runs} runs, one pipeline thread:");
    let base = median(times[0].clone());
    for (i, (name, _)) in cases.iter().enumerate() {
        let m = median(times[i].clone());
        let s = last[i].as_ref().unwrap();
        println!(
            "  {name:>8}: {:>6.0} k events/s ({:.2}× the 0% case); late accepted {}, side output {}, checkpoints {}",
            n as f64 / m.as_secs_f64() / 1e3,
            base.as_secs_f64() / m.as_secs_f64(),
            s.late_accepted,
            s.late_side_output,
            s.checkpoints
        );
    }
    change_log_query(runs.max(5));
}

/// A month of hourly partitions (720), each completed and a tenth of them
/// amended three times, committed through the ledger as the pipeline does;
/// then the query a consumer makes.
fn change_log_query(runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), &dir.path().join("none"), Path::new("."));
    let cfg = tessera::Config::parse(&text).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    let at = LedgerAt::of(&cfg);
    let (pipeline, prefix) = tessera::pipeline::ledger_location(&cfg);
    let mut ledger = tessera::pipeline::ledger::Ledger::resume(
        &cfg.completeness,
        store.as_ref(),
        &pipeline,
        prefix,
    )
    .unwrap();
    let hours = 720i64;
    for h in 0..hours {
        ledger.count(&vec![T0 + h * H + 1; 1000]);
        let mut positions = ledger.checkpoint(Some(T0 + (h + 1) * H), h);
        if h % 10 == 9 {
            for back in 1..=3 {
                ledger.count(&[T0 + (h - back * 3) * H]);
            }
            positions.extend(ledger.checkpoint(Some(T0 + (h + 1) * H), h));
        }
        store
            .commit(&tessera::stores::Checkpoint {
                pipeline: pipeline.clone(),
                positions,
                ..Default::default()
            })
            .unwrap();
        ledger.committed().unwrap();
    }
    let last = at.read(store.as_ref()).unwrap().last_change();
    for (name, since) in [("everything", 0), ("the last day", last - 24 - 7)] {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..runs {
            let started = Instant::now();
            found = at
                .changes(store.as_ref(), Some(since), None)
                .unwrap()
                .changes
                .len();
            times.push(started.elapsed());
        }
        println!(
            "  change-log query over {hours} hourly partitions ({last} changes), {name}: {found} changes, median {:.2} ms",
            median(times).as_secs_f64() * 1e3
        );
    }
}
