//! Where an SMB output lives: a local directory, or a prefix in an
//! S3-compatible object store (through the `object_store` crate).
//!
//! Publishing a partition whose files are complete in a local staging
//! directory: locally, each file is renamed into the partition directory and
//! `metadata.json` is renamed in last; in an object store, each file is
//! uploaded under its final key (a PUT is atomic: an object is whole or
//! absent) and `metadata.json` is uploaded last. Either way a partition with
//! `metadata.json` is complete, and one without it is not committed.
//! Object-store calls run on a runtime of the root's own, so callers stay
//! synchronous (they must not be inside a tokio runtime).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

use super::writer::{io_err, SmbError};

/// An S3-compatible location.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix of the output ("" for the bucket root).
    #[serde(default)]
    pub prefix: String,
    /// Endpoint URL for S3-compatible servers (MinIO, moto, ...); AWS when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Credentials; the AWS environment variables are used when unset.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Never serialized back out (configs are shown over the API).
    #[serde(default, skip_serializing)]
    pub secret_access_key: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// The root of one SMB output.
#[derive(Clone)]
pub enum OutputRoot {
    Local(PathBuf),
    Object(ObjectRoot),
}

/// A prefix in an object store, with the runtime its calls block on.
#[derive(Clone)]
pub struct ObjectRoot {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    runtime: Arc<tokio::runtime::Runtime>,
    /// Local scratch space (staging before upload, downloads for reads).
    scratch: PathBuf,
}

fn object_err(what: &str, e: impl std::fmt::Display) -> SmbError {
    SmbError::Io {
        path: what.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl ObjectRoot {
    fn key(&self, rel: &str) -> ObjectPath {
        let rel = rel.trim_matches('/');
        ObjectPath::from(if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        })
    }

    /// The object at `rel`, `None` when there is none.
    fn get(&self, rel: &str) -> Result<Option<bytes::Bytes>, SmbError> {
        let key = self.key(rel);
        match self
            .runtime
            .block_on(async { self.store.get(&key).await?.bytes().await })
        {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(object_err(key.as_ref(), e)),
        }
    }

    fn exists(&self, rel: &str) -> Result<bool, SmbError> {
        let key = self.key(rel);
        match self.runtime.block_on(self.store.head(&key)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(object_err(key.as_ref(), e)),
        }
    }

    fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), SmbError> {
        let key = self.key(rel);
        self.runtime
            .block_on(self.store.put(&key, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| object_err(key.as_ref(), e))
    }

    fn delete(&self, rel: &str) -> Result<(), SmbError> {
        let key = self.key(rel);
        match self.runtime.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(object_err(key.as_ref(), e)),
        }
    }

    /// Names of the objects under `rel_dir`.
    fn list(&self, rel_dir: &str) -> Result<Vec<String>, SmbError> {
        use futures::TryStreamExt;
        let key = self.key(rel_dir);
        let objects: Vec<_> = self
            .runtime
            .block_on(self.store.list(Some(&key)).try_collect())
            .map_err(|e| object_err(key.as_ref(), e))?;
        Ok(objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect())
    }
}

impl OutputRoot {
    pub fn local(path: &Path) -> Self {
        OutputRoot::Local(path.to_path_buf())
    }

    /// An S3-compatible root (path-style addressing; plain HTTP allowed for
    /// a custom `http://` endpoint). `scratch` is a local directory for
    /// staging and downloads.
    pub fn s3(location: &S3Location, scratch: &Path) -> Result<Self, SmbError> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_region(&location.region)
            .with_virtual_hosted_style_request(false);
        if let Some(e) = &location.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        if let (Some(k), Some(s)) = (&location.access_key_id, &location.secret_access_key) {
            b = b.with_access_key_id(k).with_secret_access_key(s);
        }
        let store = b
            .build()
            .map_err(|e| object_err(&format!("s3://{}", location.bucket), e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err(scratch))?;
        std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
        Ok(OutputRoot::Object(ObjectRoot {
            store: Arc::new(store),
            prefix: location.prefix.trim_matches('/').to_string(),
            runtime: Arc::new(runtime),
            scratch: scratch.to_path_buf(),
        }))
    }

    /// Local space for a writer's spilled sorted runs.
    pub fn spill_dir(&self) -> PathBuf {
        match self {
            OutputRoot::Local(root) => root.join(".spill"),
            OutputRoot::Object(o) => o.scratch.join("spill"),
        }
    }

    /// Where a partition's files are staged before they are published.
    pub fn staging_dir(&self, rel_dir: &str) -> PathBuf {
        match self {
            OutputRoot::Local(root) => {
                let dir = root.join(rel_dir);
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                dir.with_file_name(format!(".{name}.staging"))
            }
            OutputRoot::Object(o) => o
                .scratch
                .join(format!("{}.staging", rel_dir.replace('/', "_"))),
        }
    }

    /// Whether `rel_dir` holds a committed partition.
    pub fn is_committed(&self, rel_dir: &str) -> Result<bool, SmbError> {
        match self {
            OutputRoot::Local(root) => Ok(root.join(rel_dir).join("metadata.json").exists()),
            OutputRoot::Object(o) => o.exists(&format!("{rel_dir}/metadata.json")),
        }
    }

    /// Publishes the staged `files` and then `metadata.json` (also staged)
    /// as partition `rel_dir`, and removes the staging directory.
    pub fn publish(&self, staging: &Path, files: &[String], rel_dir: &str) -> Result<(), SmbError> {
        match self {
            OutputRoot::Local(root) => {
                let dir = root.join(rel_dir);
                // What a crashed publish left here is uncommitted: start clean,
                // so no file of another layout survives beside the new ones.
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
                }
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                for (moved, f) in files.iter().enumerate() {
                    super::writer::crash_failpoint(moved);
                    let to = dir.join(f);
                    std::fs::rename(staging.join(f), &to).map_err(io_err(&to))?;
                }
                super::writer::crash_failpoint(files.len());
                // Every bucket file is in place before the marker appears.
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(&dir))?;
                std::fs::rename(staging.join("metadata.json"), dir.join("metadata.json"))
                    .map_err(io_err(&dir))?;
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(&dir))?;
            }
            OutputRoot::Object(o) => {
                for stale in o.list(rel_dir)? {
                    if !files.contains(&stale) {
                        o.delete(&format!("{rel_dir}/{stale}"))?;
                    }
                }
                for f in files.iter().map(String::as_str).chain(["metadata.json"]) {
                    let path = staging.join(f);
                    o.put(
                        &format!("{rel_dir}/{f}"),
                        std::fs::read(&path).map_err(io_err(&path))?,
                    )?;
                }
            }
        }
        std::fs::remove_dir_all(staging).map_err(io_err(staging))
    }

    /// Appends one line to `_commits.ndjson` at the root (an object store
    /// rewrites the object: one writer per output).
    pub fn append_commit_line(&self, line: &str) -> Result<(), SmbError> {
        match self {
            OutputRoot::Local(root) => {
                use std::io::Write;
                let log = root.join("_commits.ndjson");
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .map_err(io_err(&log))?;
                writeln!(f, "{line}")
                    .and_then(|_| f.sync_all())
                    .map_err(io_err(&log))
            }
            OutputRoot::Object(o) => {
                let mut text = self.read_commit_log()?.into_bytes();
                text.extend_from_slice(line.as_bytes());
                text.push(b'\n');
                o.put("_commits.ndjson", text)
            }
        }
    }

    /// The text of `_commits.ndjson` at the root ("" when nothing was committed).
    pub fn read_commit_log(&self) -> Result<String, SmbError> {
        Ok(self
            .read_root_file("_commits.ndjson")?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default())
    }

    /// Replaces file `name` at the root whole: readers see the old or the
    /// new contents, never a mix (a rename locally, a PUT in an object store).
    pub fn write_root_file(&self, name: &str, bytes: &[u8]) -> Result<(), SmbError> {
        match self {
            OutputRoot::Local(root) => {
                use std::io::Write;
                std::fs::create_dir_all(root).map_err(io_err(root))?;
                let tmp = root.join(format!(".{name}.tmp"));
                let path = root.join(name);
                std::fs::File::create(&tmp)
                    .and_then(|mut f| {
                        f.write_all(bytes)?;
                        f.sync_all()
                    })
                    .map_err(io_err(&tmp))?;
                std::fs::rename(&tmp, &path).map_err(io_err(&path))
            }
            OutputRoot::Object(o) => o.put(name, bytes.to_vec()),
        }
    }

    /// The contents of file `name` at the root, if any.
    pub fn read_root_file(&self, name: &str) -> Result<Option<Vec<u8>>, SmbError> {
        match self {
            OutputRoot::Local(root) => {
                let path = root.join(name);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            OutputRoot::Object(o) => Ok(o.get(name)?.map(|b| b.to_vec())),
        }
    }

    /// The contents of file `name` in partition directory `rel_dir`, if any.
    pub fn read_file(&self, rel_dir: &str, name: &str) -> Result<Option<Vec<u8>>, SmbError> {
        match self {
            OutputRoot::Local(root) => {
                let path = root.join(rel_dir).join(name);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            OutputRoot::Object(o) => Ok(o.get(&format!("{rel_dir}/{name}"))?.map(|b| b.to_vec())),
        }
    }

    /// A local directory holding committed partition `rel_dir`: the
    /// directory itself, or a download of it (for reading an object store).
    pub fn local_copy(&self, rel_dir: &str) -> Result<PathBuf, SmbError> {
        match self {
            OutputRoot::Local(root) => Ok(root.join(rel_dir)),
            OutputRoot::Object(o) => {
                let to = o.scratch.join("read").join(rel_dir);
                std::fs::create_dir_all(&to).map_err(io_err(&to))?;
                for name in o.list(rel_dir)? {
                    let bytes = o.get(&format!("{rel_dir}/{name}"))?.unwrap_or_default();
                    let path = to.join(&name);
                    std::fs::write(&path, &bytes).map_err(io_err(&path))?;
                }
                Ok(to)
            }
        }
    }
}

/// Local directories for SMB partition paths given as local paths or
/// `s3://bucket/key/prefix` URLs; S3 partitions are downloaded under
/// `scratch`. The S3 endpoint comes from `AWS_ENDPOINT_URL` (AWS when unset),
/// credentials and region from the usual AWS environment variables.
pub fn local_partition_dirs(paths: &[PathBuf], scratch: &Path) -> Result<Vec<PathBuf>, SmbError> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let text = p.to_string_lossy();
            let Some(rest) = text.strip_prefix("s3://") else {
                return Ok(p.clone());
            };
            let (bucket, rel) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || rel.trim_matches('/').is_empty() {
                return Err(SmbError::Schema(format!(
                    "{text}: expected s3://bucket/path/to/partition"
                )));
            }
            let location = S3Location {
                bucket: bucket.to_string(),
                prefix: String::new(),
                endpoint: std::env::var("AWS_ENDPOINT_URL").ok(),
                region: std::env::var("AWS_REGION").unwrap_or_else(|_| default_region()),
                access_key_id: None,
                secret_access_key: None,
            };
            let root = OutputRoot::s3(&location, &scratch.join(i.to_string()))?;
            if !root.is_committed(rel)? {
                return Err(SmbError::Schema(format!(
                    "{text} holds no committed partition (no metadata.json)"
                )));
            }
            root.local_copy(rel)
        })
        .collect()
}
