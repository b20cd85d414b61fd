//! Wires the stages: source → parser plugin → late-data check → feature
//! plugins → tiler → store, with the dead letter and side output beside them.
//!
//! Routing: a batch (one topic and partition) goes to the parser that
//! claims its topic (`[[parsers]]`, else `[parser]`), and each feature
//! plugin receives only the event types it lists (`event_types`), so event
//! types never share one channel they did not ask for.
//!
//! Batches flow one at a time on the calling thread. Every plugin call is
//! contained: when a call fails, the batch is split in halves and retried
//! down to single records, so only the records that make the plugin fail go
//! to the dead letter (with plugin name, version and reason) and the rest
//! carry on. Repeated failures quarantine the plugin (config decides whether
//! the pipeline then halts or dead-letters what that plugin would see).
//!
//! A stage may also run a shadow version beside the live one on the same
//! batches, its outputs compared and never written (`shadow.rs`).
//!
//! Events that pass late-data routing also go to the configured outputs
//! (SMB files), which reject what they cannot write to the dead letter.
//!
//! Checkpoints commit tile deltas, source positions and each output's state
//! in one store commit, after the dead letter, side output and output logs
//! are synced; outputs publish the partitions a checkpoint sealed after it
//! commits. A crash or halt loses nothing and counts nothing twice, because a
//! restart resumes from the last committed position, the uncommitted deltas
//! were never written, and outputs replay their logs to the committed state.

mod completeness;
mod control;
pub mod ledger;
mod shadow;
mod stats;
mod swap;

pub use control::{
    Applied, Change, ControlError, LoadedPlugin, PipelineControl, Sample, StageView, SAMPLE_RECORDS,
};
pub use shadow::{Outcome, ShadowExample, ShadowReport, ShadowState};
pub use stats::{Progress, RunStats};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::admin::registry::Registry;
use crate::config::OutputConfig;
use crate::config::{Config, PluginConfig, QuarantineAction, SourceConfig};
use crate::error::PipelineError;
use crate::plugin::{
    FeaturePlugin, LatePlugin, ParserPlugin, PluginError, PluginMeta, PluginRuntime,
};
use crate::record::{
    bytes_at, now_ms, select_events, select_raw, EventBatch, LateBatch, LateDecision, RawBatch,
};
use crate::sinks::smb::SmbSink;
use crate::sinks::{DeadLetter, NdjsonSink};
use crate::sources::{self, Source, SourceBatch};
use crate::stores::{Checkpoint, StoreError, TileStore};
use crate::telemetry::status::{StatusBoard, StatusReporter};
use crate::window::{FeatureDef, Tiler, Watermarks};
use shadow::{Compared, Outcomes};

/// Row indices `0..n` split in two halves, for isolating a failing call.
fn halves(n: usize) -> (Vec<u32>, Vec<u32>) {
    let mid = (n / 2) as u32;
    ((0..mid).collect(), (mid..n as u32).collect())
}

/// Opens every configured output at the state its last checkpoint committed.
fn open_outputs(cfg: &Config, store: &dyn TileStore) -> Result<Vec<SmbSink>, PipelineError> {
    let mut outputs = Vec::new();
    for o in &cfg.outputs {
        match o {
            OutputConfig::Smb(c) => {
                let key = instance_key(cfg, &SmbSink::state_key(&c.name));
                let state = store.position(&cfg.pipeline.name, &key)?;
                let located = c.for_instance(&cfg.pipeline.instance);
                outputs.push(SmbSink::open(&located, state.as_deref()).map_err(|source| {
                    PipelineError::Output {
                        output: c.name.clone(),
                        source,
                    }
                })?);
            }
        }
    }
    Ok(outputs)
}

/// The committed length of a sink (dead letter, side output), if any.
fn committed_len(
    store: &dyn TileStore,
    pipeline: &str,
    key: &str,
) -> Result<Option<u64>, PipelineError> {
    Ok(store
        .position(pipeline, key)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes))
}

/// Position keys under which the sinks' committed lengths are stored.
const DEAD_LETTER_KEY: &str = "sink:dead-letter";
const SIDE_OUTPUT_KEY: &str = "sink:side-output";

/// The position key of this host's own state (a sink's length, an
/// output's state): `base`, or `base@instance` when several instances run
/// the pipeline (each has its own files). Every checkpoint moves these, so
/// a second process under the same instance name is fenced.
fn instance_key(cfg: &Config, base: &str) -> String {
    crate::stores::author(base, &cfg.pipeline.instance)
}

/// Counts a late handler's decisions of one batch per plugin, decision and
/// reason, given the run's counters before and after it and the batch's
/// side outputs by reason label (accept and drop carry no reason).
fn count_late_decisions(
    plugin: &str,
    before: &RunStats,
    after: &RunStats,
    side_outputs: &HashMap<String, u64>,
) {
    for (decision, n) in [
        ("accept", after.late_accepted - before.late_accepted),
        ("drop", after.late_dropped - before.late_dropped),
    ] {
        if n > 0 {
            metrics::counter!("tessera_late_decisions_total", "plugin" => plugin.to_string(), "decision" => decision, "reason" => "")
                .increment(n);
        }
    }
    for (reason, n) in side_outputs {
        metrics::counter!("tessera_late_decisions_total", "plugin" => plugin.to_string(), "decision" => "side_output", "reason" => reason.clone())
            .increment(*n);
    }
}

/// Distinct reason labels a late plugin may have before the rest count as
/// `other` (a metric label per free-text reason would grow without bound).
const MAX_REASON_LABELS: usize = 32;

/// Side-output reasons as metric labels: runs of digits become `N`, so
/// "600001 ms behind the watermark" and "7200000 ms behind the watermark"
/// count together, at most 100 characters, and at most
/// [`MAX_REASON_LABELS`] distinct labels per plugin (then `other`). The
/// side-output records keep each reason whole.
#[derive(Default)]
struct ReasonLabels {
    seen: HashMap<String, HashSet<String>>,
}

impl ReasonLabels {
    fn label(&mut self, plugin: &str, reason: &str) -> String {
        let mut shape = String::new();
        for c in reason.chars() {
            if c.is_ascii_digit() {
                if !shape.ends_with('N') {
                    shape.push('N');
                }
            } else if shape.len() < 100 {
                shape.push(c);
            }
        }
        let seen = self.seen.entry(plugin.to_string()).or_default();
        if seen.contains(&shape) || seen.len() < MAX_REASON_LABELS {
            seen.insert(shape.clone());
            shape
        } else {
            "other".to_string()
        }
    }
}

/// Where this instance's partition ledgers live: (pipeline, key prefix).
pub fn ledger_location(cfg: &Config) -> (String, String) {
    (
        cfg.pipeline.name.clone(),
        ledger::base(&instance_key(cfg, "ledger")),
    )
}

/// The committed ledgers, with every commit of the (opened) outputs that
/// they lack: SMB directories published after the last checkpoint, before
/// a crash or roll-back.
fn open_ledger(
    cfg: &Config,
    store: &dyn TileStore,
    outputs: &mut [SmbSink],
) -> Result<ledger::Ledger, PipelineError> {
    let (pipeline, base) = ledger_location(cfg);
    let mut ledger = ledger::Ledger::resume(&cfg.completeness, store, &pipeline, base)?;
    for o in outputs {
        let output_err = |source| PipelineError::Output {
            output: o.name().to_string(),
            source,
        };
        let log = o.commit_log().map_err(output_err)?;
        o.take_published(); // in the log already
        ledger.published(o.name(), log);
    }
    Ok(ledger)
}

/// A feature plugin and the store-wide definitions of its features.
struct FeatureStage {
    plugin: FeaturePlugin,
    defs: Vec<FeatureDef>,
    /// The event types it receives; every type when empty.
    event_types: Vec<String>,
    /// How far behind the watermark an event may be and still count here
    /// whatever the late handler decides (`allowed_lateness`).
    allowed_lateness_ms: i64,
}

/// What the late handler rejected (dropped or side-output) of a batch that
/// some feature stage still takes, because the event is within that
/// stage's allowed lateness.
struct LateRejections {
    watermark: i64,
    /// By row of the batch it came with.
    rejected: Vec<bool>,
}

impl FeatureStage {
    fn receives(&self, type_name: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == type_name)
    }

    /// The rows of `events` this stage receives: `None` for all of them.
    fn rows(&self, events: &EventBatch) -> Option<Vec<u32>> {
        if self.event_types.is_empty() {
            return None;
        }
        let wanted: Vec<bool> = events
            .type_names
            .iter()
            .map(|n| self.event_types.contains(n))
            .collect();
        if wanted.iter().all(|w| *w) {
            return None;
        }
        Some(
            (0..events.len)
                .filter(|r| {
                    wanted
                        .get(events.event_type[*r as usize] as usize)
                        .copied()
                        .unwrap_or(false)
                })
                .collect(),
        )
    }
}

pub struct Pipeline {
    cfg: Config,
    // Declared before the plugins' engine owner so it drops after them.
    /// `[parser]` first, then `[[parsers]]`.
    parsers: Vec<ParserPlugin>,
    /// Topic → index in `parsers` (topics not listed go to the first).
    parser_for_topic: HashMap<String, usize>,
    features: Vec<FeatureStage>,
    late: Option<LatePlugin>,
    /// Shared with the admin API, which loads plugins to swap in on it.
    _runtime: Arc<PluginRuntime>,
    /// Changes from the admin API, applied between batches (`swap.rs`).
    control: Arc<PipelineControl>,
    /// Shadow versions running beside live stages (`shadow.rs`).
    shadows: shadow::Shadows,
    store: Arc<dyn TileStore>,
    source: Box<dyn Source>,
    tiler: Tiler,
    dead_letter: NdjsonSink,
    /// Completeness and amendments of the tile output's partitions.
    ledger: ledger::Ledger,
    side_output: NdjsonSink,
    outputs: Vec<SmbSink>,
    /// Set when a bounded source has ended: the next checkpoint seals every
    /// output partition (the watermark goes to +infinity, as in Flink).
    end_of_input: bool,
    watermarks: Watermarks,
    /// What completeness is decided by (several hosts: over all of them).
    completeness: completeness::CompletenessWatermark,
    stats: RunStats,
    stop: Arc<AtomicBool>,
    status: Arc<StatusBoard>,
    reporter: StatusReporter,
    /// Why the last commit failed, while the store is being retried.
    store_problem: Option<String>,
    /// Late plugins' side-output reasons as metric labels.
    reason_labels: ReasonLabels,
}

/// Where a dead-lettered record came from, and its bytes.
struct RecordRef<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    payload: &'a [u8],
}

/// Which stage a dead letter comes from.
#[derive(Clone, Copy)]
enum Stage {
    Source,
    Parse,
    Feature,
    Tile,
    Late,
    Output,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Parse => "parse",
            Stage::Feature => "feature",
            Stage::Tile => "tile",
            Stage::Late => "late",
            Stage::Output => "output",
        }
    }
}

impl Pipeline {
    /// Loads every plugin, registers their features in the store and opens
    /// the source at its committed position.
    pub fn build(cfg: Config, store: Arc<dyn TileStore>) -> Result<Self, PipelineError> {
        let runtime = PluginRuntime::new(&cfg.runtime).map_err(|e| PipelineError::PluginLoad {
            plugin: "(engine)".into(),
            source: e,
        })?;
        let runtime = Arc::new(runtime);
        let registry = Registry::open(
            &cfg.admin.registry_dir,
            &crate::stores::author(&cfg.pipeline.name, &cfg.pipeline.instance),
        )?;
        let load_err = |name: &str| {
            let plugin = name.to_string();
            move |source: PluginError| PipelineError::PluginLoad {
                plugin: plugin.clone(),
                source,
            }
        };
        let source_of = |p: &PluginConfig| swap::stage_source(p, &registry);
        let mut parsers = Vec::new();
        let mut parser_for_topic = HashMap::new();
        for (i, p) in std::iter::once(&cfg.parser).chain(&cfg.parsers).enumerate() {
            parsers.push(
                source_of(p)
                    .and_then(|s| runtime.load_parser(&s))
                    .map_err(load_err(&p.name))?,
            );
            for t in &p.topics {
                parser_for_topic.insert(t.clone(), i);
            }
        }
        let mut loaded = Vec::new();
        for f in &cfg.features {
            loaded.push(
                source_of(f)
                    .and_then(|s| runtime.load_feature(&s))
                    .map_err(load_err(&f.name))?,
            );
        }
        let late = match &cfg.late {
            Some(l) => Some(
                source_of(l)
                    .and_then(|s| runtime.load_late(&s))
                    .map_err(load_err(&l.name))?,
            ),
            None => None,
        };

        let mut seen = std::collections::BTreeSet::new();
        let mut features = Vec::new();
        for (plugin, plugin_cfg) in loaded.into_iter().zip(&cfg.features) {
            for spec in plugin.specs() {
                if !seen.insert(spec.name.clone()) {
                    return Err(PipelineError::DuplicateFeature(spec.name.clone()));
                }
            }
            features.push(FeatureStage {
                defs: swap::define_features(store.as_ref(), &plugin)?,
                plugin,
                event_types: plugin_cfg.event_types.clone(),
                allowed_lateness_ms: plugin_cfg.allowed_lateness.as_millis() as i64,
            });
        }
        let stage_configs = swap::stage_configs(&cfg);
        let shadows = swap::restore_shadows(&stage_configs, &registry, &runtime);
        let control = Arc::new(PipelineControl::new(
            &cfg.pipeline.name,
            runtime.clone(),
            Arc::new(registry),
            stage_configs,
        ));

        let source = sources::build(&cfg.source, &store, &cfg.pipeline.name)?;
        let committed =
            |key| committed_len(store.as_ref(), &cfg.pipeline.name, &instance_key(&cfg, key));
        let dead_letter = NdjsonSink::resume(&cfg.dead_letter.path, committed(DEAD_LETTER_KEY)?)?;
        let side_output = NdjsonSink::resume(&cfg.side_output.path, committed(SIDE_OUTPUT_KEY)?)?;
        let mut outputs = open_outputs(&cfg, store.as_ref())?;
        let ledger = open_ledger(&cfg, store.as_ref(), &mut outputs)?;
        let watermarks = cfg.watermark.tracker();
        let status = Arc::new(StatusBoard::new(&cfg.pipeline.name, cfg.source.kind()));
        let shared_marks =
            !cfg.pipeline.instance.is_empty() && matches!(cfg.source, SourceConfig::Kafka { .. });
        Ok(Pipeline {
            status,
            reporter: StatusReporter::default(),
            store_problem: None,
            reason_labels: ReasonLabels::default(),
            dead_letter,
            ledger,
            side_output,
            outputs,
            end_of_input: false,
            cfg,
            parsers,
            parser_for_topic,
            features,
            late,
            _runtime: runtime,
            control,
            shadows,
            store,
            source,
            tiler: Tiler::new(),
            watermarks,
            completeness: completeness::CompletenessWatermark::new(shared_marks),
            stats: RunStats::default(),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A flag that, once set, makes [`run`](Self::run) checkpoint and return.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Where the admin API hands this pipeline its changes.
    pub fn control(&self) -> Arc<PipelineControl> {
        self.control.clone()
    }

    /// The status board this pipeline writes (for the HTTP API).
    pub fn status_board(&self) -> Arc<StatusBoard> {
        self.status.clone()
    }

    /// Runs until the source ends (or the stop flag is set), checkpointing
    /// along the way; `progress` is called (and the status board written)
    /// about twice a second.
    pub fn run(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<RunStats, PipelineError> {
        let result = self.run_to_end(progress);
        self.publish_status();
        self.status.finish(
            result
                .as_ref()
                .err()
                .map(|e| format!("the pipeline failed: {e}")),
        );
        result
    }

    fn run_to_end(
        &mut self,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<RunStats, PipelineError> {
        let started = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut last_progress = Instant::now();
        let mut first_record: Option<Instant> = None;
        let mut last_record = started;
        self.publish_status();
        while !self.stop.load(Ordering::Relaxed) {
            self.apply_changes()?;
            let Some(batch) = self.source.next_batch(self.cfg.pipeline.batch_size)? else {
                self.end_of_input = self.source.is_bounded();
                break;
            };
            if batch.rolled_back {
                self.roll_back()?;
                last_checkpoint = Instant::now();
                continue;
            }
            for (topic, partition) in self.source.assigned() {
                self.watermarks.hold(&topic, partition);
            }
            if !batch.raw.offsets.is_empty() || !batch.read_errors.is_empty() {
                let now = Instant::now();
                first_record.get_or_insert(now);
                last_record = now;
            }
            self.process(batch)?;
            if self.tiler.pending_updates() >= self.cfg.pipeline.checkpoint_events
                || last_checkpoint.elapsed() >= self.cfg.pipeline.checkpoint_interval
            {
                self.checkpoint()?;
                last_checkpoint = Instant::now();
            }
            if last_progress.elapsed().as_millis() >= 500 {
                progress(&self.progress(started));
                self.publish_status();
                last_progress = Instant::now();
            }
        }
        self.checkpoint()?;
        self.stats.elapsed = started.elapsed();
        self.stats.reading = first_record.map_or(std::time::Duration::ZERO, |f| last_record - f);
        progress(&self.progress(started));
        Ok(self.stats.clone())
    }

    fn publish_status(&mut self) {
        let mut status = self
            .reporter
            .report(self.source.status(), &self.watermarks, &self.stats);
        status.problems.extend(self.store_problem.clone());
        status.completeness_watermark = self.completeness.last();
        self.status.publish(status);
        self.show_stages();
    }

    fn progress(&self, started: Instant) -> Progress {
        Progress {
            records_in: self.stats.records_in,
            events_out: self.stats.events_out,
            dead_lettered: self.stats.dead_lettered,
            elapsed: started.elapsed(),
            position: self.source.describe_position(),
            watermark: self.watermarks.last(),
        }
    }

    /// Commits the tile deltas, the source positions and the outputs' state
    /// together, then publishes the output partitions it sealed. A failed
    /// publish is retried at the next checkpoint; after the last one (end
    /// of input) it is retried with back-off and then reported.
    pub fn checkpoint(&mut self) -> Result<(), PipelineError> {
        let local = self.watermarks.current();
        let (watermark, marks) = self.completeness.at_checkpoint(
            local,
            &self.watermarks,
            self.source.as_ref(),
            self.store.as_ref(),
            &self.cfg.pipeline.name,
        );
        let mut output_states = Vec::new();
        for o in &mut self.outputs {
            let state = o.prepare(watermark, self.end_of_input).map_err(|source| {
                PipelineError::Output {
                    output: o.name().to_string(),
                    source,
                }
            })?;
            output_states.push((instance_key(&self.cfg, &state.0), state.1));
        }
        self.dead_letter.sync()?;
        self.side_output.sync()?;
        let deltas = self.tiler.drain();
        let mut positions = self.source.positions();
        positions.extend(marks);
        positions.push((
            instance_key(&self.cfg, DEAD_LETTER_KEY),
            self.dead_letter.committed_len().to_be_bytes().to_vec(),
        ));
        positions.push((
            instance_key(&self.cfg, SIDE_OUTPUT_KEY),
            self.side_output.committed_len().to_be_bytes().to_vec(),
        ));
        positions.extend(output_states);
        positions.extend(self.ledger.checkpoint(watermark, now_ms()));
        self.stats.tiles_written += deltas.len() as u64;
        let checkpoint = Checkpoint {
            pipeline: self.cfg.pipeline.name.clone(),
            instance: self.cfg.pipeline.instance.clone(),
            deltas,
            positions,
        };
        if let Err(e) = self.commit_retrying(&checkpoint) {
            let lost = matches!(e, PipelineError::Store(StoreError::Regressed { .. }));
            if !(lost || matches!(e, PipelineError::Store(StoreError::Fenced { .. })))
                || !self.source.rewind()
            {
                return Err(e);
            }
            // Another host moved one of these positions since this one read
            // it (a rebalance it has not seen yet), or the store lost
            // checkpoints it had acknowledged: start over from what it
            // holds, as after a revocation.
            if lost {
                tracing::error!(error = %e, "the store lost acknowledged checkpoints; rolled back to the positions it holds");
                self.stats.store_regressions += 1;
            } else {
                tracing::warn!(error = %e, "checkpoint fenced; rolled back to the committed positions");
                self.stats.fenced += 1;
            }
            return self.roll_back();
        }
        self.source.committed();
        self.ledger.committed()?;
        self.tiler.recycle(checkpoint.deltas);
        self.stats.checkpoints += 1;
        self.publish_outputs()?;
        self.record_publications()
    }

    /// Commits the ledger records of the SMB directories just published, so
    /// the change log and completeness show them now rather than at the
    /// next checkpoint (or, after the last one, the next start). When that
    /// fails the ledger is read back; the next checkpoint records them.
    fn record_publications(&mut self) -> Result<(), PipelineError> {
        if !self.ledger.has_unrecorded() {
            return Ok(());
        }
        let checkpoint = Checkpoint {
            pipeline: self.cfg.pipeline.name.clone(),
            instance: self.cfg.pipeline.instance.clone(),
            positions: self.ledger.checkpoint(self.completeness.last(), now_ms()),
            ..Checkpoint::default()
        };
        match self.commit_retrying(&checkpoint) {
            Ok(()) => Ok(self.ledger.committed()?),
            Err(e) => {
                tracing::warn!(error = %e, "recording published SMB partitions failed; the next checkpoint records them");
                self.ledger = open_ledger(&self.cfg, self.store.as_ref(), &mut self.outputs)?;
                Ok(())
            }
        }
    }

    /// Commits, retrying with back-off (up to 5 s apart) while the store is
    /// unreachable or slow, with the failure on the status page; the
    /// records stay uncommitted meanwhile, so a stop or crash loses nothing.
    fn commit_retrying(&mut self, checkpoint: &Checkpoint) -> Result<(), PipelineError> {
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            match self.store.commit(checkpoint) {
                Ok(()) => {
                    if self.store_problem.take().is_some() {
                        tracing::info!("the store is back; checkpoint committed");
                        self.publish_status();
                    }
                    return Ok(());
                }
                Err(e) if e.is_transient() && !self.stop.load(Ordering::Relaxed) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "checkpoint not committed; retrying");
                    self.store_problem = Some(format!("store: {e}"));
                    self.stats.store_retries += 1;
                    self.publish_status();
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Drops everything since the last checkpoint (the source has gone back
    /// to its committed positions): tile deltas, dead letters and side
    /// output past their committed lengths, output records past their
    /// committed state, and the watermarks (rebuilt from what is re-read).
    fn roll_back(&mut self) -> Result<(), PipelineError> {
        self.tiler = Tiler::new();
        let name = &self.cfg.pipeline.name;
        let (dead_letter, side_output) = (
            instance_key(&self.cfg, DEAD_LETTER_KEY),
            instance_key(&self.cfg, SIDE_OUTPUT_KEY),
        );
        self.dead_letter
            .roll_back(committed_len(self.store.as_ref(), name, &dead_letter)?)?;
        self.side_output
            .roll_back(committed_len(self.store.as_ref(), name, &side_output)?)?;
        // Close the old ones first: they hold the journals' files.
        self.outputs.clear();
        let mut outputs = open_outputs(&self.cfg, self.store.as_ref())?;
        self.ledger = open_ledger(&self.cfg, self.store.as_ref(), &mut outputs)?;
        self.outputs = outputs;
        self.watermarks = self.cfg.watermark.tracker();
        self.completeness.reset();
        self.stats.rollbacks += 1;
        tracing::info!("rolled back to the last checkpoint");
        Ok(())
    }

    /// Phase 2 of a checkpoint: every output publishes what it sealed.
    fn publish_outputs(&mut self) -> Result<(), PipelineError> {
        let last = self.end_of_input || self.stop.load(Ordering::Relaxed);
        for o in &mut self.outputs {
            let mut delay = std::time::Duration::from_millis(200);
            let mut attempt = 1;
            loop {
                let result = o.publish();
                // What got out before a failure is recorded too.
                let published = o.take_published();
                self.ledger.published(o.name(), published);
                if let Some(through) = o.published_through() {
                    self.ledger.published_through(o.name(), through);
                }
                match result {
                    Ok(done) => {
                        self.stats.output_partitions += done.len() as u64;
                        break;
                    }
                    Err(source) if !last || attempt >= 5 => {
                        if last {
                            return Err(PipelineError::Output {
                                output: o.name().to_string(),
                                source,
                            });
                        }
                        tracing::warn!(output = %o.name(), error = %source, "publishing SMB partitions failed; retrying at the next checkpoint (nothing is lost: the partitions are in the journal)");
                        break;
                    }
                    Err(source) => {
                        tracing::warn!(output = %o.name(), error = %source, attempt, "publishing SMB partitions failed; retrying");
                        std::thread::sleep(delay);
                        delay *= 2;
                        attempt += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Dead-letters record `row` of `raw`.
    fn dead_letter(
        &mut self,
        stage: Stage,
        plugin: Option<&PluginMeta>,
        reason: &str,
        raw: &RawBatch,
        row: usize,
    ) -> Result<(), PipelineError> {
        let record = RecordRef {
            topic: &raw.topic,
            partition: raw.partition,
            offset: raw.offsets.get(row).copied().unwrap_or(-1),
            payload: bytes_at(&raw.payloads, row).unwrap_or(&[]),
        };
        self.write_dead_letter(stage, plugin, reason, record)
    }

    /// Writes one dead letter and counts it.
    fn write_dead_letter(
        &mut self,
        stage: Stage,
        plugin: Option<&PluginMeta>,
        reason: &str,
        record: RecordRef<'_>,
    ) -> Result<(), PipelineError> {
        let mut dl = DeadLetter {
            at: now_ms(),
            pipeline: self.cfg.pipeline.name.clone(),
            stage: stage.name(),
            plugin: plugin.map(|p| p.name.clone()),
            plugin_version: plugin.map(|p| p.version.clone()),
            reason: reason.to_string(),
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            payload: None,
            payload_base64: None,
        };
        dl.set_payload(record.payload);
        self.dead_letter.write(&dl)?;
        self.stats.dead_lettered += 1;
        if let Some(p) = plugin {
            metrics::counter!(
                "tessera_plugin_dead_letters_total",
                "pipeline" => self.cfg.pipeline.name.clone(),
                "plugin" => p.name.clone(),
                "version" => p.version.clone()
            )
            .increment(1);
        }
        Ok(())
    }

    fn process(&mut self, batch: SourceBatch) -> Result<(), PipelineError> {
        for e in &batch.read_errors {
            let record = RecordRef {
                topic: &e.topic,
                partition: 0,
                offset: e.offset,
                payload: &e.payload,
            };
            self.write_dead_letter(Stage::Source, None, &e.reason, record)?;
            self.stats.records_in += 1;
        }
        if batch.raw.offsets.is_empty() {
            return Ok(());
        }
        let _batch = tracing::debug_span!(
            "batch",
            topic = %batch.raw.topic,
            partition = batch.raw.partition,
            records = batch.raw.offsets.len()
        )
        .entered();
        self.stats.records_in += batch.raw.offsets.len() as u64;
        self.reporter.count(
            &batch.raw.topic,
            batch.raw.partition,
            batch.raw.offsets.len() as u64,
        );
        let started = self.shadows.begin_batch(batch.raw.offsets.len());
        let i = self.parser_index(&batch.raw.topic);
        let stage = self.parsers[i].meta().name.clone();
        let mut shadowed = self.shadows.due(&stage, batch.raw.offsets.len()).map(|s| {
            (
                s.parse(&batch.raw),
                Outcomes::default(),
                Compared::all(&batch.raw),
            )
        });
        let mut chunks = Vec::new();
        let live = shadowed.as_mut().map(|(_, live, _)| live);
        self.parse_isolating(batch.raw, &mut chunks, live)?;
        if let Some((shadow, live, compared)) = shadowed {
            if let Some(s) = self.shadows.get_mut(&stage) {
                s.compare(compared, live, shadow);
            }
        }
        if let Some((raw, events)) = chunks.first() {
            self.offer_sample(raw, events);
        }
        for (raw, events) in chunks {
            self.process_events(&raw, events)?;
        }
        if let Some(start) = started {
            self.shadows.end_batch(start);
        }
        Ok(())
    }

    /// The parser for `topic`'s batches.
    fn parser_index(&self, topic: &str) -> usize {
        self.parser_for_topic.get(topic).copied().unwrap_or(0)
    }

    /// Parses `raw`; on a failed call, halves and retries so that only the
    /// records that break the parser are dead-lettered. Successful pieces are
    /// pushed to `out` in input order; with a shadow running, what became of
    /// each record goes to `live` too.
    fn parse_isolating(
        &mut self,
        raw: RawBatch,
        out: &mut Vec<(RawBatch, EventBatch)>,
        mut live: Option<&mut Outcomes>,
    ) -> Result<(), PipelineError> {
        let i = self.parser_index(&raw.topic);
        let parser = &mut self.parsers[i];
        match parser.parse(&raw) {
            Ok(parsed) => {
                let meta = parser.meta().clone();
                if let Some(live) = live {
                    live.add_parsed(&raw, &parsed);
                }
                for e in &parsed.errors {
                    self.dead_letter(Stage::Parse, Some(&meta), &e.reason, &raw, e.row as usize)?;
                }
                if parsed.events.len > 0 {
                    out.push((raw, parsed.events));
                }
                Ok(())
            }
            Err(err) => {
                let meta = parser.meta().clone();
                if parser.health().quarantined {
                    let action = parser.quarantine_policy().action;
                    let failures = parser.health().consecutive_failures;
                    if let Some(live) = live {
                        for o in &raw.offsets {
                            live.fail(*o, &format!("plugin quarantined ({err})"));
                        }
                    }
                    return self.quarantined(
                        action,
                        &meta,
                        failures,
                        &err,
                        Stage::Parse,
                        &raw,
                        0..raw.offsets.len(),
                    );
                }
                let n = raw.offsets.len();
                if n == 1 {
                    if let Some(live) = live {
                        live.fail(raw.offsets[0], &err.to_string());
                    }
                    return self.dead_letter(Stage::Parse, Some(&meta), &err.to_string(), &raw, 0);
                }
                let (left, right) = halves(n);
                self.parse_isolating(select_raw(&raw, &left), out, live.as_deref_mut())?;
                self.parse_isolating(select_raw(&raw, &right), out, live)
            }
        }
    }

    /// Applies the quarantine policy to the rows a quarantined plugin would see.
    #[allow(clippy::too_many_arguments)]
    fn quarantined(
        &mut self,
        action: QuarantineAction,
        meta: &PluginMeta,
        failures: u32,
        err: &PluginError,
        stage: Stage,
        raw: &RawBatch,
        rows: impl Iterator<Item = usize>,
    ) -> Result<(), PipelineError> {
        match action {
            QuarantineAction::Halt => Err(PipelineError::Quarantined {
                plugin: meta.name.clone(),
                failures,
                last: err.to_string(),
            }),
            QuarantineAction::DeadLetter => {
                let reason = format!("plugin quarantined ({err})");
                for row in rows {
                    self.dead_letter(stage, Some(meta), &reason, raw, row)?;
                }
                Ok(())
            }
        }
    }

    fn process_events(&mut self, raw: &RawBatch, events: EventBatch) -> Result<(), PipelineError> {
        let (events, late) = self.route_late(raw, events)?;
        if events.len == 0 {
            return Ok(());
        }
        self.stats.events_out += events.len as u64;
        self.ledger.count(&events.event_time);
        for i in 0..self.features.len() {
            let stage = &self.features[i];
            let mut rows = stage.rows(&events);
            if let Some(l) = &late {
                // Rejected events count only where they are within the allowance.
                let horizon = l.watermark - stage.allowed_lateness_ms;
                let all: Vec<u32> = rows.unwrap_or_else(|| (0..events.len).collect());
                rows = Some(
                    all.into_iter()
                        .filter(|r| {
                            !l.rejected[*r as usize] || events.event_time[*r as usize] >= horizon
                        })
                        .collect(),
                );
            }
            match rows {
                None => self.run_feature(i, raw, &events)?,
                Some(rows) if rows.is_empty() => {}
                Some(rows) => self.run_feature(i, raw, &select_events(&events, &rows))?,
            }
        }
        // The outputs take what the late handler did not reject.
        let events = match &late {
            Some(l) => {
                let keep: Vec<u32> = (0..events.len)
                    .filter(|r| !l.rejected[*r as usize])
                    .collect();
                select_events(&events, &keep)
            }
            None => events,
        };
        for i in 0..self.outputs.len() {
            let before = self.outputs[i].stats().records;
            let rejected = self.outputs[i].write(raw, &events);
            self.stats.output_records += self.outputs[i].stats().records - before;
            for (row, reason) in rejected {
                let src = events.source_row[row] as usize;
                self.dead_letter(Stage::Output, None, &reason, raw, src)?;
            }
        }
        Ok(())
    }

    /// Per event type of `events`, the smallest and the largest allowed
    /// lateness of the feature stages receiving it (0 when none does).
    fn allowances(&self, events: &EventBatch) -> Vec<(i64, i64)> {
        events
            .type_names
            .iter()
            .map(|t| {
                let of = || {
                    self.features
                        .iter()
                        .filter(|f| f.receives(t))
                        .map(|f| f.allowed_lateness_ms)
                };
                (of().min().unwrap_or(0), of().max().unwrap_or(0))
            })
            .collect()
    }

    /// Sends events late for every feature stage receiving them (behind the
    /// watermark by more than the stage's allowed lateness) to the
    /// late-data handler, and keeps those it accepts, and those it rejects
    /// that some stage's allowance still covers (with which they are; see
    /// [`LateRejections`]); advances the watermark with this batch.
    fn route_late(
        &mut self,
        raw: &RawBatch,
        events: EventBatch,
    ) -> Result<(EventBatch, Option<LateRejections>), PipelineError> {
        let watermark = self.watermarks.current();
        if let Some(max) = events.event_time.iter().max() {
            self.watermarks.observe(&raw.topic, raw.partition, *max);
        }
        let Some(wm) = watermark else {
            return Ok((events, None));
        };
        let allowances = if self.features.iter().all(|f| f.allowed_lateness_ms == 0) {
            None
        } else {
            Some(self.allowances(&events))
        };
        let allowance = |r: usize| -> (i64, i64) {
            allowances
                .as_ref()
                .and_then(|a| a.get(events.event_type[r] as usize).copied())
                .unwrap_or((0, 0))
        };
        let late_rows: Vec<u32> = (0..events.len)
            .filter(|r| events.event_time[*r as usize] < wm - allowance(*r as usize).0)
            .collect();
        if late_rows.is_empty() {
            return Ok((events, None));
        }
        let Some(handler) = self.late.as_mut() else {
            self.stats.late_accepted += late_rows.len() as u64;
            return Ok((events, None));
        };
        let late_events = select_events(&events, &late_rows);
        let lateness_ms = late_events
            .event_time
            .iter()
            .map(|t| wm - t)
            .collect::<Vec<_>>();
        let batch = LateBatch {
            events: late_events,
            lateness_ms,
            watermark: wm,
        };
        let meta = handler.meta().clone();
        let shadow = self
            .shadows
            .due(&meta.name, late_rows.len())
            .map(|s| s.decide(raw, &batch));
        let decided = handler.decide(&batch);
        if let Some(shadow) = shadow {
            let mut live = Outcomes::default();
            match &decided {
                Ok(d) => live.add_decisions(raw, &batch.events, d),
                Err(e) => live.fail_rows(raw, &batch.events.source_row, &e.to_string()),
            }
            if let Some(s) = self.shadows.get_mut(&meta.name) {
                s.compare(Compared::of_events(raw, &batch.events), live, shadow);
            }
        }
        let decisions = match decided {
            Ok(d) => d,
            Err(err) => {
                // Without a decision no late event may be guessed at: all go to the dead letter.
                let quarantined = handler.health().quarantined.then(|| {
                    (
                        handler.quarantine_policy().action,
                        handler.health().consecutive_failures,
                    )
                });
                let rows: Vec<usize> = late_rows
                    .iter()
                    .map(|r| events.source_row[*r as usize] as usize)
                    .collect();
                if let Some((action, failures)) = quarantined {
                    self.quarantined(
                        action,
                        &meta,
                        failures,
                        &err,
                        Stage::Late,
                        raw,
                        rows.into_iter(),
                    )?;
                } else {
                    for row in rows {
                        self.dead_letter(Stage::Late, Some(&meta), &err.to_string(), raw, row)?;
                    }
                }
                let mut failed = vec![false; events.len as usize];
                for r in &late_rows {
                    failed[*r as usize] = true;
                }
                let keep: Vec<u32> = (0..events.len).filter(|r| !failed[*r as usize]).collect();
                return Ok((select_events(&events, &keep), None));
            }
        };
        let mut rejected = vec![false; events.len as usize];
        let before = self.stats.clone();
        let mut side_reasons: HashMap<String, u64> = HashMap::new();
        for (i, d) in decisions.iter().enumerate() {
            let row = late_rows[i] as usize;
            match d {
                LateDecision::Accept => self.stats.late_accepted += 1,
                LateDecision::Drop => {
                    rejected[row] = true;
                    self.stats.late_dropped += 1;
                }
                LateDecision::SideOutput(reason) => {
                    rejected[row] = true;
                    self.stats.late_side_output += 1;
                    *side_reasons
                        .entry(self.reason_labels.label(&meta.name, reason))
                        .or_default() += 1;
                    let src = events.source_row[row] as usize;
                    let payload = bytes_at(&raw.payloads, src).unwrap_or(&[]);
                    self.side_output.write(&serde_json::json!({
                        "at": now_ms(),
                        "pipeline": self.cfg.pipeline.name,
                        "plugin": meta.name,
                        "reason": reason,
                        "event_time": events.event_time[row],
                        "watermark": wm,
                        "topic": raw.topic,
                        "partition": raw.partition,
                        "offset": raw.offsets[src],
                        "payload": String::from_utf8_lossy(payload),
                    }))?;
                }
            }
        }
        count_late_decisions(&meta.name, &before, &self.stats, &side_reasons);
        if !rejected.iter().any(|r| *r) {
            return Ok((events, None));
        }
        // A rejected event stays for the stages whose allowance covers it.
        let keep: Vec<u32> = (0..events.len)
            .filter(|r| {
                let r = *r as usize;
                !rejected[r] || events.event_time[r] >= wm - allowance(r).1
            })
            .collect();
        let covered = keep.iter().any(|r| rejected[*r as usize]);
        let late = covered.then(|| LateRejections {
            watermark: wm,
            rejected: keep.iter().map(|r| rejected[*r as usize]).collect(),
        });
        Ok((select_events(&events, &keep), late))
    }

    /// Runs feature stage `i` over `events`, and its shadow if one runs.
    fn run_feature(
        &mut self,
        i: usize,
        raw: &RawBatch,
        events: &EventBatch,
    ) -> Result<(), PipelineError> {
        let name = self.features[i].plugin.meta().name.clone();
        let Some(shadow) = self.shadows.due(&name, events.len as usize) else {
            return self.feature_isolating(i, raw, events, None);
        };
        let shadow = shadow.process(raw, events);
        let mut live = Outcomes::default();
        self.feature_isolating(i, raw, events, Some(&mut live))?;
        if let Some(s) = self.shadows.get_mut(&name) {
            s.compare(Compared::of_events(raw, events), live, shadow);
        }
        Ok(())
    }

    /// Runs feature plugin `i` over `events`, halving on failure so that only
    /// the events that break it are dead-lettered, and folds updates into
    /// tiles; with `live`, also records what became of each record.
    fn feature_isolating(
        &mut self,
        i: usize,
        raw: &RawBatch,
        events: &EventBatch,
        mut live: Option<&mut Outcomes>,
    ) -> Result<(), PipelineError> {
        let stage = &mut self.features[i];
        match stage.plugin.process(events) {
            Ok(updates) => {
                if let Some(live) = live {
                    live.add_updates(stage.plugin.specs(), raw, events, &updates);
                }
                let rejections = self.tiler.apply(&stage.defs, events, &updates);
                self.stats.updates += (updates.row.len() - rejections.len()) as u64;
                if !rejections.is_empty() {
                    let meta = stage.plugin.meta().clone();
                    for r in rejections {
                        let src = events.source_row[r.row as usize] as usize;
                        self.dead_letter(Stage::Tile, Some(&meta), &r.reason, raw, src)?;
                    }
                }
                Ok(())
            }
            Err(err) => {
                let meta = stage.plugin.meta().clone();
                if stage.plugin.health().quarantined {
                    let (action, failures) = (
                        stage.plugin.quarantine_policy().action,
                        stage.plugin.health().consecutive_failures,
                    );
                    let rows: Vec<usize> = events.source_row.iter().map(|r| *r as usize).collect();
                    if let Some(live) = live {
                        for r in &rows {
                            live.fail(raw.offsets[*r], &format!("plugin quarantined ({err})"));
                        }
                    }
                    return self.quarantined(
                        action,
                        &meta,
                        failures,
                        &err,
                        Stage::Feature,
                        raw,
                        rows.into_iter(),
                    );
                }
                let n = events.len;
                if n == 1 {
                    if let Some(live) = live {
                        live.fail(raw.offsets[events.source_row[0] as usize], &err.to_string());
                    }
                    return self.dead_letter(
                        Stage::Feature,
                        Some(&meta),
                        &err.to_string(),
                        raw,
                        events.source_row[0] as usize,
                    );
                }
                let (left, right) = halves(n as usize);
                let left = select_events(events, &left);
                self.feature_isolating(i, raw, &left, live.as_deref_mut())?;
                self.feature_isolating(i, raw, &select_events(events, &right), live)
            }
        }
    }

    /// Health of every plugin, by name.
    pub fn plugin_health(&self) -> Vec<(PluginMeta, crate::plugin::PluginHealth)> {
        let mut v: Vec<_> = self
            .parsers
            .iter()
            .map(|p| (p.meta().clone(), p.health().clone()))
            .collect();
        v.extend(
            self.features
                .iter()
                .map(|f| (f.plugin.meta().clone(), f.plugin.health().clone())),
        );
        if let Some(l) = &self.late {
            v.push((l.meta().clone(), l.health().clone()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_fold_digits_and_stay_bounded_per_plugin() {
        let mut labels = ReasonLabels::default();
        assert_eq!(
            labels.label("p", "600001 ms behind, allowed 1800000 ms"),
            "N ms behind, allowed N ms"
        );
        assert_eq!(
            labels.label("p", "7 ms behind, allowed 1800000 ms"),
            "N ms behind, allowed N ms"
        );
        assert_eq!(labels.label("p", &"x".repeat(500)).len(), 100);
        for i in 0..MAX_REASON_LABELS {
            labels.label(
                "q",
                &format!("reason {}", char::from(b'a' + (i % 26) as u8)).repeat(i / 26 + 1),
            );
        }
        assert_eq!(labels.label("q", "one more kind"), "other");
        assert_eq!(
            labels.label("q", "reason a"),
            "reason a",
            "known labels stay"
        );
        assert_eq!(
            labels.label("p", "another kind"),
            "another kind",
            "per plugin"
        );
    }
}
