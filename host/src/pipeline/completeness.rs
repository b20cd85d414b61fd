//! The watermark that decides completeness (the ledger's partitions, the
//! SMB outputs' sealing and their `_completeness.json`).
//!
//! One host: its own pipeline watermark. Several hosts over one Kafka
//! pipeline (`pipeline.instance` set): a host reads only the source partitions the
//! group gave it, so its own watermark would call an hour complete while
//! another host's partitions are still in it. Each checkpoint therefore
//! commits a [`PartitionMark`] for every partition this host holds (shared
//! keys, as the offsets are: a partition's next owner carries its mark on,
//! and a zombie writing one is fenced like its offsets), and the watermark
//! here is [`combine_marks`] over every partition of the source: this host's
//! own marks for what it holds, the committed marks for the rest, and a
//! holding mark for a partition nobody has reported yet. Marks are read as
//! applied (not caught up), so another host's progress shows here one of
//! its checkpoints late, never early. It never goes back. Late events are
//! still judged by the host's own watermark: its tiles and outputs hold
//! only its own partitions' events. (Instances over files each read files
//! of their own and keep their own completeness: nothing is shared.)

use std::collections::BTreeMap;

use crate::sources::Source;
use crate::stores::TileStore;
use crate::window::{combine_marks, PartitionMark, Watermarks};

pub(super) struct CompletenessWatermark {
    /// Whether marks are shared with other hosts (`pipeline.instance` over
    /// a Kafka source).
    shared: bool,
    /// The largest watermark returned so far.
    floor: Option<i64>,
}

impl CompletenessWatermark {
    pub(super) fn new(shared: bool) -> Self {
        CompletenessWatermark {
            shared,
            floor: None,
        }
    }

    /// Forgets the watermark returned so far (a roll-back: what it decided
    /// is committed or gone with the checkpoint that was not).
    pub(super) fn reset(&mut self) {
        self.floor = None;
    }

    /// The watermark returned last.
    pub(super) fn last(&self) -> Option<i64> {
        self.floor
    }

    /// The completeness watermark for a checkpoint, given this host's own
    /// pipeline watermark `local`, and the marks to commit with it.
    pub(super) fn at_checkpoint(
        &mut self,
        local: Option<i64>,
        watermarks: &Watermarks,
        source: &dyn Source,
        store: &dyn TileStore,
        pipeline: &str,
    ) -> (Option<i64>, Vec<(String, Vec<u8>)>) {
        if !self.shared {
            self.floor = self.floor.max(local);
            return (local, Vec::new());
        }
        let own = watermarks.snapshot();
        let held: BTreeMap<(String, i32), PartitionMark> = source
            .assigned()
            .into_iter()
            .map(|key| {
                let mark = own.get(&key).copied().unwrap_or(PartitionMark::HELD);
                (key, mark)
            })
            .collect();
        let to_commit = held
            .iter()
            .map(|((topic, p), mark)| (PartitionMark::key(topic, *p), mark.encode()))
            .collect();
        let committed = match store.positions_under(pipeline, PartitionMark::KEY_PREFIX) {
            Ok(rows) => rows,
            Err(e) => {
                // Not knowing the others, completeness waits.
                tracing::warn!(error = %e, "reading the other hosts' watermarks failed; completeness waits for the next checkpoint");
                return (self.floor, to_commit);
            }
        };
        // Every partition of the source holds until someone reports it;
        // marks of partitions it no longer has (a topic dropped from the
        // config) do not count. Without metadata, what was reported counts.
        let partitions = source.partitions();
        let mut marks: BTreeMap<(String, i32), PartitionMark> = partitions
            .iter()
            .map(|key| (key.clone(), PartitionMark::HELD))
            .collect();
        for (key, value) in committed {
            match (
                PartitionMark::parse_key(&key),
                PartitionMark::decode(&value),
            ) {
                (Some(part), Some(mark)) => {
                    if partitions.is_empty() || marks.contains_key(&part) {
                        marks.insert(part, mark);
                    }
                }
                _ => tracing::warn!(key, "a malformed watermark mark in the store is ignored"),
            }
        }
        marks.extend(held);
        if let Some(w) = combine_marks(marks.into_values()) {
            self.floor = self.floor.max(Some(w));
        }
        (self.floor, to_commit)
    }
}
