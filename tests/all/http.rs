//! The HTTP API, called through its router (no socket needed).

use axum::body::Body;
use http_body_util::BodyExt;
use tower::ServiceExt;

use tessera::api::{self, query};

use crate::support::{self, T0};

async fn get(app: &axum::Router, uri: &str) -> (u16, serde_json::Value) {
    let resp = app
        .clone()
        .oneshot(axum::http::Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_answers_match_the_query_function_and_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(51, 3_000, 3_600_000, 1_000, None);
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let (store, mut p) = support::build(&support::config(dir.path(), &input, "", ""));
    tokio::task::block_in_place(|| p.run(&mut |_| {})).unwrap();
    let app = api::router(store.clone());

    let at = T0 + 3_600_000;
    let (status, body) = get(
        &app,
        &format!("/v1/features/likes_per_post/entities/post-3?window=30m&at={at}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let f = store.feature("likes_per_post").unwrap().unwrap();
    let want = query::answer(store.as_ref(), &f, "post-3", 30 * 60_000, at).unwrap();
    assert_eq!(body, serde_json::to_value(&want).unwrap());
    assert!(want.count > 0);
    let o = support::oracle(
        &events,
        "likes_per_post",
        "post-3",
        want.covered_start_ms,
        want.covered_end_ms,
    );
    assert_eq!(want.count, o.count);

    let (status, body) = get(
        &app,
        "/v1/features/likes_per_post/entities/post-3?window=2h&at=2026-11-23T01:00:00Z",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["at_ms"], T0 + 3_600_000);

    let (status, body) = get(&app, "/v1/features/likes_per_post/entities/post-3").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("window"));
    let (status, _) = get(
        &app,
        "/v1/features/likes_per_post/entities/post-3?window=forever",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get(
        &app,
        "/v1/features/likes_per_post/entities/post-3?window=1h&at=yesterday",
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = get(&app, "/v1/features/nope/entities/post-3?window=1h").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let (status, body) = get(&app, "/v1/features").await;
    assert_eq!(status, 200);
    assert_eq!(body["features"].as_array().unwrap().len(), 8);
    let (status, _) = get(&app, "/health").await;
    assert_eq!(status, 200);
}

/// `/healthz`, `/readyz` and `/v1/status` over a pipeline's status board:
/// not healthy before it runs, the run's counts and per-partition numbers
/// after; without a pipeline, health is the store's and status is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_status_follow_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(71, 2_000, 3_600_000, 1_000, None);
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let (store, mut p) = support::build(&support::config(dir.path(), &input, "", ""));
    let app = api::AppState {
        status: Some(p.status_board()),
        ..api::AppState::new(store.clone())
    }
    .router();
    let (code, body) = get(&app, "/healthz").await;
    assert_eq!(
        (code, body["status"].as_str()),
        (503, Some("unhealthy")),
        "{body}"
    );
    assert_eq!(get(&app, "/readyz").await.0, 503);
    tokio::task::block_in_place(|| p.run(&mut |_| {})).unwrap();
    let (code, status) = get(&app, "/v1/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["healthy"], true);
    assert_eq!(status["records_in"], events.len() as u64);
    let per_partition: u64 = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["records"].as_u64().unwrap())
        .sum();
    assert_eq!(per_partition, events.len() as u64, "{status}");
    assert_eq!(get(&app, "/healthz").await.0, 200);
    assert_eq!(
        get(&app, "/readyz").await.0,
        503,
        "a stopped pipeline is not ready"
    );

    let bare = api::router(store);
    assert_eq!(get(&bare, "/healthz").await.0, 200);
    assert_eq!(get(&bare, "/v1/status").await.0, 404);
}
