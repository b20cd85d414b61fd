//! SMB write throughput, and the sort-merge join of two SMB outputs against
//! an in-memory hash join over the same files, in one run.
//!
//! Run: `cargo bench -p tessera --bench smb`. `TESSERA_BENCH_RECORDS`
//! (default 1,000,000 events) and `TESSERA_BENCH_RUNS` (default 3) change it.

use std::collections::HashMap;
use std::time::Instant;

use apache_avro::types::Value;
use tessera::sinks::smb::{avro::Codec, smb_join, HashType, PartitionWriter, SmbSource, SmbSpec};

mod common;
use common::{env_or, median};

const EVENT: &str = r#"{"type":"record","name":"Event","fields":[{"name":"user_id","type":"string"},{"name":"post_id","type":"string"},{"name":"type","type":"string"},{"name":"ts","type":"long"},{"name":"dwell_ms","type":["null","double"]}]}"#;
const PROFILE: &str = r#"{"type":"record","name":"Profile","fields":[{"name":"user_id","type":"string"},{"name":"country","type":"string"},{"name":"age","type":"int"}]}"#;

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn events(n: usize, users: u64) -> Vec<Value> {
    let mut next = xorshift(0x9E3779B97F4A7C15);
    let types = ["view", "view", "view", "like", "share"];
    (0..n)
        .map(|i| {
            let zipf =
                ((next() % 1_000_000) as f64 / 1e6 * (users as f64 + 1.0).ln()).exp() as u64 - 1;
            let ty = types[(next() % 5) as usize];
            Value::Record(vec![
                ("user_id".into(), Value::String(format!("user-{zipf}"))),
                (
                    "post_id".into(),
                    Value::String(format!("post-{}", next() % 100_000)),
                ),
                ("type".into(), Value::String(ty.into())),
                ("ts".into(), Value::Long(1_795_392_000_000 + i as i64 * 3)),
                (
                    "dwell_ms".into(),
                    if ty == "view" {
                        Value::Union(1, Box::new(Value::Double((next() % 60_000) as f64)))
                    } else {
                        Value::Union(0, Box::new(Value::Null))
                    },
                ),
            ])
        })
        .collect()
}

fn profiles(users: u64) -> Vec<Value> {
    let mut next = xorshift(0xD1B54A32D192ED03);
    (0..users)
        .map(|u| {
            Value::Record(vec![
                ("user_id".into(), Value::String(format!("user-{u}"))),
                (
                    "country".into(),
                    Value::String(["se", "in", "br", "us"][(next() % 4) as usize].into()),
                ),
                ("age".into(), Value::Int(13 + (next() % 60) as i32)),
            ])
        })
        .collect()
}

fn spec(schema: &str, buckets: u32) -> SmbSpec {
    spec_with(schema, buckets, Codec::Deflate(6))
}

fn spec_with(schema: &str, buckets: u32, codec: Codec) -> SmbSpec {
    SmbSpec {
        schema_json: schema.into(),
        key_field: "user_id".into(),
        num_buckets: buckets,
        num_shards: 1,
        hash_type: HashType::Murmur3_128,
        codec,
        memory_budget: 256 << 20,
        write_threads: 0,
    }
}

fn key_of(v: &Value) -> &str {
    let Value::Record(f) = v else { unreachable!() };
    match &f[0].1 {
        Value::String(s) => s,
        _ => unreachable!(),
    }
}

fn main() {
    let n: usize = env_or("TESSERA_BENCH_RECORDS", 1_000_000);
    let runs: usize = env_or("TESSERA_BENCH_RUNS", 3);
    let users = 200_000u64;
    let ev = events(n, users);
    let pr = profiles(users);
    let schema = apache_avro::Schema::parse_str(EVENT).unwrap();
    // Avro-encoded input size, with one datum writer for all records.
    let datum_writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap();
    let mut buf = Vec::new();
    let encoded: usize = ev
        .iter()
        .map(|v| {
            buf.clear();
            datum_writer.write_value_ref(&mut buf, v).unwrap()
        })
        .sum();
    let dir = tempfile::tempdir().unwrap();
    let mut write_times = Vec::new();
    let mut null_times = Vec::new();
    let mut serial_times = Vec::new();
    let mut out_bytes = 0;
    let (mut left, mut right) = (None, None);
    for run in 0..runs {
        let out = dir.path().join(format!("events-{run}"));
        let t = Instant::now();
        let mut w = PartitionWriter::new(spec(EVENT, 64), &dir.path().join("spill")).unwrap();
        for v in &ev {
            w.add(v).unwrap();
        }
        let s = w.commit(&out).unwrap();
        write_times.push(t.elapsed());
        out_bytes = s.bytes;
        left = Some(out);
        let t = Instant::now();
        let mut one_thread = spec(EVENT, 64);
        one_thread.write_threads = 1;
        let mut w = PartitionWriter::new(one_thread, &dir.path().join("spill")).unwrap();
        for v in &ev {
            w.add(v).unwrap();
        }
        w.commit(&dir.path().join(format!("events-serial-{run}")))
            .unwrap();
        serial_times.push(t.elapsed());
        let t = Instant::now();
        let mut w =
            PartitionWriter::new(spec_with(EVENT, 64, Codec::Null), &dir.path().join("spill"))
                .unwrap();
        for v in &ev {
            w.add(v).unwrap();
        }
        w.commit(&dir.path().join(format!("events-null-{run}")))
            .unwrap();
        null_times.push(t.elapsed());
        let pout = dir.path().join(format!("profiles-{run}"));
        let mut w = PartitionWriter::new(spec(PROFILE, 16), &dir.path().join("spill")).unwrap();
        for v in &pr {
            w.add(v).unwrap();
        }
        w.commit(&pout).unwrap();
        right = Some(pout);
    }
    let wt = median(write_times);
    println!("SMB write: {n} events, 64 buckets, deflate 6: median {:.2} s = {:.2} M records/s, {:.1} MB/s of Avro-encoded records in, {:.1} MB/s of files out ({:.1} MB)",
        wt.as_secs_f64(), n as f64 / wt.as_secs_f64() / 1e6, encoded as f64 / wt.as_secs_f64() / 1e6, out_bytes as f64 / wt.as_secs_f64() / 1e6, out_bytes as f64 / 1e6);

    let st = median(serial_times);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "SMB write, deflate 6, bucket files written by one thread instead of {cores}, same run: median {:.2} s = {:.2} M records/s ({:.2}x the parallel commit's time)",
        st.as_secs_f64(),
        n as f64 / st.as_secs_f64() / 1e6,
        st.as_secs_f64() / wt.as_secs_f64()
    );
    let nt = median(null_times);
    println!(
        "SMB write without compression (codec null), same run: median {:.2} s = {:.2} M records/s",
        nt.as_secs_f64(),
        n as f64 / nt.as_secs_f64() / 1e6
    );

    let left = SmbSource::open(&[left.unwrap()]).unwrap();
    let right = SmbSource::open(&[right.unwrap()]).unwrap();
    let (mut smb, mut hash) = (Vec::new(), Vec::new());
    let mut pairs = (0, 0);
    for _ in 0..runs {
        let t = Instant::now();
        let mut p = 0u64;
        smb_join(&left, &right, |_, l, r| {
            p += (l.len() * r.len()) as u64;
            Ok(())
        })
        .unwrap();
        smb.push(t.elapsed());
        pairs.0 = p;
        // The same files, joined the usual way: build a hash table of the
        // right side, probe with every left record.
        let t = Instant::now();
        let mut table: HashMap<String, Vec<Value>> = HashMap::new();
        for b in 0..right.min_buckets() {
            for r in right.bucket(b, right.min_buckets()).unwrap() {
                let (_, v) = r.unwrap();
                table.entry(key_of(&v).to_string()).or_default().push(v);
            }
        }
        let mut p = 0u64;
        for b in 0..left.min_buckets() {
            for r in left.bucket(b, left.min_buckets()).unwrap() {
                let (_, v) = r.unwrap();
                p += table.get(key_of(&v)).map_or(0, |m| m.len() as u64);
            }
        }
        hash.push(t.elapsed());
        pairs.1 = p;
    }
    assert_eq!(pairs.0, pairs.1, "both joins find the same pairs");
    let (s, h) = (median(smb), median(hash));
    println!("join {n} events x {users} profiles ({} pairs): SMB {:.2} s, in-memory hash join {:.2} s over the same files ({:.2}x)", pairs.0, s.as_secs_f64(), h.as_secs_f64(), h.as_secs_f64() / s.as_secs_f64());
}
