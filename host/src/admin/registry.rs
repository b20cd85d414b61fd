//! The plugin registry on disk: every uploaded component version, stored by
//! content, and for each stage of the pipeline the version active now, the
//! ones it replaced (for rollback) and quotas changed at run time, so that a
//! restarted host comes back exactly as it was left.
//!
//! Layout under `admin.registry_dir`:
//!
//! ```text
//! blobs/<sha256>.wasm        component bytes, written once, checked on read
//! versions.json              every uploaded (name, version, kind, sha256, size, time)
//! stages/<pipeline>.json     per stage: active version, history, quota override
//! ```
//!
//! Every file is replaced whole: written to a temporary file, synced, then
//! renamed over the old one, so a crash leaves the old or the new state and
//! never half of one. A missing directory is an empty registry (nothing is
//! created until the first upload).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::Quotas;
use crate::plugin::{sha256_hex, PluginKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("plugin registry {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin registry {path} is damaged: {message}")]
    Corrupt { path: String, message: String },
    #[error("{0}")]
    Conflict(String),
}

/// One uploaded version.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct VersionRecord {
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    pub sha256: String,
    pub size: u64,
    pub uploaded_at_ms: i64,
    /// The config (JSON text) this version runs with; `None`: the stage's
    /// config from the config file.
    #[serde(default)]
    pub config: Option<String>,
}

/// What the registry says about one stage. `active: None` is the component
/// the config names (its `path`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct StageRecord {
    pub active: Option<String>,
    /// Versions replaced by activations, oldest first; a rollback goes back
    /// to the last. `None` is the config's component.
    #[serde(default)]
    pub history: Vec<Option<String>>,
    /// Quotas changed over the admin API (instead of the config's).
    #[serde(default)]
    pub quotas: Option<Quotas>,
    /// A version running as this stage's shadow (resumed after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRecord>,
}

/// A stage's shadow run: which version, within which share of the live
/// path's time.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ShadowRecord {
    pub version: String,
    pub max_share: f64,
}

#[derive(Default)]
struct State {
    versions: Vec<VersionRecord>,
    stages: BTreeMap<String, StageRecord>,
}

pub struct Registry {
    dir: PathBuf,
    /// `stages/<pipeline>.json` (the pipeline's name, with its instance).
    stages_file: PathBuf,
    state: Mutex<State>,
}

impl Registry {
    /// Reads the registry at `dir` for `pipeline` (`name` or `name@instance`).
    pub fn open(dir: &Path, pipeline: &str) -> Result<Self, RegistryError> {
        let stages_file = dir.join("stages").join(format!("{pipeline}.json"));
        let versions = read_json(&dir.join("versions.json"))?.unwrap_or_default();
        let stages = read_json(&stages_file)?.unwrap_or_default();
        Ok(Registry {
            dir: dir.to_path_buf(),
            stages_file,
            state: Mutex::new(State { versions, stages }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Every uploaded version of `name`, in upload order.
    pub fn versions(&self, name: &str) -> Vec<VersionRecord> {
        self.state()
            .versions
            .iter()
            .filter(|v| v.name == name)
            .cloned()
            .collect()
    }

    pub fn version(&self, name: &str, version: &str) -> Option<VersionRecord> {
        self.state()
            .versions
            .iter()
            .find(|v| v.name == name && v.version == version)
            .cloned()
    }

    /// Stores a validated upload. The same bytes under the same name and
    /// version again is a no-op; other bytes under a taken version are a
    /// conflict (versions are immutable).
    pub fn add_version(
        &self,
        name: &str,
        version: &str,
        kind: PluginKind,
        bytes: &[u8],
        config: Option<String>,
    ) -> Result<(VersionRecord, bool), RegistryError> {
        let sha256 = sha256_hex(bytes);
        let mut state = self.state();
        if let Some(v) = state
            .versions
            .iter()
            .find(|v| v.name == name && v.version == version)
        {
            if v.sha256 == sha256 && v.kind == kind && v.config == config {
                return Ok((v.clone(), false));
            }
            return Err(RegistryError::Conflict(format!(
                "{name} version {version} is already uploaded with other content or config; versions cannot change, upload a new version"
            )));
        }
        let blob = self.blob_path(&sha256);
        if !blob.exists() {
            write_atomically(&blob, bytes)?;
        }
        let record = VersionRecord {
            name: name.to_string(),
            version: version.to_string(),
            kind,
            sha256,
            size: bytes.len() as u64,
            uploaded_at_ms: crate::record::now_ms(),
            config,
        };
        let mut versions = state.versions.clone();
        versions.push(record.clone());
        write_json(&self.dir.join("versions.json"), &versions)?;
        state.versions = versions;
        Ok((record, true))
    }

    /// A version's component bytes, checked against its digest.
    pub fn bytes(&self, v: &VersionRecord) -> Result<Vec<u8>, RegistryError> {
        let path = self.blob_path(&v.sha256);
        let bytes = std::fs::read(&path).map_err(|source| RegistryError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if sha256_hex(&bytes) != v.sha256 {
            return Err(RegistryError::Corrupt {
                path: path.display().to_string(),
                message: format!("content does not match its SHA-256 {}", v.sha256),
            });
        }
        Ok(bytes)
    }

    pub fn stage(&self, stage: &str) -> StageRecord {
        self.state().stages.get(stage).cloned().unwrap_or_default()
    }

    /// Records `version` as the stage's active one; the one it replaces
    /// goes onto the history (`rollback = false`), or the history's last is
    /// taken off (`rollback = true`, `version` being that last). A shadow of
    /// that version ends: it is promoted.
    pub fn set_active(
        &self,
        stage: &str,
        version: Option<String>,
        rollback: bool,
    ) -> Result<(), RegistryError> {
        self.update_stage(stage, |r| {
            if r.shadow.as_ref().map(|s| &s.version) == version.as_ref() {
                r.shadow = None;
            }
            let previous = std::mem::replace(&mut r.active, version);
            if rollback {
                r.history.pop();
            } else {
                r.history.push(previous);
            }
        })
    }

    pub fn set_quotas(&self, stage: &str, quotas: Quotas) -> Result<(), RegistryError> {
        self.update_stage(stage, |r| r.quotas = Some(quotas))
    }

    pub fn set_shadow(
        &self,
        stage: &str,
        shadow: Option<ShadowRecord>,
    ) -> Result<(), RegistryError> {
        self.update_stage(stage, |r| r.shadow = shadow)
    }

    /// Changes one stage's record on disk first, then in memory.
    fn update_stage(
        &self,
        stage: &str,
        change: impl FnOnce(&mut StageRecord),
    ) -> Result<(), RegistryError> {
        let mut state = self.state();
        let mut stages = state.stages.clone();
        change(stages.entry(stage.to_string()).or_default());
        write_json(&self.stages_file, &stages)?;
        state.stages = stages;
        Ok(())
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{sha256}.wasm"))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RegistryError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RegistryError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RegistryError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RegistryError> {
    let text = serde_json::to_vec_pretty(value).expect("registry records serialize");
    write_atomically(path, &text)
}

/// Temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    use std::io::Write;
    let io = |source| RegistryError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_stages_survive_a_reopen_and_rollback_walks_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), "p").unwrap();
        assert!(r.versions("f").is_empty());
        let (v1, new) = r
            .add_version("f", "1", PluginKind::Feature, b"one", None)
            .unwrap();
        assert!(new);
        let (again, new) = r
            .add_version("f", "1", PluginKind::Feature, b"one", None)
            .unwrap();
        assert!(!new && again == v1);
        assert!(matches!(
            r.add_version("f", "1", PluginKind::Feature, b"other", None),
            Err(RegistryError::Conflict(_))
        ));
        r.add_version("f", "2", PluginKind::Feature, b"two", None)
            .unwrap();
        r.set_active("f", Some("1".into()), false).unwrap();
        r.set_active("f", Some("2".into()), false).unwrap();

        let r = Registry::open(dir.path(), "p").unwrap();
        assert_eq!(r.versions("f").len(), 2);
        assert_eq!(r.bytes(&r.version("f", "2").unwrap()).unwrap(), b"two");
        let s = r.stage("f");
        assert_eq!(s.active.as_deref(), Some("2"));
        assert_eq!(s.history, vec![None, Some("1".to_string())]);
        r.set_active("f", Some("1".into()), true).unwrap();
        assert_eq!(r.stage("f").history, vec![None]);
        // Another pipeline's stages are its own.
        assert_eq!(
            Registry::open(dir.path(), "q").unwrap().stage("f"),
            StageRecord::default()
        );
    }

    #[test]
    fn a_damaged_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), "p").unwrap();
        let (v, _) = r
            .add_version("f", "1", PluginKind::Parser, b"bytes", None)
            .unwrap();
        std::fs::write(
            dir.path().join("blobs").join(format!("{}.wasm", v.sha256)),
            b"x",
        )
        .unwrap();
        assert!(matches!(r.bytes(&v), Err(RegistryError::Corrupt { .. })));
    }
}
