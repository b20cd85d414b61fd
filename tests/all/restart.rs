//! Crash safety: the `tessera` binary killed with SIGKILL mid-run and started
//! again ends with exactly the tiles (and dead letters) of one clean run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tessera::stores;
use tessera::Config;

use crate::support;

#[test]
fn kill_dash_nine_and_restart_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = support::embedded_store(dir.path());
    kill_and_restart(dir, &store);
}

/// The same with the CQL store (Cassandra; also ScyllaDB at `SCYLLA_URI`),
/// whose job cache is held to 64 tiles so that most merges read through.
#[test]
fn kill_dash_nine_with_the_cql_store_loses_nothing_and_counts_nothing_twice() {
    for server in crate::servers::cql_servers() {
        let dir = tempfile::tempdir().unwrap();
        kill_and_restart(dir, &server.store_section("restart"));
    }
}

fn kill_and_restart(dir: tempfile::TempDir, store_section: &str) {
    let mut events = support::events(41, 120_000, 3 * 3_600_000, 1_000, None);
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    // A malformed line every 5,000 records: the dead letter must hold each once.
    let mut text = std::fs::read_to_string(&input).unwrap();
    text = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i % 5_000 == 4_999 {
                "{broken\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let broken: Vec<usize> = (0..events.len()).filter(|i| i % 5_000 == 4_999).collect();
    for i in broken.iter().rev() {
        events.remove(*i);
    }
    let cfg_path = dir.path().join("tessera.toml");
    let cfg = support::config_with_store(
        dir.path(),
        &input,
        "checkpoint_events = 4000\ncheckpoint_interval = \"50ms\"",
        "[watermark]\nout_of_orderness = \"1h\"",
        store_section,
    );
    std::fs::write(&cfg_path, &cfg).unwrap();

    let bin = env!("CARGO_BIN_EXE_tessera");
    let mut kills = 0;
    let mut runs = Vec::new();
    // Kill the first two runs part-way, then let one finish.
    for attempt in 0..3 {
        let mut child = Command::new(bin)
            .args(["run", "--json", "--config"])
            .arg(&cfg_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if attempt < 2 {
            let started = Instant::now();
            // Wait until records flow (the first bad line reached the dead
            // letter), let a few checkpoints pass, then SIGKILL.
            let dead_letter = dir.path().join("dead-letter.ndjson");
            let seen = std::fs::metadata(&dead_letter)
                .map(|m| m.len())
                .unwrap_or(0);
            while std::fs::metadata(&dead_letter)
                .map(|m| m.len())
                .unwrap_or(0)
                <= seen
                && child.try_wait().unwrap().is_none()
                && started.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(150 + 100 * attempt));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
            let status = child.wait().unwrap();
            assert!(started.elapsed() < Duration::from_secs(60));
            if status.success() {
                break;
            }
            continue;
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        runs.push(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
    }
    assert!(
        kills >= 1,
        "the input must be large enough for a run to be killed mid-way"
    );
    if let Some(last) = runs.last() {
        let resumed = last["records_in"].as_u64().unwrap();
        assert!(
            resumed < 120_000,
            "the last run must resume, not start over ({resumed} records)"
        );
    }

    let cfg = Config::load(&cfg_path).unwrap();
    let store = stores::open(&cfg.store).unwrap();
    crate::windows::check_windows(store.as_ref(), &events, 43, 400);
    let dead = support::read_ndjson(&dir.path().join("dead-letter.ndjson"));
    let mut offsets: Vec<i64> = dead.iter().map(|d| d["offset"].as_i64().unwrap()).collect();
    offsets.sort();
    assert_eq!(
        offsets,
        broken.iter().map(|i| *i as i64 + 1).collect::<Vec<_>>(),
        "each bad line dead-lettered exactly once"
    );
}
