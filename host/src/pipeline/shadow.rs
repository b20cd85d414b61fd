//! Shadow runs: a candidate version of a stage runs beside the live one on
//! the same batches. Its outputs are never written; they are compared with
//! the live outputs record by record, and the admin API reports the
//! comparison (records compared, differing, the first examples), so an
//! operator promotes the candidate on evidence.
//!
//! - What is compared, per source record: a parser's events (type, time,
//!   fields) or its error; a feature plugin's updates (`feature=value`);
//!   a late handler's decisions. Outputs are compared as sorted lists, so
//!   the order a plugin emits them in does not count as a difference.
//! - The shadow is its own instance, with its own quotas and health: a
//!   trap or a quota breach in it dead-letters nothing and is reported as
//!   a difference; when it is quarantined the shadow run stops.
//! - It may take at most `max_share` of the time the live path takes
//!   (everything a batch costs without shadows). Its cost is its own work
//!   (calls, collecting the live outcomes, comparing) or, when more, what a
//!   shadowed batch took beyond a batch without shadows: one batch in 16
//!   runs without, as the reference, once the shadow's cost is over a
//!   quarter of its share (below that no share binds). A batch that would exceed the share is
//!   not shadowed and counted as skipped: the live path slows by at most
//!   that share, plus one batch of the shadow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use super::control::LoadedPlugin;
use crate::plugin::{FeaturePlugin, ParserPlugin, PluginError, PluginHealth};
use crate::record::{
    bytes_at, select_events, select_raw, ColumnValues, EventBatch, FeatureSpec, LateBatch,
    LateDecision, ParseOutput, RawBatch, UpdateBatch,
};

/// Differing records kept as examples in a report.
pub const MAX_EXAMPLES: usize = 20;

/// What one version made of one source record.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its outputs, sorted.
    Output(Vec<String>),
    /// Why the record failed (a dead letter on the live side).
    Failed(String),
}

/// One output of one record, in a form cheap to collect and compare: a
/// feature update is a feature (an index into the outcomes' names) and the
/// value's bits; events and decisions are their text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Update { feature: u32, value: u64 },
    Text(String),
}

/// What one version made of each record of a batch, by the record's offset
/// in its topic partition. Collected unsorted; sorted once to compare.
#[derive(Default)]
pub(super) struct Outcomes {
    items: Vec<(i64, Item)>,
    failed: BTreeMap<i64, String>,
    /// Feature names of `Item::Update`.
    names: Vec<String>,
    /// Time spent collecting these (the shadow's cost on the live side).
    spent: Duration,
}

impl Outcomes {
    fn push(&mut self, offset: i64, output: String) {
        self.items.push((offset, Item::Text(output)));
    }

    pub(super) fn fail(&mut self, offset: i64, reason: &str) {
        self.failed.insert(offset, reason.to_string());
    }

    /// Fails the records `source_rows` of `raw` came from.
    pub(super) fn fail_rows(&mut self, raw: &RawBatch, source_rows: &[u32], reason: &str) {
        for r in source_rows {
            self.fail(raw.offsets[*r as usize], reason);
        }
    }

    fn name_id(&mut self, name: &str) -> u32 {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.names.push(name.to_string());
                (self.names.len() - 1) as u32
            }
        }
    }

    /// Renames `other`'s features into this one's names, so equal names
    /// compare equal.
    fn adopt_names_of(&mut self, other: &mut Outcomes) {
        let map: Vec<u32> = other.names.iter().map(|n| self.name_id(n)).collect();
        for (_, item) in &mut other.items {
            if let Item::Update { feature, .. } = item {
                *feature = map[*feature as usize];
            }
        }
        other.names = self.names.clone();
    }

    /// The outcome of the record at `offset`, given its items (sorted).
    fn render(&self, offset: i64, items: &[(i64, Item)]) -> Outcome {
        if let Some(reason) = self.failed.get(&offset) {
            return Outcome::Failed(reason.clone());
        }
        let mut out: Vec<String> = items
            .iter()
            .map(|(_, item)| match item {
                Item::Update { feature, value } => {
                    format!(
                        "{}={}",
                        self.names[*feature as usize],
                        f64::from_bits(*value)
                    )
                }
                Item::Text(t) => t.clone(),
            })
            .collect();
        out.sort_unstable();
        Outcome::Output(out)
    }

    /// A parser's events and errors.
    pub(super) fn add_parsed(&mut self, raw: &RawBatch, out: &ParseOutput) {
        let started = Instant::now();
        let events = &out.events;
        for row in 0..events.len as usize {
            let src = events.source_row[row] as usize;
            self.push(raw.offsets[src], event_summary(events, row));
        }
        for e in &out.errors {
            self.fail(raw.offsets[e.row as usize], &e.reason);
        }
        self.spent += started.elapsed();
    }

    /// A feature plugin's updates.
    pub(super) fn add_updates(
        &mut self,
        specs: &[FeatureSpec],
        raw: &RawBatch,
        events: &EventBatch,
        updates: &UpdateBatch,
    ) {
        let started = Instant::now();
        let ids: Vec<u32> = specs.iter().map(|s| self.name_id(&s.name)).collect();
        self.items.reserve(updates.row.len());
        for i in 0..updates.row.len() {
            let src = events.source_row[updates.row[i] as usize] as usize;
            let feature = ids
                .get(updates.feature[i] as usize)
                .copied()
                .unwrap_or(u32::MAX);
            self.items.push((
                raw.offsets[src],
                Item::Update {
                    feature,
                    value: updates.value[i].to_bits(),
                },
            ));
        }
        self.spent += started.elapsed();
    }

    /// A late handler's decisions, one per event of `events`.
    pub(super) fn add_decisions(
        &mut self,
        raw: &RawBatch,
        events: &EventBatch,
        decisions: &[LateDecision],
    ) {
        for (row, d) in decisions.iter().enumerate() {
            let src = events.source_row[row] as usize;
            let d = match d {
                LateDecision::Accept => "accept".to_string(),
                LateDecision::Drop => "drop".to_string(),
                LateDecision::SideOutput(reason) => format!("side_output: {reason}"),
            };
            self.push(raw.offsets[src], d);
        }
    }
}

/// One event as a compact JSON object: type, time and the fields it has.
fn event_summary(events: &EventBatch, row: usize) -> String {
    let mut m = Map::new();
    let ty = events
        .type_names
        .get(events.event_type[row] as usize)
        .cloned()
        .unwrap_or_default();
    m.insert("type".into(), Value::String(ty));
    m.insert("time".into(), Value::from(events.event_time[row]));
    for c in &events.columns {
        if !c.present.is_empty() && c.present.get(row).is_none_or(|p| *p == 0) {
            continue;
        }
        let v = match &c.values {
            ColumnValues::Float64(v) => v.get(row).map(|x| Value::from(*x)),
            ColumnValues::Int64(v) => v.get(row).map(|x| Value::from(*x)),
            ColumnValues::Boolean(v) => v.get(row).map(|x| Value::from(*x)),
            ColumnValues::Utf8(b) => {
                bytes_at(b, row).map(|x| Value::String(String::from_utf8_lossy(x).into_owned()))
            }
        };
        if let Some(v) = v {
            m.insert(c.name.clone(), v);
        }
    }
    Value::Object(m).to_string()
}

/// The records a comparison covers: where they are, by offset.
pub(super) struct Compared {
    pub topic: String,
    pub partition: i32,
    /// Sorted, each once.
    pub records: Vec<i64>,
}

impl Compared {
    /// Every record of `raw`.
    pub(super) fn all(raw: &RawBatch) -> Self {
        Compared {
            topic: raw.topic.clone(),
            partition: raw.partition,
            records: sorted_once(raw.offsets.iter().copied()),
        }
    }

    /// The records the events of `events` came from.
    pub(super) fn of_events(raw: &RawBatch, events: &EventBatch) -> Self {
        Compared {
            topic: raw.topic.clone(),
            partition: raw.partition,
            records: sorted_once(events.source_row.iter().map(|r| raw.offsets[*r as usize])),
        }
    }
}

fn sorted_once(offsets: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = offsets.collect();
    if !v.is_sorted() {
        v.sort_unstable();
    }
    v.dedup();
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowState {
    Running,
    /// The shadow version failed often enough to be quarantined: stopped.
    Quarantined,
    /// Ended over the admin API.
    Stopped,
    /// Its version was activated.
    Promoted,
}

impl ShadowState {
    /// Not ended: the stage still holds the shadow (running or quarantined).
    pub fn holds(self) -> bool {
        matches!(self, ShadowState::Running | ShadowState::Quarantined)
    }
}

/// A record the two versions disagree on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShadowExample {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub live: Outcome,
    pub shadow: Outcome,
}

/// A shadow run so far, as the admin API reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShadowReport {
    pub version: String,
    pub state: ShadowState,
    pub max_share: f64,
    pub started_at_ms: i64,
    pub batches_compared: u64,
    pub records_compared: u64,
    pub records_differing: u64,
    /// Batches (and their records) not shadowed to keep within `max_share`.
    pub batches_skipped: u64,
    pub records_skipped: u64,
    /// Time the live path and the shadow took since the start.
    pub live_seconds: f64,
    pub shadow_seconds: f64,
    /// What shadowed batches took beyond the shadow's own work, against a
    /// batch without shadows (evicted caches); counts against the share.
    pub interference_seconds: f64,
    /// The most one batch cost the shadow (own work and interference): the
    /// share can be overrun by at most this (the batch that crossed it).
    pub longest_batch_seconds: f64,
    /// The first differing records.
    pub examples: Vec<ShadowExample>,
    /// The shadow instance's own calls, failures and quota hits.
    pub health: PluginHealth,
}

impl ShadowReport {
    fn new(version: String, max_share: f64, health: PluginHealth) -> Self {
        ShadowReport {
            version,
            state: ShadowState::Running,
            max_share,
            started_at_ms: crate::record::now_ms(),
            batches_compared: 0,
            records_compared: 0,
            records_differing: 0,
            batches_skipped: 0,
            records_skipped: 0,
            live_seconds: 0.0,
            shadow_seconds: 0.0,
            interference_seconds: 0.0,
            longest_batch_seconds: 0.0,
            examples: Vec::new(),
            health,
        }
    }
}

/// A running shadow of one stage.
pub(super) struct Shadow {
    plugin: LoadedPlugin,
    report: ShadowReport,
    live: Duration,
    /// What its calls, collecting the live outcomes and comparing took.
    spent: Duration,
    /// What shadowed batches took beyond that over a batch without shadows.
    interference: Duration,
    spent_at_batch_start: Duration,
}

impl Shadow {
    pub(super) fn new(plugin: LoadedPlugin, version: String, max_share: f64) -> Self {
        Shadow {
            report: ShadowReport::new(version, max_share, plugin.health().clone()),
            plugin,
            live: Duration::ZERO,
            spent: Duration::ZERO,
            interference: Duration::ZERO,
            spent_at_batch_start: Duration::ZERO,
        }
    }

    pub(super) fn version(&self) -> &str {
        &self.report.version
    }

    pub(super) fn report(&self) -> ShadowReport {
        let mut r = self.report.clone();
        r.live_seconds = self.live.as_secs_f64();
        r.shadow_seconds = self.spent.as_secs_f64();
        r.interference_seconds = self.interference.as_secs_f64();
        r.health = self.plugin.health().clone();
        r
    }

    /// Parses `raw` with the shadow, isolating failures as the live path
    /// does (halving down to the records that fail).
    pub(super) fn parse(&mut self, raw: &RawBatch) -> Outcomes {
        self.run(|plugin, out| {
            if let LoadedPlugin::Parser(p) = plugin {
                parse_isolating(p, raw, out);
            }
        })
    }

    /// Runs the shadow feature plugin on `events`, isolating failures.
    pub(super) fn process(&mut self, raw: &RawBatch, events: &EventBatch) -> Outcomes {
        self.run(|plugin, out| {
            if let LoadedPlugin::Feature(p) = plugin {
                process_isolating(p, raw, events, out);
            }
        })
    }

    /// The shadow late handler's decisions (a failure fails every late
    /// event, as on the live path).
    pub(super) fn decide(&mut self, raw: &RawBatch, batch: &LateBatch) -> Outcomes {
        self.run(|plugin, out| {
            if let LoadedPlugin::Late(p) = plugin {
                match p.decide(batch) {
                    Ok(d) => out.add_decisions(raw, &batch.events, &d),
                    Err(e) => fail_all(out, raw, &batch.events.source_row, &e),
                }
            }
        })
    }

    /// Runs `call` on the shadow plugin, timed; notices a quarantine.
    fn run(&mut self, call: impl FnOnce(&mut LoadedPlugin, &mut Outcomes)) -> Outcomes {
        let started = Instant::now();
        let mut out = Outcomes::default();
        call(&mut self.plugin, &mut out);
        if self.plugin.health().quarantined && self.report.state == ShadowState::Running {
            self.report.state = ShadowState::Quarantined;
            tracing::warn!(
                version = self.report.version,
                "shadow version quarantined; its shadow run stops"
            );
        }
        self.spent += started.elapsed();
        out
    }

    /// Whether what the shadow cost is over `share` of the live path's time.
    fn costs_over(&self, share: f64) -> bool {
        (self.spent + self.interference).as_secs_f64() > share * self.live.as_secs_f64()
    }

    /// Compares the two versions on every record of `compared`; the work
    /// counts as the shadow's time, with what collecting `live` took.
    pub(super) fn compare(&mut self, compared: Compared, live: Outcomes, shadow: Outcomes) {
        let started = Instant::now();
        let collecting = live.spent;
        compare_into(&mut self.report, compared, live, shadow);
        self.spent += collecting + started.elapsed();
    }
}

/// Counts the records of `compared` on which the two versions agree and
/// differ (both failing counts as agreeing: versions word errors
/// differently), keeping the first differences as examples.
fn compare_into(
    r: &mut ShadowReport,
    compared: Compared,
    mut live: Outcomes,
    mut shadow: Outcomes,
) {
    live.adopt_names_of(&mut shadow);
    live.items.sort_unstable();
    shadow.items.sort_unstable();
    r.batches_compared += 1;
    let (mut li, mut si) = (0, 0);
    for offset in compared.records {
        r.records_compared += 1;
        let l = run_of(&live.items, &mut li, offset);
        let s = run_of(&shadow.items, &mut si, offset);
        let agree = match (
            live.failed.contains_key(&offset),
            shadow.failed.contains_key(&offset),
        ) {
            (false, false) => l == s,
            (true, true) => true,
            _ => false,
        };
        if agree {
            continue;
        }
        r.records_differing += 1;
        if r.examples.len() < MAX_EXAMPLES {
            r.examples.push(ShadowExample {
                topic: compared.topic.clone(),
                partition: compared.partition,
                offset,
                live: live.render(offset, l),
                shadow: shadow.render(offset, s),
            });
        }
    }
}

/// The items of `offset` in `items` (sorted by offset), from `*at` on;
/// moves `*at` past them.
fn run_of<'a>(items: &'a [(i64, Item)], at: &mut usize, offset: i64) -> &'a [(i64, Item)] {
    while *at < items.len() && items[*at].0 < offset {
        *at += 1;
    }
    let start = *at;
    while *at < items.len() && items[*at].0 == offset {
        *at += 1;
    }
    &items[start..*at]
}

fn fail_all(out: &mut Outcomes, raw: &RawBatch, source_rows: &[u32], e: &PluginError) {
    out.fail_rows(raw, source_rows, &format!("shadow failed: {e}"));
}

fn parse_isolating(p: &mut ParserPlugin, raw: &RawBatch, out: &mut Outcomes) {
    match p.parse(raw) {
        Ok(parsed) => out.add_parsed(raw, &parsed),
        Err(e) if raw.offsets.len() == 1 || p.health().quarantined => {
            let rows: Vec<u32> = (0..raw.offsets.len() as u32).collect();
            fail_all(out, raw, &rows, &e)
        }
        Err(_) => {
            let (left, right) = super::halves(raw.offsets.len());
            parse_isolating(p, &select_raw(raw, &left), out);
            parse_isolating(p, &select_raw(raw, &right), out);
        }
    }
}

fn process_isolating(
    p: &mut FeaturePlugin,
    raw: &RawBatch,
    events: &EventBatch,
    out: &mut Outcomes,
) {
    match p.process(events) {
        Ok(updates) => out.add_updates(p.specs(), raw, events, &updates),
        Err(e) if events.len == 1 || p.health().quarantined => {
            fail_all(out, raw, &events.source_row, &e)
        }
        Err(_) => {
            let (left, right) = super::halves(events.len as usize);
            process_isolating(p, raw, &select_events(events, &left), out);
            process_isolating(p, raw, &select_events(events, &right), out);
        }
    }
}

/// Every stage's shadow run: running ones, and the last report of ended ones.
#[derive(Default)]
pub(super) struct Shadows {
    running: BTreeMap<String, Shadow>,
    ended: BTreeMap<String, ShadowReport>,
    /// Batches begun; every [`REFERENCE_EVERY`]th runs without shadows.
    batches: u64,
    /// Whether the current batch is a reference batch.
    reference: bool,
    /// Time per record of batches without a shadow (moving average): what
    /// a shadowed batch would have cost without its shadow.
    plain_per_record: Option<f64>,
}

/// One batch in this many runs without shadows (while a shadow's cost is
/// over a quarter of its share), to keep measuring what the live path costs
/// alone: a shadow slows the live path beyond its own calls (the caches it
/// evicts), and that counts against its share too.
const REFERENCE_EVERY: u64 = 16;

/// Weight of the newest reference batch in `plain_per_record`.
const REFERENCE_WEIGHT: f64 = 0.2;

/// Where a batch began, for [`Shadows::end_batch`].
pub(super) struct BatchStart {
    at: Instant,
    records: usize,
}

impl Shadows {
    pub(super) fn start(&mut self, stage: &str, shadow: Shadow) {
        self.ended.remove(stage);
        self.running.insert(stage.to_string(), shadow);
    }

    /// Ends a stage's shadow run; its final report.
    pub(super) fn end(&mut self, stage: &str, state: ShadowState) -> Option<ShadowReport> {
        let mut report = self.running.remove(stage)?.report();
        report.state = state;
        self.ended.insert(stage.to_string(), report.clone());
        Some(report)
    }

    pub(super) fn get_mut(&mut self, stage: &str) -> Option<&mut Shadow> {
        self.running.get_mut(stage)
    }

    pub(super) fn version(&self, stage: &str) -> Option<&str> {
        self.running.get(stage).map(Shadow::version)
    }

    pub(super) fn report(&self, stage: &str) -> Option<ShadowReport> {
        match self.running.get(stage) {
            Some(s) => Some(s.report()),
            None => self.ended.get(stage).cloned(),
        }
    }

    /// The stage's shadow, if one runs and this batch of `records` is
    /// within its share of the live path's time; else the batch counts as
    /// skipped.
    pub(super) fn due(&mut self, stage: &str, records: usize) -> Option<&mut Shadow> {
        let s = self.running.get_mut(stage)?;
        if s.report.state != ShadowState::Running {
            return None;
        }
        if self.reference || s.costs_over(s.report.max_share) {
            s.report.batches_skipped += 1;
            s.report.records_skipped += records as u64;
            return None;
        }
        Some(s)
    }

    /// Starts a batch of `records` (`None` without shadows running).
    pub(super) fn begin_batch(&mut self, records: usize) -> Option<BatchStart> {
        if self.running.is_empty() {
            return None;
        }
        self.batches += 1;
        // A reference is needed only where a share could bind: a shadow
        // whose own work is already over a quarter of its share.
        self.reference = self.batches.is_multiple_of(REFERENCE_EVERY)
            && self.running.values().any(|s| {
                s.report.state == ShadowState::Running && s.costs_over(s.report.max_share / 4.0)
            });
        for s in self.running.values_mut() {
            s.spent_at_batch_start = s.spent;
        }
        Some(BatchStart {
            at: Instant::now(),
            records,
        })
    }

    /// Ends a batch: its time, less what the shadows cost, is live-path
    /// time. A shadow's cost is what its calls took or, when more, what the
    /// batch took beyond a batch without shadows (a reference batch's time
    /// per record); the excess is charged as interference.
    pub(super) fn end_batch(&mut self, start: BatchStart) {
        self.reference = false;
        let elapsed = start.at.elapsed();
        let this_batch = |s: &Shadow| s.spent.saturating_sub(s.spent_at_batch_start);
        let measured: Duration = self.running.values().map(this_batch).sum();
        if measured.is_zero() {
            let per_record = elapsed.as_secs_f64() / start.records.max(1) as f64;
            self.plain_per_record = Some(match self.plain_per_record {
                Some(p) => p + REFERENCE_WEIGHT * (per_record - p),
                None => per_record,
            });
            for s in self.running.values_mut() {
                s.live += elapsed;
            }
            return;
        }
        let excess = self.plain_per_record.map_or(Duration::ZERO, |p| {
            elapsed.saturating_sub(Duration::from_secs_f64(p * start.records as f64))
        });
        let charged = excess.max(measured);
        let interference = charged - measured;
        let ran = self
            .running
            .values()
            .filter(|s| !this_batch(s).is_zero())
            .count();
        for s in self.running.values_mut() {
            let own = this_batch(s);
            if !own.is_zero() {
                let share = interference / ran as u32;
                s.interference += share;
                let batch = (own + share).as_secs_f64();
                s.report.longest_batch_seconds = s.report.longest_batch_seconds.max(batch);
            }
            s.live += elapsed.saturating_sub(charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BytesColumn, Column};

    fn report() -> ShadowReport {
        ShadowReport::new("2".into(), 1.0, PluginHealth::default())
    }

    fn compared(records: &[i64]) -> Compared {
        Compared {
            topic: "t".into(),
            partition: 3,
            records: records.to_vec(),
        }
    }

    fn updates(names: &[&str], rows: &[(i64, u32, f64)]) -> Outcomes {
        let mut o = Outcomes::default();
        for n in names {
            o.name_id(n);
        }
        for (offset, feature, value) in rows {
            o.items.push((
                *offset,
                Item::Update {
                    feature: *feature,
                    value: value.to_bits(),
                },
            ));
        }
        o
    }

    #[test]
    fn records_agree_on_the_same_outputs_in_any_order_or_when_both_fail() {
        let mut r = report();
        // Same updates, emitted in another order and with the features
        // declared in another order.
        let live = updates(&["a", "b"], &[(7, 0, 1.0), (7, 1, 2.0), (8, 0, 1.0)]);
        let mut shadow = updates(&["b", "a"], &[(8, 1, 1.0), (7, 0, 2.0), (7, 1, 1.0)]);
        shadow.fail(9, "shadow failed: another wording");
        let mut live = live;
        live.fail(9, "trap");
        compare_into(&mut r, compared(&[7, 8, 9, 10]), live, shadow);
        assert_eq!((r.records_compared, r.records_differing), (4, 0), "{r:?}");
        assert!(r.examples.is_empty());
    }

    #[test]
    fn differences_are_counted_per_record_with_both_sides_as_examples() {
        let mut r = report();
        let mut live = updates(&["a"], &[(1, 0, 1.0), (2, 0, 1.0)]);
        live.fail(4, "trap");
        let shadow = updates(&["a", "z"], &[(1, 0, 1.0), (2, 0, 2.0), (3, 1, 1.0)]);
        compare_into(&mut r, compared(&[1, 2, 3, 4]), live, shadow);
        assert_eq!((r.records_compared, r.records_differing), (4, 3), "{r:?}");
        let by_offset: Vec<(i64, Outcome, Outcome)> = r
            .examples
            .iter()
            .map(|x| (x.offset, x.live.clone(), x.shadow.clone()))
            .collect();
        let out = |v: &[&str]| Outcome::Output(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            by_offset,
            vec![
                (2, out(&["a=1"]), out(&["a=2"])),
                (3, out(&[]), out(&["z=1"])),
                (4, Outcome::Failed("trap".into()), out(&[])),
            ]
        );
        assert!(r
            .examples
            .iter()
            .all(|x| x.topic == "t" && x.partition == 3));
    }

    #[test]
    fn examples_stop_at_the_limit_but_counting_goes_on() {
        let mut r = report();
        let n = MAX_EXAMPLES as i64 + 5;
        let live = updates(&["a"], &[]);
        let rows: Vec<(i64, u32, f64)> = (0..n).map(|o| (o, 0, 1.0)).collect();
        let records: Vec<i64> = (0..n).collect();
        compare_into(&mut r, compared(&records), live, updates(&["a"], &rows));
        assert_eq!(r.records_differing, n as u64);
        assert_eq!(r.examples.len(), MAX_EXAMPLES);
    }

    #[test]
    fn an_event_is_summarised_with_its_type_time_and_present_fields() {
        let events = EventBatch {
            len: 2,
            source_row: vec![0, 1],
            event_time: vec![5, 6],
            event_type: vec![1, 0],
            type_names: vec!["view".into(), "like".into()],
            columns: vec![
                Column {
                    name: "post_id".into(),
                    present: vec![],
                    values: ColumnValues::Utf8(BytesColumn {
                        data: b"p1p2".to_vec(),
                        offsets: vec![0, 2, 4],
                    }),
                },
                Column {
                    name: "dwell".into(),
                    present: vec![1, 0],
                    values: ColumnValues::Int64(vec![30, 0]),
                },
            ],
        };
        let first: Value = serde_json::from_str(&event_summary(&events, 0)).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"type": "like", "time": 5, "post_id": "p1", "dwell": 30})
        );
        let second: Value = serde_json::from_str(&event_summary(&events, 1)).unwrap();
        assert_eq!(
            second,
            serde_json::json!({"type": "view", "time": 6, "post_id": "p2"})
        );
    }
}
