//! Changes the admin API asks of a running pipeline, applied by the
//! pipeline thread between two batches, and what the pipeline shows the API
//! about its stages.
//!
//! The API prepares a change off the hot path (reads the component from the
//! registry, compiles and instantiates it, runs its smoke call), then
//! [`PipelineControl::submit`]s it and waits. Before its next batch the
//! pipeline takes every waiting change and applies it: records the new
//! state in the registry, then swaps the plugin (or its quotas) in. Every
//! record read before that moment went through the old version, every
//! record after it goes through the new one; tile state lives in the tiler
//! and the store, not in the plugin, so nothing is lost or counted twice.
//!
//! A change the pipeline has not started when the wait times out is
//! cancelled and never applied: a failed admin request changes nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::shadow::ShadowReport;
use crate::admin::registry::Registry;
use crate::config::{PluginConfig, Quotas};
use crate::plugin::{
    FeaturePlugin, LatePlugin, ParserPlugin, PluginError, PluginHealth, PluginKind, PluginMeta,
    PluginRuntime, PluginSource,
};
use crate::record::{EventBatch, RawBatch};

/// A plugin loaded, initialised and smoke-tested, ready to swap in.
pub enum LoadedPlugin {
    Parser(Box<ParserPlugin>),
    Feature(Box<FeaturePlugin>),
    Late(Box<LatePlugin>),
}

impl LoadedPlugin {
    /// Loads and initialises `src` as a plugin of `kind`.
    pub fn load(
        runtime: &PluginRuntime,
        kind: PluginKind,
        src: &PluginSource,
    ) -> Result<Self, PluginError> {
        Ok(match kind {
            PluginKind::Parser => LoadedPlugin::Parser(Box::new(runtime.load_parser(src)?)),
            PluginKind::Feature => LoadedPlugin::Feature(Box::new(runtime.load_feature(src)?)),
            PluginKind::Late => LoadedPlugin::Late(Box::new(runtime.load_late(src)?)),
        })
    }

    pub fn meta(&self) -> &PluginMeta {
        match self {
            LoadedPlugin::Parser(p) => p.meta(),
            LoadedPlugin::Feature(p) => p.meta(),
            LoadedPlugin::Late(p) => p.meta(),
        }
    }

    pub fn health(&self) -> &PluginHealth {
        match self {
            LoadedPlugin::Parser(p) => p.health(),
            LoadedPlugin::Feature(p) => p.health(),
            LoadedPlugin::Late(p) => p.health(),
        }
    }
}

/// One change to one stage.
pub enum Change {
    /// Swap `plugin` in as the stage's `version` (`None`: the component the
    /// config names). `rollback` says how the registry's history moves.
    Activate {
        plugin: LoadedPlugin,
        version: Option<String>,
        rollback: bool,
    },
    /// New quotas, from the next call on.
    Quotas(Quotas),
    /// Run `plugin` (uploaded as `version`) as the stage's shadow, within
    /// `max_share` of the live path's time (see `shadow.rs`); replaces a
    /// shadow already running.
    Shadow {
        plugin: LoadedPlugin,
        version: String,
        max_share: f64,
    },
    /// End the stage's shadow run.
    EndShadow,
}

/// Where the pipeline was when a change took effect.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Applied {
    /// Records read before the change: these went through the old version.
    pub records_before: u64,
    /// The source's positions at the boundary (Kafka: `kafka:<topic>:<p>` →
    /// next offset), covering exactly the records read before.
    pub positions: BTreeMap<String, i64>,
    /// A shadow run this change ended (a stop, or a promotion): its report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<ShadowReport>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ControlError {
    #[error("the pipeline did not reach a batch boundary within {0:?} (stuck on the store or stopped?); nothing was changed")]
    Timeout(Duration),
    #[error("{0}")]
    Rejected(String),
}

enum TicketState {
    Waiting,
    Applying,
    Done(Result<Applied, String>),
    Cancelled,
}

struct Ticket {
    state: Mutex<TicketState>,
    done: Condvar,
}

/// A submitted change, as the pipeline takes it.
pub(super) struct Request {
    pub(super) stage: String,
    change: Option<Change>,
    ticket: Arc<Ticket>,
}

impl Request {
    /// The change, unless its submitter gave up waiting for it.
    pub(super) fn begin(&mut self) -> Option<Change> {
        let mut state = self.ticket.state.lock().expect("not poisoned");
        match *state {
            TicketState::Waiting => {
                *state = TicketState::Applying;
                self.change.take()
            }
            _ => None,
        }
    }

    pub(super) fn finish(self, result: Result<Applied, String>) {
        *self.ticket.state.lock().expect("not poisoned") = TicketState::Done(result);
        self.ticket.done.notify_all();
    }
}

/// One stage as the pipeline last showed it.
#[derive(Clone, Debug, Serialize)]
pub struct StageView {
    pub name: String,
    pub kind: PluginKind,
    /// `parser`, `feature` or `late`, and for features what they define.
    pub version: String,
    /// Whether the running version came from the registry (an activation)
    /// or from the config's `path`.
    pub from_registry: bool,
    pub quotas: Quotas,
    pub health: PluginHealth,
    /// Feature plugins: the features they define now.
    pub features: Vec<String>,
    /// The stage's shadow run, running or the last one ended.
    pub shadow: Option<ShadowReport>,
}

/// A few records the pipeline read lately and the events its parser made
/// of them: what an upload's smoke call runs on.
#[derive(Clone)]
pub struct Sample {
    pub raw: RawBatch,
    pub events: EventBatch,
}

/// How often the pipeline refreshes its [`Sample`].
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Records kept in a [`Sample`].
pub const SAMPLE_RECORDS: usize = 64;

/// Shared by the pipeline and the admin API.
pub struct PipelineControl {
    pipeline: String,
    runtime: Arc<PluginRuntime>,
    registry: Arc<Registry>,
    /// The config's sections of every stage, by plugin name.
    configs: BTreeMap<String, (PluginKind, PluginConfig)>,
    pending: AtomicBool,
    requests: Mutex<Vec<Request>>,
    stages: Mutex<Vec<StageView>>,
    sample: Mutex<(Option<Sample>, Option<Instant>)>,
}

impl PipelineControl {
    pub(super) fn new(
        pipeline: &str,
        runtime: Arc<PluginRuntime>,
        registry: Arc<Registry>,
        configs: BTreeMap<String, (PluginKind, PluginConfig)>,
    ) -> Self {
        PipelineControl {
            pipeline: pipeline.to_string(),
            runtime,
            registry,
            configs,
            pending: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            stages: Mutex::new(Vec::new()),
            sample: Mutex::new((None, None)),
        }
    }

    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// The engine the pipeline's plugins run on (a plugin to swap in must
    /// be loaded by it).
    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A stage's kind and config section.
    pub fn stage_config(&self, stage: &str) -> Option<&(PluginKind, PluginConfig)> {
        self.configs.get(stage)
    }

    /// Every stage as the pipeline showed it last (about twice a second).
    pub fn stages(&self) -> Vec<StageView> {
        self.stages.lock().expect("not poisoned").clone()
    }

    pub fn sample(&self) -> Option<Sample> {
        self.sample.lock().expect("not poisoned").0.clone()
    }

    /// Hands `change` to the pipeline and waits until it is applied, it is
    /// refused, or `timeout` passes (then it is cancelled: never applied).
    pub fn submit(
        &self,
        stage: &str,
        change: Change,
        timeout: Duration,
    ) -> Result<Applied, ControlError> {
        let ticket = Arc::new(Ticket {
            state: Mutex::new(TicketState::Waiting),
            done: Condvar::new(),
        });
        self.requests.lock().expect("not poisoned").push(Request {
            stage: stage.to_string(),
            change: Some(change),
            ticket: ticket.clone(),
        });
        self.pending.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        let mut state = ticket.state.lock().expect("not poisoned");
        loop {
            match std::mem::replace(&mut *state, TicketState::Cancelled) {
                TicketState::Done(result) => return result.map_err(ControlError::Rejected),
                TicketState::Waiting if Instant::now() >= deadline => {
                    return Err(ControlError::Timeout(timeout));
                }
                waiting_or_applying => *state = waiting_or_applying,
            }
            // Once applying it finishes soon: wait without a deadline then.
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = if matches!(*state, TicketState::Applying) {
                Duration::from_millis(100)
            } else {
                left.max(Duration::from_millis(1))
            };
            state = ticket
                .done
                .wait_timeout(state, wait)
                .expect("not poisoned")
                .0;
        }
    }

    /// The pipeline: every change waiting, if any.
    pub(super) fn take(&self) -> Vec<Request> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.requests.lock().expect("not poisoned"))
    }

    pub(super) fn show(&self, stages: Vec<StageView>) {
        *self.stages.lock().expect("not poisoned") = stages;
    }

    /// The pipeline: whether to refresh the sample now.
    pub(super) fn sample_due(&self) -> bool {
        let s = self.sample.lock().expect("not poisoned");
        s.1.is_none_or(|at| at.elapsed() >= SAMPLE_EVERY)
    }

    pub(super) fn set_sample(&self, sample: Sample) {
        *self.sample.lock().expect("not poisoned") = (Some(sample), Some(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> PipelineControl {
        let dir = tempfile::tempdir().unwrap();
        let runtime = PluginRuntime::new(&Default::default()).unwrap();
        let registry = Registry::open(dir.path(), "p").unwrap();
        PipelineControl::new("p", Arc::new(runtime), Arc::new(registry), BTreeMap::new())
    }

    fn applied(n: u64) -> Applied {
        Applied {
            records_before: n,
            positions: BTreeMap::new(),
            shadow: None,
        }
    }

    #[test]
    fn a_change_not_taken_in_time_is_cancelled_and_never_applied() {
        let c = control();
        let got = c.submit(
            "s",
            Change::Quotas(Quotas::default()),
            Duration::from_millis(50),
        );
        assert_eq!(got, Err(ControlError::Timeout(Duration::from_millis(50))));
        let mut taken = c.take();
        assert_eq!(taken.len(), 1);
        assert!(
            taken[0].begin().is_none(),
            "a cancelled change must not be applied"
        );
    }

    #[test]
    fn the_submitter_gets_what_the_pipeline_answers() {
        let c = Arc::new(control());
        let pipeline = {
            let c = c.clone();
            std::thread::spawn(move || loop {
                let taken = c.take();
                if taken.is_empty() {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                for (i, mut r) in taken.into_iter().enumerate() {
                    assert!(r.begin().is_some());
                    r.finish(if i == 0 {
                        Ok(applied(7))
                    } else {
                        Err("no".into())
                    });
                }
                return;
            })
        };
        let got = c.submit(
            "s",
            Change::Quotas(Quotas::default()),
            Duration::from_secs(10),
        );
        pipeline.join().unwrap();
        assert_eq!(got, Ok(applied(7)));
    }
}
