//! The file source: NDJSON (one record per line) and Avro object container
//! files, a single file or every input file of a directory in name order.
//!
//! Records: for NDJSON, each non-blank line (offset = line number, from 1);
//! for Avro, each datum converted to JSON text (offset = datum number, from
//! 1), so the same JSON parser plugin reads both. `topic` is the file path,
//! the ingestion timestamp is when the host read the record.
//!
//! Positions (JSON per file: records consumed, byte offset, done) are
//! committed with the tiles; a restart seeks NDJSON files to the byte offset
//! and skips consumed Avro datums.
//!
//! Limits: a line longer than [`MAX_RECORD_BYTES`] is a read error (dead
//! letter, truncated); a corrupt Avro file or block ends that file with a
//! read error saying how many datums were read.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ReadError, Source, SourceBatch};
use crate::config::FileFormat;
use crate::error::{PipelineError, SourceError};
use crate::record::{now_ms, RawBatchBuilder};
use crate::stores::TileStore;

/// Longest NDJSON line accepted as a record.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// How much of a rejected record the dead letter keeps.
const DEAD_LETTER_SNIPPET: usize = 1024;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct FilePosition {
    records: u64,
    byte_offset: u64,
    done: bool,
}

enum Reader {
    Ndjson(BufReader<File>),
    Avro(Box<apache_avro::Reader<'static, BufReader<File>>>),
}

struct InputFile {
    path: PathBuf,
    key: String,
    format: FileFormat,
    pos: FilePosition,
    reader: Option<Reader>,
}

pub struct FileSource {
    files: Vec<InputFile>,
    current: usize,
    line: Vec<u8>,
}

impl FileSource {
    /// Lists the input files and resumes each from its committed position.
    pub fn open(
        path: &Path,
        format: FileFormat,
        store: &dyn TileStore,
        pipeline: &str,
    ) -> Result<Self, PipelineError> {
        let paths = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| SourceError::Open {
                    path: path.to_owned(),
                    source: e,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_input_file(p, format))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(SourceError::NoFiles(path.to_owned()).into());
            }
            v
        } else {
            if !path.exists() {
                return Err(SourceError::Open {
                    path: path.to_owned(),
                    source: std::io::ErrorKind::NotFound.into(),
                }
                .into());
            }
            vec![path.to_owned()]
        };
        let mut files = Vec::new();
        for p in paths {
            let key = format!("file:{}", p.display());
            let pos = match store.position(pipeline, &key)? {
                Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                None => FilePosition::default(),
            };
            let format = match format {
                FileFormat::Auto if p.extension().is_some_and(|e| e == "avro") => FileFormat::Avro,
                FileFormat::Auto => FileFormat::Ndjson,
                f => f,
            };
            files.push(InputFile {
                path: p,
                key,
                format,
                pos,
                reader: None,
            });
        }
        Ok(FileSource {
            files,
            current: 0,
            line: Vec::new(),
        })
    }
}

fn is_input_file(p: &Path, format: FileFormat) -> bool {
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
    match format {
        FileFormat::Avro => ext == "avro",
        FileFormat::Ndjson => matches!(ext, "ndjson" | "jsonl" | "json"),
        FileFormat::Auto => matches!(ext, "ndjson" | "jsonl" | "json" | "avro"),
    }
}

fn snippet(b: &[u8]) -> Vec<u8> {
    b[..b.len().min(DEAD_LETTER_SNIPPET)].to_vec()
}

impl InputFile {
    fn open_reader(&mut self) -> Result<(), SourceError> {
        let file = File::open(&self.path).map_err(|e| SourceError::Open {
            path: self.path.clone(),
            source: e,
        })?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        match self.format {
            FileFormat::Avro => {
                // A bad header is reported by the first read, as a read error.
                match apache_avro::Reader::new(r) {
                    Ok(mut reader) => {
                        for _ in 0..self.pos.records {
                            if reader.next().is_none() {
                                break;
                            }
                        }
                        self.reader = Some(Reader::Avro(Box::new(reader)));
                    }
                    Err(e) => {
                        self.reader = None;
                        return Err(SourceError::Read {
                            path: self.path.clone(),
                            source: std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!("not an Avro object container file: {e}"),
                            ),
                        });
                    }
                }
            }
            _ => {
                r.seek(SeekFrom::Start(self.pos.byte_offset))
                    .map_err(|e| SourceError::Read {
                        path: self.path.clone(),
                        source: e,
                    })?;
                self.reader = Some(Reader::Ndjson(r));
            }
        }
        Ok(())
    }
}

impl Source for FileSource {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<SourceBatch>, SourceError> {
        loop {
            let Some(file) = self.files.get_mut(self.current) else {
                return Ok(None);
            };
            if file.pos.done {
                self.current += 1;
                continue;
            }
            let topic = file.path.display().to_string();
            let mut read_errors = Vec::new();
            if file.reader.is_none() {
                if let Err(e) = file.open_reader() {
                    // The file as a whole is unreadable: dead-letter it and move on.
                    match e {
                        SourceError::Read { source, .. } => {
                            read_errors.push(ReadError {
                                topic: topic.clone(),
                                offset: 0,
                                reason: source.to_string(),
                                payload: Vec::new(),
                            });
                            file.pos.done = true;
                            self.current += 1;
                            let raw = RawBatchBuilder::new(&topic, 0).finish();
                            return Ok(Some(SourceBatch {
                                raw,
                                read_errors,
                                rolled_back: false,
                            }));
                        }
                        other => return Err(other),
                    }
                }
            }
            let ingested = now_ms();
            let mut batch = RawBatchBuilder::new(&topic, 0);
            let mut eof = false;
            match file.reader.as_mut() {
                Some(Reader::Ndjson(r)) => {
                    while batch.len() < max_records && batch.payload_bytes() < (8 << 20) {
                        self.line.clear();
                        let n = Read::by_ref(r)
                            .take(MAX_RECORD_BYTES as u64 + 1)
                            .read_until(b'\n', &mut self.line)
                            .map_err(|e| SourceError::Read {
                                path: file.path.clone(),
                                source: e,
                            })?;
                        if n == 0 {
                            eof = true;
                            break;
                        }
                        let mut consumed = n as u64;
                        let mut line: &[u8] = &self.line;
                        if line.len() > MAX_RECORD_BYTES && !line.ends_with(b"\n") {
                            // Skip the rest of the over-long line.
                            let mut rest = Vec::new();
                            let skipped =
                                r.read_until(b'\n', &mut rest)
                                    .map_err(|e| SourceError::Read {
                                        path: file.path.clone(),
                                        source: e,
                                    })?;
                            consumed += skipped as u64;
                            file.pos.records += 1;
                            file.pos.byte_offset += consumed;
                            read_errors.push(ReadError {
                                topic: topic.clone(),
                                offset: file.pos.records as i64,
                                reason: format!("line longer than {MAX_RECORD_BYTES} bytes"),
                                payload: snippet(line),
                            });
                            continue;
                        }
                        while let [rest @ .., b'\n' | b'\r'] = line {
                            line = rest;
                        }
                        file.pos.records += 1;
                        file.pos.byte_offset += consumed;
                        if line.iter().all(|b| b.is_ascii_whitespace()) {
                            continue;
                        }
                        batch.push(file.pos.records as i64, ingested, b"", line);
                    }
                }
                Some(Reader::Avro(r)) => {
                    while batch.len() < max_records {
                        match r.next() {
                            None => {
                                eof = true;
                                break;
                            }
                            Some(Ok(value)) => {
                                file.pos.records += 1;
                                let json: Result<serde_json::Value, _> = value.try_into();
                                match json {
                                    Ok(j) => batch.push(
                                        file.pos.records as i64,
                                        ingested,
                                        b"",
                                        j.to_string().as_bytes(),
                                    ),
                                    Err(e) => read_errors.push(ReadError {
                                        topic: topic.clone(),
                                        offset: file.pos.records as i64,
                                        reason: format!("Avro datum has no JSON form: {e}"),
                                        payload: Vec::new(),
                                    }),
                                }
                            }
                            Some(Err(e)) => {
                                read_errors.push(ReadError {
                                    topic: topic.clone(),
                                    offset: file.pos.records as i64 + 1,
                                    reason: format!("corrupt Avro data after {} datums, rest of file skipped: {e}", file.pos.records),
                                    payload: Vec::new(),
                                });
                                eof = true;
                                break;
                            }
                        }
                    }
                }
                None => unreachable!("reader opened above"),
            }
            if eof {
                file.pos.done = true;
                file.reader = None;
                self.current += 1;
            }
            if batch.is_empty() && read_errors.is_empty() {
                continue;
            }
            return Ok(Some(SourceBatch {
                raw: batch.finish(),
                read_errors,
                rolled_back: false,
            }));
        }
    }

    fn positions(&self) -> Vec<(String, Vec<u8>)> {
        self.files
            .iter()
            .filter(|f| f.pos != FilePosition::default())
            .map(|f| {
                (
                    f.key.clone(),
                    serde_json::to_vec(&f.pos).unwrap_or_default(),
                )
            })
            .collect()
    }

    fn describe_position(&self) -> String {
        match self.files.get(self.current) {
            Some(f) => format!(
                "{} record {}",
                f.path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                f.pos.records
            ),
            None => "end of input".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::bytes_at;
    use crate::stores::{Checkpoint, EmbeddedStore};

    fn payloads(b: &SourceBatch) -> Vec<String> {
        (0..b.raw.offsets.len())
            .map(|i| String::from_utf8_lossy(bytes_at(&b.raw.payloads, i).unwrap()).into_owned())
            .collect()
    }

    #[test]
    fn ndjson_lines_resume_from_the_committed_position() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.ndjson");
        std::fs::write(&input, "a\n\nb\r\nc\nd\ne").unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let mut src = FileSource::open(&input, FileFormat::Auto, &store, "p").unwrap();
        let b = src.next_batch(2).unwrap().unwrap();
        assert_eq!(payloads(&b), vec!["a", "b"]);
        assert_eq!(
            b.raw.offsets,
            vec![1, 3],
            "offsets are line numbers; the blank line is skipped"
        );
        store
            .commit(&Checkpoint {
                pipeline: "p".into(),
                instance: String::new(),
                deltas: Default::default(),
                positions: src.positions(),
            })
            .unwrap();
        // Read further without committing: a restart must not skip these.
        assert_eq!(
            payloads(&src.next_batch(2).unwrap().unwrap()),
            vec!["c", "d"]
        );
        let mut again = FileSource::open(&input, FileFormat::Auto, &store, "p").unwrap();
        let b = again.next_batch(10).unwrap().unwrap();
        assert_eq!(payloads(&b), vec!["c", "d", "e"]);
        assert_eq!(b.raw.offsets, vec![4, 5, 6]);
        assert!(again.next_batch(10).unwrap().is_none());
    }

    #[test]
    fn an_over_long_line_is_a_read_error_and_the_next_lines_still_come() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("big.ndjson");
        let mut text = b"first\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES + 10));
        text.extend_from_slice(b"\nlast\n");
        std::fs::write(&input, text).unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let mut src = FileSource::open(&input, FileFormat::Ndjson, &store, "p").unwrap();
        let mut got = Vec::new();
        let mut errors = Vec::new();
        while let Some(b) = src.next_batch(10).unwrap() {
            got.extend(payloads(&b));
            errors.extend(b.read_errors);
        }
        assert_eq!(got, vec!["first", "last"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].offset, 2);
        assert!(errors[0].reason.contains("longer than"));
        assert_eq!(errors[0].payload.len(), DEAD_LETTER_SNIPPET);
    }

    #[test]
    fn a_missing_path_or_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        assert!(FileSource::open(
            &dir.path().join("nope.ndjson"),
            FileFormat::Auto,
            &store,
            "p"
        )
        .is_err());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(
            FileSource::open(&empty, FileFormat::Auto, &store, "p"),
            Err(PipelineError::Source(SourceError::NoFiles(_)))
        ));
    }
}
