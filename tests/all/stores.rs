//! One conformance suite for every tile store: the embedded store, Apache
//! Cassandra (the CQL stand-in for ScyllaDB, started by the test run) and,
//! when `SCYLLA_URI` is set, that ScyllaDB. Each check compares what the
//! store answers with a brute-force fold of the updates that were committed.
//! Then the CQL store's own promises: a checkpoint logged but not applied
//! (a crash at the commit point) is applied exactly once by whoever reads
//! next, an apply that fails is finished by the retry (not committed twice),
//! a node that loses acknowledged writes is caught, a second writer over the
//! same positions is fenced, tiles expire with their feature's retention,
//! and a store down mid-run loses nothing.

use std::sync::Arc;

use tessera::api::query;
use tessera::config::StoreConfig;
use tessera::stores::{self, Checkpoint, ScyllaStore, StoreError, StoredFeature, TileStore};
use tessera::window::{TileAgg, TileDeltas};

use crate::servers;
use crate::support::Rng;

/// A store under test, with what keeps it alive.
struct Subject {
    name: String,
    store: Arc<dyn TileStore>,
    /// Opens the same store again (a restarted host).
    reopen: Box<dyn Fn() -> Arc<dyn TileStore>>,
    _dir: tempfile::TempDir,
}

impl Subject {
    /// The store closed and opened again, as by a restarted host.
    fn restarted(self) -> (String, Arc<dyn TileStore>, tempfile::TempDir) {
        drop(self.store);
        (self.name, (self.reopen)(), self._dir)
    }
}

fn parse_store(section: &str) -> StoreConfig {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        store: StoreConfig,
    }
    toml::from_str::<Wrapper>(section).unwrap().store
}

fn subjects(stem: &str) -> Vec<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let embedded = StoreConfig::Embedded {
        path: dir.path().join("tiles.redb"),
    };
    let mut out = vec![Subject {
        name: "embedded".into(),
        store: stores::open(&embedded).unwrap(),
        reopen: Box::new(move || stores::open(&embedded).unwrap()),
        _dir: dir,
    }];
    for server in servers::cql_servers() {
        let cfg = parse_store(&server.store_section(stem));
        out.push(Subject {
            name: server.name.to_string(),
            store: stores::open(&cfg).unwrap(),
            reopen: Box::new(move || stores::open(&cfg).unwrap()),
            _dir: tempfile::tempdir().unwrap(),
        });
    }
    out
}

fn feature(name: &str, entity_field: &str, sizes: &[u32], retention_secs: u64) -> StoredFeature {
    StoredFeature {
        id: 0,
        name: name.into(),
        plugin: "test".into(),
        entity_field: entity_field.into(),
        aggregation: "sum".into(),
        tile_sizes_secs: sizes.to_vec(),
        retention_secs,
        windows_secs: vec![3600],
    }
}

#[test]
fn features_register_with_stable_ids_and_breaking_changes_are_refused() {
    for s in subjects("features") {
        let store = s.store.as_ref();
        let a = feature("clicks", "user", &[60, 3600], 86_400);
        let b = feature("views", "post", &[60], 86_400);
        let ids = store.register_features(&[a.clone(), b.clone()]).unwrap();
        assert_ne!(ids[0], ids[1], "{}", s.name);
        let again = store.register_features(&[b.clone(), a.clone()]).unwrap();
        assert_eq!(again, vec![ids[1], ids[0]], "{}: ids follow names", s.name);
        let mut widened = a.clone();
        widened.windows_secs = vec![3600, 7200];
        assert_eq!(
            store.register_features(&[widened]).unwrap(),
            vec![ids[0]],
            "{}",
            s.name
        );
        let stored = store.feature("clicks").unwrap().unwrap();
        assert_eq!(
            (stored.id, stored.windows_secs.clone()),
            (ids[0], vec![3600, 7200]),
            "{}",
            s.name
        );
        assert!(store.feature("nothing").unwrap().is_none(), "{}", s.name);
        let mut names: Vec<String> = store
            .features()
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        names.sort();
        assert_eq!(names, ["clicks", "views"], "{}", s.name);
        let mut other_entity = a.clone();
        other_entity.entity_field = "post".into();
        let err = store.register_features(&[other_entity]).unwrap_err();
        assert!(
            matches!(err, StoreError::FeatureConflict { .. }),
            "{}: {err}",
            s.name
        );
        let (name, reopened, _dir) = s.restarted();
        assert_eq!(
            reopened.register_features(&[a]).unwrap(),
            vec![ids[0]],
            "{name}"
        );
    }
}

/// One committed update, as the oracle sees it.
#[derive(Clone)]
struct Update {
    entity: String,
    time: i64,
    value: f64,
}

const SIZES_MS: [i64; 3] = [60_000, 3_600_000, 86_400_000];
const T0: i64 = 1_700_000_000_000 / 86_400_000 * 86_400_000;

/// 400 random updates over three days for 12 entities as one checkpoint
/// (every update into its tile of each size) that puts `file:input` at
/// `n + 1` and the dead letter at `n * 10`.
fn random_checkpoint(feature_id: u32, rng: &mut Rng, n: u64) -> (Checkpoint, Vec<Update>) {
    let mut deltas: Vec<(u32, Vec<u8>, i64, i64, TileAgg)> = Vec::new();
    let mut updates = Vec::new();
    for _ in 0..400 {
        let u = Update {
            entity: format!("e{}", rng.below(12)),
            time: T0 + rng.below(3 * 86_400_000) as i64,
            value: (rng.below(2000) as f64 - 1000.0) / 8.0,
        };
        for size in SIZES_MS {
            let start = u.time.div_euclid(size) * size;
            deltas.push((
                feature_id,
                u.entity.clone().into_bytes(),
                size,
                start,
                TileAgg::of(u.value, u.time),
            ));
        }
        updates.push(u);
    }
    let checkpoint = Checkpoint {
        pipeline: "conformance".into(),
        instance: String::new(),
        deltas: TileDeltas::from_unsorted(deltas),
        positions: vec![
            ("file:input".into(), (n + 1).to_be_bytes().to_vec()),
            ("dead-letter".into(), (n * 10).to_be_bytes().to_vec()),
        ],
    };
    (checkpoint, updates)
}

/// Commits `checkpoints` random checkpoints (numbered from 0); their updates.
fn commit_updates(
    store: &dyn TileStore,
    feature_id: u32,
    seed: u64,
    checkpoints: u64,
) -> Vec<Update> {
    let mut rng = Rng(seed);
    let mut all = Vec::new();
    for n in 0..checkpoints {
        let (checkpoint, mut updates) = random_checkpoint(feature_id, &mut rng, n);
        store.commit(&checkpoint).unwrap();
        all.append(&mut updates);
    }
    all
}

fn oracle(updates: &[Update], entity: &str, start: i64, end: i64) -> TileAgg {
    let mut agg = TileAgg::EMPTY;
    for u in updates {
        if u.entity == entity && u.time >= start && u.time < end {
            agg.merge(&TileAgg::of(u.value, u.time));
        }
    }
    agg
}

fn close(a: &TileAgg, b: &TileAgg) -> bool {
    a.count == b.count
        && (a.sum - b.sum).abs() < 1e-6
        && (a.count == 0 || (a.min == b.min && a.max == b.max && a.last_time == b.last_time))
}

fn check_tiles_and_windows(
    name: &str,
    store: &dyn TileStore,
    f: &StoredFeature,
    updates: &[Update],
    seed: u64,
) {
    // Every tile of every size equals the fold of its updates.
    for e in 0..12 {
        let entity = format!("e{e}");
        for size in SIZES_MS {
            let tiles = store
                .read_tiles(
                    f.id,
                    entity.as_bytes(),
                    size,
                    T0 - size,
                    T0 + 4 * 86_400_000,
                )
                .unwrap();
            let mut expected = Vec::new();
            let mut start = T0;
            while start < T0 + 3 * 86_400_000 {
                let o = oracle(updates, &entity, start, start + size);
                if o.count > 0 {
                    expected.push((start, o));
                }
                start += size;
            }
            assert_eq!(tiles.len(), expected.len(), "{name}: {entity} size {size}");
            for ((s1, a), (s2, b)) in tiles.iter().zip(&expected) {
                assert!(
                    s1 == s2 && close(a, b),
                    "{name}: {entity} tile {s1}: {a:?} vs {b:?}"
                );
            }
        }
    }
    // Windows covered by tiles of several sizes equal the brute force over
    // the covered interval.
    let mut rng = Rng(seed);
    for _ in 0..60 {
        let entity = format!("e{}", rng.below(12));
        let window = [
            3_600_000,
            7 * 3_600_000 + 60_000,
            86_400_000,
            2 * 86_400_000 + 5 * 60_000,
        ][rng.below(4) as usize];
        let at = T0 + rng.below(4 * 86_400_000) as i64;
        let a = query::answer(store, f, &entity, window, at).unwrap();
        let o = oracle(updates, &entity, a.covered_start_ms, a.covered_end_ms);
        assert_eq!(a.count, o.count, "{name}: {entity} {window} at {at}");
        assert!(
            (a.value.unwrap() - o.sum).abs() < 1e-6,
            "{name}: {a:?} vs {o:?}"
        );
    }
}

#[test]
fn committed_deltas_read_back_as_brute_force_says_and_survive_a_reopen() {
    for s in subjects("tiles") {
        let store = s.store.as_ref();
        let ids = store
            .register_features(&[feature("sum", "user", &[60, 3600, 86_400], 30 * 86_400)])
            .unwrap();
        let f = store.feature("sum").unwrap().unwrap();
        assert_eq!(f.id, ids[0]);
        let updates = commit_updates(store, f.id, 7, 5);
        check_tiles_and_windows(&s.name, store, &f, &updates, 11);
        assert_eq!(
            store.position("conformance", "file:input").unwrap(),
            Some(5u64.to_be_bytes().to_vec()),
            "{}",
            s.name
        );
        assert_eq!(
            store.position("conformance", "dead-letter").unwrap(),
            Some(40u64.to_be_bytes().to_vec()),
            "{}",
            s.name
        );
        assert_eq!(
            store.position("conformance", "nothing").unwrap(),
            None,
            "{}",
            s.name
        );
        assert_eq!(
            store.position("other-pipeline", "file:input").unwrap(),
            None,
            "{}",
            s.name
        );
        let (name, reopened, _dir) = s.restarted();
        check_tiles_and_windows(&name, reopened.as_ref(), &f, &updates, 12);
        assert_eq!(
            reopened.position("conformance", "file:input").unwrap(),
            Some(5u64.to_be_bytes().to_vec())
        );
        // More checkpoints through the reopened store merge with what is there.
        let mut more = commit_updates(reopened.as_ref(), f.id, 8, 2);
        let mut all = updates;
        all.append(&mut more);
        check_tiles_and_windows(&name, reopened.as_ref(), &f, &all, 13);
    }
}

/// The keyspace a `[store]` section names.
fn keyspace_of(section: &str) -> String {
    section
        .lines()
        .find_map(|l| l.strip_prefix("keyspace = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string()
}

fn open_cql(section: &str) -> Arc<ScyllaStore> {
    match parse_store(section) {
        StoreConfig::Scylla(c) => Arc::new(ScyllaStore::open(&c).unwrap()),
        other => panic!("not a CQL store: {other:?}"),
    }
}

#[test]
fn a_checkpoint_logged_but_not_applied_is_applied_once_by_the_next_reader() {
    for server in servers::cql_servers() {
        let section = server.store_section("crash");
        let crashed = open_cql(&section);
        let id = crashed
            .register_features(&[feature("sum", "user", &[60, 3600, 86_400], 30 * 86_400)])
            .unwrap()[0];
        let first = commit_updates(crashed.as_ref(), id, 21, 2);
        // The third checkpoint reaches the commit point, then the host dies.
        let (third, mut rng_updates) = random_checkpoint(id, &mut Rng(99), 2);
        crashed.commit_log_only(&third).unwrap();
        drop(crashed);
        // Two hosts start at once and both find the unapplied entry.
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let section = section.clone();
                std::thread::spawn(move || {
                    let s = open_cql(&section);
                    let p = s.position("conformance", "file:input").unwrap();
                    (s, p)
                })
            })
            .collect();
        let opened: Vec<_> = readers.into_iter().map(|t| t.join().unwrap()).collect();
        for (_, p) in &opened {
            assert_eq!(
                p.as_deref(),
                Some(&3u64.to_be_bytes()[..]),
                "{}",
                server.name
            );
        }
        let mut all = first;
        all.append(&mut rng_updates);
        let f = opened[0].0.feature("sum").unwrap().unwrap();
        check_tiles_and_windows(server.name, opened[0].0.as_ref(), &f, &all, 5);
        // And the log goes on from there.
        let mut more = commit_updates(opened[1].0.as_ref(), id, 22, 1);
        all.append(&mut more);
        check_tiles_and_windows(server.name, opened[0].0.as_ref(), &f, &all, 6);
    }
}

#[test]
fn a_checkpoint_whose_apply_fails_is_finished_by_its_retry_not_committed_again() {
    // Needs a superuser to grant and revoke, so the test's own Cassandra.
    let server = servers::cassandra();
    let section = server.store_section("apply-fails");
    let owner = open_cql(&section);
    let id = owner
        .register_features(&[feature("sum", "user", &[60, 3600, 86_400], 30 * 86_400)])
        .unwrap()[0];
    let mut all = commit_updates(owner.as_ref(), id, 31, 1);
    // A job role that may write everything but positions: a commit reaches
    // its commit point, writes every tile, then fails.
    let ks = keyspace_of(&section);
    let mut grants = vec![
        "CREATE ROLE IF NOT EXISTS tessera_no_positions WITH PASSWORD = 'np' AND LOGIN = true"
            .to_string(),
        format!("GRANT SELECT ON KEYSPACE {ks} TO tessera_no_positions"),
        "GRANT CREATE ON ALL KEYSPACES TO tessera_no_positions".to_string(),
    ];
    for table in [
        "tiles",
        "checkpoints",
        "checkpoint_chunks",
        "schema_migrations",
    ] {
        grants.push(format!(
            "GRANT MODIFY ON TABLE {ks}.{table} TO tessera_no_positions"
        ));
    }
    let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
    servers::cql(server, &grants);
    let limited = open_cql(&section.replacen(
        "username = \"cassandra\"\npassword = \"cassandra\"",
        "username = \"tessera_no_positions\"\npassword = \"np\"",
        1,
    ));
    let (second, mut updates) = random_checkpoint(id, &mut Rng(32), 1);
    let refused = limited.commit(&second);
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("positions")),
        "{refused:?}"
    );
    // Allowed again: the retry finishes the logged entry (the permission
    // cache takes a moment to see the grant; every try before is refused
    // the same way and must not count the deltas again).
    servers::cql(
        server,
        &[&format!(
            "GRANT MODIFY ON TABLE {ks}.positions TO tessera_no_positions"
        )],
    );
    crate::support::wait_until(
        std::time::Duration::from_secs(30),
        "the retried commit to succeed",
        || limited.commit(&second).is_ok(),
    );
    all.append(&mut updates);
    let reader = open_cql(&section);
    assert_eq!(
        reader
            .position("conformance", "file:input")
            .unwrap()
            .as_deref(),
        Some(&2u64.to_be_bytes()[..])
    );
    let f = reader.feature("sum").unwrap().unwrap();
    check_tiles_and_windows(server.name, reader.as_ref(), &f, &all, 7);
    // And the next checkpoint of the same writer goes on from there.
    let (third, mut more) = random_checkpoint(id, &mut Rng(33), 2);
    limited.commit(&third).unwrap();
    all.append(&mut more);
    check_tiles_and_windows(server.name, reader.as_ref(), &f, &all, 8);
}

/// Commits, retrying while the store is unreachable (a node restarting).
fn commit_when_up(store: &ScyllaStore, checkpoint: &Checkpoint) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    loop {
        match store.commit(checkpoint) {
            Err(e) if e.is_transient() && started.elapsed().as_secs() < 120 => {
                std::thread::sleep(std::time::Duration::from_millis(300))
            }
            other => return other,
        }
    }
}

#[test]
fn a_store_that_loses_acknowledged_checkpoints_is_caught_and_nothing_is_lost() {
    // A node of its own, killed while a writer commits. Cassandra (like
    // ScyllaDB by default) syncs its commit log periodically and replays
    // it only up to the last sync marker (written every 100 ms), so a
    // kill drops writes it acknowledged just before.
    let dir = tempfile::tempdir().unwrap();
    let mut node = servers::CassandraNode::new(&dir.path().join("cassandra"));
    node.start();
    let server = servers::CqlServer {
        name: "lossy",
        contact_point: node.contact_point(),
        username: Some("cassandra".into()),
        password: Some("cassandra".into()),
    };
    let section = server.store_section("lossy");
    let store = open_cql(&section);
    let id = store
        .register_features(&[feature("sum", "user", &[60, 3600, 86_400], 30 * 86_400)])
        .unwrap()[0];
    let mut rng = Rng(41);
    let checkpoints: Arc<Vec<_>> = Arc::new(
        (0..40)
            .map(|n| random_checkpoint(id, &mut rng, n))
            .collect(),
    );
    store.commit(&checkpoints[0].0).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1)); // past a sync marker
                                                           // Killed by the writer itself the moment checkpoint 3 is acknowledged,
                                                           // well inside the window the node has not marked yet.
    let pid = node.pid().expect("the node runs");
    let writer = {
        let (store, checkpoints) = (store.clone(), checkpoints.clone());
        std::thread::spawn(move || {
            (1..checkpoints.len())
                .find(|&i| {
                    let failed = store.commit(&checkpoints[i].0).is_err();
                    if i == 3 {
                        // SAFETY: a plain signal to a process id.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    failed
                })
                .unwrap_or(checkpoints.len())
        })
    };
    // Checkpoints 0..acked were acknowledged; `acked` failed in flight.
    let acked = writer.join().unwrap();
    assert_eq!(acked, 4, "checkpoints 1..=3 commit, 4 meets the dead node");
    node.kill();
    node.start();
    // The log as the node kept it: entry n + 1 is checkpoint n. The last
    // acknowledged one still applied means nothing acknowledged was lost
    // (the node keeps a prefix of what it was sent).
    let ks = keyspace_of(&section);
    let log: Vec<(i64, Option<bool>)> = servers::cql_rows(
        &server,
        &format!("SELECT seq, applied FROM {ks}.checkpoints WHERE writer = 'conformance'"),
    );
    let kept = log.contains(&(acked as i64, Some(true)));
    eprintln!("lossy node: {acked} checkpoints acknowledged before the kill; log after: {log:?}");
    // The writer that lived through it tries its failed checkpoint again:
    // refused exactly when the store lost what it had acknowledged.
    let retried = commit_when_up(&store, &checkpoints[acked].0);
    let resume = if kept {
        retried.unwrap();
        acked + 1
    } else {
        assert!(
            matches!(retried, Err(StoreError::Regressed { .. })),
            "checkpoint {acked} is no longer applied, yet: {retried:?}"
        );
        // As the pipeline does: re-read from the positions it holds (what
        // it has logged is applied first).
        let p = store
            .position("conformance", "file:input")
            .unwrap()
            .unwrap();
        let held = u64::from_be_bytes(p.try_into().unwrap()) as usize;
        assert!(held <= acked + 1, "{held}");
        held
    };
    for (checkpoint, _) in &checkpoints[resume..] {
        store.commit(checkpoint).unwrap();
    }
    let all: Vec<Update> = checkpoints
        .iter()
        .flat_map(|(_, u)| u.iter().cloned())
        .collect();
    crate::support::wait_until(
        std::time::Duration::from_secs(60),
        "the serving session to reconnect",
        || store.feature("sum").is_ok(),
    );
    let f = store.feature("sum").unwrap().unwrap();
    check_tiles_and_windows(server.name, store.as_ref(), &f, &all, 9);
    let reopened = open_cql(&section);
    check_tiles_and_windows(server.name, reopened.as_ref(), &f, &all, 10);
}

/// That a commit was refused as fenced (and not for another reason).
fn assert_fenced(result: Result<(), StoreError>) {
    match result {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("expected a fenced commit, got {other:?}"),
    }
}

#[test]
fn a_second_writer_over_the_same_positions_is_fenced_and_writes_nothing() {
    for server in servers::cql_servers() {
        let section = server.store_section("fence");
        let a = open_cql(&section);
        let id = a
            .register_features(&[feature("sum", "user", &[60, 3600, 86_400], 30 * 86_400)])
            .unwrap()[0];
        let updates = commit_updates(a.as_ref(), id, 31, 1);
        // B starts, reads where the input stands, ...
        let b = open_cql(&section);
        assert_eq!(
            b.position("conformance", "file:input").unwrap(),
            Some(1u64.to_be_bytes().to_vec())
        );
        // ... A commits again meanwhile (it still thinks it owns the input) ...
        let mut all = updates;
        all.append(&mut commit_updates(a.as_ref(), id, 32, 1));
        // ... so B's checkpoint over the same input is refused.
        let stale = Checkpoint {
            pipeline: "conformance".into(),
            instance: String::new(),
            deltas: TileDeltas::from_unsorted(vec![(
                id,
                b"e1".to_vec(),
                60_000,
                T0,
                TileAgg::of(1e6, T0),
            )]),
            positions: vec![("file:input".into(), 2u64.to_be_bytes().to_vec())],
        };
        assert_fenced(b.commit(&stale));
        let f = b.feature("sum").unwrap().unwrap();
        check_tiles_and_windows(server.name, b.as_ref(), &f, &all, 7);
        // A checkpoint over other positions goes through.
        let other = Checkpoint {
            pipeline: "conformance".into(),
            instance: String::new(),
            deltas: TileDeltas::from_unsorted(
                SIZES_MS
                    .iter()
                    .map(|size| (id, b"e1".to_vec(), *size, T0, TileAgg::of(2.5, T0)))
                    .collect(),
            ),
            positions: vec![("file:other".into(), 1u64.to_be_bytes().to_vec())],
        };
        b.commit(&other).unwrap();
        all.push(Update {
            entity: "e1".into(),
            time: T0,
            value: 2.5,
        });
        check_tiles_and_windows(server.name, a.as_ref(), &f, &all, 8);
    }
}

/// [`random_checkpoint`] number `n` of one host `instance`, moving the
/// source position `key` to `n` and the instance's own dead-letter length.
fn instance_checkpoint(
    feature_id: u32,
    rng: &mut Rng,
    instance: &str,
    key: &str,
    n: u64,
) -> (Checkpoint, Vec<Update>) {
    let (mut cp, updates) = random_checkpoint(feature_id, rng, n);
    cp.instance = instance.into();
    cp.positions = vec![
        (key.into(), n.to_be_bytes().to_vec()),
        (format!("dead-letter@{instance}"), n.to_be_bytes().to_vec()),
    ];
    (cp, updates)
}

/// Several host instances over one pipeline (one consumer group, one
/// log): each keeps its own partials, so two committing at once over the
/// same tiles lose nothing; a partition taken over by another instance
/// fences whichever commits it without having read the other's last entry
/// (a zombie that has not seen the rebalance); and an entry that a dead
/// instance logged but never applied is applied by the partition's next reader.
#[test]
fn instances_of_one_pipeline_keep_their_own_partials_and_a_zombie_is_fenced() {
    for server in servers::cql_servers() {
        let section = server.store_section("instances");
        let (a, b) = (open_cql(&section), open_cql(&section));
        let defs = [feature("sum", "user", &[60, 3600, 86_400], 30 * 86_400)];
        let id = a.register_features(&defs).unwrap()[0];
        assert_eq!(b.register_features(&defs).unwrap(), vec![id]);
        // 1. Both commit at once, partitions 0 and 1, over the same tiles.
        let run = |store: Arc<ScyllaStore>, instance: &'static str, key: &'static str, seed| {
            std::thread::spawn(move || {
                let mut rng = Rng(seed);
                let mut updates = Vec::new();
                for n in 1..=8 {
                    let (cp, mut u) = instance_checkpoint(id, &mut rng, instance, key, n);
                    store.commit(&cp).unwrap();
                    updates.append(&mut u);
                }
                updates
            })
        };
        let (ta, tb) = (
            run(a.clone(), "a", "kafka:t:0", 41),
            run(b.clone(), "b", "kafka:t:1", 42),
        );
        let mut all = ta.join().unwrap();
        all.append(&mut tb.join().unwrap());
        let f = b.feature("sum").unwrap().unwrap();
        check_tiles_and_windows(server.name, b.as_ref(), &f, &all, 20);

        // 2. B takes partition 0 over and reads where A left it ...
        let at = |n: u64| Some(n.to_be_bytes().to_vec());
        assert_eq!(b.position("conformance", "kafka:t:0").unwrap(), at(8));
        // ... A, a zombie that has not seen the rebalance, commits it once more ...
        let mut rng = Rng(43);
        let (cp, mut u) = instance_checkpoint(id, &mut rng, "a", "kafka:t:0", 9);
        a.commit(&cp).unwrap();
        all.append(&mut u);
        // ... so B's checkpoint from its stale read is refused, writing nothing;
        let (cp, _) = instance_checkpoint(id, &mut rng, "b", "kafka:t:0", 9);
        assert_fenced(b.commit(&cp));
        // read again (the pipeline rolls back), it goes on from A's last ...
        assert_eq!(b.position("conformance", "kafka:t:0").unwrap(), at(9));
        let (cp, mut u) = instance_checkpoint(id, &mut rng, "b", "kafka:t:0", 10);
        b.commit(&cp).unwrap();
        all.append(&mut u);
        // ... and now the zombie is the one fenced.
        let (cp, _) = instance_checkpoint(id, &mut rng, "a", "kafka:t:0", 10);
        assert_fenced(a.commit(&cp));
        check_tiles_and_windows(server.name, a.as_ref(), &f, &all, 21);
        assert_eq!(a.position("conformance", "kafka:t:0").unwrap(), at(10));

        // 3. A logs a checkpoint of partition 2 and dies before applying it:
        // B, taking the partition over, applies it before it reads.
        let (cp, mut u) = instance_checkpoint(id, &mut rng, "a", "kafka:t:2", 1);
        a.commit_log_only(&cp).unwrap();
        all.append(&mut u);
        drop(a);
        assert_eq!(b.position("conformance", "kafka:t:2").unwrap(), at(1));
        check_tiles_and_windows(server.name, b.as_ref(), &f, &all, 22);
        let (cp, mut u) = instance_checkpoint(id, &mut rng, "b", "kafka:t:2", 2);
        b.commit(&cp).unwrap();
        all.append(&mut u);
        let reopened = open_cql(&section);
        check_tiles_and_windows(server.name, reopened.as_ref(), &f, &all, 23);
    }
}

#[test]
fn tiles_expire_with_their_features_retention() {
    for server in servers::cql_servers() {
        let store = open_cql(&server.store_section("ttl"));
        // Retention 1 s on 1 s tiles: a TTL of 2 s.
        let ids = store
            .register_features(&[
                feature("brief", "user", &[1], 1),
                feature("kept", "user", &[1], 86_400),
            ])
            .unwrap();
        let deltas = ids
            .iter()
            .map(|id| (*id, b"u".to_vec(), 1000, T0, TileAgg::of(1.0, T0)))
            .collect();
        store
            .commit(&Checkpoint {
                pipeline: "ttl".into(),
                instance: String::new(),
                deltas: TileDeltas::from_unsorted(deltas),
                positions: vec![],
            })
            .unwrap();
        let read = |id: u32| {
            store
                .read_tiles(id, b"u", 1000, T0, T0 + 1000)
                .unwrap()
                .len()
        };
        assert_eq!((read(ids[0]), read(ids[1])), (1, 1));
        crate::support::wait_until(
            std::time::Duration::from_secs(20),
            "the brief tile to expire",
            || read(ids[0]) == 0,
        );
        assert_eq!(read(ids[1]), 1, "a long retention keeps its tile");
    }
}

/// The batch read (concurrent range scans on a CQL store) answers every
/// entity × feature as the brute force says; the serving cache in front of
/// the store, even a tiny one, answers the same, and an answer it serves
/// is never older than its TTL.
#[test]
fn batch_reads_and_the_serving_cache_answer_as_the_brute_force_says() {
    for s in subjects("batch") {
        let store = s.store.clone();
        let ids = store
            .register_features(&[
                feature("fine", "user", &[60, 3600, 86_400], 30 * 86_400),
                feature("coarse", "user", &[3600, 86_400], 30 * 86_400),
            ])
            .unwrap();
        let fine = commit_updates(store.as_ref(), ids[0], 21, 3);
        let coarse = commit_updates(store.as_ref(), ids[1], 22, 2);
        let features = vec![
            store.feature("fine").unwrap().unwrap(),
            store.feature("coarse").unwrap().unwrap(),
        ];
        let mut entities: Vec<String> = (0..12).map(|e| format!("e{e}")).collect();
        entities.push("nobody".into());
        let tiny: Arc<dyn TileStore> = Arc::new(stores::ReadCache::new(
            store.clone(),
            5,
            std::time::Duration::from_secs(3600),
        ));
        let mut rng = Rng(23);
        for _ in 0..6 {
            let window = [3_600_000, 7 * 3_600_000 + 60_000, 2 * 86_400_000][rng.below(3) as usize];
            let at = T0 + rng.below(4 * 86_400_000) as i64;
            for through in [&store, &tiny] {
                let b =
                    query::answer_many(through.as_ref(), &features, &entities, window, at).unwrap();
                assert_eq!(b.results.len(), entities.len());
                for (r, entity) in b.results.iter().zip(&entities) {
                    for (f, updates) in features.iter().zip([&fine, &coarse]) {
                        let v = &r.values[&f.name];
                        let o = oracle(updates, entity, v.covered_start_ms, v.covered_end_ms);
                        assert_eq!(v.count, o.count, "{}: {} of {entity}", s.name, f.name);
                        assert!((v.value.unwrap() - o.sum).abs() < 1e-6, "{}", s.name);
                        let single =
                            query::answer(through.as_ref(), f, entity, window, at).unwrap();
                        assert_eq!(
                            (single.count, single.covered_start_ms),
                            (v.count, v.covered_start_ms)
                        );
                    }
                }
            }
        }
        check_tiles_and_windows(&s.name, tiny.as_ref(), &features[0], &fine, 24);

        // Staleness: a cached answer stays until its TTL, then reads through.
        let ttl = std::time::Duration::from_secs(2);
        let cached = stores::ReadCache::new(store.clone(), 10_000, ttl);
        let (f, entity, window, at) = (&features[0], "e3", 2 * 86_400_000, T0 + 2 * 86_400_000);
        let asked = std::time::Instant::now();
        let before = query::answer(&cached, f, entity, window, at).unwrap();
        let mut all = fine;
        all.extend(commit_updates(store.as_ref(), ids[0], 25, 1));
        let fresh = oracle(&all, entity, before.covered_start_ms, before.covered_end_ms);
        assert_ne!(
            fresh.count, before.count,
            "the new checkpoint changes the answer"
        );
        let again = query::answer(&cached, f, entity, window, at).unwrap();
        if asked.elapsed() < ttl {
            assert_eq!(
                again.count, before.count,
                "{}: served from the cache",
                s.name
            );
        }
        std::thread::sleep(
            ttl.saturating_sub(asked.elapsed()) + std::time::Duration::from_millis(50),
        );
        let after = query::answer(&cached, f, entity, window, at).unwrap();
        assert_eq!(
            after.count, fresh.count,
            "{}: read through after the TTL",
            s.name
        );
    }
}
