//! Loaded plugins: one sandbox (store + instance) per plugin, reused across
//! calls, replaced after a failed call; quotas applied to every call; the
//! output of every call checked before the host uses it.

use serde::Serialize;
use std::sync::Arc;
use wasmtime::{Engine, Store, Trap};

use super::bindings::{
    self, EventBatch, FeatureSpec, LateBatch, LateDecision, ParseOutput, RawBatch, UpdateBatch,
};
use super::runtime::{ticks_for, PluginRuntime, PluginSource};
use super::state::PluginState;
use super::{PluginError, PluginMeta};
use crate::config::{QuarantinePolicy, Quotas};
use crate::record::{event_batch_bytes, validate_event_batch};

/// Calls, failures and quarantine state of one plugin.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PluginHealth {
    pub calls: u64,
    pub failures: u64,
    /// Failures that were a quota breach (fuel, wall time, memory, output size).
    pub quota_hits: u64,
    /// Fuel the calls burned (0 unless `runtime.fuel` is on).
    pub fuel_used: u64,
    /// Failed calls by kind of failure (`trap`, `wall_time`, `memory`, ...).
    pub errors: std::collections::BTreeMap<&'static str, u64>,
    pub consecutive_failures: u32,
    pub quarantined: bool,
    pub last_error: Option<String>,
}

/// How a world's template instantiates and initialises.
pub(super) trait Template: Send {
    type Bindings: Send;
    fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Self::Bindings>;
    /// Calls the world's `init`; feature plugins return their specs.
    fn init(
        b: &Self::Bindings,
        store: &mut Store<PluginState>,
        config: &str,
    ) -> wasmtime::Result<Result<Vec<FeatureSpec>, String>>;
}

impl Template for bindings::parser::ParserPluginPre<PluginState> {
    type Bindings = bindings::parser::ParserPlugin;
    fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Self::Bindings> {
        bindings::parser::ParserPluginPre::instantiate(self, store)
    }
    fn init(
        b: &Self::Bindings,
        store: &mut Store<PluginState>,
        config: &str,
    ) -> wasmtime::Result<Result<Vec<FeatureSpec>, String>> {
        Ok(b.tessera_plugin_parser()
            .call_init(store, config)?
            .map(|()| Vec::new()))
    }
}

impl Template for bindings::feature::FeaturePluginPre<PluginState> {
    type Bindings = bindings::feature::FeaturePlugin;
    fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Self::Bindings> {
        bindings::feature::FeaturePluginPre::instantiate(self, store)
    }
    fn init(
        b: &Self::Bindings,
        store: &mut Store<PluginState>,
        config: &str,
    ) -> wasmtime::Result<Result<Vec<FeatureSpec>, String>> {
        b.tessera_plugin_feature().call_init(store, config)
    }
}

impl Template for bindings::late::LatePluginPre<PluginState> {
    type Bindings = bindings::late::LatePlugin;
    fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Self::Bindings> {
        bindings::late::LatePluginPre::instantiate(self, store)
    }
    fn init(
        b: &Self::Bindings,
        store: &mut Store<PluginState>,
        config: &str,
    ) -> wasmtime::Result<Result<Vec<FeatureSpec>, String>> {
        Ok(b.tessera_plugin_late_handler()
            .call_init(store, config)?
            .map(|()| Vec::new()))
    }
}

/// One plugin's template, quotas and live instance.
pub(super) struct Sandbox<T: Template> {
    meta: PluginMeta,
    engine: Engine,
    template: T,
    config_json: String,
    quotas: Quotas,
    quarantine: QuarantinePolicy,
    fuel: bool,
    /// The engine's epoch tick, to turn a wall-time quota into ticks.
    epoch_tick: std::time::Duration,
    ticks: u64,
    live: Option<(Store<PluginState>, T::Bindings)>,
    specs: Vec<FeatureSpec>,
    health: PluginHealth,
    /// `tessera_plugin_call_seconds` of this plugin and version.
    call_seconds: metrics::Histogram,
}

impl<T: Template> Sandbox<T> {
    pub(super) fn new(
        rt: &PluginRuntime,
        meta: PluginMeta,
        template: T,
        src: &PluginSource,
    ) -> Self {
        Sandbox {
            engine: rt.engine().clone(),
            template,
            config_json: src.config_json.clone(),
            quotas: src.quotas.clone(),
            quarantine: src.quarantine.clone(),
            fuel: rt.fuel_enabled(),
            epoch_tick: rt.epoch_tick(),
            ticks: rt.ticks_for(src.quotas.wall_time_per_call),
            live: None,
            specs: Vec::new(),
            health: PluginHealth::default(),
            call_seconds: metrics::histogram!(
                "tessera_plugin_call_seconds",
                "plugin" => meta.name.clone(),
                "version" => meta.version.clone()
            ),
            meta,
        }
    }

    /// New quotas, in force from the next call (the live instance keeps its
    /// memory; it may not grow past a lower limit).
    pub(super) fn set_quotas(&mut self, quotas: Quotas) {
        self.ticks = ticks_for(self.epoch_tick, quotas.wall_time_per_call);
        if let Some((store, _)) = self.live.as_mut() {
            store.data_mut().limiter.max_bytes = quotas.max_memory_bytes;
        }
        self.quotas = quotas;
    }

    pub(super) fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Makes sure there is a live, initialised instance.
    pub(super) fn ensure_live(&mut self) -> Result<(), PluginError> {
        if self.live.is_some() {
            return Ok(());
        }
        let state = PluginState::new(
            Arc::from(self.meta.name.as_str()),
            Arc::from(self.meta.version.as_str()),
            self.quotas.max_memory_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        arm(
            &mut store,
            self.fuel.then_some(self.quotas.fuel_per_call),
            self.ticks,
        );
        let bindings = self
            .template
            .instantiate(&mut store)
            .map_err(|e| classify(e, &store, &self.quotas))?;
        match T::init(&bindings, &mut store, &self.config_json) {
            Ok(Ok(specs)) => {
                self.specs = specs;
                self.live = Some((store, bindings));
                Ok(())
            }
            Ok(Err(message)) => Err(PluginError::Init(message)),
            Err(e) => Err(classify(e, &store, &self.quotas)),
        }
    }

    /// Runs one call under the quotas. The instance is dropped when the call
    /// fails, so the next call starts from a clean one.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&T::Bindings, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if self.health.quarantined {
            return Err(PluginError::Quarantined);
        }
        self.ensure_live()?;
        let Some((store, bindings)) = self.live.as_mut() else {
            unreachable!("instance is live after ensure_live")
        };
        arm(
            store,
            self.fuel.then_some(self.quotas.fuel_per_call),
            self.ticks,
        );
        let started = std::time::Instant::now();
        let result = f(bindings, store);
        self.call_seconds.record(started.elapsed());
        if self.fuel {
            let left = store.get_fuel().unwrap_or(0);
            self.health.fuel_used += self.quotas.fuel_per_call.saturating_sub(left);
        }
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let err = classify(e, store, &self.quotas);
                self.live = None;
                Err(err)
            }
        }
    }

    /// Books the outcome of a call (after output checks) into the health counters.
    fn record<R>(&mut self, result: Result<R, PluginError>) -> Result<R, PluginError> {
        self.health.calls += 1;
        match &result {
            Ok(_) => self.health.consecutive_failures = 0,
            Err(PluginError::Quarantined) => {}
            Err(e) => {
                self.health.failures += 1;
                *self.health.errors.entry(e.kind()).or_default() += 1;
                if e.is_quota() {
                    self.health.quota_hits += 1;
                }
                self.health.consecutive_failures += 1;
                self.health.last_error = Some(e.to_string());
                if self.health.consecutive_failures >= self.quarantine.after_consecutive_failures {
                    if !self.health.quarantined {
                        tracing::error!(plugin = %self.meta, failures = self.health.consecutive_failures, error = %e, "plugin quarantined");
                    }
                    self.health.quarantined = true;
                }
            }
        }
        result
    }

    fn check_records(&self, what: &'static str, got: usize) -> Result<(), PluginError> {
        if got > self.quotas.max_output_records {
            return Err(PluginError::OutputTooLarge {
                what,
                got,
                limit: self.quotas.max_output_records,
            });
        }
        Ok(())
    }

    fn check_bytes(&self, got: usize) -> Result<(), PluginError> {
        if got > self.quotas.max_output_bytes {
            return Err(PluginError::OutputTooLarge {
                what: "bytes",
                got,
                limit: self.quotas.max_output_bytes,
            });
        }
        Ok(())
    }
}

/// Gives a store its budget for one call: fuel, wall-time deadline, and a
/// clean slate for the memory flag and stderr tail.
fn arm(store: &mut Store<PluginState>, fuel: Option<u64>, ticks: u64) {
    if let Some(fuel) = fuel {
        // Cannot fail: fuel is enabled on the engine whenever `fuel` is set.
        let _ = store.set_fuel(fuel);
    }
    store.set_epoch_deadline(ticks);
    store.data().stderr.clear_recent();
    store.data_mut().limiter.hit = false;
}

/// Turns a wasmtime error into the quota or trap that caused it.
fn classify(e: wasmtime::Error, store: &Store<PluginState>, quotas: &Quotas) -> PluginError {
    let stderr = store.data().stderr.recent();
    let memory_hit = store.data().limiter.hit;
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginError::CpuBudget {
            fuel: quotas.fuel_per_call,
        },
        Some(Trap::Interrupt) => PluginError::WallTime {
            ms: quotas.wall_time_per_call.as_millis(),
        },
        _ if memory_hit => PluginError::Memory {
            bytes: quotas.max_memory_bytes,
        },
        Some(trap) if stderr.is_empty() => PluginError::Trap(trap.to_string()),
        Some(trap) => PluginError::Trap(format!("{trap}; plugin stderr: {stderr}")),
        None => PluginError::Trap(format!("{e:#}")),
    }
}

macro_rules! plugin_common {
    ($t:ty) => {
        impl $t {
            pub fn meta(&self) -> &PluginMeta {
                &self.sandbox.meta
            }
            pub fn health(&self) -> &PluginHealth {
                &self.sandbox.health
            }
            pub fn quarantine_policy(&self) -> &QuarantinePolicy {
                &self.sandbox.quarantine
            }
            pub fn quotas(&self) -> &Quotas {
                self.sandbox.quotas()
            }
            /// See `Sandbox::set_quotas`: in force from the next call.
            pub fn set_quotas(&mut self, quotas: Quotas) {
                self.sandbox.set_quotas(quotas)
            }
        }
    };
}

/// A loaded parser plugin.
pub struct ParserPlugin {
    sandbox: Sandbox<bindings::parser::ParserPluginPre<PluginState>>,
}
plugin_common!(ParserPlugin);

impl ParserPlugin {
    pub(super) fn new(sandbox: Sandbox<bindings::parser::ParserPluginPre<PluginState>>) -> Self {
        ParserPlugin { sandbox }
    }

    /// Parses one batch. The output is checked: every list has the right
    /// length, every row index points into `batch`, and it is within quotas.
    pub fn parse(&mut self, batch: &RawBatch) -> Result<ParseOutput, PluginError> {
        let n = batch.offsets.len();
        let result = self
            .sandbox
            .call(|b, store| b.tessera_plugin_parser().call_parse(store, batch))
            .and_then(|out| {
                self.sandbox.check_records(
                    "events and errors",
                    out.events.len as usize + out.errors.len(),
                )?;
                self.sandbox.check_bytes(
                    event_batch_bytes(&out.events)
                        + out.errors.iter().map(|e| e.reason.len() + 4).sum::<usize>(),
                )?;
                validate_event_batch(&out.events).map_err(PluginError::MalformedOutput)?;
                if let Some(r) = out.events.source_row.iter().find(|r| **r as usize >= n) {
                    return Err(PluginError::MalformedOutput(format!(
                        "event source row {r} out of range for a batch of {n}"
                    )));
                }
                if let Some(e) = out.errors.iter().find(|e| e.row as usize >= n) {
                    return Err(PluginError::MalformedOutput(format!(
                        "error row {} out of range for a batch of {n}",
                        e.row
                    )));
                }
                Ok(out)
            });
        self.sandbox.record(result)
    }
}

/// A loaded feature plugin and the features it declared.
pub struct FeaturePlugin {
    sandbox: Sandbox<bindings::feature::FeaturePluginPre<PluginState>>,
}
plugin_common!(FeaturePlugin);

impl FeaturePlugin {
    pub(super) fn new(sandbox: Sandbox<bindings::feature::FeaturePluginPre<PluginState>>) -> Self {
        FeaturePlugin { sandbox }
    }

    /// The features this plugin declared in `init`.
    pub fn specs(&self) -> &[FeatureSpec] {
        &self.sandbox.specs
    }

    /// Maps events to updates; checks every update refers to a declared
    /// feature and an existing event, and the output quotas.
    pub fn process(&mut self, events: &EventBatch) -> Result<UpdateBatch, PluginError> {
        let n = events.len as usize;
        let n_specs = self.sandbox.specs.len();
        let result = self
            .sandbox
            .call(|b, store| b.tessera_plugin_feature().call_process(store, events))
            .and_then(|r| r.map_err(PluginError::Failed))
            .and_then(|out| {
                let len = out.row.len();
                self.sandbox.check_records("updates", len)?;
                self.sandbox.check_bytes(len * 14)?;
                if out.feature.len() != len || out.value.len() != len {
                    return Err(PluginError::MalformedOutput(format!(
                        "update lists differ in length: {} features, {len} rows, {} values",
                        out.feature.len(),
                        out.value.len()
                    )));
                }
                if let Some(r) = out.row.iter().find(|r| **r as usize >= n) {
                    return Err(PluginError::MalformedOutput(format!(
                        "update row {r} out of range for {n} events"
                    )));
                }
                if let Some(f) = out.feature.iter().find(|f| **f as usize >= n_specs) {
                    return Err(PluginError::MalformedOutput(format!(
                        "update feature {f} out of range for {n_specs} features"
                    )));
                }
                if let Some(v) = out.value.iter().find(|v| !v.is_finite()) {
                    return Err(PluginError::MalformedOutput(format!(
                        "update value {v} is not finite"
                    )));
                }
                Ok(out)
            });
        self.sandbox.record(result)
    }
}

/// A loaded late-data handler.
pub struct LatePlugin {
    sandbox: Sandbox<bindings::late::LatePluginPre<PluginState>>,
}
plugin_common!(LatePlugin);

impl LatePlugin {
    pub(super) fn new(sandbox: Sandbox<bindings::late::LatePluginPre<PluginState>>) -> Self {
        LatePlugin { sandbox }
    }

    /// One decision per late event.
    pub fn decide(&mut self, batch: &LateBatch) -> Result<Vec<LateDecision>, PluginError> {
        let n = batch.events.len as usize;
        let result = self
            .sandbox
            .call(|b, store| b.tessera_plugin_late_handler().call_decide(store, batch))
            .and_then(|out| {
                self.sandbox.check_records("decisions", out.len())?;
                if out.len() != n {
                    return Err(PluginError::MalformedOutput(format!(
                        "{} decisions for {n} late events",
                        out.len()
                    )));
                }
                Ok(out)
            });
        self.sandbox.record(result)
    }
}
