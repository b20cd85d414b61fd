//! The admin API (axum, under `/v1`, bearer tokens): upload plugin versions,
//! activate and roll them back on the running pipeline, read and change
//! quotas, read the pipeline. The `tessera plugin ...` commands call it
//! (`client.rs`).
//!
//! - `GET /v1/plugins` — every stage: its plugin's kind, running version,
//!   state (`active` or `quarantined`), quotas, use (calls, failures, quota
//!   hits, fuel), the uploaded versions and the rollback history.
//! - `GET /v1/plugins/{name}` — one stage.
//! - `PUT /v1/plugins/{name}/versions/{version}?world=feature[&config=<json>]`
//!   — uploads a component (the request body). Before anything is stored it
//!   must be a component, implement the claimed world (which must be the
//!   stage's), compile under the host's engine settings and pass a smoke
//!   call on records the pipeline read lately, under the stage's quotas.
//!   Versions are immutable: the same bytes again answer 200, other bytes
//!   409. `config` replaces the stage's config for this version.
//! - `POST /v1/plugins/{name}/activate` `{"version": "2"}` — swaps the
//!   version in between two batches (see `pipeline/swap.rs`) and answers
//!   with the boundary: records read before it and the source positions.
//! - `POST /v1/plugins/{name}/rollback` — back to the version the last
//!   activation replaced.
//! - `GET /v1/plugins/{name}/quotas`, `PUT` with some or all quota fields —
//!   in force from the next batch, kept across restarts.
//! - `POST|GET|DELETE /v1/plugins/{name}/shadow` — shadow runs: an uploaded
//!   version beside the live one, its outputs compared (`shadow.rs`).
//! - `GET /v1/pipeline` — the pipeline as configured.
//!
//! Reads need a `read` or `admin` token, changes an `admin` token: 401
//! without a valid token, 403 with a read token. A request that fails
//! changes nothing. Errors are JSON `{"error": "..."}`.

pub mod auth;
pub mod client;
pub mod registry;
mod shadow;
mod upload;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{AdminRole, Config, OutputConfig, Quotas, SourceConfig, StoreConfig};
use crate::pipeline::{Change, ControlError, PipelineControl, ShadowState, StageView};
use crate::plugin::PluginSource;
use auth::Tokens;
use registry::VersionRecord;
use upload::{load, load_stored};

/// Every way an admin request fails.
#[derive(Debug)]
pub enum AdminError {
    Unauthorized(String),
    Forbidden(String),
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    TooLarge(String),
    Unprocessable(String),
    Unavailable(String),
    Internal(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AdminError::Unauthorized(m) => {
                let body = Json(json!({ "error": m }));
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer realm=\"tessera-admin\"")],
                    body,
                )
                    .into_response();
            }
            AdminError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            AdminError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            AdminError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            AdminError::Conflict(m) => (StatusCode::CONFLICT, m),
            AdminError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            AdminError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            AdminError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            AdminError::Internal(m) => {
                tracing::error!(error = %m, "admin request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, m)
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

impl From<registry::RegistryError> for AdminError {
    fn from(e: registry::RegistryError) -> Self {
        match e {
            registry::RegistryError::Conflict(m) => AdminError::Conflict(m),
            other => AdminError::Internal(other.to_string()),
        }
    }
}

impl From<ControlError> for AdminError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Timeout(_) => AdminError::Unavailable(e.to_string()),
            ControlError::Rejected(m) => AdminError::Unprocessable(m),
        }
    }
}

/// What the admin routes serve.
#[derive(Clone)]
pub struct AdminState {
    control: Arc<PipelineControl>,
    tokens: Arc<Tokens>,
    max_upload_bytes: usize,
    apply_timeout: std::time::Duration,
    shadow_max_share: f64,
    /// `GET /v1/pipeline`, from the config.
    pipeline: Arc<Value>,
}

impl AdminState {
    pub fn new(control: Arc<PipelineControl>, tokens: Tokens, cfg: &Config) -> Self {
        AdminState {
            control,
            tokens: Arc::new(tokens),
            max_upload_bytes: cfg.admin.max_upload_bytes,
            apply_timeout: cfg.admin.apply_timeout,
            shadow_max_share: cfg.admin.shadow_max_share,
            pipeline: Arc::new(pipeline_view(cfg)),
        }
    }

    /// The admin routes, behind the token check.
    pub fn router(self) -> Router {
        let upload_limit = self.max_upload_bytes;
        Router::new()
            .route("/v1/plugins", get(list))
            .route("/v1/plugins/{name}", get(one))
            .route(
                "/v1/plugins/{name}/versions/{version}",
                put(upload::upload).layer(DefaultBodyLimit::max(upload_limit)),
            )
            .route("/v1/plugins/{name}/activate", post(activate))
            .route("/v1/plugins/{name}/rollback", post(rollback))
            .route("/v1/plugins/{name}/quotas", get(quotas).put(set_quotas))
            .route(
                "/v1/plugins/{name}/shadow",
                get(shadow::report).post(shadow::start).delete(shadow::stop),
            )
            .route("/v1/pipeline", get(pipeline))
            .route_layer(middleware::from_fn_with_state(self.clone(), authorize))
            .with_state(self)
    }
}

/// Reads need a read token, everything else an admin token.
async fn authorize(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let need = if matches!(*req.method(), Method::GET | Method::HEAD) {
        AdminRole::Read
    } else {
        AdminRole::Admin
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refusal = match presented.and_then(|t| s.tokens.role_of(t)) {
        Some(role) if role >= need => return next.run(req).await,
        None if s.tokens.is_empty() => AdminError::Unauthorized(
            "the admin API has no tokens configured ([admin] tokens, token_file or TESSERA_ADMIN_TOKEN)".into(),
        ),
        None => AdminError::Unauthorized(
            "a valid bearer token is required (Authorization: Bearer <token>)".into(),
        ),
        Some(_) => AdminError::Forbidden(format!(
            "{} needs an admin token; this one may only read",
            req.method()
        )),
    };
    // Read what the client sends (up to the upload limit) before answering:
    // a client writing a large body would otherwise see the connection
    // reset instead of the refusal.
    let _ = axum::body::to_bytes(req.into_body(), s.max_upload_bytes).await;
    refusal.into_response()
}

/// Runs blocking work (compiling, registry files, waiting for the
/// pipeline) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
}

fn stage_view(control: &PipelineControl, name: &str) -> Result<StageView, AdminError> {
    control
        .stages()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| AdminError::NotFound(format!("no stage runs a plugin named `{name}`")))
}

/// An uploaded version of a stage, or 404.
fn uploaded(
    control: &PipelineControl,
    name: &str,
    version: &str,
) -> Result<VersionRecord, AdminError> {
    control.registry().version(name, version).ok_or_else(|| {
        AdminError::NotFound(format!("`{name}` has no uploaded version `{version}`"))
    })
}

fn describe(control: &PipelineControl, s: &StageView) -> Value {
    let registry = control.registry();
    let record = registry.stage(&s.name);
    let shadowing = s.shadow.as_ref().filter(|r| r.state.holds());
    // Each uploaded version's state: the live one, the shadow, or stored.
    let versions: Vec<Value> = registry
        .versions(&s.name)
        .into_iter()
        .map(|v| {
            let state = if s.from_registry && v.version == s.version {
                if s.health.quarantined {
                    "quarantined"
                } else {
                    "active"
                }
            } else if let Some(r) = shadowing.filter(|r| r.version == v.version) {
                if r.state == ShadowState::Quarantined {
                    "quarantined"
                } else {
                    "shadow"
                }
            } else {
                "stored"
            };
            let mut v = serde_json::to_value(v).unwrap_or_default();
            v["state"] = json!(state);
            v
        })
        .collect();
    let shadow = s.shadow.as_ref().map(|r| {
        json!({
            "version": r.version,
            "state": r.state,
            "records_compared": r.records_compared,
            "records_differing": r.records_differing,
            "records_skipped": r.records_skipped,
        })
    });
    json!({
        "name": s.name,
        "kind": s.kind,
        "world": s.kind.world(),
        "version": s.version,
        "source": if s.from_registry { "registry" } else { "config" },
        "state": if s.health.quarantined { "quarantined" } else { "active" },
        "quotas": s.quotas,
        "use": s.health,
        "features": s.features,
        "versions": versions,
        "history": record.history,
        "shadow": shadow,
    })
}

async fn list(State(s): State<AdminState>) -> Json<Value> {
    let plugins: Vec<Value> = s
        .control
        .stages()
        .iter()
        .map(|v| describe(&s.control, v))
        .collect();
    Json(json!({ "pipeline": s.control.pipeline(), "plugins": plugins }))
}

async fn one(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let view = stage_view(&s.control, &name)?;
    Ok(Json(describe(&s.control, &view)))
}

async fn pipeline(State(s): State<AdminState>) -> Json<Value> {
    Json((*s.pipeline).clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateRequest {
    version: String,
}

async fn activate(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Json<ActivateRequest>, JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let Json(req) = body.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let (control, timeout) = (s.control.clone(), s.apply_timeout);
    let answer = blocking(move || {
        let started = Instant::now();
        let record = uploaded(&control, &name, &req.version)?;
        let view = stage_view(&control, &name)?;
        if control.registry().stage(&name).active.as_deref() == Some(req.version.as_str()) {
            return Err(AdminError::Conflict(format!(
                "`{name}` version `{}` is already active",
                req.version
            )));
        }
        let plugin = load_stored(&control, &record)?;
        let applied = control.submit(
            &name,
            Change::Activate {
                plugin,
                version: Some(record.version.clone()),
                rollback: false,
            },
            timeout,
        )?;
        Ok(json!({
            "name": name,
            "version": record.version,
            "previous": view.version,
            "boundary": applied,
            "took_ms": started.elapsed().as_millis() as u64,
        }))
    })
    .await?;
    Ok(Json(answer))
}

async fn rollback(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let (control, timeout) = (s.control.clone(), s.apply_timeout);
    let answer = blocking(move || {
        let started = Instant::now();
        let view = stage_view(&control, &name)?;
        let record = control.registry().stage(&name);
        let Some(target) = record.history.last().cloned() else {
            return Err(AdminError::Conflict(format!(
                "`{name}` has no earlier version to roll back to (it runs what it started with)"
            )));
        };
        let (kind, cfg) = control.stage_config(&name).cloned().ok_or_else(|| {
            AdminError::NotFound(format!("no stage runs a plugin named `{name}`"))
        })?;
        let plugin = match &target {
            Some(v) => {
                let r = control.registry().version(&name, v).ok_or_else(|| {
                    AdminError::Internal(format!(
                        "version `{v}` of `{name}` is missing from the registry"
                    ))
                })?;
                load_stored(&control, &r)?
            }
            None => {
                let src = PluginSource::from_config(&cfg)
                    .map_err(|e| AdminError::Unprocessable(e.to_string()))?;
                load(&control, &name, kind, None, src.bytes, None)?
            }
        };
        let version = plugin.meta().version.clone();
        let applied = control.submit(
            &name,
            Change::Activate {
                plugin,
                version: target.clone(),
                rollback: true,
            },
            timeout,
        )?;
        Ok(json!({
            "name": name,
            "version": version,
            "source": if target.is_some() { "registry" } else { "config" },
            "previous": view.version,
            "boundary": applied,
            "took_ms": started.elapsed().as_millis() as u64,
        }))
    })
    .await?;
    Ok(Json(answer))
}

async fn quotas(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Quotas>, AdminError> {
    Ok(Json(stage_view(&s.control, &name)?.quotas))
}

async fn set_quotas(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let Json(change) = body.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let Value::Object(change) = change else {
        return Err(AdminError::BadRequest(
            "the body must be a JSON object of quota fields".into(),
        ));
    };
    let current = stage_view(&s.control, &name)?.quotas;
    let mut merged =
        serde_json::to_value(&current).map_err(|e| AdminError::Internal(e.to_string()))?;
    if let Value::Object(m) = &mut merged {
        m.extend(change);
    }
    let quotas: Quotas = serde_json::from_value(merged)
        .map_err(|e| AdminError::BadRequest(format!("bad quotas: {e}")))?;
    let problems = quotas.problems();
    if !problems.is_empty() {
        return Err(AdminError::BadRequest(problems.join("; ")));
    }
    let (control, timeout) = (s.control.clone(), s.apply_timeout);
    let answer = blocking(move || {
        let applied = control.submit(&name, Change::Quotas(quotas.clone()), timeout)?;
        Ok(json!({ "name": name, "quotas": quotas, "boundary": applied }))
    })
    .await?;
    Ok(Json(answer))
}

/// The pipeline as configured (no credentials: librdkafka properties and
/// store settings are left out).
fn pipeline_view(cfg: &Config) -> Value {
    let source = match &cfg.source {
        SourceConfig::File { path, .. } => json!({ "type": "file", "path": path }),
        SourceConfig::Kafka {
            topics, group_id, ..
        } => json!({
            "type": "kafka",
            "topics": topics,
            "group_id": group_id.clone().unwrap_or_else(|| cfg.pipeline.name.clone()),
        }),
    };
    let parsers: Vec<Value> = std::iter::once(&cfg.parser)
        .chain(&cfg.parsers)
        .map(|p| json!({ "name": p.name, "topics": p.topics }))
        .collect();
    let features: Vec<Value> = cfg
        .features
        .iter()
        .map(|f| json!({ "name": f.name, "event_types": f.event_types }))
        .collect();
    let outputs: Vec<Value> = cfg
        .outputs
        .iter()
        .map(|o| match o {
            OutputConfig::Smb(c) => json!({ "type": "smb", "name": c.name }),
        })
        .collect();
    json!({
        "name": cfg.pipeline.name,
        "instance": cfg.pipeline.instance,
        "source": source,
        "parsers": parsers,
        "features": features,
        "late": cfg.late.as_ref().map(|l| l.name.clone()),
        "outputs": outputs,
        "store": match &cfg.store { StoreConfig::Embedded { .. } => "embedded", StoreConfig::Scylla(_) => "scylla" },
    })
}
