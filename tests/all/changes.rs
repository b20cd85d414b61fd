//! Completeness by watermark and the change log of amended partitions,
//! against an oracle that replays the batches with the same watermark,
//! late-handler and completeness rules; across a restart, with a consumer
//! that commits its high watermark in between.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use tessera::api::changes::LedgerAt;
use tessera::api::AppState;

use crate::http::{call, get};
use crate::support::{self, Event};

const H: i64 = 3_600_000;
const OUT_OF_ORDERNESS: i64 = 5_000;
const HANDLER_LATENESS: i64 = 90 * 60_000;
const COMPLETE_LATENESS: i64 = 10 * 60_000;
const BATCH: usize = 256;

/// (kind, partition start, events) of each change, by change number.
type Expected = Vec<(&'static str, i64, u64)>;

/// What the pipeline must have recorded after one run over `events`
/// (a fresh watermark, as after a restart), given what earlier runs left.
struct Oracle {
    complete: BTreeSet<i64>,
    seen: BTreeSet<i64>,
    changes: Expected,
    side_output: u64,
    accepted: Vec<Event>,
}

impl Oracle {
    fn new() -> Self {
        Oracle {
            complete: BTreeSet::new(),
            seen: BTreeSet::new(),
            changes: Vec::new(),
            side_output: 0,
            accepted: Vec::new(),
        }
    }

    /// One run: a checkpoint after every batch.
    fn run(&mut self, events: &[Event]) {
        let mut max_seen = i64::MIN;
        for batch in events.chunks(BATCH) {
            let wm = (max_seen != i64::MIN).then(|| max_seen - OUT_OF_ORDERNESS);
            let mut counted: BTreeMap<i64, u64> = BTreeMap::new();
            for e in batch {
                match wm {
                    Some(wm) if e.ts < wm && wm - e.ts > HANDLER_LATENESS => self.side_output += 1,
                    _ => {
                        *counted.entry(e.ts.div_euclid(H) * H).or_insert(0) += 1;
                        self.accepted.push(e.clone());
                    }
                }
            }
            max_seen = max_seen.max(batch.iter().map(|e| e.ts).max().unwrap());
            // The checkpoint: amendments first, then completions.
            for (&start, &n) in &counted {
                self.seen.insert(start);
                if self.complete.contains(&start) {
                    self.changes.push(("amended", start, n));
                }
            }
            let through = (max_seen - OUT_OF_ORDERNESS - COMPLETE_LATENESS).div_euclid(H) * H;
            for &start in &self.seen {
                if start + H <= through && self.complete.insert(start) {
                    let events = self.accepted_in(start);
                    self.changes.push(("complete", start, events));
                }
            }
        }
    }

    fn accepted_in(&self, start: i64) -> u64 {
        self.accepted
            .iter()
            .filter(|e| e.ts.div_euclid(H) * H == start)
            .count() as u64
    }
}

/// The changes an answer lists, as the oracle writes them, with their
/// numbers (which must be consecutive from `first`).
fn summary(answer: &serde_json::Value, first: u64) -> Expected {
    let changes = answer["changes"].as_array().unwrap();
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["change"].as_u64(), Some(first + i as u64), "{c}");
            assert_eq!(c["output"], "tiles");
            let kind = if c["kind"] == "complete" {
                "complete"
            } else {
                assert_eq!(c["kind"], "amended", "{c}");
                "amended"
            };
            let start = c["partition_start_ms"].as_i64().unwrap();
            assert_eq!(c["partition_end_ms"].as_i64(), Some(start + H));
            (kind, start, c["events"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn late_events_amend_complete_partitions_and_a_consumer_sees_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    // Six hours of events; every 40th is 50 minutes late (accepted, often
    // into a complete hour), every 97th 3 hours late (side output).
    let mut events = support::events(17, 12_800, 6 * H, 2_000, Some((40, 50 * 60_000)));
    for (i, e) in events.iter_mut().enumerate() {
        if i % 97 == 96 {
            e.ts -= 3 * H;
        }
    }
    let (first, second) = events.split_at(25 * BATCH);
    let input = dir.path().join("events.ndjson");
    let extra = format!(
        "[watermark]\nout_of_orderness = \"5s\"\n\n[late]\nname = \"late-default\"\npath = \"{}\"\nconfig = {{ allowed_lateness = \"90m\" }}",
        support::plugin("late_default").display()
    );
    let config = |input: &std::path::Path| {
        support::config(dir.path(), input, "checkpoint_events = 1", &extra).replace(
            "[completeness]\n",
            "[completeness]\nallowed_lateness = \"10m\"\n",
        )
    };
    let cfg_text = config(&input);
    let cfg = tessera::Config::parse(&cfg_text).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = |store| {
        AppState {
            ledger: Some(LedgerAt::of(&cfg)),
            ..AppState::new(store)
        }
        .router()
    };
    let mut oracle = Oracle::new();

    // Run 1 over the first part.
    support::write_ndjson(&input, first);
    let (store, _) = support::run(&cfg_text);
    oracle.run(first);
    let app = api(store.clone());
    let (code, all) = rt.block_on(get(&app, "/v1/changes"));
    assert_eq!(code, 200, "{all}");
    let seen_first = summary(&all, 1);
    assert_eq!(seen_first, oracle.changes);
    assert!(
        seen_first.iter().any(|c| c.0 == "amended") && seen_first.iter().any(|c| c.0 == "complete"),
        "the data must amend complete partitions: {seen_first:?}"
    );
    // A consumer processes them and commits the last change; a commit
    // beyond it is refused and changes nothing.
    let h1 = all["last_change"].as_u64().unwrap();
    assert_eq!(h1, seen_first.len() as u64);
    let put = |body: String| {
        let req = axum::http::Request::put("/v1/changes/consumers/daily-rollup")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        rt.block_on(call(&app, req))
    };
    assert_eq!(put(format!("{{\"high_watermark\": {}}}", h1 + 1)).0, 400);
    assert_eq!(
        rt.block_on(get(&app, "/v1/changes/consumers/daily-rollup"))
            .0,
        404
    );
    assert_eq!(put(format!("{{\"high_watermark\": {h1}}}")).0, 200);
    assert_eq!(put("{\"high_watermark\": -1}".into()).0, 400);
    let (_, c) = rt.block_on(get(&app, "/v1/changes/consumers/daily-rollup"));
    assert_eq!(c["high_watermark"].as_u64(), Some(h1));
    assert_eq!(
        rt.block_on(get(&app, "/v1/changes/consumers/bad%20name")).0,
        400
    );
    drop(app);
    drop(store);

    // Run 2: the host restarts on the rest of the stream (a second file:
    // the first is read to its end); its watermark starts afresh, its
    // ledger and change numbers go on from the store.
    let rest = dir.path().join("events-2.ndjson");
    support::write_ndjson(&rest, second);
    let second_cfg = config(&rest);
    let (store, stats) = support::run(&second_cfg);
    let side_before = oracle.side_output;
    oracle.run(second);
    let app = api(store.clone());
    let (_, after) = rt.block_on(get(&app, "/v1/changes?consumer=daily-rollup"));
    assert_eq!(after["since"].as_u64(), Some(h1));
    let seen_second = summary(&after, h1 + 1);
    assert_eq!(seen_second, oracle.changes[seen_first.len()..]);
    assert!(
        seen_second.iter().any(|c| c.0 == "amended"),
        "{seen_second:?}"
    );
    // Every change exactly once over the two reads.
    let (_, everything) = rt.block_on(get(&app, "/v1/changes?since=0"));
    assert_eq!(summary(&everything, 1), [seen_first, seen_second].concat());

    // The change-log file beside the outputs holds each change once.
    let file = support::read_ndjson(&dir.path().join("changes.ndjson"));
    assert_eq!(serde_json::Value::Array(file), everything["changes"]);

    // The CLI reads the same, and commits for the consumer.
    drop(app);
    drop(store);
    let cfg_path = dir.path().join("tessera.toml");
    std::fs::write(&cfg_path, &second_cfg).unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .arg("--config")
            .arg(&cfg_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(cli(&["changes", "--consumer", "daily-rollup"]), after);
    let last = everything["last_change"].as_u64().unwrap().to_string();
    cli(&["changes", "--consumer", "daily-rollup", "--commit", &last]);
    let none = cli(&["changes", "--consumer", "daily-rollup"]);
    assert_eq!(none["changes"].as_array().map(Vec::len), Some(0), "{none}");
    let ledger = cli(&["completeness"]);
    let store = tessera::stores::open(&tessera::Config::parse(&second_cfg).unwrap().store).unwrap();
    let app = api(store.clone());
    let (_, comp) = rt.block_on(get(&app, "/v1/completeness"));
    assert_eq!(ledger, comp, "the CLI and the API answer alike");

    // Completeness: the partitions and how far event time is complete.
    let parts = comp["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), oracle.seen.len());
    for p in parts {
        let start = p["start_ms"].as_i64().unwrap();
        assert_eq!(p["events"].as_u64(), Some(oracle.accepted_in(start)), "{p}");
        let complete = oracle.complete.contains(&start);
        assert_eq!(
            p["state"],
            if complete { "complete" } else { "open" },
            "{p}"
        );
        let amendments: u64 = oracle
            .changes
            .iter()
            .filter(|c| c.0 == "amended" && c.1 == start)
            .count() as u64;
        assert_eq!(p["amendments"].as_array().unwrap().len() as u64, amendments);
    }
    let max_seen = second.iter().map(|e| e.ts).max().unwrap();
    let through = (max_seen - OUT_OF_ORDERNESS - COMPLETE_LATENESS).div_euclid(H) * H;
    assert_eq!(comp["complete_through_ms"].as_i64(), Some(through));
    // The second run side-output what the oracle says; the tiles hold
    // exactly the accepted events.
    assert_eq!(stats.late_side_output, oracle.side_output - side_before);
    crate::windows::check_windows(store.as_ref(), &oracle.accepted, 23, 200);
}
