//! SMB partitions written by `tessera::sinks::smb` and read back by an
//! independent reader (Python's fastavro, with buckets recomputed by mmh3).

use std::path::Path;

use apache_avro::types::Value;
use tessera::sinks::smb::{avro::Codec, HashType, PartitionWriter, SmbError, SmbSpec};

use crate::support;

const SCHEMA: &str = r#"{"type":"record","name":"Event","namespace":"tessera.test","fields":[
  {"name":"user","type":{"type":"record","name":"User","fields":[{"name":"id","type":["null","string"]}]}},
  {"name":"ts","type":"long"},
  {"name":"kind","type":"string"}]}"#;

fn spec(buckets: u32, shards: u32, hash: HashType, codec: Codec, budget: usize) -> SmbSpec {
    SmbSpec {
        schema_json: SCHEMA.into(),
        key_field: "user.id".into(),
        num_buckets: buckets,
        num_shards: shards,
        hash_type: hash,
        codec,
        memory_budget: budget,
        write_threads: 0,
    }
}

fn event(user: Option<&str>, ts: i64, kind: &str) -> Value {
    Value::Record(vec![
        (
            "user".into(),
            Value::Record(vec![(
                "id".into(),
                match user {
                    Some(u) => Value::Union(1, Box::new(Value::String(u.into()))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            )]),
        ),
        ("ts".into(), Value::Long(ts)),
        ("kind".into(), Value::String(kind.into())),
    ])
}

/// Runs the independent checker; returns (bucket, shard, key, ts) per record.
fn check(dir: &Path, codec: &str) -> Vec<(u32, u32, String, i64)> {
    support::smb_check(dir, codec)
        .iter()
        .map(|r| {
            (
                r[0].as_u64().unwrap() as u32,
                r[1].as_u64().unwrap() as u32,
                r[2].as_str().unwrap().to_string(),
                r[3]["ts"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Keys with Unicode and lengths across the varint boundary; a tiny memory
/// budget forces external sorting, and both layouts must give the same files.
#[test]
fn partitions_read_back_bucketed_and_sorted_by_an_independent_reader() {
    let dir = tempfile::tempdir().unwrap();
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let keys: Vec<String> = (0..300)
        .map(|i| match i % 4 {
            0 => format!("user-{i}"),
            1 => format!("ünïcode-{i}-日本"),
            2 => "k".repeat(120 + i % 20),
            _ => format!("{i}"),
        })
        .collect();
    let mut input: Vec<(String, i64)> = Vec::new();
    for i in 0..6000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        input.push((keys[(x % keys.len() as u64) as usize].clone(), i));
    }
    for (name, shards, hash, codec, budget) in [
        (
            "in-memory",
            1,
            HashType::Murmur3_128,
            Codec::Deflate(6),
            usize::MAX,
        ),
        (
            "spilled",
            1,
            HashType::Murmur3_128,
            Codec::Deflate(6),
            20_000,
        ),
        ("sharded-32", 3, HashType::Murmur3_32, Codec::Null, 50_000),
    ] {
        let mut w = PartitionWriter::new(
            spec(16, shards, hash, codec, budget),
            &dir.path().join(format!("spill-{name}")),
        )
        .unwrap();
        for (k, ts) in &input {
            w.add(&event(Some(k), *ts, "view")).unwrap();
        }
        let out = dir
            .path()
            .join(name)
            .join("date=2026-11-23")
            .join("hour=03");
        let summary = w.commit(&out).unwrap();
        assert_eq!(summary.records, input.len() as u64);
        assert_eq!(summary.files, 16 * shards as usize);
        assert_eq!(
            summary.spilled_runs > 0,
            budget < usize::MAX,
            "{name}: {summary:?}"
        );
        let got = check(
            &out,
            if codec == Codec::Null {
                "null"
            } else {
                "deflate"
            },
        );
        // Every record once; equal keys keep their arrival order (stable sort and merge).
        let mut want = input.clone();
        want.sort_by_key(|(k, ts)| (k.clone(), *ts));
        let mut back: Vec<(String, i64)> =
            got.iter().map(|(_, _, k, ts)| (k.clone(), *ts)).collect();
        back.sort();
        assert_eq!(back, want, "{name}");
        for shard_group in got.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1 && a.2 == b.2) {
            assert!(
                shard_group.windows(2).all(|w| w[0].3 < w[1].3),
                "{name}: arrival order within a key"
            );
        }
        let used: std::collections::BTreeSet<u32> = got.iter().map(|r| r.1).collect();
        assert_eq!(
            used.len(),
            shards as usize,
            "{name}: every shard gets records"
        );
        // No staging left behind; committing the same partition again is refused.
        let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains("staging"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let again = PartitionWriter::new(
            spec(16, shards, hash, codec, budget),
            &dir.path().join("spill-again"),
        )
        .unwrap();
        assert!(matches!(
            again.commit(&out),
            Err(SmbError::AlreadyCommitted(_))
        ));
    }
}

/// Empty partitions still get every bucket file; bad records and bad specs
/// are refused with the reason and change nothing.
#[test]
fn empty_buckets_bad_records_and_bad_specs() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = PartitionWriter::new(
        spec(8, 1, HashType::Murmur3_128, Codec::Deflate(6), 1 << 20),
        &dir.path().join("spill"),
    )
    .unwrap();
    let null_key = w.add(&event(None, 1, "view")).unwrap_err().to_string();
    assert!(
        null_key.contains("key field `user.id` is null"),
        "{null_key}"
    );
    let bad = Value::Record(vec![("ts".into(), Value::Long(1))]);
    assert!(w
        .add(&bad)
        .unwrap_err()
        .to_string()
        .contains("no key field"));
    let mut wrong_type = event(Some("u"), 1, "view");
    if let Value::Record(f) = &mut wrong_type {
        f[1].1 = Value::String("not a long".into());
    }
    assert!(w
        .add(&wrong_type)
        .unwrap_err()
        .to_string()
        .contains("does not match the schema"));
    w.add(&event(Some("only-one"), 5, "like")).unwrap();
    let out = dir.path().join("p");
    let s = w.commit(&out).unwrap();
    assert_eq!((s.records, s.files), (1, 8));
    assert_eq!(check(&out, "deflate").len(), 1);

    let spill = dir.path().join("spill2");
    for (buckets, key, want) in [
        (12, "user.id", "power of two"),
        (8, "user.nope", "no field `nope`"),
        (8, "ts", "must be a string"),
        (8, "kind.x", "is not a record"),
    ] {
        let mut s = spec(buckets, 1, HashType::Murmur3_128, Codec::Null, 1 << 20);
        s.key_field = key.into();
        let err = PartitionWriter::new(s, &spill)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(want), "{err}");
    }
    let mut s = spec(8, 1, HashType::Murmur3_128, Codec::Null, 1 << 20);
    s.schema_json = "{not json".into();
    assert!(matches!(
        PartitionWriter::new(s, &spill),
        Err(SmbError::Schema(_))
    ));
}

const PROFILE: &str = r#"{"type":"record","name":"Profile","fields":[{"name":"id","type":"string"},{"name":"country","type":"string"}]}"#;

fn profile(id: &str, country: &str) -> Value {
    Value::Record(vec![
        ("id".into(), Value::String(id.into())),
        ("country".into(), Value::String(country.into())),
    ])
}

fn field_str(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        if let Value::Union(_, inner) = cur {
            cur = inner;
        }
        let Value::Record(f) = cur else {
            panic!("{cur:?}")
        };
        cur = &f.iter().find(|(n, _)| n == p).unwrap().1;
    }
    if let Value::Union(_, inner) = cur {
        cur = inner;
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Long(n) => n.to_string(),
        other => panic!("{other:?}"),
    }
}

/// A sort-merge join of events (8 buckets, plus a late-data sibling
/// directory with 4 buckets) with profiles (32 buckets) equals an in-memory
/// hash join of the inputs.
#[test]
fn smb_join_equals_a_hash_join_across_bucket_counts_and_late_siblings() {
    use tessera::sinks::smb::{smb_join, SmbSource};
    let dir = tempfile::tempdir().unwrap();
    let mut x: u64 = 0xD1B54A32D192ED03;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let write = |spec: SmbSpec, name: &str, records: &[Value]| {
        let mut w = PartitionWriter::new(spec, &dir.path().join(format!("spill-{name}"))).unwrap();
        for r in records {
            w.add(r).unwrap();
        }
        let out = dir.path().join(name);
        w.commit(&out).unwrap();
        out
    };
    let events: Vec<Value> = (0..4000)
        .map(|i| event(Some(&format!("u{}", rnd(700))), i, "view"))
        .collect();
    let late: Vec<Value> = (0..300)
        .map(|i| event(Some(&format!("u{}", rnd(900))), 10_000 + i, "like"))
        .collect();
    let mut profiles = Vec::new();
    for i in 0..800 {
        if rnd(5) > 0 {
            profiles.push(profile(
                &format!("u{i}"),
                ["se", "in", "br"][rnd(3) as usize],
            ));
        }
    }
    let hour = write(
        spec(8, 1, HashType::Murmur3_128, Codec::Deflate(6), usize::MAX),
        "events/hour=03",
        &events,
    );
    let sibling = write(
        spec(4, 2, HashType::Murmur3_128, Codec::Deflate(6), usize::MAX),
        "events/hour=03.late-1",
        &late,
    );
    let mut pspec = spec(32, 1, HashType::Murmur3_128, Codec::Null, 10_000);
    pspec.schema_json = PROFILE.into();
    pspec.key_field = "id".into();
    let prof = write(pspec, "profiles", &profiles);

    let left = SmbSource::open(&[hour, sibling]).unwrap();
    let right = SmbSource::open(&[prof]).unwrap();
    let mut got: std::collections::BTreeMap<String, (Vec<i64>, Vec<String>)> = Default::default();
    let stats = smb_join(&left, &right, |key, l, r| {
        let mut ts: Vec<i64> = l
            .iter()
            .map(|v| field_str(v, &["ts"]).parse().unwrap())
            .collect();
        ts.sort();
        let countries = r.iter().map(|v| field_str(v, &["country"])).collect();
        assert!(
            got.insert(key.to_string(), (ts, countries)).is_none(),
            "key {key} emitted twice"
        );
        Ok(())
    })
    .unwrap();

    // The oracle: a hash join of the inputs.
    let mut by_user: std::collections::HashMap<String, Vec<i64>> = Default::default();
    for e in events.iter().chain(&late) {
        by_user
            .entry(field_str(e, &["user", "id"]))
            .or_default()
            .push(field_str(e, &["ts"]).parse().unwrap());
    }
    let mut want: std::collections::BTreeMap<String, (Vec<i64>, Vec<String>)> = Default::default();
    for p in &profiles {
        let id = field_str(p, &["id"]);
        if let Some(ts) = by_user.get(&id) {
            let mut ts = ts.clone();
            ts.sort();
            want.insert(id, (ts, vec![field_str(p, &["country"])]));
        }
    }
    assert_eq!(got, want);
    assert_eq!(stats.left_records, (events.len() + late.len()) as u64);
    assert_eq!(stats.right_records, profiles.len() as u64);
    assert_eq!(stats.keys_matched, want.len() as u64);

    // The CLI gives the same join: counts on stdout, joined keys as JSON lines.
    let rows = dir.path().join("joined.ndjson");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["smb", "join", "--left"])
        .arg(dir.path().join("events/hour=03"))
        .arg(dir.path().join("events/hour=03.late-1"))
        .arg("--right")
        .arg(dir.path().join("profiles"))
        .arg("--out")
        .arg(&rows)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts["keys_matched"], want.len() as u64);
    assert_eq!(counts["pairs"], stats.pairs);
    let lines = support::read_ndjson(&rows);
    assert_eq!(lines.len(), want.len());
    for l in &lines {
        let key = l["key"].as_str().unwrap();
        let mut ts: Vec<i64> = l["left"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ts"].as_i64().unwrap())
            .collect();
        ts.sort();
        assert_eq!(ts, want[key].0, "{key}");
        assert_eq!(l["right"][0]["country"].as_str().unwrap(), want[key].1[0]);
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["smb", "join", "--left"])
        .arg(dir.path().join("nowhere"))
        .arg("--right")
        .arg(dir.path().join("profiles"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("opening the left SMB output"));

    // Sources that hash differently cannot be joined bucket by bucket.
    let other = write(
        spec(8, 1, HashType::Murmur3_32, Codec::Null, usize::MAX),
        "other",
        &events[..10],
    );
    let err = smb_join(&left, &SmbSource::open(&[other]).unwrap(), |_, _, _| Ok(())).unwrap_err();
    assert!(err.to_string().contains("same hash"), "{err}");
    // An uncommitted directory (no metadata.json) is not a source.
    std::fs::create_dir_all(dir.path().join("half")).unwrap();
    assert!(SmbSource::open(&[dir.path().join("half")]).is_err());
}

/// Writes the crash test's partition and commits it; with the failpoint set
/// (by [`a_crash_during_commit_never_leaves_a_committed_partial_directory`],
/// which runs this as a child process) the commit aborts the process.
#[test]
#[ignore = "run as a child process by the crash test"]
fn crash_child_commits_a_partition() {
    let dir = std::path::PathBuf::from(
        std::env::var("TESSERA_SMB_CRASH_DIR").expect("set by the crash test"),
    );
    let mut w = PartitionWriter::new(
        spec(8, 1, HashType::Murmur3_128, Codec::Deflate(6), usize::MAX),
        &dir.join("spill"),
    )
    .unwrap();
    for i in 0..2000 {
        w.add(&event(Some(&format!("user-{}", i % 300)), i, "view"))
            .unwrap();
    }
    w.commit(&dir.join("hour=03")).unwrap();
}

/// Kills a real process (abort) at every step of a commit: before any
/// file, between files, after all files but before `metadata.json`. The
/// partition is never readable half-written, and committing again completes it.
#[test]
fn a_crash_during_commit_never_leaves_a_committed_partial_directory() {
    use tessera::sinks::smb::SmbSource;
    for crash_after in [0usize, 3, 8] {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "smb::crash_child_commits_a_partition",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("TESSERA_SMB_CRASH_DIR", dir.path())
            .env(
                "TESSERA_FAILPOINT_SMB_COMMIT_CRASH",
                crash_after.to_string(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            !status.success(),
            "the child must die in the commit (crash after {crash_after})"
        );
        let part = dir.path().join("hour=03");
        let moved = std::fs::read_dir(&part).map(|d| d.count()).unwrap_or(0);
        assert_eq!(moved, crash_after, "files moved before the crash");
        assert!(
            !part.join("metadata.json").exists(),
            "no commit marker after a crash"
        );
        assert!(
            SmbSource::open(std::slice::from_ref(&part)).is_err(),
            "an uncommitted partition is not readable"
        );
        // The retry (same process kind, no failpoint) commits it whole.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "smb::crash_child_commits_a_partition",
                "--exact",
                "--ignored",
            ])
            .env("TESSERA_SMB_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(check(&part, "deflate").len(), 2000);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("staging"))
            .collect();
        assert!(
            left.is_empty(),
            "the retry clears the crashed staging directory: {left:?}"
        );
    }
}

/// Hourly partitions by event time, committed as time passes; late records
/// for a committed hour land in a sibling directory, and `_commits.ndjson`
/// lists every commit with what it amends. Each hour's directories, read
/// together, hold exactly that hour's records.
fn hourly_partitions_and_late_siblings_at(root: tessera::sinks::smb::OutputRoot) {
    use tessera::sinks::smb::{Granularity, SmbOutput};
    let mut out = SmbOutput::new(
        root,
        spec(4, 1, HashType::Murmur3_128, Codec::Deflate(6), 1 << 20),
        Granularity::Hourly,
    )
    .unwrap();
    let t0 = 1_795_392_000_000i64; // 2026-11-23T00:00Z
    let hour = 3_600_000i64;
    let mut written: Vec<(i64, String)> = Vec::new();
    let mut add = |out: &mut SmbOutput, t: i64, user: String| {
        out.add(t, &event(Some(&user), t, "view")).unwrap();
        written.push((t, user));
    };
    for i in 0..3000i64 {
        let t = t0 + i * 3 * hour / 3000;
        add(&mut out, t, format!("user-{}", i % 97));
        // Commit hours as "the watermark" passes them.
        if i == 1500 {
            let c = out.commit_until(t).unwrap();
            assert_eq!(c.len(), 1, "hour 0 is over");
            assert_eq!(c[0].dir, "date=2026-11-23/hour=00");
        }
    }
    // Late data for hour 0 (already committed) and hour 1 (still open).
    for i in 0..40 {
        add(&mut out, t0 + 10 * 60_000 + i, format!("late-{i}"));
        add(&mut out, t0 + hour + i, format!("late-{i}"));
    }
    let committed = out.commit_all().unwrap();
    assert_eq!(committed.len(), 3, "{committed:?}");
    // Once more, late again for hour 0: a second sibling.
    add(&mut out, t0 + 5, "later".into());
    out.commit_all().unwrap();

    let log = out.commit_log().unwrap();
    let dirs: Vec<(&str, bool)> = log.iter().map(|c| (c.dir.as_str(), c.amends)).collect();
    assert_eq!(
        dirs,
        vec![
            ("date=2026-11-23/hour=00", false),
            ("date=2026-11-23/hour=00.late-0001", true),
            ("date=2026-11-23/hour=01", false),
            ("date=2026-11-23/hour=02", false),
            ("date=2026-11-23/hour=00.late-0002", true),
        ]
    );
    assert!(log
        .iter()
        .all(|c| c.event_time_end_ms - c.event_time_start_ms == hour && c.landed_at_ms > 0));
    for h in 0..3 {
        let start = t0 + h * hour;
        let mut want: Vec<String> = written
            .iter()
            .filter(|(t, _)| t.div_euclid(hour) * hour == start)
            .map(|(_, u)| u.clone())
            .collect();
        want.sort();
        let mut got: Vec<String> = out
            .committed_dirs(start)
            .unwrap()
            .iter()
            .flat_map(|d| check(d, "deflate"))
            .map(|(_, _, k, _)| k)
            .collect();
        got.sort();
        assert_eq!(got, want, "hour {h}");
        let records: u64 = log
            .iter()
            .filter(|c| c.event_time_start_ms == start)
            .map(|c| c.records)
            .sum();
        assert_eq!(records as usize, want.len());
    }
    assert!(out.open_partitions().is_empty());
}

#[test]
fn hourly_partitions_and_late_data_siblings_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    hourly_partitions_and_late_siblings_at(tessera::sinks::smb::OutputRoot::local(
        &dir.path().join("views"),
    ));
}

/// The same on an S3-compatible server (moto, started by the tests).
#[test]
fn hourly_partitions_and_late_data_siblings_on_s3() {
    use tessera::sinks::smb::{OutputRoot, S3Location};
    let dir = tempfile::tempdir().unwrap();
    let location = S3Location {
        bucket: support::s3_bucket("smb-hourly"),
        prefix: "outputs/views".into(),
        endpoint: Some(support::s3_endpoint().to_string()),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
    };
    let root = OutputRoot::s3(&location, dir.path()).unwrap();
    hourly_partitions_and_late_siblings_at(root.clone());
    // A partition never written is not committed.
    assert!(!root.is_committed("date=2026-11-23/hour=05").unwrap());
    // `tessera smb join` reads s3:// partitions: hour 0 and its late siblings
    // joined with themselves give every key once, count² pairs each.
    let hour0 = |rel: &str| {
        format!(
            "s3://{}/outputs/views/date=2026-11-23/{rel}",
            location.bucket
        )
    };
    let sides = [
        hour0("hour=00"),
        hour0("hour=00.late-0001"),
        hour0("hour=00.late-0002"),
    ];
    let tessera_s3 = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .env("AWS_ENDPOINT_URL", support::s3_endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap()
    };
    let mut args = vec!["smb", "join", "--left"];
    args.extend(sides.iter().map(String::as_str));
    args.push("--right");
    args.extend(sides.iter().map(String::as_str));
    let out = tessera_s3(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut per_key: std::collections::HashMap<String, u64> = Default::default();
    let t0 = 1_795_392_000_000i64;
    let log = tessera::sinks::smb::SmbOutput::new(
        root.clone(),
        spec(4, 1, HashType::Murmur3_128, Codec::Deflate(6), 1 << 20),
        tessera::sinks::smb::Granularity::Hourly,
    )
    .unwrap()
    .committed_dirs(t0)
    .unwrap();
    for d in &log {
        for (_, _, k, _) in check(d, "deflate") {
            *per_key.entry(k).or_default() += 1;
        }
    }
    assert_eq!(counts["keys_matched"], per_key.len() as u64);
    assert_eq!(
        counts["pairs"],
        per_key.values().map(|c| c * c).sum::<u64>()
    );
    let missing_partition = tessera_s3(&[
        "smb",
        "join",
        "--left",
        &hour0("hour=09"),
        "--right",
        &sides[0],
    ]);
    assert!(!missing_partition.status.success());
    assert!(String::from_utf8_lossy(&missing_partition.stderr).contains("no committed partition"));
    // A bucket that does not exist is a clear error, not a panic.
    let missing = S3Location {
        bucket: "no-such-bucket".into(),
        ..location
    };
    let bad = OutputRoot::s3(&missing, dir.path()).unwrap();
    let err = bad
        .is_committed("x")
        .and_then(|_| bad.append_commit_line("{}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such-bucket") || err.to_lowercase().contains("bucket"),
        "{err}"
    );
}
