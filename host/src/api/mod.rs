//! The HTTP API (axum): feature serving now, admin calls later.
//!
//! - `GET /health` — liveness.
//! - `GET /v1/features` — registered features and their tile sizes.
//! - `GET /v1/features/{feature}/entities/{entity}?window=2h[&at=...]` — one
//!   feature of one entity over a window ending at `at` (ms since the epoch or
//!   RFC 3339; default now), with the interval actually covered.
//!
//! Errors are JSON `{"error": "..."}` with 400 (bad request), 404 (unknown
//! feature) or 500 (store failure; details logged, not returned).

pub mod query;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::record::now_ms;
use crate::stores::TileStore;

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

#[derive(Clone)]
struct AppState {
    store: Arc<dyn TileStore>,
}

/// The router, built without a socket so tests can call it directly.
pub fn router(store: Arc<dyn TileStore>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/v1/features", get(list_features))
        .route("/v1/features/{feature}/entities/{entity}", get(get_feature))
        .with_state(AppState { store })
}

async fn list_features(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let store = s.store.clone();
    let features = tokio::task::spawn_blocking(move || store.features())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
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
    let answer = tokio::task::spawn_blocking(move || -> Result<query::FeatureAnswer, ApiError> {
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
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(answer))
}
