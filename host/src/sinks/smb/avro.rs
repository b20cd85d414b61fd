//! A minimal Avro object container file writer that appends datums already
//! encoded in Avro binary: SMB sorts encoded datums (in memory and in spill
//! files), so writing them must not decode and re-encode each one.
//!
//! Layout (Avro 1.11 spec, "Object Container Files"): magic `Obj\x01`, the
//! file metadata map (`avro.schema`, `avro.codec`), a 16-byte sync marker,
//! then blocks of `count long | size long | data | sync`. Codec `deflate` is
//! raw DEFLATE (RFC 1951, zlib-rs through flate2); blocks are cut at ~64 KB of datums, as Avro's
//! Java writer does by default.

use std::io::Write;

/// Datum bytes per block before it is cut (Avro Java's default sync interval).
const BLOCK_BYTES: usize = 64_000;

/// The block codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Null,
    /// Raw DEFLATE at a level from 0 to 9.
    Deflate(u8),
}

use crate::varint::put_i64 as put_long;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Writes one container file to `W`.
pub struct ContainerWriter<W: Write> {
    out: W,
    codec: Codec,
    sync: [u8; 16],
    block: Vec<u8>,
    block_count: i64,
    frame: Vec<u8>,
    /// The compression buffer, reused between blocks.
    compressed: Vec<u8>,
    records: u64,
}

impl<W: Write> ContainerWriter<W> {
    /// Writes the header. `sync` should differ between files (any 16 bytes).
    pub fn new(
        mut out: W,
        schema_json: &str,
        codec: Codec,
        sync: [u8; 16],
    ) -> std::io::Result<Self> {
        let mut h = Vec::with_capacity(schema_json.len() + 64);
        h.extend_from_slice(b"Obj\x01");
        put_long(&mut h, 2);
        put_bytes(&mut h, b"avro.schema");
        put_bytes(&mut h, schema_json.as_bytes());
        put_bytes(&mut h, b"avro.codec");
        put_bytes(
            &mut h,
            match codec {
                Codec::Null => b"null".as_slice(),
                Codec::Deflate(_) => b"deflate".as_slice(),
            },
        );
        put_long(&mut h, 0);
        h.extend_from_slice(&sync);
        out.write_all(&h)?;
        Ok(ContainerWriter {
            out,
            codec,
            sync,
            block: Vec::with_capacity(BLOCK_BYTES + 1024),
            block_count: 0,
            frame: Vec::new(),
            compressed: Vec::new(),
            records: 0,
        })
    }

    /// Appends one datum, encoded in Avro binary with the file's schema.
    pub fn append_encoded(&mut self, datum: &[u8]) -> std::io::Result<()> {
        self.block.extend_from_slice(datum);
        self.block_count += 1;
        self.records += 1;
        if self.block.len() >= BLOCK_BYTES {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> std::io::Result<()> {
        if self.block_count == 0 {
            return Ok(());
        }
        if let Codec::Deflate(level) = self.codec {
            let mut e = flate2::write::DeflateEncoder::new(
                std::mem::take(&mut self.compressed),
                flate2::Compression::new(u32::from(level.min(9))),
            );
            e.write_all(&self.block)?;
            self.compressed = e.finish()?;
        }
        let data: &[u8] = match self.codec {
            Codec::Null => &self.block,
            Codec::Deflate(_) => &self.compressed,
        };
        self.frame.clear();
        put_long(&mut self.frame, self.block_count);
        put_long(&mut self.frame, data.len() as i64);
        self.out.write_all(&self.frame)?;
        self.out.write_all(data)?;
        self.out.write_all(&self.sync)?;
        self.block.clear();
        self.compressed.clear();
        self.block_count = 0;
        Ok(())
    }

    /// Writes the last block and returns the writer and the record count.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        self.flush_block()?;
        self.out.flush()?;
        Ok((self.out, self.records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    /// Files read back by the apache-avro reader (an independent
    /// implementation of the container format) with both codecs, empty too.
    #[test]
    fn files_read_back_with_apache_avro() {
        let schema_json = r#"{"type":"record","name":"E","fields":[{"name":"k","type":"string"},{"name":"n","type":"long"}]}"#;
        let schema = apache_avro::Schema::parse_str(schema_json).unwrap();
        for codec in [Codec::Null, Codec::Deflate(6)] {
            for n in [0usize, 1, 5000] {
                let mut w = ContainerWriter::new(Vec::new(), schema_json, codec, [7; 16]).unwrap();
                for i in 0..n {
                    let v = Value::Record(vec![
                        ("k".into(), Value::String(format!("key-{i}"))),
                        ("n".into(), Value::Long(i as i64 - 7)),
                    ]);
                    w.append_encoded(
                        &apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                            .build()
                            .unwrap()
                            .write_value_to_vec(v)
                            .unwrap(),
                    )
                    .unwrap();
                }
                let (bytes, count) = w.finish().unwrap();
                assert_eq!(count as usize, n);
                let r = apache_avro::Reader::new(bytes.as_slice()).unwrap();
                let back: Vec<Value> = r.map(|v| v.unwrap()).collect();
                assert_eq!(back.len(), n, "{codec:?}");
                for (i, v) in back.iter().enumerate() {
                    let Value::Record(f) = v else { panic!() };
                    assert_eq!(f[0].1, Value::String(format!("key-{i}")));
                    assert_eq!(f[1].1, Value::Long(i as i64 - 7));
                }
            }
        }
    }
}
