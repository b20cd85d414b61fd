//! The pipeline's side of the admin API: which component each stage runs
//! at start (the registry's active version outlives a restart), and
//! applying changes between batches (see `control.rs` for the hand-over).
//!
//! An activation first commits a checkpoint, so every record read before
//! the boundary is committed as the old version processed it: a crash, a
//! rebalance or a fenced checkpoint after the swap can only re-read records
//! after it, which the new version processes. Then the registry records the
//! new active version, and the plugin is swapped in. A feature plugin's
//! features are validated and registered in the store first (a new feature
//! gets an id; a changed tile layout of an existing one is refused).

use std::collections::BTreeMap;

use super::control::{Applied, Change, LoadedPlugin, Sample, StageView, SAMPLE_RECORDS};
use super::shadow::{Shadow, ShadowState, Shadows};
use super::{FeatureStage, Pipeline};
use crate::admin::registry::{Registry, ShadowRecord};
use crate::config::{Config, PluginConfig, Quotas};
use crate::error::PipelineError;
use crate::plugin::{FeaturePlugin, PluginError, PluginKind, PluginRuntime, PluginSource};
use crate::record::{select_events, select_raw};
use crate::stores::{StoredFeature, TileStore};
use crate::window::FeatureDef;

/// The component a stage runs at start: the version the registry says is
/// active, else the one the config names; with the quotas last set over
/// the admin API, if any.
pub(super) fn stage_source(
    cfg: &PluginConfig,
    registry: &Registry,
) -> Result<PluginSource, PluginError> {
    let stage = registry.stage(&cfg.name);
    let mut src = match &stage.active {
        None => PluginSource::from_config(cfg)?,
        Some(version) => stored_source(cfg, registry, version)?,
    };
    if let Some(q) = stage.quotas {
        src.quotas = q;
    }
    Ok(src)
}

/// An uploaded version of a stage's plugin, with the config it was
/// uploaded with and the config's quotas.
fn stored_source(
    cfg: &PluginConfig,
    registry: &Registry,
    version: &str,
) -> Result<PluginSource, PluginError> {
    let unreadable = |message: String| PluginError::Read {
        path: format!("registry {}@{version}", cfg.name),
        message,
    };
    let record = registry
        .version(&cfg.name, version)
        .ok_or_else(|| unreadable(format!("version {version} is not in the registry")))?;
    Ok(PluginSource {
        name: cfg.name.clone(),
        version: Some(version.to_string()),
        bytes: registry
            .bytes(&record)
            .map_err(|e| unreadable(e.to_string()))?,
        config_json: record.config.clone().unwrap_or_else(|| cfg.config_json()),
        quotas: cfg.quotas.clone(),
        quarantine: cfg.quarantine.clone(),
    })
}

/// The shadow runs the registry records, resumed (their counts start
/// afresh). A shadow that cannot load is ended with a warning: the live
/// pipeline does not depend on it.
pub(super) fn restore_shadows(
    stages: &BTreeMap<String, (PluginKind, PluginConfig)>,
    registry: &Registry,
    runtime: &PluginRuntime,
) -> Shadows {
    let mut shadows = Shadows::default();
    for (name, (kind, cfg)) in stages {
        let stage = registry.stage(name);
        let Some(record) = stage.shadow else {
            continue;
        };
        let loaded = stored_source(cfg, registry, &record.version).and_then(|mut src| {
            src.quotas = stage.quotas.unwrap_or(src.quotas);
            LoadedPlugin::load(runtime, *kind, &src)
        });
        match loaded {
            Ok(plugin) => {
                tracing::info!(stage = name, version = record.version, "shadow run resumed");
                shadows.start(name, Shadow::new(plugin, record.version, record.max_share));
            }
            Err(e) => {
                tracing::warn!(stage = name, version = record.version, error = %e, "shadow version does not load; its shadow run ends");
                if let Err(e) = registry.set_shadow(name, None) {
                    tracing::warn!(stage = name, error = %e, "could not record the end of the shadow run");
                }
            }
        }
    }
    shadows
}

/// Every stage's kind and config section, by plugin name.
pub(super) fn stage_configs(cfg: &Config) -> BTreeMap<String, (PluginKind, PluginConfig)> {
    let parsers = std::iter::once(&cfg.parser)
        .chain(&cfg.parsers)
        .map(|p| (PluginKind::Parser, p));
    let features = cfg.features.iter().map(|f| (PluginKind::Feature, f));
    let late = cfg.late.iter().map(|l| (PluginKind::Late, l));
    parsers
        .chain(features)
        .chain(late)
        .map(|(kind, p)| (p.name.clone(), (kind, p.clone())))
        .collect()
}

/// Validates a feature plugin's features and registers them in the store.
pub(super) fn define_features(
    store: &dyn TileStore,
    plugin: &FeaturePlugin,
) -> Result<Vec<FeatureDef>, PipelineError> {
    let name = &plugin.meta().name;
    let mut stored = Vec::new();
    for spec in plugin.specs() {
        let f = StoredFeature::from_spec(name, spec);
        f.validate()
            .map_err(|reason| PipelineError::InvalidFeature {
                plugin: name.clone(),
                feature: spec.name.clone(),
                reason,
            })?;
        stored.push(f);
    }
    let ids = store.register_features(&stored)?;
    Ok(ids
        .into_iter()
        .zip(stored)
        .zip(plugin.specs())
        .map(|((id, f), spec)| FeatureDef {
            id,
            plugin: name.clone(),
            spec: spec.clone(),
            sizes_ms: f.sizes_ms(),
        })
        .collect())
}

impl Pipeline {
    /// Applies every change the admin API handed over since the last batch.
    pub(super) fn apply_changes(&mut self) -> Result<(), PipelineError> {
        let requests = self.control.take();
        if requests.is_empty() {
            return Ok(());
        }
        for mut request in requests {
            let Some(change) = request.begin() else {
                continue;
            };
            let activation = matches!(change, Change::Activate { .. });
            // The records before the boundary, committed as the old version
            // processed them (see the module doc).
            if activation {
                if let Err(e) = self.checkpoint() {
                    request.finish(Err(format!("checkpoint before the swap failed: {e}")));
                    return Err(e);
                }
            }
            let stage = request.stage.clone();
            let result = self.apply_change(&stage, change);
            match &result {
                Ok(a) => tracing::info!(
                    stage,
                    records_before = a.records_before,
                    activation,
                    "admin change applied"
                ),
                Err(e) => tracing::warn!(stage, error = %e, "admin change refused"),
            }
            // Shown before the answer: a read right after it sees the change.
            self.show_stages();
            request.finish(result);
        }
        Ok(())
    }

    fn apply_change(&mut self, stage: &str, change: Change) -> Result<Applied, String> {
        let control = self.control.clone();
        let registry = control.registry();
        let no_stage =
            |kind: &str| format!("no {kind} stage named `{stage}` runs in this pipeline");
        let mut ended = None;
        match change {
            Change::Shadow {
                plugin,
                version,
                max_share,
            } => {
                if control.stage_config(stage).is_none() {
                    return Err(no_stage("plugin"));
                }
                registry
                    .set_shadow(
                        stage,
                        Some(ShadowRecord {
                            version: version.clone(),
                            max_share,
                        }),
                    )
                    .map_err(|e| e.to_string())?;
                ended = self.shadows.end(stage, ShadowState::Stopped);
                self.shadows
                    .start(stage, Shadow::new(plugin, version, max_share));
            }
            Change::EndShadow => {
                if self.shadows.version(stage).is_none() {
                    return Err(format!("`{stage}` runs no shadow"));
                }
                registry
                    .set_shadow(stage, None)
                    .map_err(|e| e.to_string())?;
                ended = self.shadows.end(stage, ShadowState::Stopped);
            }
            Change::Quotas(quotas) => {
                if control.stage_config(stage).is_none() {
                    return Err(no_stage("plugin"));
                }
                registry
                    .set_quotas(stage, quotas.clone())
                    .map_err(|e| e.to_string())?;
                self.set_stage_quotas(stage, quotas);
            }
            Change::Activate {
                plugin,
                version,
                rollback,
            } => {
                // Two rollbacks prepared at once both aim at the same earlier
                // version: the second must not pop the history again.
                if rollback && registry.stage(stage).history.last() != Some(&version) {
                    return Err(
                        "another change to this stage came first; look at it and roll back again"
                            .into(),
                    );
                }
                match plugin {
                    LoadedPlugin::Parser(p) => {
                        let i = self
                            .parsers
                            .iter()
                            .position(|x| x.meta().name == stage)
                            .ok_or_else(|| no_stage("parser"))?;
                        registry
                            .set_active(stage, version.clone(), rollback)
                            .map_err(|e| e.to_string())?;
                        self.parsers[i] = *p;
                    }
                    LoadedPlugin::Feature(p) => {
                        let i = self
                            .features
                            .iter()
                            .position(|x| x.plugin.meta().name == stage)
                            .ok_or_else(|| no_stage("feature"))?;
                        let taken: Vec<&str> = self
                            .features
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .flat_map(|(_, f)| f.defs.iter().map(|d| d.spec.name.as_str()))
                            .collect();
                        if let Some(dup) =
                            p.specs().iter().find(|s| taken.contains(&s.name.as_str()))
                        {
                            return Err(format!(
                                "feature `{}` is already defined by another stage",
                                dup.name
                            ));
                        }
                        let defs =
                            define_features(self.store.as_ref(), &p).map_err(|e| e.to_string())?;
                        registry
                            .set_active(stage, version.clone(), rollback)
                            .map_err(|e| e.to_string())?;
                        let old = &self.features[i];
                        self.features[i] = FeatureStage {
                            plugin: *p,
                            defs,
                            event_types: old.event_types.clone(),
                            allowed_lateness_ms: old.allowed_lateness_ms,
                        };
                    }
                    LoadedPlugin::Late(p) => {
                        if self.late.as_ref().is_none_or(|l| l.meta().name != stage) {
                            return Err(no_stage("late-handler"));
                        }
                        registry
                            .set_active(stage, version.clone(), rollback)
                            .map_err(|e| e.to_string())?;
                        self.late = Some(*p);
                    }
                }
                // The registry ended a shadow of this version (promoted).
                if version.is_some() && self.shadows.version(stage) == version.as_deref() {
                    ended = self.shadows.end(stage, ShadowState::Promoted);
                }
            }
        }
        Ok(Applied {
            shadow: ended.map(Box::new),
            ..self.boundary()
        })
    }

    fn set_stage_quotas(&mut self, stage: &str, quotas: Quotas) {
        for p in &mut self.parsers {
            if p.meta().name == stage {
                p.set_quotas(quotas.clone());
            }
        }
        for f in &mut self.features {
            if f.plugin.meta().name == stage {
                f.plugin.set_quotas(quotas.clone());
            }
        }
        if let Some(l) = self.late.as_mut().filter(|l| l.meta().name == stage) {
            l.set_quotas(quotas);
        }
    }

    /// Where the source is: everything read so far went through the
    /// versions active until now.
    fn boundary(&self) -> Applied {
        let positions = self
            .source
            .positions()
            .into_iter()
            .filter_map(|(key, value)| {
                <[u8; 8]>::try_from(value.as_slice())
                    .ok()
                    .map(|b| (key, i64::from_be_bytes(b)))
            })
            .collect();
        Applied {
            records_before: self.stats.records_in,
            positions,
            shadow: None,
        }
    }

    fn stage_views(&self) -> Vec<StageView> {
        let registry = self.control.registry();
        let view =
            |kind, meta: &crate::plugin::PluginMeta, quotas: &Quotas, health, features| StageView {
                name: meta.name.clone(),
                kind,
                version: meta.version.clone(),
                from_registry: registry.stage(&meta.name).active.is_some(),
                quotas: quotas.clone(),
                health,
                features,
                shadow: self.shadows.report(&meta.name),
            };
        let mut out: Vec<StageView> = self
            .parsers
            .iter()
            .map(|p| {
                view(
                    PluginKind::Parser,
                    p.meta(),
                    p.quotas(),
                    p.health().clone(),
                    Vec::new(),
                )
            })
            .collect();
        for f in &self.features {
            let names = f.defs.iter().map(|d| d.spec.name.clone()).collect();
            out.push(view(
                PluginKind::Feature,
                f.plugin.meta(),
                f.plugin.quotas(),
                f.plugin.health().clone(),
                names,
            ));
        }
        if let Some(l) = &self.late {
            out.push(view(
                PluginKind::Late,
                l.meta(),
                l.quotas(),
                l.health().clone(),
                Vec::new(),
            ));
        }
        out
    }

    /// Shows the admin API every stage as it is now, and sets the per-plugin
    /// metrics from the same numbers (no-ops without a recorder).
    pub(super) fn show_stages(&self) {
        let views = self.stage_views();
        for v in &views {
            let labels = [
                ("pipeline", self.cfg.pipeline.name.clone()),
                ("plugin", v.name.clone()),
                ("version", v.version.clone()),
            ];
            let h = &v.health;
            metrics::counter!("tessera_plugin_calls_total", &labels).absolute(h.calls);
            metrics::counter!("tessera_plugin_failures_total", &labels).absolute(h.failures);
            metrics::counter!("tessera_plugin_quota_hits_total", &labels).absolute(h.quota_hits);
            metrics::counter!("tessera_plugin_fuel_used_total", &labels).absolute(h.fuel_used);
            metrics::gauge!("tessera_plugin_quarantined", &labels)
                .set(f64::from(u8::from(h.quarantined)));
            for (kind, n) in &h.errors {
                let mut labels = labels.to_vec();
                labels.push(("kind", kind.to_string()));
                metrics::counter!("tessera_plugin_errors_total", &labels).absolute(*n);
            }
            if let Some(r) = v
                .shadow
                .as_ref()
                .filter(|r| r.state == ShadowState::Running)
            {
                let labels = [
                    ("pipeline", self.cfg.pipeline.name.clone()),
                    ("plugin", v.name.clone()),
                    ("version", r.version.clone()),
                ];
                metrics::counter!("tessera_shadow_records_compared_total", &labels)
                    .absolute(r.records_compared);
                metrics::counter!("tessera_shadow_records_differing_total", &labels)
                    .absolute(r.records_differing);
                metrics::counter!("tessera_shadow_records_skipped_total", &labels)
                    .absolute(r.records_skipped);
            }
        }
        self.control.show(views);
    }

    /// Keeps the first records of a parsed batch now and then, for the
    /// smoke call of the next upload.
    pub(super) fn offer_sample(
        &self,
        raw: &crate::record::RawBatch,
        events: &crate::record::EventBatch,
    ) {
        if !self.control.sample_due() {
            return;
        }
        let n = raw.offsets.len().min(SAMPLE_RECORDS);
        let rows: Vec<u32> = (0..n as u32).collect();
        let event_rows: Vec<u32> = (0..events.len)
            .filter(|r| (events.source_row[*r as usize] as usize) < n)
            .collect();
        self.control.set_sample(Sample {
            raw: select_raw(raw, &rows),
            events: select_events(events, &event_rows),
        });
    }
}
