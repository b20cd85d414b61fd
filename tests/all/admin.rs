//! The admin API through a real HTTP client against `tessera run --serve`
//! over the shared Kafka broker: tokens and roles, hostile uploads (each
//! refused, nothing stored), activation, rollback and quotas, the CLI, and
//! hot reload mid-stream checked against an oracle.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};

use crate::kafka::{group_source, kafka_config_with, log_tail, messages, serving_host, status};
use crate::support;

pub(crate) const ADMIN: &str = "admin-token-for-the-tests-01";
pub(crate) const READER: &str = "read-token-for-the-tests-001";
/// The upload limit the hosts here run with (the plugins are ~3.5 MB).
const MAX_UPLOAD: usize = 4 << 20;

/// A host over `topic` that never ends by itself, with the admin API on,
/// `features` as the windowed counter's config (TOML), and its API address.
pub(crate) fn admin_host(
    dir: &Path,
    topic: &str,
    features: &str,
) -> (support::KillOnDrop, String, std::path::PathBuf) {
    admin_host_with(dir, topic, features, "")
}

/// [`admin_host`] with more `[admin]` keys.
pub(crate) fn admin_host_with(
    dir: &Path,
    topic: &str,
    features: &str,
    admin_extra: &str,
) -> (support::KillOnDrop, String, std::path::PathBuf) {
    let api = format!("127.0.0.1:{}", support::free_port());
    let cfg = kafka_config_with(
        dir,
        topic,
        &group_source(support::kafka_bootstrap(), None, ""),
        "checkpoint_interval = \"200ms\"",
        &format!(
            "[watermark]\nout_of_orderness = \"3h\"\n\n[api]\nlisten = \"{api}\"\n\n[admin]\nregistry_dir = \"{registry}\"\nmax_upload_bytes = {MAX_UPLOAD}\napply_timeout = \"20s\"\ntokens = [{{ token = \"{ADMIN}\", role = \"admin\" }}, {{ token = \"{READER}\", role = \"read\" }}]\n{admin_extra}\n",
            registry = dir.join("registry").display()
        ),
    )
    .replace(support::COUNTER_FEATURES, features);
    let path = dir.join("tessera.toml");
    std::fs::write(&path, cfg).unwrap();
    let host = serving_host(&path);
    support::wait_until(Duration::from_secs(60), "the admin API to answer", || {
        support::http_get(&api, "/v1/status").is_some()
    });
    (host, api, path)
}

pub(crate) fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub(crate) fn with(token: Option<&str>, req: RequestBuilder) -> Response {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
    .send()
    .unwrap()
}

/// (status, body as JSON).
pub(crate) fn answer(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) fn upload(
    api: &str,
    token: Option<&str>,
    name: &str,
    version: &str,
    world: &str,
    bytes: Vec<u8>,
    config: Option<&str>,
) -> (u16, Value) {
    let mut query = vec![("world", world)];
    if let Some(c) = config {
        query.push(("config", c));
    }
    let req = http()
        .put(format!("http://{api}/v1/plugins/{name}/versions/{version}"))
        .query(&query)
        .body(bytes);
    answer(with(token, req))
}

/// Uploads the windowed counter as `version` of `name` (world feature, the
/// stage's config).
pub(crate) fn upload_counter(
    api: &str,
    token: Option<&str>,
    name: &str,
    version: &str,
) -> (u16, Value) {
    upload(
        api,
        token,
        name,
        version,
        "feature",
        wasm("windowed_counter"),
        None,
    )
}

pub(crate) fn get(api: &str, token: Option<&str>, path: &str) -> (u16, Value) {
    answer(with(token, http().get(format!("http://{api}{path}"))))
}

pub(crate) fn post(
    api: &str,
    token: Option<&str>,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let req = http().post(format!("http://{api}{path}"));
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    answer(with(token, req))
}

pub(crate) fn put_json(api: &str, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    answer(with(
        token,
        http().put(format!("http://{api}{path}")).json(&body),
    ))
}

pub(crate) fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(support::plugin(name)).unwrap()
}

pub(crate) fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

/// Produces `msgs` in chunks of `chunk`, `pause` apart, on another thread.
pub(crate) fn produce_in_chunks(
    topic: &'static str,
    msgs: Vec<crate::kafka::Msg>,
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for c in msgs.chunks(chunk) {
            support::kafka_produce(topic, c);
            std::thread::sleep(pause);
        }
    })
}

/// Each message's (partition, offset) in a topic it was the first to fill.
pub(crate) fn offsets(msgs: &[crate::kafka::Msg]) -> Vec<(i32, i64)> {
    let mut next: HashMap<i32, i64> = HashMap::new();
    msgs.iter()
        .map(|(p, _, _)| {
            let n = next.entry(*p).or_default();
            *n += 1;
            (*p, *n - 1)
        })
        .collect()
}

/// Waits until the host has read `n` records.
pub(crate) fn wait_for_records(api: &str, n: u64) {
    support::wait_until(
        Duration::from_secs(120),
        &format!("{n} records read"),
        || status(api)["records_in"].as_u64().unwrap_or(0) >= n,
    );
}

#[test]
fn admin_endpoints_check_tokens_refuse_hostile_uploads_and_change_nothing_when_they_fail() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "admin-endpoints";
    support::kafka_topic(topic, 1);
    let events = support::events(41, 2_000, 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    let msgs: Vec<_> = msgs.into_iter().map(|(_, k, v)| (0, k, v)).collect();
    support::kafka_produce(topic, &msgs);
    let (host, api, cfg) = admin_host(dir.path(), topic, support::COUNTER_FEATURES);
    // Records read: uploads are smoke-tested on them.
    wait_for_records(&api, 2_000);
    let stage = "windowed-counter";

    // Tokens and roles.
    let resp = with(None, http().get(format!("http://{api}/v1/plugins")));
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        resp.headers().get("www-authenticate").is_some(),
        "401 names the scheme"
    );
    assert_eq!(
        get(&api, Some("not-a-token-at-all-0000"), "/v1/plugins").0,
        401
    );
    let (code, list) = get(&api, Some(READER), "/v1/plugins");
    assert_eq!(code, 200, "{list}");
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["json-parser", stage]);
    let counter = &list["plugins"][1];
    assert_eq!(counter["kind"], "feature");
    assert_eq!(counter["source"], "config");
    assert_eq!(counter["state"], "active");
    assert!(counter["use"]["calls"].as_u64().unwrap() > 0, "{counter}");
    assert_eq!(counter["features"].as_array().unwrap().len(), 8);
    let (code, body) = upload_counter(&api, Some(READER), stage, "2");
    assert_eq!(code, 403, "{body}");
    let (code, body) = upload_counter(&api, None, stage, "2");
    assert_eq!(code, 401, "{body}");

    // Hostile uploads: each refused with its reason.
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let trap_cfg = r#"{"always": "trap"}"#;
    // (what, claimed world, bytes, config, status, reason)
    type Hostile<'a> = (&'a str, &'a str, Vec<u8>, Option<&'a str>, u16, &'a str);
    let hostile: Vec<Hostile> = vec![
        (
            "garbage",
            "feature",
            b"definitely not wasm".to_vec(),
            None,
            400,
            "not a WebAssembly component",
        ),
        (
            "core module",
            "feature",
            core_module,
            None,
            400,
            "core WebAssembly module",
        ),
        (
            "wrong world",
            "feature",
            wasm("json_parser"),
            None,
            400,
            "does not implement world",
        ),
        (
            "world not the stage's",
            "parser",
            wasm("json_parser"),
            None,
            400,
            "runs a \"feature\" plugin",
        ),
        (
            "unknown world",
            "sink",
            wasm("windowed_counter"),
            None,
            400,
            "unknown world",
        ),
        (
            "over the size limit",
            "feature",
            vec![0u8; MAX_UPLOAD + 1],
            None,
            413,
            "",
        ),
        ("empty", "feature", Vec::new(), None, 400, "empty"),
        (
            "init refuses",
            "feature",
            wasm("misbehave"),
            Some(r#"{"fail-init": true}"#),
            422,
            "init refused",
        ),
        (
            "trap in the smoke call",
            "feature",
            wasm("misbehave"),
            Some(trap_cfg),
            422,
            "smoke call failed",
        ),
        (
            "config not JSON",
            "feature",
            wasm("windowed_counter"),
            Some("{nope"),
            400,
            "not JSON",
        ),
    ];
    for (what, world, bytes, config, want, reason) in hostile {
        let (code, body) = upload(&api, Some(ADMIN), stage, "9", world, bytes, config);
        assert_eq!(code, want, "{what}: {body}");
        assert!(
            error_of(&body).contains(reason) || body.to_string().contains(reason),
            "{what}: {body}"
        );
    }
    let (code, body) = upload_counter(&api, Some(ADMIN), "no-such-stage", "1");
    assert_eq!(code, 404, "{body}");
    let (code, body) = upload_counter(&api, Some(ADMIN), stage, "bad version!");
    assert_eq!(code, 400, "{body}");
    // Nothing was stored by any of them.
    let (_, one) = get(&api, Some(READER), &format!("/v1/plugins/{stage}"));
    assert_eq!(one["versions"], json!([]), "{one}");
    assert!(!dir.path().join("registry").join("blobs").exists());

    // A good upload, the same again, other bytes under the same version.
    let (code, body) = upload_counter(&api, Some(ADMIN), stage, "2");
    assert_eq!(code, 201, "{body}");
    assert!(
        body["smoke"]["updates"].as_u64().unwrap() > 0,
        "smoke call ran on real events: {body}"
    );
    assert_eq!(upload_counter(&api, Some(ADMIN), stage, "2").0, 200);
    let (code, body) = upload(
        &api,
        Some(ADMIN),
        stage,
        "2",
        "feature",
        wasm("misbehave"),
        None,
    );
    assert_eq!(code, 409, "{body}");

    // Activation and rollback, and what they refuse.
    let activate = |body: Option<Value>| {
        post(
            &api,
            Some(ADMIN),
            &format!("/v1/plugins/{stage}/activate"),
            body,
        )
    };
    assert_eq!(activate(Some(json!({"version": "7"}))).0, 404);
    assert_eq!(activate(Some(json!({"versions": "2"}))).0, 400);
    assert_eq!(activate(None).0, 400);
    assert_eq!(
        post(
            &api,
            Some(READER),
            &format!("/v1/plugins/{stage}/activate"),
            Some(json!({"version": "2"}))
        )
        .0,
        403
    );
    let rollback = || {
        post(
            &api,
            Some(ADMIN),
            &format!("/v1/plugins/{stage}/rollback"),
            None,
        )
    };
    assert_eq!(rollback().0, 409, "nothing to roll back to yet");
    let (code, body) = activate(Some(json!({"version": "2"})));
    assert_eq!(code, 200, "{body}");
    assert!(
        body["boundary"]["records_before"].as_u64().unwrap() >= 2_000,
        "{body}"
    );
    assert_eq!(
        activate(Some(json!({"version": "2"}))).0,
        409,
        "already active"
    );
    let (_, one) = get(&api, Some(READER), &format!("/v1/plugins/{stage}"));
    assert_eq!(
        (one["version"].as_str(), one["source"].as_str()),
        (Some("2"), Some("registry")),
        "{one}"
    );
    // Two rollbacks at once: one goes back to the config's component, the
    // other is refused (nothing earlier is left), never both applied.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(rollback);
        let b = s.spawn(rollback);
        (a.join().unwrap(), b.join().unwrap())
    });
    let done: Vec<&Value> = [&a, &b]
        .into_iter()
        .filter(|(c, _)| *c == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(done.len(), 1, "exactly one rollback applied: {a:?} {b:?}");
    assert_eq!(done[0]["source"], "config");
    assert!([409, 422].contains(&a.0.max(b.0)), "{a:?} {b:?}");
    let (_, one) = get(&api, Some(READER), &format!("/v1/plugins/{stage}"));
    assert_eq!(one["history"], json!([]), "{one}");
    assert_eq!(rollback().0, 409);

    // Quotas: bad changes refused, a good one in force and shown.
    let quotas = format!("/v1/plugins/{stage}/quotas");
    assert_eq!(
        put_json(&api, Some(ADMIN), &quotas, json!({"fuel_per_call": 0})).0,
        400
    );
    assert_eq!(
        put_json(&api, Some(ADMIN), &quotas, json!({"bogus": 1})).0,
        400
    );
    assert_eq!(put_json(&api, Some(ADMIN), &quotas, json!([1])).0, 400);
    assert_eq!(
        put_json(
            &api,
            Some(READER),
            &quotas,
            json!({"max_output_records": 5000})
        )
        .0,
        403
    );
    let (code, body) = put_json(
        &api,
        Some(ADMIN),
        &quotas,
        json!({"wall_time_per_call": "2s", "max_output_records": 5000}),
    );
    assert_eq!(code, 200, "{body}");
    let (_, q) = get(&api, Some(READER), &quotas);
    assert_eq!(
        (
            q["wall_time_per_call"].as_str(),
            q["max_output_records"].as_u64()
        ),
        (Some("2s"), Some(5000)),
        "{q}"
    );
    assert_eq!(
        get(&api, Some(READER), "/v1/plugins/no-such-stage/quotas").0,
        404
    );

    // Every admin route the OpenAPI document names is served (and guarded).
    let (_, doc) = get(&api, None, "/v1/openapi.json");
    let mut admin_routes = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !op["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&"admin".into()))
            {
                continue;
            }
            admin_routes += 1;
            let uri = path.replace("{name}", stage).replace("{version}", "1");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (code, body) = answer(with(None, http().request(m, format!("http://{api}{uri}"))));
            assert_eq!(code, 401, "{method} {path}: {body}");
        }
    }
    assert_eq!(admin_routes, 11);

    // The pipeline, without credentials.
    let (code, p) = get(&api, Some(READER), "/v1/pipeline");
    assert_eq!(code, 200);
    assert_eq!(p["source"]["type"], "kafka");
    assert_eq!(p["features"][0]["name"], stage);
    assert!(!p.to_string().contains("bootstrap"), "{p}");

    // The CLI calls the same API.
    let cli = |token: Option<&str>, args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
        c.arg("plugin").arg("--api").arg(format!("http://{api}"));
        if let Some(t) = token {
            c.arg("--token").arg(t);
        }
        c.env_remove("TESSERA_TOKEN").args(args).output().unwrap()
    };
    let out = cli(Some(READER), &["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["plugins"][1]["versions"][0]["version"], "2");
    let out = cli(
        None,
        &[
            "upload",
            stage,
            "3",
            support::plugin("windowed_counter").to_str().unwrap(),
            "--world",
            "feature",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        Some(ADMIN),
        &["quota", stage, "--set", "max_output_records=6000"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, q) = get(&api, Some(READER), &quotas);
    assert_eq!(q["max_output_records"], 6000);

    // A restarted host comes back with the versions and quotas it had.
    assert_eq!(activate(Some(json!({"version": "2"}))).0, 200);
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "{}", log_tail(&cfg, 20));
    let host = serving_host(&cfg);
    support::wait_until(
        Duration::from_secs(60),
        "the restarted host to show its stages",
        || {
            support::http_get(&api, "/v1/status").is_some()
                && get(&api, Some(READER), &format!("/v1/plugins/{stage}")).0 == 200
        },
    );
    let (_, one) = get(&api, Some(READER), &format!("/v1/plugins/{stage}"));
    assert_eq!(
        (one["version"].as_str(), one["source"].as_str()),
        (Some("2"), Some("registry")),
        "{one}"
    );
    assert_eq!(one["quotas"]["max_output_records"], 6000, "{one}");
    assert_eq!(one["history"], json!([null]), "{one}");
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "{}", log_tail(&cfg, 20));
}

/// While records stream in, the feature plugin's output limit drops to one
/// update per call. From the boundary the API reports on, every record
/// fails that quota and goes to the dead letter with the reason; none
/// before it does. The plugin's use shows the quota hits.
#[test]
fn a_quota_change_under_load_takes_effect_at_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "admin-quota-under-load";
    support::kafka_topic(topic, crate::kafka::PARTITIONS);
    let events = support::events(47, 12_000, 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    // Failing calls must not quarantine the plugin here.
    let features = format!(
        "{}\nquarantine = {{ after_consecutive_failures = 1000000000 }}",
        support::COUNTER_FEATURES
    );
    let (host, api, cfg) = admin_host(dir.path(), topic, &features);
    let stage = "windowed-counter";
    let producer = produce_in_chunks(topic, msgs.clone(), 500, Duration::from_millis(50));
    wait_for_records(&api, 3_000);
    let (_, before) = get(&api, Some(READER), &format!("/v1/plugins/{stage}"));
    assert_eq!(before["use"]["quota_hits"], 0, "{before}");
    let (code, changed) = put_json(
        &api,
        Some(ADMIN),
        &format!("/v1/plugins/{stage}/quotas"),
        json!({"max_output_records": 1}),
    );
    assert_eq!(code, 200, "{changed}");
    let b = boundary(&changed, topic);
    producer.join().unwrap();
    wait_for_records(&api, events.len() as u64);
    let (_, after) = get(&api, Some(READER), &format!("/v1/plugins/{stage}"));
    // The same, per plugin and version, on /metrics (set about twice a second).
    let metric = |text: &str, name: &str, labels: &[&str]| -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .reduce(f64::max)
    };
    let ours = "plugin=\"windowed-counter\"";
    let mut text = String::new();
    support::wait_until(
        Duration::from_secs(10),
        "the plugin metrics to show the quota hits",
        || {
            text = support::http_get(&api, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            metric(
                &text,
                "tessera_plugin_errors_total",
                &[ours, "kind=\"output_too_large\""],
            )
            .unwrap_or(0.0)
                > 0.0
        },
    );
    assert!(
        metric(&text, "tessera_plugin_calls_total", &[ours]).unwrap_or(0.0) > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, "tessera_plugin_quota_hits_total", &[ours]).unwrap_or(0.0) > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, "tessera_plugin_dead_letters_total", &[ours]).unwrap_or(0.0) > 1_000.0,
        "{text}"
    );
    assert!(
        metric(&text, "tessera_plugin_call_seconds_bucket", &[ours]).is_some(),
        "{text}"
    );
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "{}", log_tail(&cfg, 20));
    assert!(after["use"]["quota_hits"].as_u64().unwrap() > 0, "{after}");

    // Every record from the boundary on is dead-lettered for the quota;
    // every record before it is not.
    let dead: BTreeMap<(i32, i64), String> =
        support::read_ndjson(&dir.path().join("dead-letter.ndjson"))
            .into_iter()
            .map(|d| {
                let key = (
                    d["partition"].as_i64().unwrap() as i32,
                    d["offset"].as_i64().unwrap(),
                );
                (key, d["reason"].as_str().unwrap().to_string())
            })
            .collect();
    let (mut before_n, mut after_n) = (0, 0);
    for (p, offset) in offsets(&msgs) {
        let after_boundary = offset >= b.get(&p).copied().unwrap_or(0);
        match dead.get(&(p, offset)) {
            Some(reason) => {
                assert!(
                    after_boundary,
                    "{p}@{offset} dead-lettered before the change: {reason}"
                );
                assert!(
                    reason.contains("over its limit of 1"),
                    "{p}@{offset}: {reason}"
                );
                after_n += 1;
            }
            None => {
                assert!(
                    !after_boundary,
                    "{p}@{offset} after the change was not refused"
                );
                before_n += 1;
            }
        }
    }
    assert!(
        before_n >= 3_000 && after_n > 1_000,
        "before {before_n}, after {after_n}"
    );
}

/// With `admin.listen`, the admin routes answer there only, and serving,
/// status and metrics only on `api.listen`.
#[test]
fn the_admin_api_can_have_a_listener_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "admin-own-listener";
    support::kafka_topic(topic, 1);
    let admin = format!("127.0.0.1:{}", support::free_port());
    let (host, api, cfg) = admin_host_with(
        dir.path(),
        topic,
        support::COUNTER_FEATURES,
        &format!("listen = \"{admin}\""),
    );
    support::wait_until(
        Duration::from_secs(30),
        "the admin listener to answer",
        || std::net::TcpStream::connect(&admin).is_ok(),
    );
    let (code, list) = get(&admin, Some(READER), "/v1/plugins");
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["plugins"].as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(get(&admin, None, "/v1/plugins").0, 401);
    assert_eq!(
        get(&api, Some(READER), "/v1/plugins").0,
        404,
        "not on the serving listener"
    );
    assert_eq!(
        get(&admin, None, "/v1/status").0,
        404,
        "serving is not on the admin listener"
    );
    assert_eq!(get(&api, None, "/v1/status").0, 200);
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "{}", log_tail(&cfg, 20));
}

/// Which version processed a record: before the first boundary v1, then v2
/// until the second, then v1 again (the rollback).
fn version_of(partition: i32, offset: i64, b1: &BTreeMap<i32, i64>, b2: &BTreeMap<i32, i64>) -> u8 {
    let before = |b: &BTreeMap<i32, i64>| offset < b.get(&partition).copied().unwrap_or(0);
    if before(b1) || !before(b2) {
        1
    } else {
        2
    }
}

/// Boundary positions of an activation answer, by partition.
fn boundary(answer: &Value, topic: &str) -> BTreeMap<i32, i64> {
    let prefix = format!("kafka:{topic}:");
    answer["boundary"]["positions"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.parse().ok()?, v.as_i64()?)))
        .collect()
}

/// Events stream in while v2 (the same component, another config: a new
/// feature with another filter) is activated and later rolled back. Every
/// view and like lands in exactly one version's feature, decided by the
/// boundaries the API reported; both features' tiles equal the oracle.
#[test]
fn hot_reload_mid_stream_counts_every_event_by_exactly_one_version() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "admin-hot-reload";
    support::kafka_topic(topic, crate::kafka::PARTITIONS);
    let events = support::events(43, 40_000, 2 * 3_600_000, 1_000, None);
    let (msgs, _) = messages(&events, None);
    let v1 = r#"{ features = [{ name = "views_v1", entity = "post_id", event_types = ["view"], tiles = ["1m"] }] }"#;
    let v2 = r#"{"features": [{"name": "engaged_v2", "entity": "post_id", "event_types": ["view", "like"], "tiles": ["1m"]}]}"#;
    let (host, api, cfg) = admin_host(dir.path(), topic, v1);
    let stage = "windowed-counter";
    let (code, body) = upload(
        &api,
        Some(ADMIN),
        stage,
        "2",
        "feature",
        wasm("windowed_counter"),
        Some(v2),
    );
    assert_eq!(code, 201, "{body}");
    // Produced in chunks while the swaps happen.
    let producer = produce_in_chunks(topic, msgs.clone(), 1_000, Duration::from_millis(100));
    wait_for_records(&api, 8_000);
    let (code, activated) = post(
        &api,
        Some(ADMIN),
        &format!("/v1/plugins/{stage}/activate"),
        Some(json!({"version": "2"})),
    );
    assert_eq!(code, 200, "{activated}");
    let b1 = boundary(&activated, topic);
    let before = activated["boundary"]["records_before"].as_u64().unwrap();
    wait_for_records(&api, before + 10_000);
    let (code, rolled) = post(
        &api,
        Some(ADMIN),
        &format!("/v1/plugins/{stage}/rollback"),
        None,
    );
    assert_eq!(code, 200, "{rolled}");
    let b2 = boundary(&rolled, topic);
    producer.join().unwrap();
    wait_for_records(&api, events.len() as u64);
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "{}", log_tail(&cfg, 20));

    // The oracle: each record's version from its partition and offset.
    let mut by_version: HashMap<(&str, String, i64), u64> = HashMap::new();
    let mut counted = [0u64; 3];
    for (e, (p, offset)) in events.iter().zip(offsets(&msgs)) {
        let v = version_of(p, offset, &b1, &b2);
        counted[v as usize] += 1;
        let feature = match (v, e.ty) {
            (1, "view") => "views_v1",
            (2, "view" | "like") => "engaged_v2",
            _ => continue,
        };
        *by_version
            .entry((feature, e.post.clone(), e.ts - e.ts.rem_euclid(60_000)))
            .or_default() += 1;
    }
    assert!(
        counted[1] > 1_000 && counted[2] > 1_000,
        "both versions saw a share of the stream: {counted:?} (boundaries {b1:?} {b2:?})"
    );
    let config = tessera::Config::load(&cfg).unwrap();
    let store = tessera::stores::open(&config.store).unwrap();
    let features = store.features().unwrap();
    for name in ["views_v1", "engaged_v2"] {
        let f = features
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} registered"));
        for post in 0..40 {
            let entity = format!("post-{post}");
            let tiles = store
                .read_tiles(
                    f.id,
                    entity.as_bytes(),
                    60_000,
                    support::T0 - 86_400_000,
                    support::T0 + 86_400_000,
                )
                .unwrap();
            let got: BTreeMap<i64, u64> = tiles
                .iter()
                .map(|(start, agg)| (*start, agg.count))
                .collect();
            let want: BTreeMap<i64, u64> = by_version
                .iter()
                .filter(|((feat, e, _), _)| *feat == name && *e == entity)
                .map(|((_, _, start), n)| (*start, *n))
                .collect();
            assert_eq!(got, want, "{name} of {entity}");
        }
    }
}
