//! SMB outputs wired into the pipeline: every event of the configured types
//! lands in the hour of its event time exactly once, late events in late-data
//! siblings, across a clean run and across crashes at every step of the
//! output's two-phase commit. Files are read back by fastavro (buckets
//! recomputed by mmh3) and compared with the generated events.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, Event};

const HOUR: i64 = 3_600_000;

const SCHEMA: &str = r#"{"type":"record","name":"Interaction","namespace":"tessera.test","fields":[
  {"name":"user_id","type":"string"},
  {"name":"post_id","type":["null","string"]},
  {"name":"event_type","type":"string"},
  {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"ingestion_time","type":"long"},
  {"name":"dwell_ms","type":["null","double"]}]}"#;

/// An `[[outputs]]` section writing `types` by user to `dir/out`.
fn output_section(dir: &Path, types: &str, extra: &str) -> String {
    format!(
        r#"
[[outputs]]
type = "smb"
name = "interactions"
event_types = {types}
key_field = "user_id"
buckets = 8
path = "{out}"
work_dir = "{work}"
schema = '{schema}'
memory_budget_bytes = 1048576
{extra}
"#,
        out = dir.join("out").display(),
        work = dir.join("work").display(),
        schema = SCHEMA.replace('\n', " "),
    )
}

/// One record as the oracle sees it: (user, post, type, event time, dwell).
type Row = (String, String, String, i64, i64);

fn row_of(e: &Event) -> Row {
    (
        e.user.clone(),
        e.post.clone(),
        e.ty.to_string(),
        e.ts,
        e.dwell,
    )
}

/// Everything committed under `root`, read by the independent checker:
/// records by partition (`date=../hour=..`), and the `_commits.ndjson` lines.
/// Asserts that the commit log and the committed directories match one to one.
fn read_output(root: &Path) -> (BTreeMap<String, Vec<Row>>, Vec<serde_json::Value>) {
    let log = support::read_ndjson(&root.join("_commits.ndjson"));
    let mut by_partition: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut dirs_in_log: Vec<String> = Vec::new();
    for line in &log {
        let dir = line["dir"].as_str().unwrap().to_string();
        let partition = line["partition"].as_str().unwrap().to_string();
        let records = check_dir(&root.join(&dir));
        assert_eq!(
            records.len() as u64,
            line["records"].as_u64().unwrap(),
            "{dir}: records in the files vs its commit line"
        );
        let start = line["event_time_start_ms"].as_i64().unwrap();
        for r in &records {
            assert!(
                r.3 >= start && r.3 < start + HOUR,
                "{dir}: event time {} outside its hour",
                r.3
            );
        }
        assert_eq!(line["amends"].as_bool().unwrap(), dir != partition);
        by_partition.entry(partition).or_default().extend(records);
        dirs_in_log.push(dir);
    }
    let mut sorted = dirs_in_log.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        dirs_in_log.len(),
        "a directory committed twice: {dirs_in_log:?}"
    );
    let mut on_disk = committed_dirs(root, root);
    on_disk.sort();
    assert_eq!(
        on_disk, sorted,
        "every committed directory has one commit line"
    );
    (by_partition, log)
}

/// Directories under `dir` holding `metadata.json`, relative to `root`.
fn committed_dirs(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.') {
            if p.join("metadata.json").exists() {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
            out.extend(committed_dirs(root, &p));
        }
    }
    out
}

fn check_dir(dir: &Path) -> Vec<Row> {
    assert!(dir.join(tessera::sinks::smb::COMMIT_MARKER).exists());
    support::smb_check(dir, "deflate")
        .iter()
        .map(|r| {
            let rec = &r[3];
            assert!(rec["ingestion_time"].as_i64().unwrap() > 1_700_000_000_000);
            (
                rec["user_id"].as_str().unwrap().to_string(),
                rec["post_id"].as_str().unwrap_or("").to_string(),
                rec["event_type"].as_str().unwrap().to_string(),
                rec["event_time"].as_i64().unwrap(),
                rec["dwell_ms"].as_f64().unwrap() as i64,
            )
        })
        .collect()
}

/// The expected records by partition directory: events of `types` by hour.
fn expected(events: &[Event], types: &[&str]) -> BTreeMap<String, Vec<Row>> {
    let mut m: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for e in events.iter().filter(|e| types.contains(&e.ty)) {
        let start = e.ts.div_euclid(HOUR) * HOUR;
        let dir = tessera::sinks::smb::Granularity::Hourly
            .dir_of(start)
            .to_string_lossy()
            .into_owned();
        m.entry(dir).or_default().push(row_of(e));
    }
    m
}

fn assert_same(mut got: BTreeMap<String, Vec<Row>>, mut want: BTreeMap<String, Vec<Row>>) {
    for v in got.values_mut().chain(want.values_mut()) {
        v.sort();
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!(
            g.len(),
            w.len(),
            "{k}: {} records, expected {}",
            g.len(),
            w.len()
        );
        assert!(g == w, "{k}: records differ from the events");
    }
}

/// The change log of output `interactions` against its commit log
/// (`log`, as [`read_output`] checked it): one change per committed
/// directory, in the same order, a completion for each partition's own
/// directory and an amendment naming each late-data sibling, with its
/// records and landing time; change numbers unique over every output. And
/// `_completeness.json` beside the output and the ledger agree on how far
/// it is complete: every hour ending by the last watermark (`watermark_ms`).
fn check_change_log(
    store: &dyn tessera::stores::TileStore,
    cfg: &str,
    log: &[serde_json::Value],
    watermark_ms: i64,
) {
    let cfg = tessera::Config::parse(cfg).unwrap();
    let state = tessera::api::changes::LedgerAt::of(&cfg)
        .read(store)
        .unwrap();
    let all = state.changes_since(0);
    let numbers: std::collections::BTreeSet<u64> = all.iter().map(|c| c.change).collect();
    assert_eq!(numbers.len(), all.len(), "change numbers repeat");
    let changes: Vec<_> = all.iter().filter(|c| c.output == "interactions").collect();
    assert_eq!(
        changes.len(),
        log.len(),
        "one change per committed directory"
    );
    for (c, line) in changes.iter().zip(log) {
        let amends = line["amends"].as_bool().unwrap();
        let kind = if amends { "amended" } else { "complete" };
        assert_eq!(
            serde_json::to_value(c.kind).unwrap(),
            kind,
            "{c:?} vs {line}"
        );
        assert_eq!(c.dir.as_deref(), line["dir"].as_str(), "{c:?} vs {line}");
        assert_eq!(Some(c.events), line["records"].as_u64(), "{c:?} vs {line}");
        assert_eq!(Some(c.landed_ms), line["landed_at_ms"].as_i64());
        assert_eq!(
            Some(c.partition_start_ms),
            line["event_time_start_ms"].as_i64()
        );
    }
    let through = watermark_ms.div_euclid(HOUR) * HOUR;
    let marker: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(cfg_output_path(&cfg)).join(tessera::sinks::smb::COMPLETENESS_MARKER),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        marker["complete_through_ms"].as_i64(),
        Some(through),
        "{marker}"
    );
    assert_eq!(
        state.outputs["interactions"].complete_through_ms,
        Some(through)
    );
}

/// `/v1/completeness?output=` answers for the SMB output as the ledger
/// reads, and names the outputs when asked for one that does not exist.
fn check_completeness_api(store: std::sync::Arc<dyn tessera::stores::TileStore>, cfg: &str) {
    let cfg = tessera::Config::parse(cfg).unwrap();
    let at = tessera::api::changes::LedgerAt::of(&cfg);
    let want = at
        .completeness(store.as_ref(), Some("interactions"), None, None)
        .unwrap();
    let app = tessera::api::AppState {
        ledger: Some(at),
        ..tessera::api::AppState::new(store)
    }
    .router();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, got) = rt.block_on(crate::http::get(
        &app,
        "/v1/completeness?output=interactions",
    ));
    assert_eq!((code, &got), (200, &want));
    let parts = got["partitions"].as_array().unwrap();
    assert!(
        !parts.is_empty()
            && parts
                .iter()
                .all(|p| p["state"] == "complete" && p["dir"].is_string()),
        "{got}"
    );
    let (code, body) = rt.block_on(crate::http::get(&app, "/v1/completeness?output=nope"));
    assert_eq!(code, 404);
    assert!(body.to_string().contains("tiles, interactions"), "{body}");
}

/// The local path of the first output of `cfg`.
fn cfg_output_path(cfg: &tessera::Config) -> &Path {
    let tessera::config::OutputConfig::Smb(o) = &cfg.outputs[0];
    o.path.as_deref().unwrap()
}

/// Five hours of events, every 50th pushed 2 h back (late for an hour
/// already committed), a few malformed and a few without a user: each
/// written event is in its hour once, late ones in late-data siblings,
/// events without the key in the dead letter, tiles still exact.
#[test]
fn pipeline_output_holds_each_event_once_in_its_hour_and_late_ones_in_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(77, 30_000, 5 * HOUR, 2_000, Some((50, 2 * HOUR)));
    let input = dir.path().join("events.ndjson");
    let mut text = String::new();
    let mut no_user = 0;
    for (i, e) in events.iter().enumerate() {
        if i % 997 == 500 {
            // No user_id: the output must dead-letter it (the key is required).
            text.push_str(&format!(
                r#"{{"ts":{},"type":"view","post_id":"{}","dwell_ms":1}}"#,
                e.ts, e.post
            ));
            text.push('\n');
            no_user += 1;
        }
        text.push_str(&e.json());
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let cfg = support::config(
        dir.path(),
        &input,
        "checkpoint_events = 3000",
        &format!(
            "[watermark]\nout_of_orderness = \"1m\"\n{}",
            output_section(dir.path(), r#"["view", "like"]"#, "")
        ),
    );
    let (store, stats) = support::run(&cfg);
    let (got, log) = read_output(&dir.path().join("out"));
    assert_same(got, expected(&events, &["view", "like"]));
    let watermark = events.iter().map(|e| e.ts).max().unwrap() - 60_000;
    check_change_log(store.as_ref(), &cfg, &log, watermark);
    check_completeness_api(store.clone(), &cfg);
    drop(store);
    assert!(
        log.iter()
            .filter(|l| l["amends"].as_bool().unwrap())
            .count()
            >= 2,
        "late events amended committed hours: {log:?}"
    );
    assert_eq!(stats.output_partitions as usize, log.len());
    // Late events are collected (amend_every = 1h of event time), not
    // committed as one sibling per checkpoint.
    let mut per_hour: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &log {
        *per_hour
            .entry(l["partition"].as_str().unwrap())
            .or_default() += 1;
    }
    assert!(per_hour.values().all(|n| *n <= 4), "{per_hour:?}");
    // Events without the key go to the dead letter from the output stage
    // (their tiles by post are unaffected; by user the tiler rejects them).
    let dead = support::read_ndjson(&dir.path().join("dead-letter.ndjson"));
    let from_output: Vec<_> = dead.iter().filter(|d| d["stage"] == "output").collect();
    assert_eq!(from_output.len(), no_user);
    assert!(from_output.iter().all(|d| d["reason"]
        .as_str()
        .unwrap()
        .contains("output `interactions`: key field `user_id` has no value")));
    // A second run over the same input adds nothing.
    let (store, stats) = support::run(&cfg);
    assert_eq!(stats.output_records, 0);
    let (_, log2) = read_output(&dir.path().join("out"));
    assert_eq!(log2.len(), log.len());
    check_change_log(store.as_ref(), &cfg, &log, watermark);
}

/// Two host instances of one pipeline write one SMB output location at the
/// same time, each reading half of the events: each commits under its own
/// `instance=` directory with its own commit log, and the partitions of
/// both read together hold every event once, in its hour.
#[test]
fn instances_over_one_output_location_write_their_own_directories() {
    let shared = tempfile::tempdir().unwrap();
    // Every 41st event is late: odd, so both halves get late ones.
    let events = support::events(83, 40_000, 5 * HOUR, 2_000, Some((41, 2 * HOUR)));
    let halves: Vec<Vec<Event>> = (0..2)
        .map(|h| events.iter().skip(h).step_by(2).cloned().collect())
        .collect();
    let hosts: Vec<_> = ["a", "b"]
        .into_iter()
        .zip(halves)
        .map(|(instance, half)| {
            let output = output_section(shared.path(), "[]", "");
            std::thread::spawn(move || {
                let own = tempfile::tempdir().unwrap();
                let input = own.path().join("events.ndjson");
                support::write_ndjson(&input, &half);
                let cfg = support::config(
                    own.path(),
                    &input,
                    &format!("instance = \"{instance}\"\ncheckpoint_events = 2000"),
                    &format!("[watermark]\nout_of_orderness = \"1m\"\n{output}"),
                );
                support::run(&cfg).1
            })
        })
        .collect();
    for h in hosts {
        assert!(h.join().unwrap().output_partitions > 0);
    }
    let out = shared.path().join("out");
    let mut top: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["instance=a", "instance=b"],
        "nothing outside the instances"
    );
    let mut got: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for instance in &top {
        let (by_partition, log) = read_output(&out.join(instance));
        assert!(
            log.iter().any(|l| l["amends"] == true),
            "{instance}: late siblings"
        );
        for (partition, rows) in by_partition {
            got.entry(partition).or_default().extend(rows);
        }
    }
    assert_same(
        got,
        expected(&events, &["view", "like", "share", "comment"]),
    );
}

/// The `tessera` binary, crashed at each step of the output's commit and
/// killed mid-stream, then run to the end: the output holds each event
/// once, every committed directory has one commit line, and tiles match
/// the oracle.
#[test]
fn crashes_at_every_step_of_an_output_commit_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(91, 60_000, 6 * HOUR, 2_000, Some((40, 90 * 60_000)));
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let cfg_path = dir.path().join("tessera.toml");
    let cfg = support::config(
        dir.path(),
        &input,
        "checkpoint_events = 2000\ncheckpoint_interval = \"50ms\"",
        &format!(
            "[watermark]\nout_of_orderness = \"1m\"\n{}",
            output_section(dir.path(), "[]", "shards = 2")
        ),
    );
    std::fs::write(&cfg_path, &cfg).unwrap();
    let bin = env!("CARGO_BIN_EXE_tessera");
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new(bin);
        c.args(["run", "--json", "--config"])
            .arg(&cfg_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    };
    // 1. Abort after 5 of 16 bucket files of the first published partition
    //    moved in (the checkpoint that sealed it had committed).
    let status = run(&[("TESSERA_FAILPOINT_SMB_COMMIT_CRASH", "5")])
        .wait()
        .unwrap();
    assert!(!status.success(), "the first run must crash mid-publish");
    assert!(committed_dirs(&dir.path().join("out"), &dir.path().join("out")).is_empty());
    // 2. Restart: the sealed partition is published again from its journal,
    //    then abort after its metadata.json, before its commit line.
    let status = run(&[("TESSERA_FAILPOINT", "smb-after-publish")])
        .wait()
        .unwrap();
    assert!(
        !status.success(),
        "the second run must crash after a publish"
    );
    let out = dir.path().join("out");
    assert_eq!(committed_dirs(&out, &out).len(), 1);
    assert!(support::read_ndjson(&out.join("_commits.ndjson")).is_empty());
    // 2b. Restart: the line is added; abort right after the next commit
    //     line, before a checkpoint records the directory in the ledger.
    let status = run(&[("TESSERA_FAILPOINT", "smb-after-commit-line")])
        .wait()
        .unwrap();
    assert!(
        !status.success(),
        "the third run must crash after a commit line"
    );
    assert_eq!(support::read_ndjson(&out.join("_commits.ndjson")).len(), 2);
    // 3. Restart and SIGKILL mid-stream, twice.
    let mut kills = 0;
    for wait_ms in [400u64, 900] {
        kills += usize::from(support::kill_after(
            run(&[]),
            Duration::from_millis(wait_ms),
        ));
    }
    // 4. Run to the end.
    let out_run = run(&[]).wait_with_output().unwrap();
    assert!(out_run.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&out_run.stdout).unwrap();
    assert!(
        stats["records_in"].as_u64().unwrap() < events.len() as u64,
        "the last run resumes (killed {kills} times)"
    );
    let (got, log) = read_output(&out);
    assert_same(
        got,
        expected(&events, &["view", "like", "share", "comment"]),
    );
    let cfg = tessera::Config::load(&cfg_path).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    // No commit is missing from the change log or in it twice.
    let watermark = events.iter().map(|e| e.ts).max().unwrap() - 60_000;
    check_change_log(
        store.as_ref(),
        &std::fs::read_to_string(&cfg_path).unwrap(),
        &log,
        watermark,
    );
    // The tiles' ledger counted every event once, in its hour, through the
    // kills, and the change-log file (repaired at each start) holds every
    // change of every output once.
    let state = tessera::api::changes::LedgerAt::of(&cfg)
        .read(store.as_ref())
        .unwrap();
    let mut per_hour: BTreeMap<i64, u64> = BTreeMap::new();
    for e in &events {
        *per_hour.entry(e.ts.div_euclid(HOUR) * HOUR).or_default() += 1;
    }
    let counted: BTreeMap<i64, u64> = state.outputs["tiles"]
        .partitions
        .iter()
        .map(|(start, p)| (*start, p.events))
        .collect();
    assert_eq!(counted, per_hour);
    assert_eq!(
        serde_json::Value::Array(support::read_ndjson(&dir.path().join("changes.ndjson"))),
        serde_json::to_value(state.changes_since(0)).unwrap()
    );
    crate::windows::check_windows(store.as_ref(), &events, 5, 200);
    // Nothing is left in the journal once every partition is published.
    let journal: Vec<_> = std::fs::read_dir(dir.path().join("work/journal"))
        .unwrap()
        .collect();
    assert!(journal.is_empty(), "{journal:?}");
}

/// A schema file that does not exist, or a schema the events cannot fill,
/// stops the pipeline before any record with a message naming the output.
#[test]
fn bad_output_config_fails_before_any_record() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &support::events(1, 10, HOUR, 0, None));
    let section = output_section(dir.path(), "[]", "").replace(
        &format!("schema = '{}'", SCHEMA.replace('\n', " ")),
        "schema_file = \"/nonexistent/x.avsc\"",
    );
    let cfg = tessera::Config::parse(&support::config(dir.path(), &input, "", &section)).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    let err = tessera::Pipeline::build(cfg, store)
        .err()
        .expect("must fail");
    let text = err.to_string();
    assert!(
        text.contains("output `interactions`") && text.contains("x.avsc"),
        "{text}"
    );
    let bad_schema = output_section(dir.path(), "[]", "").replace("\"string\"}", "\"long\"}");
    let Err(e) = tessera::Config::parse(&support::config(dir.path(), &input, "", &bad_schema))
    else {
        panic!("a key field that is not a string must be refused")
    };
    assert!(e.to_string().contains("must be a string"), "{e}");
}

/// An output on S3-compatible storage (moto) whose bucket is missing at
/// first: the run commits tiles and the output's journal, retries the
/// publish with back-off and reports the failure; once the bucket exists,
/// the next run publishes the sealed partitions and the output holds each
/// event exactly once.
#[test]
fn s3_output_unavailable_then_back_loses_nothing() {
    use tessera::sinks::smb::{OutputRoot, S3Location};
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(13, 8_000, 3 * HOUR, 2_000, None);
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let bucket = support::s3_bucket_name("smb-pipeline");
    let section = output_section(dir.path(), r#"["view"]"#, "").replace(
        &format!("path = \"{}\"", dir.path().join("out").display()),
        &format!(
            "s3 = {{ bucket = \"{bucket}\", prefix = \"views\", endpoint = \"{}\", access_key_id = \"test\", secret_access_key = \"test\" }}",
            support::s3_endpoint()
        ),
    );
    let cfg = support::config(dir.path(), &input, "checkpoint_events = 4000", &section);
    {
        let (_store, mut p) = support::build(&cfg);
        let err = p
            .run(&mut |_| {})
            .expect_err("the bucket does not exist yet");
        assert!(err.to_string().contains("output `interactions`"), "{err}");
    }
    support::s3_create_bucket(&bucket);
    let (_, stats) = support::run(&cfg);
    assert_eq!(
        stats.records_in, 0,
        "the input was committed by the first run"
    );
    let location = S3Location {
        bucket,
        prefix: "views".into(),
        endpoint: Some(support::s3_endpoint().to_string()),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
    };
    let root = OutputRoot::s3(&location, &dir.path().join("download")).unwrap();
    let mut got: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let log = root.read_commit_log().unwrap();
    for line in log.lines() {
        let c: tessera::sinks::smb::CommittedPartition = serde_json::from_str(line).unwrap();
        let local = root.local_copy(&c.dir).unwrap();
        got.entry(c.partition)
            .or_default()
            .extend(check_dir(&local));
    }
    assert_same(got, expected(&events, &["view"]));
}
