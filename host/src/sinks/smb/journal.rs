//! The durable side of a pipeline's SMB output: every record added to an
//! open partition is also appended to that partition's *segment log*, so a
//! checkpoint can commit source positions past records that are not yet in
//! any published file. A checkpoint syncs the logs and stores, with the
//! tiles and positions, an [`OutputState`]: each segment's id, partition,
//! log length and whether it is sealed (due for publishing). A restart
//! truncates each log to its committed length and replays it, so the
//! partitions hold exactly the records up to the committed positions.
//!
//! Log format: records of `key length u32 LE | datum length u32 LE | key
//! (UTF-8) | datum (Avro binary)`.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::writer::{io_err, SmbError};

/// What a checkpoint records of one output (JSON in the store's positions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputState {
    pub version: u32,
    pub segments: Vec<SegmentState>,
    /// The largest seal time so far (late segments are told apart by it).
    #[serde(default)]
    pub horizon_ms: Option<i64>,
}

impl OutputState {
    pub const VERSION: u32 = 1;
}

/// One segment: the records one partition received between two seals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentState {
    /// Unique across runs (random); the commit marker of the directory it
    /// is published to names it, which makes publishing idempotent.
    pub id: String,
    pub partition_start_ms: i64,
    /// Committed bytes of the segment's log.
    pub log_len: u64,
    pub records: u64,
    /// Sealed: no more records; published after the checkpoint commits.
    pub sealed: bool,
    /// For a late segment: the seal horizon when it opened.
    #[serde(default)]
    pub late_since_ms: Option<i64>,
}

/// A new random segment id (16 hex digits).
pub fn new_segment_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The append-only log of one segment.
pub struct SegmentLog {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl SegmentLog {
    pub fn path_of(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("segment-{id}.log"))
    }

    /// A new, empty log.
    pub fn create(dir: &Path, id: &str) -> Result<Self, SmbError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = Self::path_of(dir, id);
        let file = File::create(&path).map_err(io_err(&path))?;
        Ok(SegmentLog {
            out: BufWriter::with_capacity(256 * 1024, file),
            path,
            len: 0,
        })
    }

    /// Cuts the log back to its committed length and calls `each` with
    /// every record in it; the log then appends after them.
    pub fn recover(
        dir: &Path,
        id: &str,
        committed_len: u64,
        mut each: impl FnMut(&str, &[u8]) -> Result<(), SmbError>,
    ) -> Result<Self, SmbError> {
        let path = Self::path_of(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| SmbError::Journal(format!(
                "{}: segment {id} was committed with {committed_len} bytes but its log cannot be opened: {e}",
                path.display()
            )))?;
        let actual = file.metadata().map_err(io_err(&path))?.len();
        if actual < committed_len {
            return Err(SmbError::Journal(format!(
                "{}: {actual} bytes, but {committed_len} were committed",
                path.display()
            )));
        }
        let mut r = BufReader::with_capacity(256 * 1024, &file);
        let (mut key, mut datum) = (Vec::new(), Vec::new());
        let mut at = 0u64;
        while at < committed_len {
            let mut lens = [0u8; 8];
            r.read_exact(&mut lens).map_err(io_err(&path))?;
            let k = u32::from_le_bytes(lens[..4].try_into().expect("4")) as usize;
            let d = u32::from_le_bytes(lens[4..].try_into().expect("4")) as usize;
            key.resize(k, 0);
            datum.resize(d, 0);
            r.read_exact(&mut key)
                .and_then(|_| r.read_exact(&mut datum))
                .map_err(io_err(&path))?;
            let key = std::str::from_utf8(&key).map_err(|_| {
                SmbError::Journal(format!(
                    "{}: a key at byte {at} is not UTF-8",
                    path.display()
                ))
            })?;
            each(key, &datum)?;
            at += 8 + (k + d) as u64;
        }
        if at != committed_len {
            return Err(SmbError::Journal(format!(
                "{}: a record runs past the committed length {committed_len}",
                path.display()
            )));
        }
        drop(r);
        // Only now, with every committed record read back: cut off the rest.
        file.set_len(committed_len).map_err(io_err(&path))?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(io_err(&path))?;
        Ok(SegmentLog {
            out: BufWriter::with_capacity(256 * 1024, file),
            path,
            len: committed_len,
        })
    }

    pub fn append(&mut self, key: &str, datum: &[u8]) -> Result<(), SmbError> {
        let mut lens = [0u8; 8];
        lens[..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
        lens[4..].copy_from_slice(&(datum.len() as u32).to_le_bytes());
        self.out
            .write_all(&lens)
            .and_then(|_| self.out.write_all(key.as_bytes()))
            .and_then(|_| self.out.write_all(datum))
            .map_err(io_err(&self.path))?;
        self.len += 8 + (key.len() + datum.len()) as u64;
        Ok(())
    }

    /// Bytes appended so far (durable only up to the last [`sync`](Self::sync)).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes everything appended durable; returns the log's length.
    pub fn sync(&mut self) -> Result<u64, SmbError> {
        self.out.flush().map_err(io_err(&self.path))?;
        self.out.get_ref().sync_data().map_err(io_err(&self.path))?;
        Ok(self.len)
    }

    pub fn remove(self) -> Result<(), SmbError> {
        let path = self.path.clone();
        drop(self.out);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

/// Removes the logs in `dir` that `keep` does not name (left by records
/// added after the last checkpoint of a run that crashed).
pub fn remove_orphans(dir: &Path, keep: &[&str]) -> Result<usize, SmbError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix("segment-")
            .and_then(|n| n.strip_suffix(".log"))
        else {
            continue;
        };
        if !keep.contains(&id) {
            std::fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_replays_exactly_the_committed_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::create(dir.path(), "a").unwrap();
        log.append("k1", b"d1").unwrap();
        log.append("ключ", b"").unwrap();
        let committed = log.sync().unwrap();
        log.append("k3", b"uncommitted").unwrap();
        log.sync().unwrap();
        drop(log);
        let mut seen = Vec::new();
        let mut log = SegmentLog::recover(dir.path(), "a", committed, |k, d| {
            seen.push((k.to_string(), d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![("k1".into(), b"d1".to_vec()), ("ключ".into(), vec![])]
        );
        log.append("k4", b"d4").unwrap();
        let len = log.sync().unwrap();
        drop(log);
        let mut n = 0;
        SegmentLog::recover(dir.path(), "a", len, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 3);
        // Shorter than committed, or a length inside a record: refused.
        assert!(SegmentLog::recover(dir.path(), "a", len + 1, |_, _| Ok(())).is_err());
        assert!(SegmentLog::recover(dir.path(), "a", 5, |_, _| Ok(())).is_err());
        assert!(SegmentLog::recover(dir.path(), "missing", 0, |_, _| Ok(())).is_err());
        SegmentLog::create(dir.path(), "b").unwrap();
        assert_eq!(remove_orphans(dir.path(), &["a"]).unwrap(), 1);
        assert!(SegmentLog::path_of(dir.path(), "a").exists());
    }
}
