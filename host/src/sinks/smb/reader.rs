//! Reads SMB outputs back and joins two of them by key without a shuffle,
//! the way Beam's `SortedBucketSource` does: all sources are read in the
//! smallest bucket count among them (`abs(h) % big ≡ bucket (mod small)` for
//! power-of-two counts, so bucket `b` of the join is buckets `b`, `b + small`,
//! ... of a larger source), and the sorted files of one join bucket are merged
//! by encoded key. A partition with late data is several directories (the
//! original and its siblings); they are read as one source.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use apache_avro::types::Value;
use apache_avro::Reader;

use super::bucketer::{encode_key, HashType};
use super::metadata::BucketMetadata;
use super::writer::{io_err, key_of, SmbError};

/// One SMB source: committed directories sharing a key field and hash.
#[derive(Clone, Debug)]
pub struct SmbSource {
    dirs: Vec<(PathBuf, BucketMetadata)>,
    key_path: Vec<String>,
    hash_type: HashType,
}

impl SmbSource {
    /// Opens committed directories (each must hold `metadata.json`) of one
    /// output; they must agree on key field and hash type.
    pub fn open(dirs: &[PathBuf]) -> Result<Self, SmbError> {
        let mut out = Vec::new();
        for d in dirs {
            let path = d.join("metadata.json");
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            out.push((d.clone(), BucketMetadata::from_json(&text)?));
        }
        let Some((_, first)) = out.first() else {
            return Err(SmbError::Schema(
                "an SMB source needs at least one directory".into(),
            ));
        };
        let (key_field, hash_type) = (first.key_field.clone(), first.hash_type);
        if let Some((d, m)) = out
            .iter()
            .find(|(_, m)| m.key_field != key_field || m.hash_type != hash_type)
        {
            return Err(SmbError::Schema(format!(
                "{} is keyed by `{}` with {:?}, the source by `{key_field}` with {hash_type:?}",
                d.display(),
                m.key_field,
                m.hash_type
            )));
        }
        Ok(SmbSource {
            key_path: key_field.split('.').map(str::to_string).collect(),
            hash_type,
            dirs: out,
        })
    }

    /// The smallest bucket count among the directories.
    pub fn min_buckets(&self) -> u32 {
        self.dirs
            .iter()
            .map(|(_, m)| m.num_buckets)
            .min()
            .unwrap_or(1)
    }

    /// The files that make up join bucket `b` when reading in `n` buckets.
    fn files_of(&self, b: u32, n: u32) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for (dir, m) in &self.dirs {
            let mut bucket = b;
            while bucket < m.num_buckets {
                for shard in 0..m.num_shards {
                    files.push(dir.join(m.file_name(bucket, shard)));
                }
                bucket += n;
            }
        }
        files
    }

    /// Records of join bucket `b` (of `n`), in encoded-key order.
    pub fn bucket(&self, b: u32, n: u32) -> Result<BucketIter, SmbError> {
        let mut heap = BinaryHeap::new();
        for (order, path) in self.files_of(b, n).into_iter().enumerate() {
            let file = File::open(&path).map_err(io_err(&path))?;
            let reader = Reader::new(BufReader::new(file))
                .map_err(|e| SmbError::Schema(format!("{}: {e}", path.display())))?;
            let mut head = FileHead {
                reader,
                path,
                key: Vec::new(),
                record: Value::Null,
                order,
            };
            if head.advance(&self.key_path)? {
                heap.push(head);
            }
        }
        Ok(BucketIter {
            heap,
            key_path: self.key_path.clone(),
        })
    }
}

/// The next record of one sorted file.
struct FileHead {
    reader: Reader<'static, BufReader<File>>,
    path: PathBuf,
    key: Vec<u8>,
    record: Value,
    order: usize,
}

impl FileHead {
    /// Reads the next record; fails when the file is not sorted by key.
    fn advance(&mut self, key_path: &[String]) -> Result<bool, SmbError> {
        let Some(next) = self.reader.next() else {
            return Ok(false);
        };
        let record = next.map_err(|e| SmbError::Schema(format!("{}: {e}", self.path.display())))?;
        let mut key = Vec::new();
        encode_key(key_of(&record, key_path)?, &mut key);
        if key < self.key {
            return Err(SmbError::Schema(format!(
                "{} is not sorted by its key",
                self.path.display()
            )));
        }
        self.key = key;
        self.record = record;
        Ok(true)
    }
}

impl PartialEq for FileHead {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for FileHead {}
impl PartialOrd for FileHead {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for FileHead {
    /// Reversed for the max-heap: smallest key first, then file order.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key).then(other.order.cmp(&self.order))
    }
}

/// Records of one join bucket as (encoded key, record), in key order.
pub struct BucketIter {
    heap: BinaryHeap<FileHead>,
    key_path: Vec<String>,
}

impl Iterator for BucketIter {
    type Item = Result<(Vec<u8>, Value), SmbError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut top = self.heap.pop()?;
        let item = (
            top.key.clone(),
            std::mem::replace(&mut top.record, Value::Null),
        );
        match top.advance(&self.key_path) {
            Ok(true) => self.heap.push(top),
            Ok(false) => {}
            Err(e) => return Some(Err(e)),
        }
        Some(Ok(item))
    }
}

/// What a join saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinStats {
    pub left_records: u64,
    pub right_records: u64,
    pub keys_matched: u64,
    pub pairs: u64,
}

/// Inner sort-merge join of two SMB sources by key, bucket by bucket: for
/// every key on both sides, `emit(key, left records, right records)`.
/// The sources must use the same hash; bucket counts may differ.
pub fn smb_join(
    left: &SmbSource,
    right: &SmbSource,
    mut emit: impl FnMut(&str, &[Value], &[Value]) -> Result<(), SmbError>,
) -> Result<JoinStats, SmbError> {
    if left.hash_type != right.hash_type {
        return Err(SmbError::Schema(format!(
            "cannot join {:?} and {:?} buckets: both sides must use the same hash",
            left.hash_type, right.hash_type
        )));
    }
    let n = left.min_buckets().min(right.min_buckets());
    let mut stats = JoinStats::default();
    for b in 0..n {
        let mut l = Grouped::new(left.bucket(b, n)?);
        let mut r = Grouped::new(right.bucket(b, n)?);
        let (mut lg, mut rg) = (l.next_group()?, r.next_group()?);
        while let (Some((lk, lv)), Some((rk, rv))) = (&lg, &rg) {
            match lk.cmp(rk) {
                Ordering::Less => lg = l.next_group()?,
                Ordering::Greater => rg = r.next_group()?,
                Ordering::Equal => {
                    let key = decode_key(lk);
                    emit(&key, lv, rv)?;
                    stats.keys_matched += 1;
                    stats.pairs += (lv.len() * rv.len()) as u64;
                    lg = l.next_group()?;
                    rg = r.next_group()?;
                }
            }
        }
        // Count what is left unread on either side.
        while lg.is_some() {
            lg = l.next_group()?;
        }
        while rg.is_some() {
            rg = r.next_group()?;
        }
        stats.left_records += l.records;
        stats.right_records += r.records;
    }
    Ok(stats)
}

/// The string of a nested-encoded key (the LEB128 length skipped).
fn decode_key(encoded: &[u8]) -> String {
    let mut skip = 0;
    crate::varint::get_u64(encoded, &mut skip);
    String::from_utf8_lossy(&encoded[skip..]).into_owned()
}

/// An encoded key and the records that carry it.
type KeyGroup = (Vec<u8>, Vec<Value>);

/// Groups a key-ordered bucket into (key, records with that key).
struct Grouped {
    it: std::iter::Peekable<BucketIter>,
    records: u64,
}

impl Grouped {
    fn new(it: BucketIter) -> Self {
        Grouped {
            it: it.peekable(),
            records: 0,
        }
    }

    fn next_group(&mut self) -> Result<Option<KeyGroup>, SmbError> {
        let Some(first) = self.it.next() else {
            return Ok(None);
        };
        let (key, record) = first?;
        let mut records = vec![record];
        while let Some(Ok((k, _))) = self.it.peek() {
            if *k != key {
                break;
            }
            let (_, r) = self.it.next().expect("peeked")?;
            records.push(r);
        }
        if let Some(Err(_)) = self.it.peek() {
            return Err(self
                .it
                .next()
                .expect("peeked")
                .expect_err("peeked an error"));
        }
        self.records += records.len() as u64;
        Ok(Some((key, records)))
    }
}
