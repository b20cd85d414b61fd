//! Connecting the job's and the serving API's driver sessions, detecting
//! ScyllaDB, and attaching each role to its service level where that exists.

use std::time::{Duration, Instant};

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency as CqlConsistency;

use super::{cql_err, schema};
use crate::config::{Consistency, ScyllaConfig, ScyllaRole};
use crate::stores::StoreError;

fn consistency(c: Consistency) -> CqlConsistency {
    match c {
        Consistency::Any => CqlConsistency::Any,
        Consistency::One => CqlConsistency::One,
        Consistency::Two => CqlConsistency::Two,
        Consistency::Three => CqlConsistency::Three,
        Consistency::Quorum => CqlConsistency::Quorum,
        Consistency::All => CqlConsistency::All,
        Consistency::LocalQuorum => CqlConsistency::LocalQuorum,
        Consistency::EachQuorum => CqlConsistency::EachQuorum,
        Consistency::LocalOne => CqlConsistency::LocalOne,
    }
}

/// One session for `role`: its own connection pools and execution profile
/// (consistency, timeout; the driver's default retry policy, which retries
/// only statements marked idempotent), token-aware routing by default.
async fn connect(
    cfg: &ScyllaConfig,
    role: &ScyllaRole,
    label: &str,
) -> Result<Session, StoreError> {
    let profile = ExecutionProfile::builder()
        .consistency(consistency(role.consistency))
        .request_timeout(Some(role.request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.contact_points)
        .connection_timeout(cfg.connect_timeout)
        .default_execution_profile_handle(profile.into_handle_with_label(label.to_string()));
    if let Some(user) = &role.username {
        let password = role
            .resolve_password()
            .map_err(|message| StoreError::Open {
                path: cfg.contact_points.join(","),
                message: format!("{label} session: {message}"),
            })?;
        builder = builder.user(user, password.unwrap_or_default());
    }
    builder.build().await.map_err(|e| StoreError::Open {
        path: cfg.contact_points.join(","),
        message: format!("{label} session: {e}"),
    })
}

/// Connects the job session (retrying with back-off until
/// `connect_retry` has passed), migrates the schema, then connects the
/// serving session and sets up service levels. Returns both and the
/// server's flavor.
pub async fn connect_both(cfg: &ScyllaConfig) -> Result<(Session, Session, String), StoreError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    let job = loop {
        match connect(cfg, &cfg.job, "job").await {
            Ok(s) => break s,
            Err(e) if started.elapsed() + delay < cfg.connect_retry => {
                tracing::warn!(error = %e, retry_in = ?delay, "the CQL store is not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    };
    schema::migrate(&job, &cfg.keyspace, &cfg.replication_cql()).await?;
    let serving = connect(cfg, &cfg.serving, "serving").await?;
    let scylla = job
        .get_cluster_state()
        .get_nodes_info()
        .iter()
        .any(|n| n.sharder().is_some());
    let flavor = if scylla {
        "ScyllaDB"
    } else {
        "Apache Cassandra (or another CQL server)"
    };
    if scylla {
        for (label, role) in [("job", &cfg.job), ("serving", &cfg.serving)] {
            attach_service_level(&job, label, role).await;
        }
    } else if cfg.job.service_level.is_some() || cfg.serving.service_level.is_some() {
        tracing::info!(
            "the CQL server is not ScyllaDB: service levels do not exist there; the job and serving sessions are isolated only by their own connection pools, profiles and credentials"
        );
    }
    tracing::info!(flavor, keyspace = %cfg.keyspace, "connected to the CQL store");
    Ok((job, serving, flavor.to_string()))
}

/// ScyllaDB workload prioritization: `role`'s login role gets a service
/// level with its shares. A failure (no permission, no such role) is
/// logged; the store works without.
async fn attach_service_level(session: &Session, label: &str, role: &ScyllaRole) {
    let (Some(level), Some(user)) = (&role.service_level, &role.username) else {
        if role.service_level.is_some() {
            tracing::warn!(
                label,
                "a service level needs the session's username; not attached"
            );
        }
        return;
    };
    let shares = role.shares.unwrap_or(1000);
    let statements = [
        format!("CREATE SERVICE LEVEL IF NOT EXISTS {level} WITH shares = {shares}"),
        format!("ALTER SERVICE LEVEL {level} WITH shares = {shares}"),
        format!(
            "ATTACH SERVICE LEVEL {level} TO \"{}\"",
            user.replace('"', "\"\"")
        ),
    ];
    for cql in &statements {
        if let Err(e) = session.query_unpaged(cql.as_str(), ()).await {
            tracing::warn!(label, level, error = %cql_err("service level", e), "could not set up the service level");
            return;
        }
    }
    tracing::info!(label, level, shares, user, "service level attached");
}
