//! The `[store]` table: which tile store, and for ScyllaDB how to reach it,
//! the job's and the serving API's sessions, and the job's tile cache.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// One redb file on local disk.
    Embedded {
        #[serde(default = "default_store_path")]
        path: PathBuf,
    },
    /// ScyllaDB (or any CQL server: Apache Cassandra in the tests).
    Scylla(Box<ScyllaConfig>),
}

fn default_store_path() -> PathBuf {
    PathBuf::from(".tessera/tiles.redb")
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded {
            path: default_store_path(),
        }
    }
}

impl StoreConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if let StoreConfig::Scylla(s) = self {
            s.validate(problems);
        }
    }
}

/// A ScyllaDB cluster: `[store] type = "scylla"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    /// `host:port` of one or more nodes; the driver discovers the rest.
    pub contact_points: Vec<String>,
    /// Created on start if missing, with the replication below.
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// SimpleStrategy replication factor, used when `datacenters` is empty.
    #[serde(default = "one")]
    pub replication_factor: u32,
    /// NetworkTopologyStrategy: replicas per datacenter, e.g. `{ dc1 = 3 }`.
    #[serde(default)]
    pub datacenters: BTreeMap<String, u32>,
    /// How long one connection attempt may take.
    #[serde(default = "default_connect_timeout", with = "super::humantime_serde")]
    pub connect_timeout: Duration,
    /// How long the host keeps retrying (with back-off) to reach the
    /// cluster at start before it gives up; 0 tries once.
    #[serde(default = "default_connect_retry", with = "super::humantime_serde")]
    pub connect_retry: Duration,
    /// The pipeline's session: checkpoints, tile writes, positions. Keys
    /// left out keep the job defaults (`local_quorum`, 10 s, 200 shares).
    #[serde(default = "ScyllaRole::job", deserialize_with = "ScyllaRole::job_over")]
    pub job: ScyllaRole,
    /// The serving API's session: feature reads. Keys left out keep the
    /// serving defaults (`local_one`, 2 s, 1000 shares).
    #[serde(
        default = "ScyllaRole::serving",
        deserialize_with = "ScyllaRole::serving_over"
    )]
    pub serving: ScyllaRole,
    /// The job's read-through cache of the tiles it writes.
    #[serde(default)]
    pub cache: TileCacheConfig,
    /// Tile partitions the job merges and writes at once. More ingests a
    /// little faster; fewer leaves the cluster to serving reads (on
    /// Cassandra, which has no service levels, the main isolation knob:
    /// BENCHMARKS.md has the measurements behind the default).
    #[serde(default = "default_write_concurrency")]
    pub write_concurrency: usize,
}

fn default_write_concurrency() -> usize {
    2
}

fn default_keyspace() -> String {
    "tessera".into()
}

fn one() -> u32 {
    1
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_connect_retry() -> Duration {
    Duration::from_secs(120)
}

/// One driver session: its credentials, execution profile and (on
/// ScyllaDB) the service level its role is attached to. Written in the
/// config as a [`RoleKeys`] table laid over the role's defaults.
#[derive(Clone, Debug, Serialize)]
pub struct ScyllaRole {
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub consistency: Consistency,
    #[serde(with = "super::humantime_serde")]
    pub request_timeout: Duration,
    pub service_level: Option<String>,
    pub shares: Option<u32>,
}

/// The keys of `[store.job]` and `[store.serving]`; each one left out keeps
/// the role's default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleKeys {
    /// Login role; without one the session connects unauthenticated.
    username: Option<String>,
    /// The password itself (prefer `password_env` or `password_file`).
    password: Option<String>,
    /// Name of an environment variable holding the password.
    password_env: Option<String>,
    /// A file holding the password (e.g. a mounted Kubernetes secret).
    password_file: Option<PathBuf>,
    consistency: Option<Consistency>,
    /// Client-side timeout of one request (retries included).
    #[serde(default, with = "super::opt_humantime_serde")]
    request_timeout: Option<Duration>,
    /// ScyllaDB only: the service level to create and attach this role to
    /// (needs `username` and a role allowed to manage service levels);
    /// ignored with a log line on other CQL servers.
    service_level: Option<String>,
    /// Shares of that service level (ScyllaDB: 1 to 1000).
    shares: Option<u32>,
}

impl RoleKeys {
    fn over(self, base: ScyllaRole) -> ScyllaRole {
        ScyllaRole {
            username: self.username.or(base.username),
            password: self.password.or(base.password),
            password_env: self.password_env.or(base.password_env),
            password_file: self.password_file.or(base.password_file),
            consistency: self.consistency.unwrap_or(base.consistency),
            request_timeout: self.request_timeout.unwrap_or(base.request_timeout),
            service_level: self.service_level.or(base.service_level),
            shares: self.shares.or(base.shares),
        }
    }
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ScyllaRole {
    fn job() -> Self {
        ScyllaRole {
            username: None,
            password: None,
            password_env: None,
            password_file: None,
            consistency: Consistency::LocalQuorum,
            request_timeout: default_request_timeout(),
            service_level: None,
            shares: Some(200),
        }
    }

    fn serving() -> Self {
        ScyllaRole {
            consistency: Consistency::LocalOne,
            request_timeout: Duration::from_secs(2),
            shares: Some(1000),
            ..ScyllaRole::job()
        }
    }

    fn job_over<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RoleKeys::deserialize(d)?.over(Self::job()))
    }

    fn serving_over<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RoleKeys::deserialize(d)?.over(Self::serving()))
    }

    /// The password from whichever of the three places is set.
    pub fn resolve_password(&self) -> Result<Option<String>, String> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("environment variable `{var}` (password_env) is not set"));
        }
        if let Some(path) = &self.password_file {
            return std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|e| format!("password_file {}: {e}", path.display()));
        }
        Ok(None)
    }

    fn validate(&self, table: &str, problems: &mut Vec<String>) {
        let sources = [
            self.password.is_some(),
            self.password_env.is_some(),
            self.password_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            problems.push(format!(
                "{table}: set only one of password, password_env, password_file"
            ));
        }
        if sources.iter().any(|s| *s) && self.username.is_none() {
            problems.push(format!("{table}: a password needs a username"));
        }
        if self.request_timeout.is_zero() {
            problems.push(format!("{table}.request_timeout must be more than 0"));
        }
        if let Some(shares) = self.shares {
            if !(1..=1000).contains(&shares) {
                problems.push(format!("{table}.shares must be between 1 and 1000"));
            }
        }
        if let Some(sl) = &self.service_level {
            if !is_identifier(sl) {
                problems.push(format!(
                    "{table}.service_level `{sl}` must be a CQL identifier (letters, digits, _)"
                ));
            }
        }
    }
}

/// CQL consistency levels, as in cqlsh (`local_quorum`, `one`, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    Any,
    One,
    Two,
    Three,
    Quorum,
    All,
    #[default]
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

/// Bounds of the job's tile cache: the hot tiles it merges deltas into,
/// read through from the store on a miss (the store holds the truth).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TileCacheConfig {
    /// Most tiles kept; memory is about 100 bytes plus the entity per tile.
    #[serde(default = "default_max_tiles")]
    pub max_tiles: u64,
    /// A tile not written for this long is dropped.
    #[serde(default = "default_cache_ttl", with = "super::humantime_serde")]
    pub ttl: Duration,
}

fn default_max_tiles() -> u64 {
    1_000_000
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(600)
}

impl Default for TileCacheConfig {
    fn default() -> Self {
        TileCacheConfig {
            max_tiles: default_max_tiles(),
            ttl: default_cache_ttl(),
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 48
}

impl ScyllaConfig {
    pub(super) fn resolve_paths(&mut self, fix: &dyn Fn(&mut PathBuf)) {
        for role in [&mut self.job, &mut self.serving] {
            if let Some(p) = &mut role.password_file {
                fix(p);
            }
        }
    }

    /// Replication options for `CREATE KEYSPACE`.
    pub fn replication_cql(&self) -> String {
        if self.datacenters.is_empty() {
            format!(
                "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                self.replication_factor
            )
        } else {
            let dcs: Vec<String> = self
                .datacenters
                .iter()
                .map(|(dc, n)| format!("'{}': {n}", dc.replace('\'', "''")))
                .collect();
            format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
        }
    }

    fn validate(&self, problems: &mut Vec<String>) {
        if !(1..=1024).contains(&self.write_concurrency) {
            problems.push(format!(
                "store.write_concurrency {} must be between 1 and 1024",
                self.write_concurrency
            ));
        }
        if self.contact_points.is_empty() {
            problems.push("store.contact_points must name at least one node".into());
        }
        if !is_identifier(&self.keyspace) {
            problems.push(format!(
                "store.keyspace `{}` must be a CQL identifier (a letter, then letters, digits, _; at most 48)",
                self.keyspace
            ));
        }
        if self.replication_factor == 0 || self.datacenters.values().any(|n| *n == 0) {
            problems.push("store replication factors must be at least 1".into());
        }
        if self.connect_timeout.is_zero() {
            problems.push("store.connect_timeout must be more than 0".into());
        }
        self.job.validate("store.job", problems);
        self.serving.validate("store.serving", problems);
        if self.cache.max_tiles == 0 {
            problems.push("store.cache.max_tiles must be at least 1".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Wrapper {
        store: StoreConfig,
    }

    fn parse(toml_text: &str) -> StoreConfig {
        toml::from_str::<Wrapper>(toml_text).unwrap().store
    }

    fn problems(cfg: &StoreConfig) -> Vec<String> {
        let mut p = Vec::new();
        cfg.validate(&mut p);
        p
    }

    #[test]
    fn a_scylla_store_parses_with_defaults_and_every_problem_is_reported() {
        let cfg = parse(
            "[store]\ntype = \"scylla\"\ncontact_points = [\"n1:9042\"]\ndatacenters = { dc1 = 3 }\n[store.serving]\nusername = \"reader\"\npassword_env = \"NO_SUCH_VARIABLE_HERE\"\n",
        );
        let StoreConfig::Scylla(s) = &cfg else {
            panic!("{cfg:?}")
        };
        assert_eq!(s.keyspace, "tessera");
        assert_eq!(s.job.consistency, Consistency::LocalQuorum);
        assert_eq!(s.job.shares, Some(200));
        assert_eq!(s.serving.consistency, Consistency::LocalOne);
        assert_eq!(s.serving.username.as_deref(), Some("reader"));
        // A partial [store.serving] keeps the serving defaults, not the job's.
        assert_eq!(s.serving.request_timeout, Duration::from_secs(2));
        assert_eq!(s.serving.shares, Some(1000));
        assert_eq!(s.write_concurrency, 2);
        assert_eq!(
            s.replication_cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"
        );
        assert!(problems(&cfg).is_empty(), "{:?}", problems(&cfg));
        assert!(s
            .serving
            .resolve_password()
            .unwrap_err()
            .contains("NO_SUCH_VARIABLE_HERE"));

        let bad = parse(
            "[store]\ntype = \"scylla\"\ncontact_points = []\nkeyspace = \"1-bad\"\nreplication_factor = 0\nwrite_concurrency = 0\n[store.job]\npassword = \"x\"\npassword_env = \"Y\"\nshares = 5000\n[store.cache]\nmax_tiles = 0\n",
        );
        let p = problems(&bad).join("\n");
        for expected in [
            "contact_points",
            "keyspace `1-bad`",
            "replication factors",
            "only one of password",
            "needs a username",
            "store.job.shares",
            "max_tiles",
            "store.write_concurrency 0",
        ] {
            assert!(p.contains(expected), "`{expected}` in:\n{p}");
        }
        let unknown = toml::from_str::<Wrapper>(
            "[store]\ntype = \"scylla\"\ncontact_points = []\n[store.job]\nconsistency = \"local_quorum\"\npasword = \"typo\"\n",
        );
        assert!(unknown.is_err(), "a misspelt key is refused: {unknown:?}");
    }
}
