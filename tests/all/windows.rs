//! Window answers against a brute-force oracle over the raw events.

use tessera::api::query;
use tessera::stores::TileStore;

use crate::support::{self, Event, Rng, T0};

const FEATURES: [&str; 8] = [
    "likes_per_post",
    "views_per_post",
    "interactions_per_user",
    "dwell_sum",
    "dwell_max",
    "dwell_min",
    "dwell_last",
    "dwell_mean",
];

/// Checks `queries` random window queries against the oracle over `accepted`.
pub fn check_windows(store: &dyn TileStore, accepted: &[Event], seed: u64, queries: usize) {
    let features = store.features().unwrap();
    let mut rng = Rng(seed);
    let windows = [
        60_000,
        37 * 60_000,
        30 * 60_000,
        2 * 3_600_000,
        86_400_000,
        5 * 3_600_000 + 17_000,
    ];
    for _ in 0..queries {
        let name = FEATURES[rng.below(FEATURES.len() as u64) as usize];
        let f = features.iter().find(|f| f.name == name).unwrap();
        let e = &accepted[rng.below(accepted.len() as u64) as usize];
        let entity = support::feature_input(name, e)
            .map(|(ent, _)| ent.to_string())
            .unwrap_or_else(|| e.post.clone());
        let window = windows[rng.below(windows.len() as u64) as usize];
        let at = T0 - 3_600_000 + rng.below(6 * 3_600_000) as i64;
        let a = query::answer(store, f, &entity, window, at).unwrap();
        // The covered interval is the window, aligned to the 1-minute tile.
        assert!(
            a.covered_end_ms >= at && a.covered_end_ms - at < 60_000,
            "{a:?}"
        );
        assert!(
            window - (a.covered_end_ms - a.covered_start_ms) < 60_000,
            "{a:?}"
        );
        let o = support::oracle(
            accepted,
            name,
            &entity,
            a.covered_start_ms,
            a.covered_end_ms,
        );
        let expected = o.value(f.aggregation());
        assert_eq!(
            a.count, o.count,
            "{name}/{entity} over {window} at {at}: {a:?}"
        );
        match (a.value, expected) {
            (Some(got), Some(want)) => assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{name}/{entity}: got {got}, want {want}; {a:?}"
            ),
            (got, want) => assert_eq!(got, want, "{name}/{entity}: {a:?}"),
        }
    }
}

#[test]
fn window_answers_match_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(7, 20_000, 3 * 3_600_000, 20_000, None);
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    // A generous out-of-orderness and no late handler: every event counts.
    let cfg = support::config(
        dir.path(),
        &input,
        "checkpoint_events = 3000",
        "[watermark]\nout_of_orderness = \"1h\"",
    );
    let (store, stats) = support::run(&cfg);
    assert_eq!(stats.records_in, 20_000);
    assert_eq!(stats.events_out, 20_000);
    assert_eq!(stats.dead_lettered, 0);
    assert!(stats.checkpoints > 3, "{stats:?}");
    check_windows(store.as_ref(), &events, 11, 600);
}

/// 8,000 events over two hours: every 50th is 20 minutes late, every 70th
/// (overlapping) 2 hours.
fn late_stream() -> Vec<Event> {
    let mut events = support::events(3, 8_000, 2 * 3_600_000, 2_000, Some((50, 20 * 60_000)));
    for (i, e) in events.iter_mut().enumerate() {
        if i % 70 == 69 {
            e.ts -= 2 * 3_600_000;
        }
    }
    events
}

/// Runs `events` through a pipeline with the `[late]` table `late` (and a
/// 5 s out-of-orderness) in `dir`.
fn run_with_late(
    dir: &std::path::Path,
    events: &[Event],
    late: &str,
) -> (std::sync::Arc<dyn TileStore>, tessera::RunStats) {
    let input = dir.join("events.ndjson");
    support::write_ndjson(&input, events);
    let extra = format!("[watermark]\nout_of_orderness = \"5s\"\n\n{late}");
    support::run(&support::config(dir, &input, "", &extra))
}

/// Oracle for a handler that accepts events at most `accept_within_ms`
/// behind the watermark and rejects the rest: replays the batches (256
/// records each) with the same watermark rule. (accepted events, late ones
/// accepted, rejected)
fn late_oracle(events: &[Event], accept_within_ms: i64) -> (Vec<Event>, u64, u64) {
    let (mut accepted, mut late_accepted, mut rejected, mut max_seen) =
        (Vec::new(), 0u64, 0u64, i64::MIN);
    for batch in events.chunks(256) {
        let wm = (max_seen != i64::MIN).then(|| max_seen - 5_000);
        for e in batch {
            match wm {
                Some(wm) if e.ts < wm && wm - e.ts > accept_within_ms => rejected += 1,
                Some(wm) if e.ts < wm => {
                    late_accepted += 1;
                    accepted.push(e.clone())
                }
                _ => accepted.push(e.clone()),
            }
        }
        max_seen = max_seen.max(batch.iter().map(|e| e.ts).max().unwrap());
    }
    assert!(
        rejected > 50 && late_accepted > 50,
        "the data must exercise both paths: {rejected} {late_accepted}"
    );
    (accepted, late_accepted, rejected)
}

#[test]
fn late_events_follow_the_late_handler_policy() {
    // The default handler accepts up to 30 minutes and side-outputs the rest.
    let dir = tempfile::tempdir().unwrap();
    let events = late_stream();
    let late = format!(
        "[late]\nname = \"late-default\"\npath = \"{}\"\nconfig = {{ allowed_lateness = \"30m\" }}",
        support::plugin("late_default").display()
    );
    // The run's metrics, from a recorder of its own.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let (store, stats) =
        metrics::with_local_recorder(&recorder, || run_with_late(dir.path(), &events, &late));
    let (accepted, late_accepted, side) = late_oracle(&events, 30 * 60_000);
    assert_eq!(stats.late_side_output, side);
    assert_eq!(stats.late_accepted, late_accepted);
    // Counted per plugin, decision and reason (digits folded: one label).
    let text = metrics.render();
    let counted = |labels: &str| -> u64 {
        let name = format!("tessera_late_decisions_total{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        counted(
            r#"plugin="late-default",decision="side_output",reason="N ms behind the watermark, allowed N ms""#
        ),
        side
    );
    assert_eq!(
        counted(r#"plugin="late-default",decision="accept",reason="""#),
        late_accepted
    );
    assert_eq!(stats.events_out, accepted.len() as u64);
    let side_rows = support::read_ndjson(&dir.path().join("side-output.ndjson"));
    assert_eq!(side_rows.len() as u64, side);
    assert!(side_rows[0]["reason"]
        .as_str()
        .unwrap()
        .contains("behind the watermark"));
    check_windows(store.as_ref(), &accepted, 5, 300);
}

#[test]
fn another_late_policy_drops_what_it_does_not_accept() {
    // The same stream under a test handler that accepts up to 25 minutes
    // and drops the rest: counted, written nowhere.
    let dir = tempfile::tempdir().unwrap();
    let events = late_stream();
    let late = format!(
        "[late]\nname = \"late-drop\"\npath = \"{}\"\nconfig = \"1500000\"",
        support::plugin("late_drop").display()
    );
    let (store, stats) = run_with_late(dir.path(), &events, &late);
    let (accepted, late_accepted, dropped) = late_oracle(&events, 25 * 60_000);
    assert_eq!(stats.late_dropped, dropped);
    assert_eq!(stats.late_accepted, late_accepted);
    assert_eq!(stats.late_side_output, 0);
    assert!(support::read_ndjson(&dir.path().join("side-output.ndjson")).is_empty());
    check_windows(store.as_ref(), &accepted, 6, 300);
}

/// Two feature stages with different allowed lateness under a handler
/// that accepts up to 10 minutes and drops the rest: the strict stage (no
/// allowance) counts only what is on time or accepted; the lenient one
/// (30 minutes, views by post) also counts the dropped events within its
/// allowance. Each against its own oracle.
#[test]
fn each_feature_stage_counts_late_events_within_its_own_allowed_lateness() {
    let dir = tempfile::tempdir().unwrap();
    let events = late_stream();
    let late = format!(
        r#"[late]
name = "late-drop"
path = "{drop}"
config = "600000"

[[features]]
name = "lenient-counter"
path = "{counter}"
allowed_lateness = "30m"
config = {{ features = [{{ name = "views_lenient", entity = "post_id", event_types = ["view"] }}] }}
"#,
        drop = support::plugin("late_drop").display(),
        counter = support::plugin("windowed_counter").display(),
    );
    let (store, stats) = run_with_late(dir.path(), &events, &late);
    // Oracle: the same batches and watermark; every event behind the
    // watermark is late for the strict stage, so the handler sees it.
    let (mut strict, mut lenient, mut dropped, mut max_seen) =
        (Vec::new(), Vec::new(), 0u64, i64::MIN);
    for batch in events.chunks(256) {
        let wm = (max_seen != i64::MIN).then(|| max_seen - 5_000);
        for e in batch {
            let behind = wm.map_or(0, |wm| wm - e.ts);
            if behind <= 10 * 60_000 {
                strict.push(e.clone());
                lenient.push(e.clone());
            } else {
                dropped += 1;
                if behind <= 30 * 60_000 {
                    lenient.push(e.clone());
                }
            }
        }
        max_seen = max_seen.max(batch.iter().map(|e| e.ts).max().unwrap());
    }
    let views = |es: &[Event]| es.iter().filter(|e| e.ty == "view").count();
    assert!(
        views(&lenient) > views(&strict) + 20 && dropped > 100,
        "the data must drop events the lenient stage keeps"
    );
    assert_eq!(stats.late_dropped, dropped);
    check_windows(store.as_ref(), &strict, 8, 300);
    let features = store.features().unwrap();
    let f = features.iter().find(|f| f.name == "views_lenient").unwrap();
    let mut rng = Rng(9);
    for _ in 0..300 {
        let e = &lenient[rng.below(lenient.len() as u64) as usize];
        let window = [60_000, 20 * 60_000, 2 * 3_600_000][rng.below(3) as usize];
        let at = T0 - 3_600_000 + rng.below(4 * 3_600_000) as i64;
        let a = query::answer(store.as_ref(), f, &e.post, window, at).unwrap();
        let o = support::oracle(
            &lenient,
            "views_per_post",
            &e.post,
            a.covered_start_ms,
            a.covered_end_ms,
        );
        assert_eq!(
            a.count, o.count,
            "views_lenient/{} over {window} at {at}",
            e.post
        );
    }
}

#[test]
fn a_failing_late_handler_dead_letters_only_the_late_events() {
    for mode in ["trap", "short"] {
        let dir = tempfile::tempdir().unwrap();
        let events = support::events(13, 3_000, 3_600_000, 1_000, Some((100, 20 * 60_000)));
        let input = dir.path().join("events.ndjson");
        support::write_ndjson(&input, &events);
        let late = format!(
            "[watermark]\nout_of_orderness = \"5s\"\n\n[late]\nname = \"bad-late\"\npath = \"{}\"\nconfig = \"{mode}\"\nquarantine = {{ after_consecutive_failures = 1000 }}",
            support::plugin("misbehave_late").display()
        );
        let (store, stats) = support::run(&support::config(dir.path(), &input, "", &late));
        // Oracle: the events behind the watermark (per 256-record batch) are exactly the dead letters.
        let (mut accepted, mut late_rows, mut max_seen) = (Vec::new(), Vec::new(), i64::MIN);
        for (b, batch) in events.chunks(256).enumerate() {
            let wm = (max_seen != i64::MIN).then(|| max_seen - 5_000);
            for (i, e) in batch.iter().enumerate() {
                match wm {
                    Some(wm) if e.ts < wm => late_rows.push((b * 256 + i + 1) as i64),
                    _ => accepted.push(e.clone()),
                }
            }
            max_seen = max_seen.max(batch.iter().map(|e| e.ts).max().unwrap());
        }
        assert!(late_rows.len() >= 20, "{mode}: {}", late_rows.len());
        let dead = support::read_ndjson(&dir.path().join("dead-letter.ndjson"));
        let offsets: Vec<i64> = dead.iter().map(|d| d["offset"].as_i64().unwrap()).collect();
        assert_eq!(offsets, late_rows, "{mode}");
        assert!(
            dead.iter()
                .all(|d| d["stage"] == "late" && d["plugin"] == "bad-late"),
            "{mode}"
        );
        let reason = dead[0]["reason"].as_str().unwrap();
        match mode {
            "trap" => assert!(reason.contains("late handler trap on purpose"), "{reason}"),
            _ => assert!(reason.contains("decisions for"), "{reason}"),
        }
        assert_eq!(
            (
                stats.late_accepted,
                stats.late_dropped,
                stats.late_side_output
            ),
            (0, 0, 0),
            "{mode}"
        );
        assert_eq!(stats.events_out, accepted.len() as u64);
        check_windows(store.as_ref(), &accepted, 17, 100);
    }
}
