//! Shared test set-up: the plugins built once per test run, config and data
//! generators, and the brute-force oracle that window answers are checked against.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tessera::window::TileAgg;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds every plugin (ours and the misbehaving test one) once per test
/// run, and returns the directory holding the `.wasm` components.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Before any pipeline runs, so no callsite caches "no subscriber".
        captured_log();
        let status = std::process::Command::new(workspace_root().join("scripts/build-plugins.sh"))
            .arg("--quiet")
            .status()
            .expect("running scripts/build-plugins.sh");
        assert!(status.success(), "building the plugins failed");
        target_dir().join("wasm32-wasip2/release")
    })
}

pub fn plugin(name: &str) -> PathBuf {
    let p = plugin_dir().join(format!("{name}.wasm"));
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// A deterministic generator (xorshift), so failures reproduce from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One generated event, as the oracle sees it.
#[derive(Clone, Debug)]
pub struct Event {
    pub ts: i64,
    pub ty: &'static str,
    pub post: String,
    pub user: String,
    pub dwell: i64,
}

impl Event {
    pub fn json(&self) -> String {
        format!(
            r#"{{"ts":{},"type":"{}","post_id":"{}","user_id":"{}","dwell_ms":{}}}"#,
            self.ts, self.ty, self.post, self.user, self.dwell
        )
    }
}

pub const T0: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

/// `n` events over `span_ms` from `T0`, out of order by up to `jitter_ms`,
/// with `late_every`-th event pushed `late_by_ms` back.
pub fn events(
    seed: u64,
    n: usize,
    span_ms: i64,
    jitter_ms: i64,
    late: Option<(usize, i64)>,
) -> Vec<Event> {
    let mut rng = Rng(seed.max(1));
    let types = ["view", "view", "like", "share", "comment"];
    (0..n)
        .map(|i| {
            let mut ts =
                T0 + span_ms * i as i64 / n as i64 + rng.below(2 * jitter_ms as u64 + 1) as i64
                    - jitter_ms;
            if let Some((every, by)) = late {
                if i % every == every - 1 {
                    ts -= by;
                }
            }
            Event {
                ts,
                ty: types[rng.below(types.len() as u64) as usize],
                post: format!("post-{}", rng.below(40)),
                user: format!("user-{}", rng.below(300)),
                dwell: rng.below(10_000) as i64,
            }
        })
        .collect()
}

pub fn write_ndjson(path: &Path, events: &[Event]) {
    let text: String = events.iter().map(|e| e.json() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

/// The windowed-counter config the oracle tests use: one feature per aggregation.
pub const COUNTER_FEATURES: &str = r#"{ features = [
  { name = "likes_per_post", entity = "post_id", event_types = ["like"] },
  { name = "views_per_post", entity = "post_id", event_types = ["view"] },
  { name = "interactions_per_user", entity = "user_id", event_types = ["like", "view", "share", "comment"] },
  { name = "dwell_sum", entity = "post_id", event_types = ["view"], aggregation = "sum", value_field = "dwell_ms" },
  { name = "dwell_max", entity = "post_id", event_types = ["view"], aggregation = "max", value_field = "dwell_ms" },
  { name = "dwell_min", entity = "user_id", aggregation = "min", value_field = "dwell_ms" },
  { name = "dwell_last", entity = "post_id", aggregation = "last", value_field = "dwell_ms" },
  { name = "dwell_mean", entity = "user_id", event_types = ["view", "like"], aggregation = "mean", value_field = "dwell_ms" },
] }"#;

/// Which events feed a feature of [`COUNTER_FEATURES`], its entity and value.
pub fn feature_input<'a>(feature: &str, e: &'a Event) -> Option<(&'a str, f64)> {
    let (types, by_user, value): (&[&str], bool, bool) = match feature {
        "likes_per_post" => (&["like"], false, false),
        "views_per_post" => (&["view"], false, false),
        "interactions_per_user" => (&["like", "view", "share", "comment"], true, false),
        "dwell_sum" | "dwell_max" => (&["view"], false, true),
        "dwell_min" => (&[], true, true),
        "dwell_last" => (&[], false, true),
        "dwell_mean" => (&["view", "like"], true, true),
        other => panic!("unknown feature {other}"),
    };
    if !types.is_empty() && !types.contains(&e.ty) {
        return None;
    }
    let entity = if by_user {
        e.user.as_str()
    } else {
        e.post.as_str()
    };
    Some((entity, if value { e.dwell as f64 } else { 1.0 }))
}

/// Brute force: the aggregate of every accepted event of `feature` and
/// `entity` with `start <= ts < end`, in input order.
pub fn oracle(events: &[Event], feature: &str, entity: &str, start: i64, end: i64) -> TileAgg {
    let mut agg = TileAgg::EMPTY;
    for e in events {
        if let Some((ent, v)) = feature_input(feature, e) {
            if ent == entity && e.ts >= start && e.ts < end {
                agg.add(v, e.ts);
            }
        }
    }
    agg
}

/// A config for a pipeline over `input` with the JSON parser and the windowed
/// counter, stores under `dir`; `pipeline_extra` goes into `[pipeline]`,
/// `extra` at the end (more sections).
pub fn config(dir: &Path, input: &Path, pipeline_extra: &str, extra: &str) -> String {
    config_with_store(dir, input, pipeline_extra, extra, &embedded_store(dir))
}

/// [`config`] with another `[store]` table.
pub fn config_with_store(
    dir: &Path,
    input: &Path,
    pipeline_extra: &str,
    extra: &str,
    store: &str,
) -> String {
    format!(
        r#"
[pipeline]
name = "test"
batch_size = 256
{extra_pipeline}

[source]
type = "file"
path = "{input}"

[parser]
name = "json-parser"
path = "{parser}"
config = {{ fields = {{ dwell_ms = "float64" }} }}

[[features]]
name = "windowed-counter"
path = "{counter}"
config = {features}

{store}
{sinks}
{extra}
"#,
        sinks = sink_sections(dir),
        extra_pipeline = pipeline_extra,
        input = input.display(),
        parser = plugin("json_parser").display(),
        counter = plugin("windowed_counter").display(),
        features = COUNTER_FEATURES,
    )
}

/// The `[store]`, `[dead_letter]` and `[side_output]` sections, all under `dir`.
pub fn store_sections(dir: &Path) -> String {
    format!("{}\n{}", embedded_store(dir), sink_sections(dir))
}

/// An embedded `[store]` in `dir`.
pub fn embedded_store(dir: &Path) -> String {
    format!(
        "[store]\ntype = \"embedded\"\npath = \"{}/tiles.redb\"\n",
        dir.display()
    )
}

/// The `[dead_letter]`, `[side_output]` and `[completeness]` (for its
/// change-log file) sections, under `dir`.
pub fn sink_sections(dir: &Path) -> String {
    format!(
        "[dead_letter]\npath = \"{dir}/dead-letter.ndjson\"\n\n[side_output]\npath = \"{dir}/side-output.ndjson\"\n\n[completeness]\nchange_log_path = \"{dir}/changes.ndjson\"\n",
        dir = dir.display()
    )
}

/// Parses a config and builds its pipeline over its store.
pub fn build(
    cfg: &str,
) -> (
    std::sync::Arc<dyn tessera::stores::TileStore>,
    tessera::Pipeline,
) {
    let cfg = tessera::Config::parse(cfg).unwrap();
    let store = tessera::stores::open(&cfg.store).unwrap();
    let p = tessera::Pipeline::build(cfg, store.clone()).unwrap();
    (store, p)
}

/// Builds a pipeline from a config and runs it to the end of its input.
pub fn run(
    cfg: &str,
) -> (
    std::sync::Arc<dyn tessera::stores::TileStore>,
    tessera::RunStats,
) {
    let (store, mut p) = build(cfg);
    let stats = p.run(&mut |_| {}).unwrap();
    (store, stats)
}

/// Reads an NDJSON file into JSON values (empty when it does not exist).
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l}: {e}")))
        .collect()
}

/// Everything logged through tracing by any test in this binary. Installed
/// as the global subscriber once: a thread-scoped one would race with the
/// callsite-interest cache while other tests run.
#[derive(Clone, Default)]
pub struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLog {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn captured_log() -> CapturedLog {
    static LOG: OnceLock<CapturedLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = CapturedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info,wasmtime=warn,cranelift=warn")
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the tests");
        log
    })
    .clone()
}

/// A Python with fastavro and mmh3 (independent Avro reader and murmur3),
/// in a virtualenv cached outside the clone (`~/.cache/tessera/pyenv`),
/// created on first use from PyPI. Returns the interpreter.
pub fn python_with_avro() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let env = home.join(".cache/tessera/pyenv");
        let python = env.join("bin/python");
        let ready = |p: &Path| {
            std::process::Command::new(p)
                .args(["-c", "import fastavro, mmh3"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ready(&python) {
            let ok = std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&env)
                .status()
                .is_ok_and(|s| s.success())
                && std::process::Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "fastavro==1.12.1",
                        "mmh3==5.2.0",
                    ])
                    .status()
                    .is_ok_and(|s| s.success());
            assert!(
                ok && ready(&python),
                "could not set up {} with fastavro and mmh3 from PyPI",
                env.display()
            );
        }
        python
    })
}

/// An S3-compatible server for the whole test run: moto's server mode
/// (PyPI, installed into the cached virtualenv), on a free loopback port.
/// A watchdog shell stops it when the test process exits. Returns the
/// endpoint URL.
pub fn s3_endpoint() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let python = python_with_avro();
        let bin = python.parent().unwrap();
        let moto = bin.join("moto_server");
        if !moto.exists() {
            let ok = std::process::Command::new(python)
                .args(["-m", "pip", "install", "-q", "moto[server]==5.2.5"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok && moto.exists(), "could not install moto[server] from PyPI");
        }
        let port = free_port();
        let script = format!(
            "'{}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill $m",
            moto.display(),
            std::process::id()
        );
        // Not waited for: the watchdog lives as long as this test process.
        #[allow(clippy::zombie_processes)]
        std::process::Command::new("bash")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        format!("http://127.0.0.1:{port}")
    })
}

/// Creates a bucket on the test S3 server (named uniquely per call) and returns its name.
pub fn s3_bucket(stem: &str) -> String {
    let name = s3_bucket_name(stem);
    s3_create_bucket(&name);
    name
}

/// A bucket name unique in this test run (the bucket is not created).
pub fn s3_bucket_name(stem: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{stem}-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Creates `name` on the test S3 server.
pub fn s3_create_bucket(name: &str) {
    let script = format!(
        "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{name}')",
        s3_endpoint()
    );
    let ok = std::process::Command::new(python_with_avro())
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "creating bucket {name}");
}

/// Runs the independent SMB checker (`tests/smb_check.py`: fastavro reads
/// every bucket file, mmh3 recomputes each record's bucket, sort order and
/// codec are checked) on one committed directory; returns its records as
/// `[bucket, shard, key, record]`.
pub fn smb_check(dir: &Path, codec: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(python_with_avro())
        .arg(workspace_root().join("tests/smb_check.py"))
        .arg(dir)
        .arg(codec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smb_check.py {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    std::mem::take(v["records"].as_array_mut().unwrap())
}

pub use crate::servers::{kafka_bootstrap, KafkaBroker};

/// Creates `topic` with `partitions` partitions on the test broker.
pub fn kafka_topic(topic: &str, partitions: i32) {
    kafka_topic_at(kafka_bootstrap(), topic, partitions)
}

/// Creates `topic` on the broker at `bootstrap`.
pub fn kafka_topic_at(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = futures::executor::block_on(admin.create_topics([&t], &AdminOptions::new())).unwrap();
    assert!(r.iter().all(|r| r.is_ok()), "creating {topic}: {r:?}");
}

/// Produces `(partition, key, payload)` messages and waits until all are
/// acknowledged. In a new topic, the n-th message of a partition has offset n.
pub fn kafka_produce(topic: &str, messages: &[(i32, String, Vec<u8>)]) {
    kafka_produce_at(kafka_bootstrap(), topic, messages)
}

/// Produces to the broker at `bootstrap` (see [`kafka_produce`]).
pub fn kafka_produce_at(bootstrap: &str, topic: &str, messages: &[(i32, String, Vec<u8>)]) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (p, key, payload) in messages {
        let mut record = BaseRecord::to(topic)
            .partition(*p)
            .key(key)
            .payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
    }
    producer.flush(std::time::Duration::from_secs(60)).unwrap();
}

/// A plain HTTP/1.0 GET on loopback: (status code, body), or `None` when
/// nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Polls `check` every 200 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: std::time::Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A child process SIGKILLed when dropped (a failed test leaves none behind).
pub struct KillOnDrop(pub Option<std::process::Child>);

impl KillOnDrop {
    /// Sends SIGINT (Ctrl-C) and waits for the output.
    pub fn interrupt_and_wait(mut self) -> std::process::Output {
        let child = self.0.take().unwrap();
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        child.wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lets `child` run for up to `wait`, then SIGKILLs it if it is still
/// running; returns whether it was killed. Waits for it either way.
pub fn kill_after(mut child: std::process::Child, wait: std::time::Duration) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < wait && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let killed = child.try_wait().unwrap().is_none();
    if killed {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    killed
}
