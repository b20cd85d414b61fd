//! Uploads: a component checked before anything is stored (the claimed
//! world, compiling on the pipeline's engine, `init`, feature specs, a smoke
//! call on records the pipeline read lately), and loading a stored version
//! for an activation or rollback.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;

use super::registry::VersionRecord;
use super::{blocking, stage_view, AdminError, AdminState};
use crate::pipeline::{LoadedPlugin, PipelineControl};
use crate::plugin::{PluginError, PluginKind, PluginSource};
use crate::record::{LateBatch, RawBatchBuilder};
use crate::stores::StoredFeature;

fn parse_world(world: &str) -> Result<PluginKind, AdminError> {
    [PluginKind::Parser, PluginKind::Feature, PluginKind::Late]
        .into_iter()
        .find(|k| {
            let short = serde_json::to_value(k).ok();
            short.as_ref().and_then(Value::as_str) == Some(world) || k.world() == world
        })
        .ok_or_else(|| {
            AdminError::BadRequest(format!(
                "unknown world `{world}`: one of parser, feature, late (or {}, {}, {})",
                PluginKind::Parser.world(),
                PluginKind::Feature.world(),
                PluginKind::Late.world()
            ))
        })
}

fn valid_version(v: &str) -> Result<(), AdminError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if ok {
        Ok(())
    } else {
        Err(AdminError::BadRequest(format!(
            "version `{v}` must be 1-64 letters, digits, . - _ or +"
        )))
    }
}

/// Loads `bytes` as the stage's plugin of `kind` on the pipeline's engine
/// and checks its features; a load failure says why in the error.
pub(super) fn load(
    control: &PipelineControl,
    stage: &str,
    kind: PluginKind,
    version: Option<String>,
    bytes: Vec<u8>,
    config_json: Option<String>,
) -> Result<LoadedPlugin, AdminError> {
    let (_, cfg) = control
        .stage_config(stage)
        .ok_or_else(|| AdminError::NotFound(format!("no stage runs a plugin named `{stage}`")))?;
    let quotas = stage_view(control, stage)?.quotas;
    let src = PluginSource {
        name: stage.to_string(),
        version: version.or_else(|| cfg.version.clone()),
        bytes,
        config_json: config_json.unwrap_or_else(|| cfg.config_json()),
        quotas,
        quarantine: cfg.quarantine.clone(),
    };
    let plugin = LoadedPlugin::load(control.runtime(), kind, &src).map_err(|e| match e {
        PluginError::NotAComponent(_) | PluginError::WrongWorld { .. } => {
            AdminError::BadRequest(e.to_string())
        }
        other => AdminError::Unprocessable(format!("the plugin failed to start: {other}")),
    })?;
    if let LoadedPlugin::Feature(p) = &plugin {
        for spec in p.specs() {
            StoredFeature::from_spec(stage, spec)
                .validate()
                .map_err(|reason| {
                    AdminError::Unprocessable(format!("feature `{}`: {reason}", spec.name))
                })?;
        }
    }
    Ok(plugin)
}

/// Loads an uploaded version from the registry (its bytes checked against
/// their digest) with the config it was uploaded with.
pub(super) fn load_stored(
    control: &PipelineControl,
    record: &VersionRecord,
) -> Result<LoadedPlugin, AdminError> {
    let bytes = control.registry().bytes(record)?;
    load(
        control,
        &record.name,
        record.kind,
        Some(record.version.clone()),
        bytes,
        record.config.clone(),
    )
}

/// One call on records the pipeline read lately (or a stand-in record
/// before it has read any), under the stage's quotas. Returns what the
/// call was given.
fn smoke(control: &PipelineControl, plugin: &mut LoadedPlugin) -> Result<Value, AdminError> {
    let sample = control.sample();
    let failed = |e: PluginError| AdminError::Unprocessable(format!("smoke call failed: {e}"));
    match plugin {
        LoadedPlugin::Parser(p) => {
            let raw = match &sample {
                Some(s) => s.raw.clone(),
                None => {
                    let mut b = RawBatchBuilder::new("smoke", 0);
                    b.push(0, crate::record::now_ms(), b"", b"{}");
                    b.finish()
                }
            };
            let out = p.parse(&raw).map_err(failed)?;
            Ok(
                json!({ "records": raw.offsets.len(), "events": out.events.len, "errors": out.errors.len() }),
            )
        }
        LoadedPlugin::Feature(p) => {
            let Some(s) = sample else {
                return Ok(
                    json!({ "events": 0, "note": "the pipeline has read no records yet: initialised only" }),
                );
            };
            let out = p.process(&s.events).map_err(failed)?;
            Ok(json!({ "events": s.events.len, "updates": out.row.len() }))
        }
        LoadedPlugin::Late(p) => {
            let Some(s) = sample else {
                return Ok(
                    json!({ "events": 0, "note": "the pipeline has read no records yet: initialised only" }),
                );
            };
            let watermark = s.events.event_time.iter().copied().max().unwrap_or(0);
            let batch = LateBatch {
                lateness_ms: s
                    .events
                    .event_time
                    .iter()
                    .map(|t| watermark - t + 60_000)
                    .collect(),
                events: s.events,
                watermark,
            };
            let out = p.decide(&batch).map_err(failed)?;
            Ok(json!({ "events": batch.events.len, "decisions": out.len() }))
        }
    }
}

#[derive(Deserialize)]
pub(super) struct UploadParams {
    world: Option<String>,
    /// JSON text: the config this version runs with.
    config: Option<String>,
}

pub(super) async fn upload(
    State(s): State<AdminState>,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<UploadParams>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let world = q.world.as_deref().ok_or_else(|| {
        AdminError::BadRequest(
            "query parameter `world` is required (parser, feature or late)".into(),
        )
    })?;
    let kind = parse_world(world)?;
    valid_version(&version)?;
    let (stage_kind, _) = s.control.stage_config(&name).ok_or_else(|| {
        AdminError::NotFound(format!(
            "no stage runs a plugin named `{name}` (stages come from the config)"
        ))
    })?;
    if *stage_kind != kind {
        return Err(AdminError::BadRequest(format!(
            "stage `{name}` runs a {} plugin ({}), not {}",
            serde_json::to_value(stage_kind).unwrap_or_default(),
            stage_kind.world(),
            kind.world()
        )));
    }
    if let Some(c) = &q.config {
        serde_json::from_str::<Value>(c)
            .map_err(|e| AdminError::BadRequest(format!("`config` is not JSON: {e}")))?;
    }
    if body.is_empty() {
        return Err(AdminError::BadRequest(
            "the request body (the component) is empty".into(),
        ));
    }
    if body.len() > s.max_upload_bytes {
        return Err(AdminError::TooLarge(format!(
            "{} bytes is over the upload limit of {} (admin.max_upload_bytes)",
            body.len(),
            s.max_upload_bytes
        )));
    }
    let control = s.control.clone();
    let answer = blocking(move || {
        let started = Instant::now();
        let mut plugin = load(&control, &name, kind, Some(version.clone()), body.to_vec(), q.config.clone())?;
        let checked_ms = started.elapsed().as_millis() as u64;
        let smoke = smoke(&control, &mut plugin)?;
        let (record, created) = control
            .registry()
            .add_version(&name, &version, kind, &body, q.config)?;
        tracing::info!(plugin = %name, version, sha256 = %record.sha256, created, "plugin version uploaded");
        Ok((created, json!({ "version": record, "compile_ms": checked_ms, "smoke": smoke })))
    })
    .await?;
    let status = if answer.0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer.1)).into_response())
}
