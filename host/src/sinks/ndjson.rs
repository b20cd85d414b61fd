//! Append-only NDJSON files, and the dead-letter record shape.

use base64::Engine as _;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::SinkError;

/// An NDJSON file that rows are appended to.
///
/// Its length is committed with each checkpoint ([`committed_len`](Self::committed_len));
/// on restart the file is cut back to the committed length, because the
/// records behind anything written later are processed again. So each
/// rejected record appears once, even across a crash.
pub struct NdjsonSink {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    len: u64,
    /// The length when opened: where a roll-back with nothing committed
    /// cuts back to.
    opened_len: u64,
}

impl NdjsonSink {
    /// The file is created (with its directory) on the first write.
    pub fn new(path: &Path) -> Self {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        NdjsonSink {
            path: path.to_owned(),
            out: None,
            len,
            opened_len: len,
        }
    }

    /// Opens the sink where the last checkpoint left it: anything beyond
    /// `committed_len` was written by work that was never committed and is
    /// cut off. Without a committed length the file is appended to as is.
    pub fn resume(path: &Path, committed_len: Option<u64>) -> Result<Self, SinkError> {
        let mut sink = NdjsonSink::new(path);
        if let Some(committed) = committed_len {
            if sink.len > committed {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| sink.err(e))?;
                f.set_len(committed).map_err(|e| sink.err(e))?;
                f.sync_all().map_err(|e| sink.err(e))?;
                tracing::info!(path = %path.display(), cut = sink.len - committed, "cut uncommitted rows from the end of the file");
                sink.len = committed;
                sink.opened_len = committed;
            }
        }
        Ok(sink)
    }

    /// Forgets what was written after `committed_len` (a pipeline rolling
    /// back to its last checkpoint): unflushed rows are dropped unwritten and
    /// the file is cut back.
    pub fn roll_back(&mut self, committed_len: Option<u64>) -> Result<(), SinkError> {
        if let Some(out) = self.out.take() {
            // Drops the buffer without writing it.
            let _ = out.into_parts();
        }
        let path = self.path.clone();
        let opened = self.opened_len;
        *self = NdjsonSink::resume(&path, Some(committed_len.unwrap_or(opened)))?;
        self.opened_len = opened;
        Ok(())
    }

    /// The file length to commit with a checkpoint (call after [`sync`](Self::sync)).
    pub fn committed_len(&self) -> u64 {
        self.len
    }

    fn err(&self, e: std::io::Error) -> SinkError {
        SinkError::Write {
            path: self.path.clone(),
            source: e,
        }
    }

    pub fn write<T: Serialize>(&mut self, row: &T) -> Result<(), SinkError> {
        if self.out.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.err(e))?;
            self.out = Some(BufWriter::new(f));
        }
        let mut line = serde_json::to_vec(row).map_err(|e| self.err(e.into()))?;
        line.push(b'\n');
        let out = self.out.as_mut().expect("opened above");
        out.write_all(&line).map_err(|e| SinkError::Write {
            path: self.path.clone(),
            source: e,
        })?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Flushes and fsyncs what was written.
    pub fn sync(&mut self) -> Result<(), SinkError> {
        if let Some(out) = self.out.as_mut() {
            out.flush().map_err(|e| SinkError::Write {
                path: self.path.clone(),
                source: e,
            })?;
            out.get_ref().sync_data().map_err(|e| SinkError::Write {
                path: self.path.clone(),
                source: e,
            })?;
        }
        Ok(())
    }
}

/// One rejected record, as written to the dead letter.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DeadLetter {
    /// When it was rejected (ms since the Unix epoch).
    pub at: i64,
    pub pipeline: String,
    /// `source`, `parse`, `feature`, `tile` or `late`.
    pub stage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
    pub reason: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The raw record, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The raw record, base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl DeadLetter {
    pub fn set_payload(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(s) => self.payload = Some(s.to_string()),
            Err(_) => {
                self.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dl.ndjson");
        let mut sink = NdjsonSink::new(&path);
        let mut dl = DeadLetter {
            at: 1,
            pipeline: "p".into(),
            stage: "parse",
            plugin: Some("json".into()),
            plugin_version: None,
            reason: "bad".into(),
            topic: "t".into(),
            partition: 0,
            offset: 3,
            payload: None,
            payload_base64: None,
        };
        dl.set_payload(&[0xff, 0x00]);
        sink.write(&dl).unwrap();
        sink.sync().unwrap();
        let committed = sink.committed_len();
        sink.write(&dl).unwrap();
        sink.sync().unwrap();
        drop(sink);
        // A restart cuts what was written after the committed length.
        let sink = NdjsonSink::resume(&path, Some(committed)).unwrap();
        assert_eq!(sink.committed_len(), committed);
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["payload_base64"], "/wA=");
        assert_eq!(v["stage"], "parse");
        assert!(v.get("payload").is_none());
    }
}
