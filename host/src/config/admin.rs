//! `[admin]`: the admin API's plugin registry, bearer tokens and limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the admin API needs beyond the listener it shares with `[api]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// A listener of the admin API's own (e.g. `127.0.0.1:9090`, reachable
    /// by operators only); unset: the admin routes share `api.listen` with
    /// serving and metrics.
    #[serde(default)]
    pub listen: Option<String>,
    /// Where uploaded plugin versions and each stage's active version are
    /// kept (relative paths: to the config file).
    #[serde(default = "default_registry_dir")]
    pub registry_dir: PathBuf,
    /// Bearer tokens and their roles. More can come from `token_file` and
    /// from the `TESSERA_ADMIN_TOKEN` environment variable (an admin token).
    #[serde(default)]
    pub tokens: Vec<AdminToken>,
    /// A file of more tokens, one `<role> <token>` per line (`#` comments),
    /// e.g. a mounted Kubernetes secret.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Largest component an upload may send.
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: usize,
    /// How long an activation or quota change waits for the pipeline to
    /// reach a batch boundary before it gives up (and changes nothing).
    #[serde(default = "default_apply_timeout", with = "super::humantime_serde")]
    pub apply_timeout: Duration,
    /// Default for a shadow run's `max_share`: the most time a shadow
    /// version may take, as a share of the time the live path takes.
    #[serde(default = "default_shadow_max_share")]
    pub shadow_max_share: f64,
    /// HTTPS on `listen` (without `listen`, the admin API shares
    /// `[api.tls]` with serving).
    #[serde(default)]
    pub tls: Option<super::TlsConfig>,
}

/// One bearer token.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    pub token: String,
    pub role: AdminRole,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token itself.
        write!(
            f,
            "AdminToken {{ role: {:?}, token: <{} chars> }}",
            self.role,
            self.token.len()
        )
    }
}

/// What a token may do.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    /// Read plugins, versions, quotas and the pipeline.
    Read,
    /// Also upload, activate, roll back and change quotas.
    Admin,
}

/// Shortest token accepted (a guessable token is no protection).
pub const MIN_TOKEN_CHARS: usize = 16;

fn default_registry_dir() -> PathBuf {
    PathBuf::from("registry")
}
fn default_max_upload_bytes() -> usize {
    64 << 20
}
fn default_apply_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_shadow_max_share() -> f64 {
    0.25
}

/// Largest `max_share` a shadow run may have: 10× the live path's time.
pub const MAX_SHADOW_SHARE: f64 = 10.0;

/// Why `share` is not a valid shadow share, if it is not.
pub fn shadow_share_problem(share: f64) -> Option<String> {
    (!(share > 0.0 && share <= MAX_SHADOW_SHARE)).then(|| {
        format!("a shadow's max_share {share} must be more than 0 and at most {MAX_SHADOW_SHARE}")
    })
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            registry_dir: default_registry_dir(),
            tokens: Vec::new(),
            token_file: None,
            max_upload_bytes: default_max_upload_bytes(),
            apply_timeout: default_apply_timeout(),
            shadow_max_share: default_shadow_max_share(),
            tls: None,
        }
    }
}

impl AdminConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>, api_listen: &str) {
        if self.tls.is_some() && self.listen.is_none() {
            problems.push(
                "admin.tls needs admin.listen: without a listener of its own the admin API uses [api.tls]".into(),
            );
        }
        if let Some(l) = &self.listen {
            if l.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!(
                    "admin.listen `{l}` is not an address like 127.0.0.1:9090"
                ));
            } else if l == api_listen {
                problems.push(format!(
                    "admin.listen `{l}` is api.listen too; leave admin.listen out to share it"
                ));
            }
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.chars().count() < MIN_TOKEN_CHARS {
                problems.push(format!(
                    "admin.tokens[{i}] is shorter than {MIN_TOKEN_CHARS} characters"
                ));
            }
        }
        if !(1024..=(1 << 30)).contains(&self.max_upload_bytes) {
            problems.push(format!(
                "admin.max_upload_bytes {} must be between 1 KiB and 1 GiB",
                self.max_upload_bytes
            ));
        }
        if self.apply_timeout.is_zero() || self.apply_timeout > Duration::from_secs(600) {
            problems.push("admin.apply_timeout must be more than 0 and at most 10m".into());
        }
        problems.extend(
            shadow_share_problem(self.shadow_max_share)
                .map(|p| format!("admin.shadow_max_share: {p}")),
        );
    }
}
