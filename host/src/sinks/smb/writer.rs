//! Writes one SMB partition directory: buckets records by key, sorts each
//! bucket by encoded key bytes (spilling sorted runs to disk once the
//! buffered records pass a memory budget, then merging them), and commits:
//! bucket files are written to a staging directory, moved into place, and
//! `metadata.json` is moved in last. A directory with `metadata.json` is
//! complete; one without it is not committed, whatever else it holds.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use super::avro::{Codec, ContainerWriter};
use super::bucketer::{bucket_of, encode_key, HashType};
use super::journal::SegmentLog;
use super::metadata::{BucketMetadata, LayoutError};
use super::store::OutputRoot;

/// What one SMB output looks like.
#[derive(Clone, Debug)]
pub struct SmbSpec {
    /// The Avro record schema of the files (JSON).
    pub schema_json: String,
    /// The key field: a string field of the record, nested fields by `.`.
    pub key_field: String,
    pub num_buckets: u32,
    /// Files per bucket (records of a bucket go round-robin to its shards,
    /// each sorted); more than 1 spreads a skewed bucket.
    pub num_shards: u32,
    pub hash_type: HashType,
    pub codec: Codec,
    /// Bytes of encoded records held in memory before sorted runs spill to disk.
    pub memory_budget: usize,
    /// Threads that write a partition's bucket files at commit; 0: one per core.
    pub write_threads: usize,
}

impl SmbSpec {
    /// Checks the layout, the schema and the key field; writes nothing.
    pub fn check(&self) -> Result<(), SmbError> {
        self.parts().map(|_| ())
    }

    /// The metadata, the parsed schema and the key field's path.
    fn parts(&self) -> Result<(BucketMetadata, Schema, Vec<String>), SmbError> {
        let meta = BucketMetadata::avro(
            self.num_buckets,
            self.num_shards,
            self.hash_type,
            &self.key_field,
        )?;
        let schema =
            Schema::parse_str(&self.schema_json).map_err(|e| SmbError::Schema(e.to_string()))?;
        let key_path: Vec<String> = self.key_field.split('.').map(str::to_string).collect();
        check_key_field(&schema, &key_path)?;
        Ok((meta, schema, key_path))
    }
}

/// Why writing an SMB partition failed.
#[derive(Debug, thiserror::Error)]
pub enum SmbError {
    #[error("SMB layout: {0}")]
    Layout(#[from] LayoutError),
    #[error("SMB schema: {0}")]
    Schema(String),
    /// This record cannot be written (the others are unaffected).
    #[error("record rejected: {0}")]
    Record(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("partition {0} is already committed (late data goes to a sibling directory)")]
    AlreadyCommitted(String),
    /// A segment log does not match the state a checkpoint committed.
    #[error("SMB journal: {0}")]
    Journal(String),
}

/// Maps an I/O error to [`SmbError::Io`] naming `path`.
pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SmbError + '_ {
    move |source| SmbError::Io {
        path: path.display().to_string(),
        source,
    }
}

self_cell::self_cell!(
    /// The schema and a datum writer resolved against it once (the writer
    /// borrows the schema, so both live in one cell).
    struct DatumEncoder {
        owner: Schema,
        #[covariant]
        dependent: GenericDatumWriter,
    }
);

/// A buffered record: encoded key then encoded datum, and the key's length.
struct Buffered {
    bytes: Box<[u8]>,
    key_len: u32,
}

impl Buffered {
    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len as usize]
    }
    fn datum(&self) -> &[u8] {
        &self.bytes[self.key_len as usize..]
    }
}

/// What a committed partition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSummary {
    pub dir: PathBuf,
    pub records: u64,
    pub files: usize,
    pub bytes: u64,
    pub spilled_runs: usize,
}

/// Builds one partition; [`PartitionWriter::commit`] writes it.
pub struct PartitionWriter {
    spec: SmbSpec,
    meta: BucketMetadata,
    encoder: DatumEncoder,
    key_path: Vec<String>,
    /// Per file slot (bucket × shards + shard): buffered records.
    slots: Vec<Vec<Buffered>>,
    /// Per file slot: spilled sorted runs.
    spills: Vec<Vec<PathBuf>>,
    next_shard: Vec<u32>,
    buffered_bytes: usize,
    spill_dir: PathBuf,
    records: u64,
    key_buf: Vec<u8>,
    datum_buf: Vec<u8>,
    /// When set, every record added is also appended here (see `journal.rs`).
    log: Option<SegmentLog>,
}

impl PartitionWriter {
    /// Checks the spec (layout, schema, key field) before anything is written;
    /// spilled runs go under `spill_dir` (created, and removed on drop).
    pub fn new(spec: SmbSpec, spill_dir: &Path) -> Result<Self, SmbError> {
        let (meta, schema, key_path) = spec.parts()?;
        let encoder = DatumEncoder::try_new(schema, |s| GenericDatumWriter::builder(s).build())
            .map_err(|e| SmbError::Schema(e.to_string()))?;
        let slots = (spec.num_buckets * spec.num_shards) as usize;
        std::fs::create_dir_all(spill_dir).map_err(io_err(spill_dir))?;
        Ok(PartitionWriter {
            meta,
            encoder,
            key_path,
            slots: (0..slots).map(|_| Vec::new()).collect(),
            spills: vec![Vec::new(); slots],
            next_shard: vec![0; spec.num_buckets as usize],
            buffered_bytes: 0,
            spill_dir: spill_dir.to_path_buf(),
            records: 0,
            key_buf: Vec::new(),
            datum_buf: Vec::new(),
            log: None,
            spec,
        })
    }

    /// From now on, every record added is also appended to `log`.
    pub fn set_log(&mut self, log: SegmentLog) {
        self.log = Some(log);
    }

    pub fn log_mut(&mut self) -> Option<&mut SegmentLog> {
        self.log.as_mut()
    }

    pub fn take_log(&mut self) -> Option<SegmentLog> {
        self.log.take()
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes of records held in memory (not yet in spilled runs).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    pub fn metadata(&self) -> &BucketMetadata {
        &self.meta
    }

    /// Adds a record. A record whose key is missing or not a string, or that
    /// does not match the schema, is refused with [`SmbError::Record`] and
    /// changes nothing.
    pub fn add(&mut self, record: &Value) -> Result<(), SmbError> {
        let key = key_of(record, &self.key_path)?;
        let mut datum = std::mem::take(&mut self.datum_buf);
        datum.clear();
        let encoded = self
            .encoder
            .borrow_dependent()
            .write_value_ref(&mut datum, record)
            .map_err(|e| SmbError::Record(format!("does not match the schema: {e}")));
        let added = encoded.and_then(|_| self.add_encoded(key, &datum));
        self.datum_buf = datum;
        added
    }

    /// Adds a record already encoded in Avro binary (`datum`, which must
    /// match the spec's schema) with key `key`. A key Beam cannot bucket is
    /// refused with [`SmbError::Record`] and changes nothing.
    pub fn add_encoded(&mut self, key: &str, datum: &[u8]) -> Result<(), SmbError> {
        self.key_buf.clear();
        encode_key(key, &mut self.key_buf);
        let bucket = bucket_of(self.spec.hash_type, &self.key_buf, self.spec.num_buckets)
            .ok_or_else(|| {
                SmbError::Record(format!(
                    "key {key:?} hashes to i32::MIN, which Beam cannot bucket"
                ))
            })?;
        if let Some(log) = &mut self.log {
            log.append(key, datum)?;
        }
        let shard = &mut self.next_shard[bucket as usize];
        let slot = (bucket * self.spec.num_shards + *shard) as usize;
        *shard = (*shard + 1) % self.spec.num_shards;
        let mut bytes = Vec::with_capacity(self.key_buf.len() + datum.len());
        bytes.extend_from_slice(&self.key_buf);
        bytes.extend_from_slice(datum);
        self.buffered_bytes += bytes.len() + std::mem::size_of::<Buffered>();
        self.slots[slot].push(Buffered {
            bytes: bytes.into_boxed_slice(),
            key_len: self.key_buf.len() as u32,
        });
        self.records += 1;
        if self.buffered_bytes > self.spec.memory_budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Sorts every buffered slot and writes it as a run file.
    pub(super) fn spill(&mut self) -> Result<(), SmbError> {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.is_empty() {
                continue;
            }
            slot.sort_by(|a, b| a.key().cmp(b.key()));
            let path = self
                .spill_dir
                .join(format!("run-{i}-{}", self.spills[i].len()));
            let file = File::create(&path).map_err(io_err(&path))?;
            let mut w = BufWriter::new(file);
            for r in slot.drain(..) {
                w.write_all(&(r.key_len).to_le_bytes())
                    .and_then(|_| w.write_all(&(r.bytes.len() as u32 - r.key_len).to_le_bytes()))
                    .and_then(|_| w.write_all(&r.bytes))
                    .map_err(io_err(&path))?;
            }
            w.flush().map_err(io_err(&path))?;
            self.spills[i].push(path);
        }
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Writes every bucket file (empty ones too) and commits the partition
    /// into local directory `dir` (see [`PartitionWriter::commit_to`]).
    pub fn commit(self, dir: &Path) -> Result<PartitionSummary, SmbError> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut summary = self.commit_to(&OutputRoot::local(parent), &name)?;
        summary.dir = dir.to_path_buf();
        Ok(summary)
    }

    /// Writes every bucket file (empty ones too) into a staging directory,
    /// then publishes them as `rel_dir` of `root`, `metadata.json` last.
    /// A partition already committed there is refused.
    pub fn commit_to(self, root: &OutputRoot, rel_dir: &str) -> Result<PartitionSummary, SmbError> {
        self.commit_with(root, rel_dir, &[])
    }

    /// [`commit_to`](Self::commit_to), with `extra` files (name, contents)
    /// published after the bucket files and before `metadata.json`.
    pub fn commit_with(
        mut self,
        root: &OutputRoot,
        rel_dir: &str,
        extra: &[(&str, &[u8])],
    ) -> Result<PartitionSummary, SmbError> {
        if root.is_committed(rel_dir)? {
            return Err(SmbError::AlreadyCommitted(rel_dir.to_string()));
        }
        // One writer per partition: a staging directory left by a crashed
        // commit is cleared and reused.
        let staging = root.staging_dir(rel_dir);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        let sync = sync_marker(&staging);
        // Bucket files are independent: sort, merge and compress them on
        // every core (DEFLATE is most of a commit's time).
        let slots = (self.spec.num_buckets * self.spec.num_shards) as usize;
        let queue: std::sync::Mutex<Vec<(usize, Vec<Buffered>)>> = std::sync::Mutex::new(
            std::mem::take(&mut self.slots)
                .into_iter()
                .enumerate()
                .rev()
                .collect(),
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match self.spec.write_threads {
            0 => cores,
            n => n,
        }
        .min(slots)
        .max(1);
        let written: Vec<Result<Vec<(usize, u64)>, SmbError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let next = queue.lock().expect("not poisoned").pop();
                            let Some((slot, memory)) = next else {
                                return Ok(done);
                            };
                            let bucket = slot as u32 / self.spec.num_shards;
                            let shard = slot as u32 % self.spec.num_shards;
                            let path = staging.join(self.meta.file_name(bucket, shard));
                            let bytes = write_bucket_file(
                                &path,
                                &self.spec,
                                sync,
                                memory,
                                &self.spills[slot],
                            )?;
                            done.push((slot, bytes));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bucket writer panicked"))
                .collect()
        });
        let mut bytes = 0u64;
        for w in written {
            bytes += w?.iter().map(|(_, b)| b).sum::<u64>();
        }
        let mut files: Vec<String> = (0..slots as u32)
            .map(|slot| {
                self.meta
                    .file_name(slot / self.spec.num_shards, slot % self.spec.num_shards)
            })
            .collect();
        for (name, contents) in extra {
            let path = staging.join(name);
            std::fs::write(&path, contents)
                .and_then(|_| File::open(&path)?.sync_all())
                .map_err(io_err(&path))?;
            files.push(name.to_string());
        }
        let meta_path = staging.join("metadata.json");
        std::fs::write(&meta_path, self.meta.to_json()).map_err(io_err(&meta_path))?;
        File::open(&meta_path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&meta_path))?;
        root.publish(&staging, &files, rel_dir)?;
        Ok(PartitionSummary {
            dir: PathBuf::from(rel_dir),
            records: self.records,
            files: files.len(),
            bytes,
            spilled_runs: self.spills.iter().map(Vec::len).sum(),
        })
    }
}

/// Writes one bucket file: the in-memory records sorted, merged with the
/// spilled runs, as an Avro container file, synced. Returns its size.
fn write_bucket_file(
    path: &Path,
    spec: &SmbSpec,
    sync: [u8; 16],
    mut memory: Vec<Buffered>,
    spills: &[PathBuf],
) -> Result<u64, SmbError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = ContainerWriter::new(BufWriter::new(file), &spec.schema_json, spec.codec, sync)
        .map_err(io_err(path))?;
    memory.sort_by(|a, b| a.key().cmp(b.key()));
    merge_sorted(memory, spills, |_, datum| w.append_encoded(datum)).map_err(io_err(path))?;
    let (buf, _) = w.finish().map_err(io_err(path))?;
    let file = buf.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(file.metadata().map_err(io_err(path))?.len())
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        for p in self.spills.iter().flatten() {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir(&self.spill_dir);
    }
}

/// Test failpoint: with `TESSERA_FAILPOINT_SMB_COMMIT_CRASH=n` set, the
/// process aborts during a commit after moving `n` bucket files into place
/// (`n` = the file count: after all files, before `metadata.json`). The
/// crash test uses it to kill a real process mid-commit.
pub(super) fn crash_failpoint(moved: usize) {
    let at = std::env::var("TESSERA_FAILPOINT_SMB_COMMIT_CRASH")
        .ok()
        .and_then(|v| v.parse().ok());
    if at == Some(moved) {
        std::process::abort();
    }
}

/// Test failpoint: aborts the process when `TESSERA_FAILPOINT` is `name`
/// (crash tests of the pipeline's output protocol use it).
pub(super) fn failpoint(name: &str) {
    if std::env::var("TESSERA_FAILPOINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// A sync marker that differs between partitions (Avro only needs it to be
/// unlikely to occur in the data).
fn sync_marker(dir: &Path) -> [u8; 16] {
    let seed = format!("{}{:?}", dir.display(), std::time::SystemTime::now());
    let (a, b) = super::bucketer::murmur3_x64_128(seed.as_bytes(), 0x5eed);
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&a.to_le_bytes());
    s[8..].copy_from_slice(&b.to_le_bytes());
    s
}

/// Checks that the key path names a string (or nullable string) field.
fn check_key_field(schema: &Schema, path: &[String]) -> Result<(), SmbError> {
    let mut current = schema;
    for (i, name) in path.iter().enumerate() {
        let Schema::Record(r) = current else {
            return Err(SmbError::Schema(format!(
                "key field `{}`: `{}` is not a record",
                path.join("."),
                path[..i].join(".")
            )));
        };
        let field = r.fields.iter().find(|f| &f.name == name).ok_or_else(|| {
            SmbError::Schema(format!(
                "key field `{}`: no field `{name}` in the schema",
                path.join(".")
            ))
        })?;
        current = &field.schema;
        if let Schema::Union(u) = current {
            if let Some(s) = u.variants().iter().find(|s| !matches!(s, Schema::Null)) {
                current = s;
            }
        }
    }
    if !matches!(current, Schema::String) {
        return Err(SmbError::Schema(format!(
            "key field `{}` must be a string (keyClass java.lang.String)",
            path.join(".")
        )));
    }
    Ok(())
}

/// The key string of a record.
pub(super) fn key_of<'v>(record: &'v Value, path: &[String]) -> Result<&'v str, SmbError> {
    let mut current = record;
    for name in path {
        if let Value::Union(_, inner) = current {
            current = inner;
        }
        let Value::Record(fields) = current else {
            return Err(SmbError::Record(format!(
                "key field `{}`: not a record",
                path.join(".")
            )));
        };
        current = fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| SmbError::Record(format!("no key field `{}`", path.join("."))))?;
    }
    if let Value::Union(_, inner) = current {
        current = inner;
    }
    match current {
        Value::String(s) => Ok(s),
        Value::Null => Err(SmbError::Record(format!(
            "key field `{}` is null",
            path.join(".")
        ))),
        other => Err(SmbError::Record(format!(
            "key field `{}` is not a string: {other:?}",
            path.join(".")
        ))),
    }
}

/// One sorted source of (key, datum) in a k-way merge.
struct RunReader {
    reader: BufReader<File>,
    key: Vec<u8>,
    datum: Vec<u8>,
    /// Source index: ties go to the lower one, keeping arrival order.
    order: usize,
}

impl RunReader {
    fn next(&mut self) -> std::io::Result<bool> {
        let mut len = [0u8; 8];
        match self.reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let k = u32::from_le_bytes(len[..4].try_into().expect("4")) as usize;
        let d = u32::from_le_bytes(len[4..].try_into().expect("4")) as usize;
        self.key.resize(k, 0);
        self.datum.resize(d, 0);
        self.reader.read_exact(&mut self.key)?;
        self.reader.read_exact(&mut self.datum)?;
        Ok(true)
    }
}

impl PartialEq for RunReader {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for RunReader {}
impl PartialOrd for RunReader {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for RunReader {
    /// Reversed: `BinaryHeap` is a max-heap and the merge wants the smallest.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key).then(other.order.cmp(&self.order))
    }
}

/// Calls `emit` with every (key, datum) of the spilled runs (oldest first)
/// and the in-memory records, in key order; equal keys keep arrival order.
fn merge_sorted(
    memory: Vec<Buffered>,
    runs: &[PathBuf],
    mut emit: impl FnMut(&[u8], &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if runs.is_empty() {
        for r in &memory {
            emit(r.key(), r.datum())?;
        }
        return Ok(());
    }
    let mut heap = BinaryHeap::new();
    for (order, path) in runs.iter().enumerate() {
        let mut r = RunReader {
            reader: BufReader::with_capacity(64 * 1024, File::open(path)?),
            key: Vec::new(),
            datum: Vec::new(),
            order,
        };
        if r.next()? {
            heap.push(r);
        }
    }
    // The in-memory records are the newest source.
    let mut mem = memory.iter().peekable();
    loop {
        let take_mem = match (heap.peek(), mem.peek()) {
            (None, None) => return Ok(()),
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(h), Some(m)) => m.key() < h.key.as_slice(),
        };
        if take_mem {
            let m = mem.next().expect("peeked");
            emit(m.key(), m.datum())?;
        } else {
            let mut top = heap.pop().expect("peeked");
            emit(&top.key, &top.datum)?;
            if top.next()? {
                heap.push(top);
            }
        }
    }
}
