//! The HTTP API (axum): feature serving, status and metrics now, admin
//! calls later.
//!
//! - `GET /health` — liveness (the process answers).
//! - `GET /healthz` — 200 when healthy, 503 with the problems otherwise
//!   (source cannot reach its brokers, pipeline failed or stuck, store down).
//! - `GET /readyz` — 200 once the pipeline runs with input assigned.
//! - `GET /v1/status` — the running pipeline: state, counters, watermark,
//!   and per source partition offsets, lag, watermark and throughput.
//! - `GET /metrics` — Prometheus text format.
//! - `GET /v1/features` — registered features and their tile sizes.
//! - `GET /v1/features/{feature}/entities/{entity}?window=2h[&at=...]` — one
//!   feature of one entity over a window ending at `at` (ms since the epoch or
//!   RFC 3339; default now), with the interval actually covered.
//! - `POST /v1/batch` — many entities × features over one window in one
//!   call (`{"entities": [...], "features": [...], "window": "7d"}`), as
//!   ranking services fetch them; at most `api.max_batch_items` pairs.
//! - `GET /v1/completeness`, `GET /v1/changes`, `GET|PUT
//!   /v1/changes/consumers/{name}` — completeness and the change log (see
//!   [`changes`]).
//! - `GET /v1/openapi.json` — the OpenAPI 3.1 description of all of these.
//!
//! Feature reads go through the serving API's own cache (`[api.cache]`,
//! [`crate::stores::ReadCache`]). Errors are JSON `{"error": "..."}` with
//! 400 (bad request), 404 (unknown feature) or 500 (store failure; details
//! logged, not returned).

pub mod changes;
pub mod listen;
pub mod query;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::ApiConfig;
use crate::record::now_ms;
use crate::stores::{ReadCache, StoredFeature, TileStore};
use crate::telemetry::status::{PipelineStatus, StatusBoard};

/// One error type for every handler.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the host log".to_string(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

impl From<crate::stores::StoreError> for ApiError {
    fn from(e: crate::stores::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// What the API serves: the store, and when a pipeline runs in this
/// process its status board and the metrics recorder.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn TileStore>,
    pub status: Option<Arc<StatusBoard>>,
    pub metrics: Option<PrometheusHandle>,
    /// Most entities × features one batch call may ask for.
    pub max_batch_items: usize,
    /// The pipeline whose completeness and change log are served.
    pub ledger: Option<changes::LedgerAt>,
}

/// The OpenAPI description served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

impl AppState {
    /// Serving straight from `store`, with the default limits.
    pub fn new(store: Arc<dyn TileStore>) -> Self {
        AppState {
            store,
            status: None,
            metrics: None,
            max_batch_items: ApiConfig::default().max_batch_items,
            ledger: None,
        }
    }

    /// Serving from `store` through the configured read cache and limits.
    pub fn configured(store: Arc<dyn TileStore>, cfg: &ApiConfig) -> Self {
        AppState {
            max_batch_items: cfg.max_batch_items,
            ..AppState::new(ReadCache::wrap(store, &cfg.cache))
        }
    }

    /// The router, built without a socket so tests can call it directly.
    pub fn router(self) -> Router {
        Router::new()
            .route(
                "/health",
                get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
            )
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/v1/status", get(status))
            .route("/metrics", get(metrics))
            .route("/v1/features", get(list_features))
            .route("/v1/features/{feature}/entities/{entity}", get(get_feature))
            .route("/v1/batch", post(get_batch))
            .route("/v1/completeness", get(changes::completeness))
            .route("/v1/changes", get(changes::changes))
            .route(
                "/v1/changes/consumers/{name}",
                get(changes::get_consumer).put(changes::put_consumer),
            )
            .route(
                "/v1/openapi.json",
                get(|| async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        OPENAPI,
                    )
                }),
            )
            .with_state(self)
    }
}

/// The router over a store alone (no pipeline in this process).
pub fn router(store: Arc<dyn TileStore>) -> Router {
    AppState::new(store).router()
}

/// Runs `f` (synchronous store calls) on the blocking pool.
async fn on_store<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Health or readiness as (healthy, problems): the pipeline's when one
/// runs here, else whether the store answers.
async fn check(s: &AppState, ready: bool) -> (bool, Vec<String>) {
    match &s.status {
        Some(board) => {
            let st = board.read();
            let ok = if ready { st.ready } else { st.healthy };
            let mut problems = st.problems;
            if ready && !st.ready && problems.is_empty() {
                problems.push(format!("not ready: {:?}, no input assigned yet", st.state));
            }
            (ok, problems)
        }
        None => {
            let store = s.store.clone();
            match tokio::task::spawn_blocking(move || store.features()).await {
                Ok(Ok(_)) => (true, vec![]),
                Ok(Err(e)) => (false, vec![format!("store: {e}")]),
                Err(e) => (false, vec![format!("store check: {e}")]),
            }
        }
    }
}

fn health_answer(ok: bool, problems: Vec<String>) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "problems": problems,
    });
    (code, Json(body)).into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    let (ok, problems) = check(&s, false).await;
    health_answer(ok, problems)
}

async fn readyz(State(s): State<AppState>) -> Response {
    let (ok, problems) = check(&s, true).await;
    health_answer(ok, problems)
}

async fn status(State(s): State<AppState>) -> Result<Json<PipelineStatus>, ApiError> {
    let board = s
        .status
        .ok_or_else(|| ApiError::NotFound("no pipeline runs in this process".into()))?;
    Ok(Json(board.read()))
}

async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let handle = s
        .metrics
        .ok_or_else(|| ApiError::NotFound("metrics are not recorded in this process".into()))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}

async fn list_features(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let store = s.store.clone();
    let features = on_store(move || Ok(store.features()?)).await?;
    Ok(Json(serde_json::json!({ "features": features })))
}

#[derive(Deserialize)]
struct WindowParams {
    window: Option<String>,
    at: Option<String>,
}

async fn get_feature(
    State(s): State<AppState>,
    Path((feature, entity)): Path<(String, String)>,
    Query(q): Query<WindowParams>,
) -> Result<Json<query::FeatureAnswer>, ApiError> {
    let window = q.window.as_deref().ok_or_else(|| {
        ApiError::BadRequest("query parameter `window` is required, e.g. ?window=2h".into())
    })?;
    let window_ms = query::parse_window(window).map_err(ApiError::BadRequest)?;
    let at_ms = match q.at.as_deref() {
        Some(a) => query::parse_at(a).map_err(ApiError::BadRequest)?,
        None => now_ms(),
    };
    let store = s.store.clone();
    let answer = on_store(move || -> Result<query::FeatureAnswer, ApiError> {
        let f = store
            .feature(&feature)?
            .ok_or_else(|| ApiError::NotFound(format!("no feature named `{feature}`")))?;
        Ok(query::answer(
            store.as_ref(),
            &f,
            &entity,
            window_ms,
            at_ms,
        )?)
    })
    .await?;
    Ok(Json(answer))
}

/// The body of `POST /v1/batch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    entities: Vec<String>,
    features: Vec<String>,
    /// e.g. `"7d"`.
    window: String,
    /// ms since the epoch (a number or a string) or RFC 3339; default now.
    #[serde(default)]
    at: Option<serde_json::Value>,
}

async fn get_batch(
    State(s): State<AppState>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Json<query::BatchAnswer>, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if req.entities.is_empty() || req.features.is_empty() {
        return Err(ApiError::BadRequest(
            "`entities` and `features` must each name at least one".into(),
        ));
    }
    let items = req.entities.len().saturating_mul(req.features.len());
    if items > s.max_batch_items {
        return Err(ApiError::BadRequest(format!(
            "{} entities × {} features = {items} answers, more than the {} one call may ask for (api.max_batch_items); split the call",
            req.entities.len(),
            req.features.len(),
            s.max_batch_items
        )));
    }
    let window_ms = query::parse_window(&req.window).map_err(ApiError::BadRequest)?;
    let at_ms = match &req.at {
        None | Some(serde_json::Value::Null) => now_ms(),
        Some(serde_json::Value::Number(n)) => n.as_i64().ok_or_else(|| {
            ApiError::BadRequest(format!("`at` {n} must be whole ms since the epoch"))
        })?,
        Some(serde_json::Value::String(t)) => query::parse_at(t).map_err(ApiError::BadRequest)?,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "`at` must be ms since the epoch or an RFC 3339 time, not {other}"
            )))
        }
    };
    let store = s.store.clone();
    let answer = on_store(move || -> Result<query::BatchAnswer, ApiError> {
        let mut features: Vec<StoredFeature> = Vec::with_capacity(req.features.len());
        let mut unknown = Vec::new();
        for name in &req.features {
            match store.feature(name)? {
                Some(f) => features.push(f),
                None => unknown.push(format!("`{name}`")),
            }
        }
        if !unknown.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no feature named {}",
                unknown.join(", ")
            )));
        }
        Ok(query::answer_many(
            store.as_ref(),
            &features,
            &req.entities,
            window_ms,
            at_ms,
        )?)
    })
    .await?;
    Ok(Json(answer))
}
