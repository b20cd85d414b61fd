//! The CQL schema of the ScyllaDB store, as versioned migrations.
//!
//! Every statement is idempotent (`IF NOT EXISTS`), so hosts starting
//! together may run the same migration at once. Applied versions are
//! recorded in `schema_migrations`; a store whose recorded version is newer
//! than this build knows is refused rather than written with an old layout.
//! Never edit a released migration: add the next one.

use scylla::client::session::Session;

use super::cql_err;
use crate::stores::StoreError;

/// (version, description, statements); `{ks}` stands for the keyspace.
pub const MIGRATIONS: &[(i32, &str, &[&str])] = &[
    (
    1,
    "tiles as partials per writer, features, checkpoint log, positions",
    &[
        // One feature definition per name; ids are handed out by an LWT on
        // feature_ids so that two hosts never give one id to two names.
        "CREATE TABLE IF NOT EXISTS {ks}.features (name text PRIMARY KEY, id int, definition text)",
        "CREATE TABLE IF NOT EXISTS {ks}.feature_ids (id int PRIMARY KEY, name text)",
        // One partition per (feature, entity): a window query reads one
        // partition, one clustering slice per tile size. Each writer (a
        // pipeline's checkpoint log) keeps its own partial of a tile, as an
        // absolute value with the log entry that last changed it; reads
        // merge the partials of one start.
        "CREATE TABLE IF NOT EXISTS {ks}.tiles (\
            feature_id int, entity blob, size_ms bigint, start_ms bigint, writer text, \
            count bigint, sum double, min double, max double, last_time bigint, last double, \
            applied_seq bigint, \
            PRIMARY KEY ((feature_id, entity), size_ms, start_ms, writer))",
        // The checkpoint log: one header per entry, written with an LWT
        // (IF NOT EXISTS) so one writer wins each sequence number; newest first.
        "CREATE TABLE IF NOT EXISTS {ks}.checkpoints (\
            writer text, seq bigint, attempt bigint, chunks int, ts bigint, positions blob, applied boolean, \
            PRIMARY KEY (writer, seq)) WITH CLUSTERING ORDER BY (seq DESC)",
        // An entry's tile deltas, written before its header; a partition per
        // entry, dropped once the entry is applied.
        "CREATE TABLE IF NOT EXISTS {ks}.checkpoint_chunks (\
            writer text, seq bigint, attempt bigint, chunk int, data blob, \
            PRIMARY KEY ((writer, seq), attempt, chunk))",
        // Source positions and sink lengths as of the last applied entry.
        "CREATE TABLE IF NOT EXISTS {ks}.positions (\
            writer text, key text, position blob, PRIMARY KEY (writer, key))",
    ],
), (
    2,
    "checkpoint entries name their author (one pipeline, several host instances)",
    &[
        // The instance whose partials an entry changes (`pipeline@instance`);
        // null in entries of a single-host pipeline (the writer itself).
        "ALTER TABLE {ks}.checkpoints ADD author text",
    ],
)];

/// Whether a schema change failed only because another host made it first
/// (CQL has no `ADD IF NOT EXISTS` on every server).
fn already_done(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("conflicts with an existing column") || m.contains("already exist")
}

/// Creates the keyspace if missing and applies the migrations it lacks.
pub async fn migrate(
    session: &Session,
    keyspace: &str,
    replication: &str,
) -> Result<(), StoreError> {
    let run = |cql: String| async move {
        session
            .query_unpaged(cql.as_str(), ())
            .await
            .map_err(|e| cql_err("schema change", e))
    };
    run(format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"
    ))
    .await?;
    run(format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (version int PRIMARY KEY, description text, applied_at_ms bigint)"
    ))
    .await?;
    let applied: Vec<i32> = session
        .query_unpaged(
            format!("SELECT version FROM {keyspace}.schema_migrations"),
            (),
        )
        .await
        .map_err(|e| cql_err("reading schema_migrations", e))?
        .into_rows_result()
        .map_err(|e| cql_err("reading schema_migrations", e))?
        .rows::<(i32,)>()
        .map_err(|e| cql_err("reading schema_migrations", e))?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .map_err(|e| cql_err("reading schema_migrations", e))?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(newer) = applied.iter().copied().filter(|v| *v > known).max() {
        return Err(StoreError::Open {
            path: keyspace.to_string(),
            message: format!(
                "its schema is at version {newer}, this build knows up to {known} (use the build that migrated it)"
            ),
        });
    }
    for (version, description, statements) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for s in *statements {
            match run(s.replace("{ks}", keyspace)).await {
                Err(StoreError::Cql { message, .. }) if already_done(&message) => {}
                other => {
                    other?;
                }
            }
        }
        session
            .query_unpaged(
                format!("INSERT INTO {keyspace}.schema_migrations (version, description, applied_at_ms) VALUES (?, ?, ?)"),
                (*version, *description, super::now_ms()),
            )
            .await
            .map_err(|e| cql_err("recording a migration", e))?;
        tracing::info!(keyspace, version, description, "applied store migration");
    }
    Ok(())
}
