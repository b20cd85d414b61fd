//! Shadow runs over the admin API (the pipeline side is
//! `pipeline/shadow.rs`):
//!
//! - `POST /v1/plugins/{name}/shadow` `{"version": "2", "max_share": 0.25}`
//!   — runs an uploaded version beside the live one on the same batches;
//!   its outputs are compared, never written. `max_share` (default
//!   `admin.shadow_max_share`) bounds the time it may take as a share of
//!   the live path's. Replaces a shadow already running on the stage.
//! - `GET /v1/plugins/{name}/shadow` — the report: records compared,
//!   differing and skipped, time taken, the first differing records with
//!   both versions' outputs, the shadow instance's own health.
//! - `DELETE /v1/plugins/{name}/shadow` — ends the run; answers with its
//!   final report. Activating the shadow's version promotes it (the run
//!   ends as `promoted`).

use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::upload::load_stored;
use super::{blocking, stage_view, uploaded, AdminError, AdminState};
use crate::config::shadow_share_problem;
use crate::pipeline::{Change, ShadowReport};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShadowRequest {
    version: String,
    max_share: Option<f64>,
}

pub(super) async fn start(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Json<ShadowRequest>, JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let Json(req) = body.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let max_share = req.max_share.unwrap_or(s.shadow_max_share);
    if let Some(problem) = shadow_share_problem(max_share) {
        return Err(AdminError::BadRequest(problem));
    }
    let (control, timeout) = (s.control.clone(), s.apply_timeout);
    let answer = blocking(move || {
        let started = Instant::now();
        let view = stage_view(&control, &name)?;
        let record = uploaded(&control, &name, &req.version)?;
        if view.from_registry && view.version == record.version {
            return Err(AdminError::Conflict(format!(
                "`{name}` version `{}` is the live version; shadow another one",
                record.version
            )));
        }
        let plugin = load_stored(&control, &record)?;
        let applied = control.submit(
            &name,
            Change::Shadow {
                plugin,
                version: record.version.clone(),
                max_share,
            },
            timeout,
        )?;
        Ok(json!({
            "name": name,
            "shadow": record.version,
            "live": view.version,
            "max_share": max_share,
            "boundary": applied,
            "took_ms": started.elapsed().as_millis() as u64,
        }))
    })
    .await?;
    Ok(Json(answer))
}

pub(super) async fn report(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<ShadowReport>, AdminError> {
    stage_view(&s.control, &name)?
        .shadow
        .map(Json)
        .ok_or_else(|| AdminError::NotFound(format!("`{name}` has had no shadow run")))
}

pub(super) async fn stop(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let (control, timeout) = (s.control.clone(), s.apply_timeout);
    let answer = blocking(move || {
        let running = stage_view(&control, &name)?
            .shadow
            .is_some_and(|r| r.state.holds());
        if !running {
            return Err(AdminError::NotFound(format!("`{name}` runs no shadow")));
        }
        let applied = control.submit(&name, Change::EndShadow, timeout)?;
        Ok(json!({ "name": name, "report": applied.shadow, "boundary": applied }))
    })
    .await?;
    Ok(Json(answer))
}
