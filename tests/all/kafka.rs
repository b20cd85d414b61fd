//! The Kafka source against a real Apache Kafka broker (started once per
//! test run by `support::kafka_bootstrap`): events from a real producer
//! become tiles exactly once, poison messages reach the dead letter with
//! their topic, partition and offset, and a host killed with SIGKILL resumes
//! from the offsets committed with its tiles.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, Event};

pub(crate) const PARTITIONS: i32 = 4;

/// The test pipeline config over `topic` of the shared broker instead of a
/// file, ending 3 s after the last record.
fn kafka_config(dir: &Path, topic: &str, pipeline_extra: &str, extra: &str) -> String {
    let source = group_source(support::kafka_bootstrap(), Some("3s"), "");
    kafka_config_with(dir, topic, &source, pipeline_extra, extra)
}

/// The `[source]` keys after the topic and group: the run ends `idle_exit`
/// after the last record (never when `None`); the group's session times out
/// after 6 s; `more_properties` are more librdkafka properties (`"k" = "v", ...`).
pub(crate) fn group_source(
    bootstrap: &str,
    idle_exit: Option<&str>,
    more_properties: &str,
) -> String {
    let idle = idle_exit.map_or(String::new(), |d| format!("idle_exit = \"{d}\"\n"));
    let more = if more_properties.is_empty() {
        String::new()
    } else {
        format!(", {more_properties}")
    };
    format!(
        "{idle}properties = {{ \"bootstrap.servers\" = \"{bootstrap}\", \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\"{more} }}\n"
    )
}

/// The test pipeline config over `topic`, with `source` (more keys of the
/// `[source]` table) after the topic and group.
pub(crate) fn kafka_config_with(
    dir: &Path,
    topic: &str,
    source: &str,
    pipeline_extra: &str,
    extra: &str,
) -> String {
    let file_cfg = support::config(dir, Path::new("unused"), pipeline_extra, extra);
    let file_source = "[source]\ntype = \"file\"\npath = \"unused\"\n";
    assert!(file_cfg.contains(file_source));
    file_cfg.replace(
        file_source,
        &format!(
            "[source]\ntype = \"kafka\"\ntopics = [\"{topic}\"]\ngroup_id = \"{topic}-group\"\n{source}"
        ),
    )
}

/// `tessera run --serve --json` over the config at `path`, killed if the
/// test fails; its log goes to [`host_log`].
pub(crate) fn serving_host(path: &Path) -> support::KillOnDrop {
    let log = std::fs::File::create(host_log(path)).unwrap();
    support::KillOnDrop(Some(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["run", "--serve", "--json", "--config"])
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap(),
    ))
}

/// `/v1/status` of the host whose API listens on `api` (`Null` while it
/// does not answer).
pub(crate) fn status(api: &str) -> serde_json::Value {
    support::http_get(api, "/v1/status")
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Where [`serving_host`] over the config at `path` logs.
pub(crate) fn host_log(path: &Path) -> std::path::PathBuf {
    path.with_extension("log")
}

/// The last `n` lines of a host's log, for a failure message.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(host_log(path)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A message to produce: (partition, key, payload).
pub(crate) type Msg = (i32, String, Vec<u8>);

/// Messages for `events`, keyed by user, spread over the partitions by
/// user; with `poison_every`, a malformed message follows every n-th event.
/// Returns the messages and the (partition, offset) of each poison message.
pub(crate) fn messages(
    events: &[Event],
    poison_every: Option<usize>,
) -> (Vec<Msg>, Vec<(i32, i64)>) {
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

/// Every partition's events are in the topic before the host starts, so
/// one fetch brings a whole partition before the next: a partition the
/// group assigned holds the watermark until it delivers, and nothing that is
/// in order within its partition (jitter 1 s, out-of-orderness 2 s) is
/// late. (Without the hold, the first partition read moved the watermark
/// past most of the others' events.)
#[test]
fn assigned_partitions_hold_the_watermark_until_they_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "events-hold";
    support::kafka_topic(topic, PARTITIONS);
    let events = support::events(61, 20_000, 3 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    support::kafka_produce(topic, &msgs);
    let cfg = kafka_config(
        dir.path(),
        topic,
        "",
        "[watermark]\nout_of_orderness = \"2s\"",
    );
    let (store, stats) = support::run(&cfg);
    assert_eq!(stats.records_in, msgs.len() as u64);
    assert_eq!(
        (
            stats.late_accepted,
            stats.late_dropped,
            stats.late_side_output
        ),
        (0, 0, 0),
        "no event is late: {stats:?}"
    );
    crate::windows::check_windows(store.as_ref(), &events, 67, 300);
}

/// The `tessera` binary reading 120,000 events is killed with SIGKILL twice
/// mid-stream (each time once it has committed a checkpoint, so the kill
/// lands between checkpoints whatever the machine's speed) and restarted:
/// the tiles equal one clean run's.
#[test]
fn kill_dash_nine_mid_stream_and_restart_counts_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "events-kill";
    support::kafka_topic(topic, PARTITIONS);
    let events = support::events(23, 120_000, 3 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    support::kafka_produce(topic, &msgs);
    let cfg_path = dir.path().join("tessera.toml");
    let api = format!("127.0.0.1:{}", support::free_port());
    // The killed hosts stay in the group until their session times out
    // (6 s) and hold partitions until then: the last run must not end idle
    // (after 3 s) before it has been given them.
    let cfg = kafka_config_with(
        dir.path(),
        topic,
        &group_source(support::kafka_bootstrap(), Some("10s"), ""),
        "checkpoint_events = 4000\ncheckpoint_interval = \"50ms\"",
        &format!("[watermark]\nout_of_orderness = \"3h\"\n\n[api]\nlisten = \"{api}\""),
    );
    std::fs::write(&cfg_path, cfg).unwrap();
    let checkpoints = || status(&api)["checkpoints"].as_u64().unwrap_or(0);
    let bin = env!("CARGO_BIN_EXE_tessera");
    let mut kills = 0;
    for run in 1..=2 {
        let mut child = Command::new(bin)
            .args(["run", "--serve", "--config"])
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        support::wait_until(
            Duration::from_secs(120),
            &format!("run {run} to commit a checkpoint"),
            || checkpoints() >= 1 || child.try_wait().unwrap().is_some(),
        );
        kills += usize::from(support::kill_after(child, Duration::from_millis(150)));
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
///
/// Ordered by what the hosts report, not by sleeps: the second host starts
/// once the first has read records, records keep arriving in small chunks
/// (so neither host goes idle) until the first has rolled back and the
/// second holds partitions, then the rest is produced.
#[test]
fn a_rebalance_mid_stream_rolls_back_and_counts_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "events-rebalance";
    support::kafka_topic(topic, PARTITIONS);
    let events = support::events(31, 150_000, 3 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    let (head, rest) = msgs.split_at(msgs.len() * 3 / 10);
    let (mut trickle, tail) = rest.split_at(rest.len() * 2 / 3);
    support::kafka_produce(topic, head);
    let cfg_text = kafka_config(
        dir.path(),
        topic,
        "checkpoint_events = 20000",
        "[watermark]\nout_of_orderness = \"3h\"",
    );
    let cfg = tessera::Config::parse(&cfg_text).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    let mut first = tessera::Pipeline::build(cfg.clone(), store.clone()).unwrap();
    let first_board = first.status_board();
    let a = std::thread::spawn(move || first.run(&mut |_| {}).unwrap());
    support::wait_until(Duration::from_secs(60), "the first host to read", || {
        first_board.read().records_in > 0
    });
    let mut second = tessera::Pipeline::build(cfg, store.clone()).unwrap();
    let second_board = second.status_board();
    let b = std::thread::spawn(move || second.run(&mut |_| {}).unwrap());
    while first_board.read().rollbacks == 0 || second_board.read().partitions.is_empty() {
        assert!(
            !trickle.is_empty(),
            "no rebalance while {} records trickled in: first {:?}, second {:?}",
            rest.len() - tail.len(),
            first_board.read(),
            second_board.read()
        );
        let (chunk, later) = trickle.split_at(trickle.len().min(1_000));
        support::kafka_produce(topic, chunk);
        trickle = later;
        std::thread::sleep(Duration::from_millis(200));
    }
    support::kafka_produce(topic, trickle);
    support::kafka_produce(topic, tail);
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

/// Two host processes in one consumer group over one CQL store, each its
/// own instance (own tile partials, own dead letter): both read; one is
/// SIGKILLed mid-stream; the other is given its partitions once the group
/// notices (the session timeout) and starts them at the positions the dead
/// one committed, applying its last logged checkpoint if it died before
/// applying it. The tiles count every event exactly once.
#[test]
fn two_hosts_in_one_group_one_killed_mid_stream_and_the_other_takes_over() {
    let topic = "events-two-hosts";
    support::kafka_topic(topic, PARTITIONS);
    let events = support::events(53, 20_000, 3 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    let (first, second) = msgs.split_at(msgs.len() / 2);
    let store = crate::servers::cassandra().store_section("twohosts");
    let host = |instance: &str, idle_exit: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let api = format!("127.0.0.1:{}", support::free_port());
        let cfg = kafka_config_with(
            dir.path(),
            topic,
            &group_source(support::kafka_bootstrap(), idle_exit, ""),
            &format!("instance = \"{instance}\"\ncheckpoint_interval = \"200ms\""),
            &format!("[watermark]\nout_of_orderness = \"3h\"\n\n[api]\nlisten = \"{api}\""),
        )
        .replace(&support::embedded_store(dir.path()), &store);
        let path = dir.path().join("tessera.toml");
        std::fs::write(&path, cfg).unwrap();
        let child = serving_host(&path);
        (dir, path, api, child)
    };
    let (_dir_a, path_a, api_a, mut a) = host("a", None);
    // B outlasts A's session (6 s) before it ends idle.
    let (_dir_b, path_b, api_b, b) = host("b", Some("10s"));
    // The first half trickles in until both hosts have read some of it (a
    // host that joins late would find it all read) and A has committed.
    let both_read = || {
        let (sa, sb) = (status(&api_a), status(&api_b));
        sa["checkpoints"].as_u64() >= Some(1)
            && sa["records_in"].as_u64() > Some(0)
            && sb["records_in"].as_u64() > Some(0)
    };
    let mut chunks = first.chunks(200);
    let started = std::time::Instant::now();
    while !both_read() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "both hosts to read, and A to commit\n--- A's log:\n{}\n--- B's log:\n{}",
            log_tail(&path_a, 30),
            log_tail(&path_b, 30)
        );
        match chunks.next() {
            Some(c) => support::kafka_produce(topic, c),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let rest: Vec<Msg> = chunks.flatten().chain(second).cloned().collect();
    support::kafka_produce(topic, &rest);
    let killed = support::kill_after(a.0.take().unwrap(), Duration::from_millis(300));
    assert!(killed, "A was still running when killed");
    // B's input ends idle; it serves on until interrupted.
    let started = std::time::Instant::now();
    while status(&api_b)["state"] != "stopped" {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "B did not end idle: {}\n--- A's log:\n{}\n--- B's log:\n{}",
            status(&api_b),
            log_tail(&path_a, 30),
            log_tail(&path_b, 60)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = b.interrupt_and_wait();
    assert!(out.status.success(), "B stopped cleanly");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        stats["rollbacks"].as_u64() >= Some(1),
        "B was given A's partitions (a rebalance): {stats}"
    );
    let cfg = tessera::Config::load(&path_b).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    crate::windows::check_windows(store.as_ref(), &events, 59, 300);
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
        let (store, mut pipeline) = support::build(&cfg);
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
        // Completeness, of the tiles and of the SMB output (its marker and
        // the ledger): through the live partition's last whole hour with
        // idleness, not past the stalled partition's hour without.
        let at = tessera::api::changes::LedgerAt::of(&tessera::Config::parse(&cfg).unwrap());
        let through = |output: &str| {
            at.completeness(store.as_ref(), Some(output), None, None)
                .unwrap()["complete_through_ms"]
                .as_i64()
        };
        let marker = std::fs::read(
            dir.path()
                .join("out")
                .join(tessera::sinks::smb::COMPLETENESS_MARKER),
        )
        .ok()
        .map(|b| {
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()["complete_through_ms"]
                .as_i64()
                .unwrap()
        });
        if expect_commits {
            let want = Some(support::T0 + 2 * 3_600_000);
            assert_eq!(
                (through("tiles"), through("by-user"), marker),
                (want, want, want),
                "an idle partition does not stop completeness"
            );
        } else {
            for t in [through("tiles"), through("by-user"), marker] {
                assert!(
                    t <= Some(support::T0),
                    "the stalled partition holds completeness: {t:?}"
                );
            }
        }
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

/// Two instances of one pipeline in one group, one partition each, over one
/// store: an hour is complete only when the whole pipeline's watermark has
/// passed it, not one instance's. Partition 0 carries three hours of events
/// at once; partition 1 only the first 50 minutes, then (phase 2) the rest.
/// After phase 1 neither instance calls any hour complete (the instance
/// holding partition 0 alone would say two); after phase 2 both say the
/// first two hours. Each hour's events, summed over the instances' ledgers,
/// equal the events produced in it.
#[test]
fn instances_complete_an_hour_only_when_every_partition_has_passed_it() {
    use std::sync::atomic::Ordering;
    const HOUR: i64 = 3_600_000;
    let topic = "events-two-instances";
    support::kafka_topic(topic, 2);
    let live = support::events(61, 6_000, 3 * HOUR, 1_000, None);
    let early = support::events(67, 1_000, 50 * 60_000, 1_000, None);
    let rest: Vec<Event> = support::events(71, 4_000, 2 * HOUR, 1_000, None)
        .into_iter()
        .map(|mut e| {
            e.ts += HOUR;
            e
        })
        .collect();
    let to = |p: i32, es: &[Event]| -> Vec<Msg> {
        es.iter()
            .map(|e| (p, e.user.clone(), e.json().into_bytes()))
            .collect()
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let shared_store = support::embedded_store(dirs[0].path());
    let cfgs: Vec<tessera::Config> = ["a", "b"]
        .iter()
        .zip(&dirs)
        .map(|(instance, dir)| {
            let text = kafka_config_with(
                dir.path(),
                topic,
                &group_source(support::kafka_bootstrap(), None, ""),
                &format!("instance = \"{instance}\"\ncheckpoint_interval = \"100ms\""),
                "[watermark]\nout_of_orderness = \"1m\"\nidle_timeout = \"0s\"\n",
            )
            .replace(&support::embedded_store(dir.path()), &shared_store);
            tessera::Config::parse(&text).unwrap()
        })
        .collect();
    let store = tessera::stores::open(&cfgs[0].store).unwrap();
    let mut boards = Vec::new();
    let mut stops = Vec::new();
    let mut runs = Vec::new();
    for cfg in &cfgs {
        let mut pipeline = tessera::Pipeline::build(cfg.clone(), store.clone()).unwrap();
        boards.push(pipeline.status_board());
        stops.push(pipeline.stop_flag());
        runs.push(std::thread::spawn(move || {
            pipeline.run(&mut |_| {}).unwrap()
        }));
    }
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let started = std::time::Instant::now();
        while !ok() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{what}: {:?}",
                boards.iter().map(|b| b.read()).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Both joined: each was given one partition.
    wait_for("both instances assigned", &|| {
        boards.iter().all(|b| b.read().ready)
    });
    let read = || boards.iter().map(|b| b.read().records_in).sum::<u64>();
    let settle = |n: usize| {
        wait_for("every record read", &|| read() == n as u64);
        // A few checkpoints more, so each has read the other's marks.
        let after: Vec<u64> = boards.iter().map(|b| b.read().checkpoints).collect();
        wait_for("checkpoints after the last record", &|| {
            boards
                .iter()
                .zip(&after)
                .all(|(b, n)| b.read().checkpoints >= n + 4)
        });
    };
    let through = |cfg: &tessera::Config| {
        tessera::api::changes::LedgerAt::of(cfg)
            .completeness(store.as_ref(), None, None, None)
            .unwrap()
    };
    support::kafka_produce(topic, &to(0, &live));
    support::kafka_produce(topic, &to(1, &early));
    settle(live.len() + early.len());
    for (cfg, board) in cfgs.iter().zip(&boards) {
        let answer = through(cfg);
        let complete = answer["complete_through_ms"].as_i64();
        assert!(
            complete.is_none_or(|t| t <= support::T0),
            "instance {}: partition 1 is still in the first hour, yet complete through {complete:?}",
            cfg.pipeline.instance
        );
        let wm = board.read().completeness_watermark;
        assert!(
            wm.is_some_and(|w| w < support::T0 + 50 * 60_000),
            "instance {}: completeness watermark {wm:?} is past partition 1",
            cfg.pipeline.instance
        );
    }
    support::kafka_produce(topic, &to(1, &rest));
    settle(live.len() + early.len() + rest.len());
    for cfg in &cfgs {
        wait_for("the first two hours complete", &|| {
            through(cfg)["complete_through_ms"].as_i64() == Some(support::T0 + 2 * HOUR)
        });
    }
    for stop in &stops {
        stop.store(true, Ordering::Relaxed);
    }
    for run in runs {
        run.join().unwrap();
    }
    // Events per hour over both instances' ledgers, against the produced.
    let mut want = std::collections::BTreeMap::<i64, u64>::new();
    for e in live.iter().chain(&early).chain(&rest) {
        *want.entry(e.ts.div_euclid(HOUR) * HOUR).or_default() += 1;
    }
    let mut got = std::collections::BTreeMap::<i64, u64>::new();
    for cfg in &cfgs {
        let answer = through(cfg);
        assert_eq!(
            answer["complete_through_ms"].as_i64(),
            Some(support::T0 + 2 * HOUR),
            "instance {}: the third hour is not complete (the watermark is inside it)",
            cfg.pipeline.instance
        );
        for p in answer["partitions"].as_array().unwrap() {
            *got.entry(p["start_ms"].as_i64().unwrap()).or_default() +=
                p["events"].as_u64().unwrap();
            let end = p["end_ms"].as_i64().unwrap();
            assert_eq!(
                p["state"] == "complete",
                end <= support::T0 + 2 * HOUR,
                "instance {}: hour ending {end}: {p}",
                cfg.pipeline.instance
            );
        }
    }
    assert_eq!(got, want, "events per hour over both instances");
    // Instance a's API reads b's ledger with `?instance=b` (a consumer of a
    // scaled-out pipeline reads each instance's change log), and a
    // consumer's commit there is b's alone.
    use crate::http::{call, get};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = tessera::api::AppState {
        ledger: Some(tessera::api::changes::LedgerAt::of(&cfgs[0])),
        ..tessera::api::AppState::new(store.clone())
    }
    .router();
    let b = tessera::api::changes::LedgerAt::of(&cfgs[1]);
    let (code, comp) = rt.block_on(get(&app, "/v1/completeness?instance=b"));
    assert_eq!((code, comp), (200, through(&cfgs[1])));
    let (code, changes) = rt.block_on(get(&app, "/v1/changes?instance=b"));
    assert_eq!(code, 200);
    assert_eq!(
        changes,
        serde_json::to_value(b.changes(store.as_ref(), None, None).unwrap()).unwrap()
    );
    assert_ne!(
        changes["last_change"],
        serde_json::Value::from(0),
        "b's log has its completions"
    );
    let commit = axum::http::Request::put("/v1/changes/consumers/rollup?instance=b")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(format!(
            "{{\"high_watermark\": {}}}",
            changes["last_change"]
        )))
        .unwrap();
    assert_eq!(rt.block_on(call(&app, commit)).0, 200);
    assert_eq!(
        b.committed(store.as_ref(), "rollup").unwrap(),
        changes["last_change"].as_u64()
    );
    assert_eq!(
        rt.block_on(get(&app, "/v1/changes/consumers/rollup")).0,
        404,
        "a's consumers are its own"
    );
    assert_eq!(
        rt.block_on(get(&app, "/v1/changes?instance=no%20such")).0,
        400
    );
}

/// The host starts before its broker exists, and later the broker is
/// SIGKILLed mid-run and started again over its data. The host reports
/// unhealthy on `/healthz` while no broker is up (and says why), healthy
/// once one is, keeps retrying on its own, and at the end the tiles count
/// every event exactly once; `/v1/status` and `/metrics` show per-partition
/// offsets, lag and watermarks on the way.
#[test]
fn broker_down_at_start_and_killed_mid_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = support::KafkaBroker::new(&dir.path().join("kafka"));
    let bootstrap = broker.bootstrap();
    let api = format!("127.0.0.1:{}", support::free_port());
    let topic = "events-broker-down";
    let source = group_source(
        &bootstrap,
        None,
        "\"topic.metadata.refresh.interval.ms\" = \"1000\", \"reconnect.backoff.max.ms\" = \"1000\"",
    );
    let cfg_path = dir.path().join("tessera.toml");
    let extra = format!("[watermark]\nout_of_orderness = \"3h\"\n\n[api]\nlisten = \"{api}\"\n");
    std::fs::write(
        &cfg_path,
        kafka_config_with(
            dir.path(),
            topic,
            &source,
            "checkpoint_interval = \"200ms\"",
            &extra,
        ),
    )
    .unwrap();
    let events = support::events(53, 60_000, 3 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    let (first, second) = msgs.split_at(msgs.len() / 2);
    let want_next = |ms: &[Msg]| {
        let mut next = [0i64; PARTITIONS as usize];
        for (p, _, _) in ms {
            next[*p as usize] += 1;
        }
        next
    };
    let status = || -> serde_json::Value {
        support::http_get(&api, "/v1/status")
            .map(|(_, b)| serde_json::from_str(&b).unwrap())
            .unwrap_or_default()
    };
    let caught_up = |next: [i64; PARTITIONS as usize]| {
        move || {
            let s = status();
            let parts = s["partitions"].as_array().cloned().unwrap_or_default();
            (0..PARTITIONS).all(|p| {
                parts.iter().any(|x| {
                    x["partition"] == p && x["next_offset"] == next[p as usize] && x["lag"] == 0
                })
            })
        }
    };
    let health = || support::http_get(&api, "/healthz");

    let host = serving_host(&cfg_path);
    // 1. No broker yet: unhealthy, and the reason names Kafka.
    support::wait_until(
        Duration::from_secs(60),
        "/healthz to report the missing broker",
        || health().is_some_and(|(code, body)| code == 503 && body.contains("Kafka")),
    );
    assert_eq!(support::http_get(&api, "/readyz").map(|r| r.0), Some(503));
    broker.start();
    support::kafka_topic_at(&bootstrap, topic, PARTITIONS);
    support::kafka_produce_at(&bootstrap, topic, first);
    support::wait_until(
        Duration::from_secs(120),
        "the host to read the first half",
        caught_up(want_next(first)),
    );
    assert_eq!(health().map(|r| r.0), Some(200));
    assert_eq!(support::http_get(&api, "/readyz").map(|r| r.0), Some(200));
    let s = status();
    assert_eq!(s["state"], "running");
    assert!(
        s["watermark"].as_i64().is_some(),
        "a pipeline watermark: {s}"
    );
    let (_, metrics) = support::http_get(&api, "/metrics").unwrap();
    for name in [
        "tessera_source_lag_records{",
        "tessera_source_watermark_milliseconds{",
        "tessera_source_records_total{",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics:\n{metrics}");
    }

    // 2. The broker dies mid-run: unhealthy until it is back.
    broker.kill();
    support::wait_until(
        Duration::from_secs(60),
        "/healthz to report the dead broker",
        || health().is_some_and(|(code, _)| code == 503),
    );
    broker.start();
    support::kafka_produce_at(&bootstrap, topic, second);
    support::wait_until(
        Duration::from_secs(180),
        "the host to read everything",
        caught_up(want_next(&msgs)),
    );
    support::wait_until(Duration::from_secs(30), "/healthz to recover", || {
        health().is_some_and(|(code, _)| code == 200)
    });

    // 3. Stop cleanly and check every event was counted once.
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "the host stopped cleanly");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["dead_lettered"], 0, "{stats}");
    let cfg = tessera::Config::load(&cfg_path).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    crate::windows::check_windows(store.as_ref(), &events, 59, 300);
}

/// Two topics in two formats, each read by its own parser, and a feature
/// plugin that asks for one event type only: records of each topic reach
/// only their parser (a misrouted record would fail to parse and be
/// dead-lettered), and each plugin counts exactly the types it asked for.
#[test]
fn topics_route_to_their_parser_and_event_types_to_their_features() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ("route-std", "route-alt");
    support::kafka_topic(a, 2);
    support::kafka_topic(b, 2);
    let ea = support::events(61, 6_000, 2 * 3_600_000, 1_000, None);
    let eb = support::events(67, 4_000, 2 * 3_600_000, 1_000, None);
    let (ma, _) = messages(&ea, None);
    support::kafka_produce(
        a,
        &ma.iter()
            .map(|(p, k, v)| (p % 2, k.clone(), v.clone()))
            .collect::<Vec<_>>(),
    );
    // Topic b spells the fields differently.
    let mb: Vec<Msg> = eb
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let json = format!(
                r#"{{"at":{},"kind":"{}","post_id":"{}","user_id":"{}"}}"#,
                e.ts, e.ty, e.post, e.user
            );
            ((i % 2) as i32, e.user.clone(), json.into_bytes())
        })
        .collect();
    support::kafka_produce(b, &mb);
    let counter = support::plugin("windowed_counter");
    let parser = support::plugin("json_parser");
    let cfg = format!(
        r#"
[pipeline]
name = "routes"
batch_size = 256

[source]
type = "kafka"
topics = ["{a}", "{b}"]
group_id = "routes-group"
idle_exit = "3s"
properties = {{ "bootstrap.servers" = "{bootstrap}" }}

[parser]
name = "std-parser"
path = "{parser}"

[[parsers]]
name = "alt-parser"
path = "{parser}"
topics = ["{b}"]
config = {{ time_field = "at", type_field = "kind" }}

[[features]]
name = "likes"
path = "{counter}"
config = {{ features = [{{ name = "likes_per_post", entity = "post_id", event_types = ["like"] }}] }}

[[features]]
name = "shares-only"
path = "{counter}"
event_types = ["share"]
config = {{ features = [{{ name = "events_per_user", entity = "user_id" }}] }}

[watermark]
out_of_orderness = "3h"

{stores}
"#,
        stores = support::store_sections(dir.path()),
        bootstrap = support::kafka_bootstrap(),
        parser = parser.display(),
        counter = counter.display(),
    );
    let (store, stats) = support::run(&cfg);
    assert_eq!(stats.records_in, (ma.len() + mb.len()) as u64);
    assert_eq!(
        stats.dead_lettered, 0,
        "every record reached the parser for its topic"
    );
    let all: Vec<&Event> = ea.iter().chain(&eb).collect();
    let features = store.features().unwrap();
    let week = 7 * 86_400_000;
    let at = support::T0 + 4 * 3_600_000;
    let check = |feature: &str, entity: &str, want: u64| {
        let f = features.iter().find(|f| f.name == feature).unwrap();
        let got = tessera::api::query::answer(store.as_ref(), f, entity, week, at).unwrap();
        assert_eq!(got.count, want, "{feature}/{entity}");
    };
    for post in (0..40).map(|i| format!("post-{i}")) {
        let want = all
            .iter()
            .filter(|e| e.post == post && e.ty == "like")
            .count();
        check("likes_per_post", &post, want as u64);
    }
    let mut shares = 0;
    for user in (0..300).map(|i| format!("user-{i}")) {
        let want = all
            .iter()
            .filter(|e| e.user == user && e.ty == "share")
            .count();
        shares += want;
        check("events_per_user", &user, want as u64);
    }
    assert!(
        shares > 0 && shares < all.len() / 2,
        "the filter is not trivial"
    );
}

/// The CQL store (a Cassandra node of this test's own) is down when the
/// host starts and is SIGKILLed mid-run: the host waits for it with
/// back-off, says `503` with the store's failure on `/healthz` while its
/// checkpoints cannot commit, and once the node is back commits what it
/// held; the tiles count every event exactly once.
#[test]
fn cql_store_down_at_start_and_killed_mid_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = crate::servers::CassandraNode::new(&dir.path().join("cassandra"));
    let server = crate::servers::CqlServer {
        name: "outage",
        contact_point: node.contact_point(),
        username: Some("cassandra".into()),
        password: Some("cassandra".into()),
    };
    let api = format!("127.0.0.1:{}", support::free_port());
    let topic = "events-store-down";
    support::kafka_topic(topic, PARTITIONS);
    let source = group_source(support::kafka_bootstrap(), None, "");
    let extra = format!("[watermark]\nout_of_orderness = \"3h\"\n\n[api]\nlisten = \"{api}\"\n");
    let cfg = kafka_config_with(
        dir.path(),
        topic,
        &source,
        "checkpoint_interval = \"200ms\"",
        &extra,
    )
    .replace(
        &support::embedded_store(dir.path()),
        &server.store_section("outage"),
    );
    let cfg_path = dir.path().join("tessera.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let events = support::events(71, 30_000, 3 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    let (first, second) = msgs.split_at(msgs.len() / 2);
    let records_in = || status(&api)["records_in"].as_u64().unwrap_or(0);
    let health = || support::http_get(&api, "/healthz");

    let host = serving_host(&cfg_path);
    // 1. No store yet: the host keeps trying to connect.
    std::thread::sleep(Duration::from_secs(3));
    node.start();
    support::kafka_produce(topic, first);
    support::wait_until(
        Duration::from_secs(180),
        "the host to read the first half",
        || records_in() >= first.len() as u64,
    );
    assert_eq!(health().map(|r| r.0), Some(200));

    // 2. The store dies mid-run: checkpoints cannot commit, /healthz says why.
    node.kill();
    support::kafka_produce(topic, second);
    support::wait_until(
        Duration::from_secs(90),
        "/healthz to report the store",
        || health().is_some_and(|(code, body)| code == 503 && body.contains("store")),
    );
    node.start();
    support::wait_until(
        Duration::from_secs(180),
        "the host to read everything",
        || records_in() >= msgs.len() as u64,
    );
    support::wait_until(Duration::from_secs(60), "/healthz to recover", || {
        health().is_some_and(|(code, _)| code == 200)
    });

    // 3. Stop cleanly and check every event was counted once.
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "the host stopped cleanly");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["store_retries"].as_u64() > Some(0), "{stats}");
    let cfg = tessera::Config::load(&cfg_path).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    crate::windows::check_windows(store.as_ref(), &events, 73, 300);
}
