//! Misbehaving plugins are stopped and contained: the poison records go to
//! the dead letter with the reason, everything else is processed, and other
//! plugins are unaffected.

use tessera::api::query;
use tessera::config::RuntimeConfig;
use tessera::plugin::{PluginError, PluginRuntime, PluginSource};
use tessera::PipelineError;

use crate::support::{self, Event, T0};

fn misbehave_section(config: &str, quarantine: &str) -> String {
    format!(
        r#"
[[features]]
name = "misbehave"
path = "{}"
config = {config}
quotas = {{ max_memory_bytes = 16777216, fuel_per_call = 200000000, wall_time_per_call = "300ms", max_output_records = 100000 }}
quarantine = {quarantine}
"#,
        support::plugin("misbehave").display()
    )
}

const POISON: [(&str, &str); 6] = [
    ("loop", "exceeded its"),
    ("bomb", "memory limit"),
    ("trap", "trap on purpose"),
    ("flood", "over its limit"),
    ("garbage", "malformed output"),
    ("fail", "refused event"),
];

#[test]
fn poison_events_are_dead_lettered_with_reasons_and_the_rest_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = support::events(21, 3_000, 3_600_000, 1_000, None);
    // Two of each kind of poison, spread over the batches.
    for (k, (ty, _)) in POISON.iter().enumerate() {
        for j in 0..2 {
            events[100 + k * 400 + j * 37].ty = ty;
        }
    }
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let cfg = support::config(
        dir.path(),
        &input,
        "",
        &(misbehave_section("{}", "{ after_consecutive_failures = 50 }")
            + "[watermark]\nout_of_orderness = \"1h\""),
    );
    let (store, mut p) = support::build(&cfg);
    let stats = p.run(&mut |_| {}).unwrap();
    assert_eq!(stats.records_in, 3_000);

    let dead = support::read_ndjson(&dir.path().join("dead-letter.ndjson"));
    assert_eq!(dead.len(), 12, "{dead:#?}");
    assert_eq!(stats.dead_lettered, 12);
    for (ty, reason) in POISON {
        let rows: Vec<_> = dead
            .iter()
            .filter(|d| {
                d["payload"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("\"type\":\"{ty}\""))
            })
            .collect();
        assert_eq!(rows.len(), 2, "{ty}: {dead:#?}");
        for r in rows {
            assert_eq!(r["stage"], "feature");
            assert_eq!(r["plugin"], "misbehave");
            assert!(r["plugin_version"].as_str().is_some_and(|v| v.len() == 12));
            assert!(
                r["reason"].as_str().unwrap().contains(reason),
                "{ty}: {}",
                r["reason"]
            );
        }
    }
    let health = p.plugin_health();
    let (_, mis) = health.iter().find(|(m, _)| m.name == "misbehave").unwrap();
    assert!(!mis.quarantined && mis.failures >= 12);

    // The well-behaved plugin saw every event, poison ones included.
    crate::windows::check_windows(store.as_ref(), &events, 3, 200);
    // The misbehaving plugin counted exactly the events it did not choke on.
    let clean: Vec<Event> = events
        .iter()
        .filter(|e| !POISON.iter().any(|(t, _)| *t == e.ty))
        .cloned()
        .collect();
    let f = store.feature("misbehave_count").unwrap().unwrap();
    for post in 0..40 {
        let entity = format!("post-{post}");
        let a = query::answer(
            store.as_ref(),
            &f,
            &entity,
            3 * 3_600_000,
            T0 + 2 * 3_600_000,
        )
        .unwrap();
        let want = clean.iter().filter(|e| e.post == entity).count() as u64;
        assert_eq!(a.count, want, "{entity}");
    }
}

#[test]
fn a_plugin_that_always_fails_is_quarantined_and_halts_without_committing() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(5, 2_000, 3_600_000, 1_000, None);
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let cfg = support::config(
        dir.path(),
        &input,
        "",
        &misbehave_section(
            r#"{ always = "trap" }"#,
            r#"{ after_consecutive_failures = 3, action = "halt" }"#,
        ),
    );
    let (store, mut p) = support::build(&cfg);
    match p.run(&mut |_| {}) {
        Err(PipelineError::Quarantined {
            plugin,
            failures,
            last,
        }) => {
            assert_eq!(plugin, "misbehave");
            assert_eq!(failures, 3);
            assert!(last.contains("trap"), "{last}");
        }
        other => panic!("expected a quarantine halt, got {other:?}"),
    }
    // Nothing after the last checkpoint (here: nothing at all) was committed.
    assert_eq!(
        store
            .position("test", &format!("file:{}", input.display()))
            .unwrap(),
        None
    );
    let f = store.feature("likes_per_post").unwrap().unwrap();
    assert_eq!(
        query::answer(store.as_ref(), &f, "post-1", 86_400_000, T0 + 3_600_000)
            .unwrap()
            .count,
        0
    );
}

#[test]
fn quarantine_with_dead_letter_action_keeps_the_pipeline_running() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(6, 2_000, 3_600_000, 1_000, None);
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let cfg = support::config(
        dir.path(),
        &input,
        "",
        &(misbehave_section(
            r#"{ always = "fail" }"#,
            r#"{ after_consecutive_failures = 2, action = "dead_letter" }"#,
        ) + "[watermark]\nout_of_orderness = \"1h\""),
    );
    let (store, mut p) = support::build(&cfg);
    let stats = p.run(&mut |_| {}).unwrap();
    // Every event reached the dead letter once, for the misbehaving plugin.
    assert_eq!(stats.dead_lettered, 2_000);
    let dead = support::read_ndjson(&dir.path().join("dead-letter.ndjson"));
    assert_eq!(dead.len(), 2_000);
    let mut offsets: Vec<i64> = dead.iter().map(|d| d["offset"].as_i64().unwrap()).collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), 2_000);
    assert!(dead
        .iter()
        .skip(10)
        .all(|d| d["reason"].as_str().unwrap().contains("quarantined")));
    crate::windows::check_windows(store.as_ref(), &events, 9, 100);
}

/// With `runtime.cache_dir`, a plugin is compiled once: the next runtime
/// loads the compiled file (not rewritten), a cache file that is garbage
/// is compiled again and replaced, and other engine settings get a file of
/// their own.
#[test]
fn compiled_plugins_are_cached_and_a_bad_cache_file_is_compiled_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let settings = RuntimeConfig {
        cache_dir: Some(cache.clone()),
        ..RuntimeConfig::default()
    };
    let src = PluginSource {
        name: "parser".into(),
        version: None,
        bytes: std::fs::read(support::plugin("json_parser")).unwrap(),
        config_json: "{}".into(),
        quotas: Default::default(),
        quarantine: Default::default(),
    };
    let files = || -> Vec<std::path::PathBuf> {
        let mut f: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f
    };
    let load = |settings: &RuntimeConfig| {
        let rt = PluginRuntime::new(settings).unwrap();
        rt.load_parser(&src).map(|_| ()).unwrap();
    };
    load(&settings);
    let first = files();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].extension().is_some_and(|e| e == "cwasm"));
    let modified = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let written_at = modified(&first[0]);
    load(&settings);
    assert_eq!(files(), first);
    assert_eq!(
        modified(&first[0]),
        written_at,
        "loaded, not compiled again"
    );
    std::fs::write(&first[0], b"not a compiled component").unwrap();
    load(&settings);
    assert_eq!(files(), first);
    assert!(
        std::fs::metadata(&first[0]).unwrap().len() > 1_000,
        "replaced"
    );
    load(&settings);
    let other = RuntimeConfig {
        fuel: false,
        ..settings.clone()
    };
    load(&other);
    assert_eq!(files().len(), 2, "other engine settings, another file");
}

#[test]
fn bad_components_are_rejected_at_load_with_a_reason() {
    let rt = PluginRuntime::new(&RuntimeConfig::default()).unwrap();
    let src = |bytes: Vec<u8>, config: &str| PluginSource {
        name: "x".into(),
        version: None,
        bytes,
        config_json: config.into(),
        quotas: Default::default(),
        quarantine: Default::default(),
    };
    let garbage = rt
        .load_feature(&src(b"definitely not wasm".to_vec(), "{}"))
        .err()
        .unwrap();
    assert!(
        matches!(garbage, PluginError::NotAComponent(_)),
        "{garbage}"
    );
    let core = rt
        .load_feature(&src(b"\0asm\x01\0\0\0".to_vec(), "{}"))
        .err()
        .unwrap();
    assert!(
        matches!(&core, PluginError::NotAComponent(m) if m.contains("core WebAssembly module")),
        "{core}"
    );
    let parser = std::fs::read(support::plugin("json_parser")).unwrap();
    let wrong = rt.load_feature(&src(parser.clone(), "{}")).err().unwrap();
    assert!(
        matches!(&wrong, PluginError::WrongWorld { world, .. } if world.contains("feature-plugin")),
        "{wrong}"
    );
    let bad_config = rt
        .load_parser(&src(parser, r#"{"time_format": "weird"}"#))
        .err()
        .unwrap();
    assert!(
        matches!(&bad_config, PluginError::Init(m) if m.contains("weird")),
        "{bad_config}"
    );
    let misbehave = std::fs::read(support::plugin("misbehave")).unwrap();
    let init = rt
        .load_feature(&src(misbehave.clone(), "fail-init"))
        .err()
        .unwrap();
    assert_eq!(init, PluginError::Init("init refused on purpose".into()));
    let ok = rt.load_feature(&src(misbehave, "{}")).unwrap();
    assert_eq!(ok.specs()[0].name, "misbehave_count");
    assert_eq!(ok.meta().version.len(), 12);
    // The README's 25-line example plugin is a working component too.
    let likes = rt
        .load_feature(&src(
            std::fs::read(support::plugin("likes_counter")).unwrap(),
            "",
        ))
        .unwrap();
    assert_eq!(likes.specs()[0].tile_sizes_secs, vec![60, 1800, 86400]);
}

#[test]
fn plugin_log_lines_reach_the_host_log_with_the_plugin_name() {
    let log = support::captured_log();
    let dir = tempfile::tempdir().unwrap();
    let mut events = support::events(8, 300, 600_000, 100, None);
    events[7].ty = "log";
    events[200].ty = "trap";
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let cfg = support::config(dir.path(), &input, "", &misbehave_section("{}", "{}"));
    let (_, mut p) = support::build(&cfg);
    p.run(&mut |_| {}).unwrap();
    let log = log.text();
    let line = log
        .lines()
        .find(|l| l.contains("hello from row 7"))
        .unwrap_or_else(|| panic!("no plugin log line in:\n{log}"));
    assert!(line.contains("plugin=\"misbehave\""), "{line}");
    // The panic message the guest printed on stderr is logged too.
    assert!(
        log.lines()
            .any(|l| l.contains("trap on purpose at row 200") && l.contains("stderr")),
        "{log}"
    );
}
