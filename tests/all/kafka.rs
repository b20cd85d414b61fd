//! The Kafka source against a real Apache Kafka broker (started once per
//! test run by `support::kafka_bootstrap`): events from a real producer
//! become tiles exactly once, poison messages reach the dead letter with
//! their topic, partition and offset, and a host killed with SIGKILL resumes
//! from the offsets committed with its tiles.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, Event};

const PARTITIONS: i32 = 4;

/// The test pipeline config over `topic` instead of a file.
fn kafka_config(dir: &Path, topic: &str, pipeline_extra: &str, extra: &str) -> String {
    let file_cfg = support::config(dir, Path::new("unused"), pipeline_extra, extra);
    let file_source = "[source]\ntype = \"file\"\npath = \"unused\"\n";
    assert!(file_cfg.contains(file_source));
    file_cfg.replace(
        file_source,
        &format!(
            "[source]\ntype = \"kafka\"\ntopics = [\"{topic}\"]\ngroup_id = \"{topic}-group\"\nidle_exit = \"3s\"\nproperties = {{ \"bootstrap.servers\" = \"{}\", \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\" }}\n",
            support::kafka_bootstrap()
        ),
    )
}

/// A message to produce: (partition, key, payload).
type Msg = (i32, String, Vec<u8>);

/// Messages for `events`, keyed by user, spread over the partitions by
/// user; with `poison_every`, a malformed message follows every n-th event.
/// Returns the messages and the (partition, offset) of each poison message.
fn messages(events: &[Event], poison_every: Option<usize>) -> (Vec<Msg>, Vec<(i32, i64)>) {
    let mut next = [0i64; PARTITIONS as usize];
    let mut out = Vec::new();
    let mut poison = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let p = (e.user.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32;
        out.push((p, e.user.clone(), e.json().into_bytes()));
        next[p as usize] += 1;
        if poison_every.is_some_and(|n| i % n == n - 1) {
            out.push((p, e.user.clone(), b"{not json".to_vec()));
            poison.push((p, next[p as usize]));
            next[p as usize] += 1;
        }
    }
    (out, poison)
}

/// 20,000 events over 4 partitions with a poison message every 1,000:
/// tiles match the oracle, each poison message is dead-lettered once with
/// its coordinates, and a second run reads nothing again.
#[test]
fn events_from_a_real_broker_become_tiles_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "events-once";
    support::kafka_topic(topic, PARTITIONS);
    let events = support::events(5, 20_000, 2 * 3_600_000, 1_000, None);
    let (msgs, poison) = messages(&events, Some(1_000));
    support::kafka_produce(topic, &msgs);
    let cfg = kafka_config(
        dir.path(),
        topic,
        "checkpoint_events = 5000",
        "[watermark]\nout_of_orderness = \"3h\"",
    );
    let (store, stats) = support::run(&cfg);
    assert_eq!(stats.records_in, msgs.len() as u64);
    crate::windows::check_windows(store.as_ref(), &events, 9, 300);
    let dead = support::read_ndjson(&dir.path().join("dead-letter.ndjson"));
    let mut got: Vec<(i32, i64)> = dead
        .iter()
        .map(|d| {
            assert_eq!(d["topic"], topic);
            assert_eq!(d["stage"], "parse");
            (
                d["partition"].as_i64().unwrap() as i32,
                d["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut want = poison.clone();
    want.sort();
    assert_eq!(
        got, want,
        "each poison message dead-lettered once, with its partition and offset"
    );
    drop(store);
    let (_, again) = support::run(&cfg);
    assert_eq!(again.records_in, 0, "offsets were committed with the tiles");
}

/// The `tessera` binary reading 120,000 events is killed with SIGKILL twice
/// mid-stream and restarted: the tiles equal one clean run's.
#[test]
fn kill_dash_nine_mid_stream_and_restart_counts_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "events-kill";
    support::kafka_topic(topic, PARTITIONS);
    let events = support::events(23, 120_000, 3 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    support::kafka_produce(topic, &msgs);
    let cfg_path = dir.path().join("tessera.toml");
    std::fs::write(
        &cfg_path,
        kafka_config(
            dir.path(),
            topic,
            "checkpoint_events = 4000\ncheckpoint_interval = \"50ms\"",
            "[watermark]\nout_of_orderness = \"3h\"",
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_tessera");
    let mut kills = 0;
    for wait_ms in [1_500u64, 2_500] {
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        kills += usize::from(support::kill_after(child, Duration::from_millis(wait_ms)));
    }
    let out = Command::new(bin)
        .args(["run", "--json", "--config"])
        .arg(&cfg_path)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = stats["records_in"].as_u64().unwrap();
    assert!(
        kills >= 1 && last < events.len() as u64,
        "killed {kills} times, the last run read {last}"
    );
    let cfg = tessera::Config::load(&cfg_path).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    crate::windows::check_windows(store.as_ref(), &events, 29, 300);
}

/// Two pipelines in one consumer group over one store (a second host
/// joining): the first loses partitions mid-stream, rolls back to its last
/// checkpoint, and the second starts them at the committed offsets. The
/// tiles still count each event exactly once.
#[test]
fn a_rebalance_mid_stream_rolls_back_and_counts_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "events-rebalance";
    support::kafka_topic(topic, PARTITIONS);
    let events = support::events(31, 150_000, 3 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    support::kafka_produce(topic, &msgs);
    let cfg_text = kafka_config(
        dir.path(),
        topic,
        "checkpoint_events = 20000",
        "[watermark]\nout_of_orderness = \"3h\"",
    );
    let cfg = tessera::Config::parse(&cfg_text).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    let mut first = tessera::Pipeline::build(cfg.clone(), store.clone()).unwrap();
    let a = std::thread::spawn(move || first.run(&mut |_| {}).unwrap());
    std::thread::sleep(Duration::from_millis(2_500));
    let mut second = tessera::Pipeline::build(cfg, store.clone()).unwrap();
    let b = std::thread::spawn(move || second.run(&mut |_| {}).unwrap());
    let (sa, sb) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        sa.rollbacks >= 1,
        "the first host lost partitions to the second: {sa:?}"
    );
    assert!(
        sb.records_in > 0,
        "the second host read its partitions: {sb:?}"
    );
    crate::windows::check_windows(store.as_ref(), &events, 37, 300);
}

/// One partition stalls after a few early events while the other keeps
/// delivering three hours of event time: with an idle timeout the stalled
/// partition stops holding the watermark back, so the SMB output commits the
/// hours the live partition has passed; with idleness off (the control run)
/// the watermark stays at the stalled partition and no hour is committed.
#[test]
fn an_idle_partition_does_not_stall_the_watermark() {
    for (run, idle_timeout, expect_commits) in [(0, "400ms", true), (1, "0s", false)] {
        let dir = tempfile::tempdir().unwrap();
        let topic = format!("events-idle-{run}");
        support::kafka_topic(&topic, 2);
        let live = support::events(43, 30_000, 3 * 3_600_000, 1_000, None);
        let stalled = support::events(47, 50, 5 * 60_000, 0, None);
        let to = |p: i32, es: &[Event]| -> Vec<Msg> {
            es.iter()
                .map(|e| (p, e.user.clone(), e.json().into_bytes()))
                .collect()
        };
        support::kafka_produce(&topic, &to(1, &stalled));
        let schema = r#"{"type":"record","name":"E","fields":[{"name":"user_id","type":"string"},{"name":"event_time","type":"long"}]}"#;
        let extra = format!(
            "[watermark]\nout_of_orderness = \"1m\"\nidle_timeout = \"{idle_timeout}\"\n\n[[outputs]]\ntype = \"smb\"\nname = \"by-user\"\nkey_field = \"user_id\"\nbuckets = 2\npath = \"{}\"\nschema = '{schema}'\n",
            dir.path().join("out").display()
        );
        let cfg = kafka_config(
            dir.path(),
            &topic,
            "checkpoint_interval = \"100ms\"",
            &extra,
        );
        let (_store, mut pipeline) = support::build(&cfg);
        // The live partition delivers while the pipeline runs.
        let producer = {
            let topic = topic.clone();
            let msgs = to(0, &live);
            std::thread::spawn(move || {
                for chunk in msgs.chunks(5_000) {
                    support::kafka_produce(&topic, chunk);
                    std::thread::sleep(Duration::from_millis(400));
                }
            })
        };
        let stats = pipeline.run(&mut |_| {}).unwrap();
        producer.join().unwrap();
        assert_eq!(stats.records_in, (live.len() + stalled.len()) as u64);
        // Hours from T0 on (the stalled partition's jitter reaches back before it).
        let commits: Vec<_> = support::read_ndjson(&dir.path().join("out/_commits.ndjson"))
            .into_iter()
            .filter(|c| c["event_time_start_ms"].as_i64().unwrap() >= support::T0)
            .collect();
        if expect_commits {
            assert!(
                commits.len() >= 2,
                "the live partition's hours are committed: {commits:?}"
            );
        } else {
            assert!(
                commits.is_empty(),
                "without idleness the stalled partition holds the watermark: {commits:?}"
            );
        }
    }
}
