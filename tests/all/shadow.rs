//! Shadow runs through the admin API against `tessera run --serve` over the
//! shared Kafka broker: the comparison checked record by record against an
//! oracle, the shadow writing nothing, promotion, a restart resuming the
//! run, the CLI; and a slow or failing shadow kept within its share of the
//! live path's time, quarantined on its own, never touching live results.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::admin::{
    admin_host, error_of, get, offsets, post, upload, wait_for_records, wasm, ADMIN, READER,
};
use crate::kafka::{log_tail, messages, serving_host, Msg, PARTITIONS};
use crate::support::{self, Event};

const STAGE: &str = "windowed-counter";
const SHADOW: &str = "/v1/plugins/windowed-counter/shadow";
/// The live config: views per post, by minute.
const VIEWS: &str = r#"{ features = [{ name = "views", entity = "post_id", event_types = ["view"], tiles = ["1m"] }] }"#;

/// The shadow report once it has accounted for `n` records (compared or
/// skipped); the pipeline shows it about twice a second.
fn report_after(api: &str, n: u64) -> Value {
    let mut report = Value::Null;
    support::wait_until(
        Duration::from_secs(60),
        &format!("the shadow report to cover {n} records"),
        || {
            report = get(api, Some(READER), SHADOW).1;
            let seen = report["records_compared"].as_u64().unwrap_or(0)
                + report["records_skipped"].as_u64().unwrap_or(0);
            seen >= n
        },
    );
    report
}

/// The event each (partition, offset) of `msgs` carries.
fn by_position<'a>(events: &'a [Event], msgs: &[Msg]) -> HashMap<(i32, i64), &'a Event> {
    offsets(msgs).into_iter().zip(events).collect()
}

/// Views per (post, minute) over `events`: what the live version counts.
fn views_oracle(events: &[Event]) -> BTreeMap<(String, i64), u64> {
    let mut want = BTreeMap::new();
    for e in events.iter().filter(|e| e.ty == "view") {
        *want
            .entry((e.post.clone(), e.ts - e.ts.rem_euclid(60_000)))
            .or_default() += 1;
    }
    want
}

/// The `views` tiles in the store of the (stopped) host at `cfg`.
fn views_in_store(cfg: &Path) -> BTreeMap<(String, i64), u64> {
    let config = tessera::Config::load(cfg).unwrap();
    let store = tessera::stores::open(&config.store).unwrap();
    let f = store
        .features()
        .unwrap()
        .into_iter()
        .find(|f| f.name == "views")
        .expect("views registered");
    let mut got = BTreeMap::new();
    for post in 0..40 {
        let entity = format!("post-{post}");
        for (start, agg) in store
            .read_tiles(
                f.id,
                entity.as_bytes(),
                60_000,
                support::T0 - 86_400_000,
                support::T0 + 86_400_000,
            )
            .unwrap()
        {
            got.insert((entity.clone(), start), agg.count);
        }
    }
    got
}

fn state_of_version(api: &str, version: &str) -> String {
    let (_, stage) = get(api, Some(READER), &format!("/v1/plugins/{STAGE}"));
    stage["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .map(|v| v["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn cli(api: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "plugin",
            "--api",
            &format!("http://{api}"),
            "--token",
            ADMIN,
        ])
        .args(args)
        .output()
        .unwrap()
}

/// v2 also counts likes as views. Shadowed from the first record, every
/// record is compared and exactly the likes differ (the oracle); the
/// examples are likes with both versions' outputs; the store holds only
/// what v1 counted. Refused requests change nothing; activating v2
/// promotes it; a shadow outlives a restart; the CLI reads and ends it.
#[test]
fn a_shadow_version_is_compared_record_by_record_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "shadow-compare";
    support::kafka_topic(topic, PARTITIONS);
    let events = support::events(47, 12_000, 2 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    let (host, api, cfg) = admin_host(dir.path(), topic, VIEWS);
    let likes_too = r#"{"features": [{"name": "views", "entity": "post_id", "event_types": ["view", "like"], "tiles": ["1m"]}]}"#;
    let (code, body) = upload(
        &api,
        Some(ADMIN),
        STAGE,
        "2",
        "feature",
        wasm("windowed_counter"),
        Some(likes_too),
    );
    assert_eq!(code, 201, "{body}");

    // Refusals: each says why, and no shadow runs after them.
    let start = |token, body: Value| post(&api, token, SHADOW, Some(body));
    assert_eq!(start(None, json!({"version": "2"})).0, 401);
    assert_eq!(start(Some(READER), json!({"version": "2"})).0, 403);
    let (code, body) = start(Some(ADMIN), json!({"version": "9"}));
    assert_eq!(code, 404, "{body}");
    for share in [0.0, -1.0, 11.0] {
        let (code, body) = start(Some(ADMIN), json!({"version": "2", "max_share": share}));
        assert_eq!(code, 400, "{body}");
        assert!(error_of(&body).contains("max_share"), "{body}");
    }
    assert_eq!(
        start(Some(ADMIN), json!({"version": "2", "share": 1})).0,
        400
    );
    let (code, _) = post(
        &api,
        Some(ADMIN),
        "/v1/plugins/nope/shadow",
        Some(json!({"version": "2"})),
    );
    assert_eq!(code, 404);
    let (code, body) = get(&api, Some(READER), SHADOW);
    assert_eq!(code, 404, "no shadow has run yet: {body}");
    assert_eq!(state_of_version(&api, "2"), "stored");

    let (code, body) = start(Some(ADMIN), json!({"version": "2", "max_share": 10.0}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(state_of_version(&api, "2"), "shadow");

    support::kafka_produce(topic, &msgs);
    let n = events.len() as u64;
    wait_for_records(&api, n);
    let report = report_after(&api, n);
    let likes = events.iter().filter(|e| e.ty == "like").count() as u64;
    assert_eq!(report["state"], "running", "{report}");
    assert_eq!(report["records_skipped"], 0, "{report}");
    assert_eq!(report["records_compared"], n, "{report}");
    assert_eq!(report["records_differing"], likes, "{report}");
    assert_eq!(report["health"]["failures"], 0, "{report}");
    let examples = report["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 20, "{report}");
    let at = by_position(&events, &msgs);
    for x in examples {
        let e = at[&(
            x["partition"].as_i64().unwrap() as i32,
            x["offset"].as_i64().unwrap(),
        )];
        assert_eq!(e.ty, "like", "{x}");
        assert_eq!(x["live"], json!({"output": []}), "{x}");
        assert_eq!(x["shadow"], json!({"output": ["views=1"]}), "{x}");
    }

    // The live version is v1 still; the shadow of it is refused.
    let (code, body) = post(
        &api,
        Some(ADMIN),
        &format!("/v1/plugins/{STAGE}/activate"),
        Some(json!({"version": "2"})),
    );
    assert_eq!(code, 200, "{body}");
    let ended = &body["boundary"]["shadow"];
    assert_eq!(ended["state"], "promoted", "{body}");
    assert_eq!(ended["records_compared"], n, "{body}");
    assert_eq!(get(&api, Some(READER), SHADOW).1["state"], "promoted");
    assert_eq!(state_of_version(&api, "2"), "active");
    let (code, body) = start(Some(ADMIN), json!({"version": "2"}));
    assert_eq!(code, 409, "{body}");

    // A shadow run outlives a restart (with its counts started afresh).
    let likes_only = r#"{"features": [{"name": "views", "entity": "post_id", "event_types": ["like"], "tiles": ["1m"]}]}"#;
    let (code, body) = upload(
        &api,
        Some(ADMIN),
        STAGE,
        "3",
        "feature",
        wasm("windowed_counter"),
        Some(likes_only),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = start(Some(ADMIN), json!({"version": "3"}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["max_share"], 0.25, "admin.shadow_max_share by default");
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "{}", log_tail(&cfg, 20));
    // Everything was read before the promotion: the store has v1's counts.
    assert_eq!(views_in_store(&cfg), views_oracle(&events));

    let host = serving_host(&cfg);
    support::wait_until(Duration::from_secs(60), "the host to restart", || {
        support::http_get(&api, "/v1/status").is_some()
    });
    support::wait_until(Duration::from_secs(30), "the stages shown", || {
        get(&api, Some(READER), SHADOW).0 == 200
    });
    let report = get(&api, Some(READER), SHADOW).1;
    assert_eq!(report["version"], "3", "{report}");
    assert_eq!(report["state"], "running", "{report}");
    assert_eq!(report["records_compared"], 0, "{report}");

    let shown = cli(&api, &["shadow", STAGE]);
    assert!(shown.status.success(), "{shown:?}");
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["version"], "3");
    let stopped = cli(&api, &["shadow", STAGE, "--stop"]);
    assert!(stopped.status.success(), "{stopped:?}");
    let stopped: Value = serde_json::from_slice(&stopped.stdout).unwrap();
    assert_eq!(stopped["report"]["state"], "stopped", "{stopped}");
    let again = cli(&api, &["shadow", STAGE, "--stop"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("runs no shadow"),
        "{again:?}"
    );
    assert_eq!(state_of_version(&api, "3"), "stored");
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "{}", log_tail(&cfg, 20));
}

/// A shadow that spins on some events (until its wall-time quota) is held
/// to its share of the live path's time: batches are skipped, and its time
/// stays within the share plus one batch. Then a shadow that fails every
/// call is quarantined on its own. Neither dead-letters anything or changes
/// a live tile (the oracle).
#[test]
fn a_slow_or_failing_shadow_stays_within_its_share_and_never_touches_the_live_path() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "shadow-share";
    support::kafka_topic(topic, PARTITIONS);
    let mut events = support::events(53, 16_000, 2 * 3_600_000, 1_000, None);
    for e in events.iter_mut().step_by(400) {
        e.ty = "loop";
    }
    let (msgs, _) = messages(&events, None);
    let (first, second) = msgs.split_at(10_000);
    let (host, api, cfg) = admin_host(dir.path(), topic, VIEWS);
    // Uploaded before any record is read: the smoke call has no sample to
    // spin or fail on.
    for (version, config) in [("slow", None), ("fail", Some(r#"{"always": "fail"}"#))] {
        let (code, body) = upload(
            &api,
            Some(ADMIN),
            STAGE,
            version,
            "feature",
            wasm("misbehave"),
            config,
        );
        assert_eq!(code, 201, "{body}");
    }
    let (code, body) = crate::admin::put_json(
        &api,
        Some(ADMIN),
        &format!("/v1/plugins/{STAGE}/quotas"),
        json!({"wall_time_per_call": "50ms"}),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = post(
        &api,
        Some(ADMIN),
        SHADOW,
        Some(json!({"version": "slow", "max_share": 0.1})),
    );
    assert_eq!(code, 200, "{body}");

    support::kafka_produce(topic, first);
    wait_for_records(&api, first.len() as u64);
    let r = report_after(&api, first.len() as u64);
    let num = |k: &str| r[k].as_f64().unwrap();
    assert!(num("records_skipped") > 0.0, "{r}");
    assert!(num("batches_compared") >= 1.0, "{r}");
    assert!(
        num("shadow_seconds") + num("interference_seconds")
            <= 0.1 * num("live_seconds") + num("longest_batch_seconds"),
        "the shadow kept to its share: {r}"
    );
    assert!(
        num("shadow_seconds") > 0.0 && num("live_seconds") > 0.0,
        "{r}"
    );
    assert!(r["health"]["quota_hits"].as_u64().unwrap() > 0, "{r}");
    // misbehave counts every event under its own feature: every record
    // compared differs; a spinning one failed on the shadow side only.
    assert_eq!(r["records_differing"], r["records_compared"], "{r}");
    let at = by_position(&events, &msgs);
    let examples = r["examples"].as_array().unwrap();
    assert!(!examples.is_empty(), "{r}");
    for x in examples {
        let e = at[&(
            x["partition"].as_i64().unwrap() as i32,
            x["offset"].as_i64().unwrap(),
        )];
        let live = if e.ty == "view" {
            json!(["views=1"])
        } else {
            json!([])
        };
        assert_eq!(x["live"], json!({ "output": live }), "{x}");
        if e.ty == "loop" {
            let why = x["shadow"]["failed"].as_str().unwrap_or_default();
            assert!(why.contains("wall"), "{x}");
        } else {
            assert_eq!(x["shadow"], json!({"output": ["misbehave_count=1"]}), "{x}");
        }
    }

    // A shadow failing every call: quarantined, the run stops by itself.
    let (code, body) = post(&api, Some(ADMIN), SHADOW, Some(json!({"version": "fail"})));
    assert_eq!(code, 200, "{body}");
    support::kafka_produce(topic, second);
    wait_for_records(&api, msgs.len() as u64);
    support::wait_until(
        Duration::from_secs(60),
        "the failing shadow quarantined",
        || get(&api, Some(READER), SHADOW).1["state"] == "quarantined",
    );
    assert_eq!(state_of_version(&api, "fail"), "quarantined");
    assert_eq!(state_of_version(&api, "slow"), "stored");
    let (_, stage) = get(&api, Some(READER), &format!("/v1/plugins/{STAGE}"));
    assert_eq!(
        stage["state"], "active",
        "the live version is not quarantined: {stage}"
    );

    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "{}", log_tail(&cfg, 20));
    assert_eq!(views_in_store(&cfg), views_oracle(&events));
    let dead = support::read_ndjson(&dir.path().join("dead-letter.ndjson"));
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
}
