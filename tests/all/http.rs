//! The HTTP API, called through its router (no socket needed).

use axum::body::Body;
use http_body_util::BodyExt;
use tower::ServiceExt;

use tessera::api::{self, query};

use crate::support::{self, T0};

pub(crate) async fn call(
    app: &axum::Router,
    req: axum::http::Request<Body>,
) -> (u16, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

pub(crate) async fn get(app: &axum::Router, uri: &str) -> (u16, serde_json::Value) {
    call(
        app,
        axum::http::Request::get(uri).body(Body::empty()).unwrap(),
    )
    .await
}

async fn post(app: &axum::Router, uri: &str, body: &str) -> (u16, serde_json::Value) {
    let req = axum::http::Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    call(app, req).await
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

/// `POST /v1/batch` answers every entity × feature as the brute force over
/// the produced events says (and as the single-feature call does), through
/// the serving cache; bad calls get a clear 400 or 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_match_a_brute_force_oracle_and_bad_calls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::events(53, 4_000, 3_600_000, 1_000, None);
    let input = dir.path().join("events.ndjson");
    support::write_ndjson(&input, &events);
    let (store, mut p) = support::build(&support::config(dir.path(), &input, "", ""));
    tokio::task::block_in_place(|| p.run(&mut |_| {})).unwrap();
    let cfg: tessera::config::ApiConfig =
        toml::from_str("max_batch_items = 60\n[cache]\nmax_tiles = 16\nttl = \"1h\"\n").unwrap();
    let app = api::AppState::configured(store.clone(), &cfg).router();

    let features = ["likes_per_post", "views_per_post", "dwell_max"];
    let mut entities: Vec<String> = (0..15).map(|i| format!("post-{i}")).collect();
    entities.push("post-that-never-was".into());
    let at = T0 + 3_600_000 - 7 * 60_000;
    let request = serde_json::json!({
        "entities": entities, "features": features, "window": "45m", "at": at,
    });
    // Twice: the second answer comes (partly) from the cache, and agrees.
    for round in 0..2 {
        let (status, body) = post(&app, "/v1/batch", &request.to_string()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["at_ms"], at);
        assert_eq!(body["window_ms"], 45 * 60_000);
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), entities.len());
        let mut nonzero = 0;
        for (r, entity) in results.iter().zip(&entities) {
            assert_eq!(r["entity"], entity.as_str());
            for (i, feature) in features.iter().enumerate() {
                assert_eq!(body["features"][i]["feature"], *feature);
                let v = &r["values"][*feature];
                let (start, end) = (
                    v["covered_start_ms"].as_i64().unwrap(),
                    v["covered_end_ms"].as_i64().unwrap(),
                );
                assert_eq!(body["features"][i]["covered_start_ms"], start);
                let o = support::oracle(&events, feature, entity, start, end);
                let kind = store.feature(feature).unwrap().unwrap().aggregation();
                assert_eq!(v["count"], o.count, "round {round}: {feature} of {entity}");
                assert_eq!(v["value"].as_f64(), o.value(kind), "{feature} of {entity}");
                nonzero += usize::from(o.count > 0);
                let (_, single) = get(
                    &app,
                    &format!("/v1/features/{feature}/entities/{entity}?window=45m&at={at}"),
                )
                .await;
                assert_eq!(single["value"], v["value"]);
                assert_eq!(single["covered_end_ms"], end);
            }
        }
        assert!(nonzero > 10, "the oracle is not trivially empty");
    }

    // Bad calls: each is refused with the reason.
    for (body, code, says) in [
        (
            r#"{"entities": [], "features": ["likes_per_post"], "window": "1h"}"#,
            400,
            "at least one",
        ),
        (
            r#"{"entities": ["a"], "features": ["likes_per_post"]}"#,
            400,
            "window",
        ),
        (
            r#"{"entities": ["a"], "features": ["likes_per_post"], "window": "1h", "at": "noon"}"#,
            400,
            "noon",
        ),
        (
            r#"{"entities": ["a"], "features": ["likes_per_post"], "window": "1h", "at": [1]}"#,
            400,
            "at",
        ),
        (
            r#"{"entities": ["a"], "features": ["likes_per_post", "nope", "nada"], "window": "1h"}"#,
            404,
            "`nope`, `nada`",
        ),
        (
            r#"{"entities": ["a"], "features": ["likes_per_post"], "window": "1h", "extra": 1}"#,
            400,
            "extra",
        ),
        (r#"{"entities": ["a""#, 400, ""),
    ] {
        let (status, answer) = post(&app, "/v1/batch", body).await;
        assert_eq!(status, code, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let too_many = serde_json::json!({
        "entities": (0..21).map(|i| format!("post-{i}")).collect::<Vec<_>>(),
        "features": features, "window": "1h",
    });
    let (status, answer) = post(&app, "/v1/batch", &too_many.to_string()).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("63 answers"),
        "{answer}"
    );
}

/// The OpenAPI document is valid JSON naming every route, and every route
/// it names is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_routes_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = tessera::stores::open(&tessera::config::StoreConfig::Embedded {
        path: dir.path().join("tiles.redb"),
    })
    .unwrap();
    let app = api::router(store);
    let (status, doc) = get(&app, "/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for served in [
        "/health",
        "/healthz",
        "/readyz",
        "/v1/status",
        "/metrics",
        "/v1/openapi.json",
        "/v1/features",
        "/v1/features/{feature}/entities/{entity}",
        "/v1/batch",
        "/v1/completeness",
        "/v1/changes",
        "/v1/changes/consumers/{name}",
    ] {
        assert!(paths.iter().any(|p| *p == served), "{served} is described");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{feature}", "f")
            .replace("{entity}", "e")
            .replace("{name}", "n");
        for (method, op) in item.as_object().unwrap() {
            // Admin routes are served beside a running pipeline only
            // (tests/all/admin.rs checks those).
            if op["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&"admin".into()))
            {
                continue;
            }
            let req = axum::http::Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            // A route that does not exist is axum's bare 404 or 405 with an
            // empty body; every described one answers with content.
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(
                code != 405 && !body.is_empty(),
                "{method} {path}: {code}, {body:?}"
            );
        }
    }
}
