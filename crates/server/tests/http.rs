//! The router without a network: status codes, OpenAI's error JSON, Retry-After, the API key
//! and the body limit (the openai-client test in the CLI covers the happy paths end to end).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use tuili_engine::sched::SchedConfig;
use tuili_engine::serve::{ServeConfig, ServeLoop};
use tuili_engine::KvType;
use tuili_engine::{Engine, EngineConfig};
use tuili_server::{router, AppState, HttpConfig};

fn app(max_queue: usize, api_key: Option<&str>, max_body: usize) -> axum::Router {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/models/stories260K/stories260K.gguf");
    let engine = Engine::load(
        model,
        EngineConfig {
            n_ctx: 128,
            n_batch: 64,
            threads: 1,
        },
    )
    .unwrap();
    let server = ServeLoop::start(
        Arc::new(engine),
        ServeConfig {
            kv_memory: 4 << 20,
            block_size: 16,
            kv_type: KvType::F16,
            sched: SchedConfig {
                max_batch_tokens: 64,
                max_seqs: 4,
                max_queue,
            },
        },
    )
    .unwrap();
    router(Arc::new(AppState::new(
        server,
        HttpConfig {
            model_name: "m".into(),
            api_key: api_key.map(String::from),
            max_body,
        },
    )))
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: &str,
) -> (StatusCode, Option<String>, Value) {
    let mut r = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(k) = auth {
        r = r.header("authorization", format!("Bearer {k}"));
    }
    let resp = app
        .clone()
        .oneshot(r.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, retry, v)
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let app = app(0, None, 1 << 20);
    let (s, retry, v) = call(
        &app,
        "POST",
        "/v1/completions",
        None,
        r#"{"prompt":"Once","max_tokens":4}"#,
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(v["error"]["type"], "server_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("queue"));
}

#[tokio::test]
async fn api_key_body_limit_routes_and_errors() {
    let app = app(8, Some("k3y"), 256);
    let ok = r#"{"prompt":"Once","max_tokens":2,"temperature":0}"#;
    let (s, _, v) = call(&app, "POST", "/v1/completions", None, ok).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (s, _, _) = call(&app, "POST", "/v1/completions", Some("nope"), ok).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, v) = call(&app, "POST", "/v1/completions", Some("k3y"), ok).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    // Health and metrics need no key.
    let (s, _, _) = call(&app, "GET", "/health", None, "").await;
    assert_eq!(s, StatusCode::OK);
    // Over the body limit.
    let big = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(1000));
    let (s, _, v) = call(&app, "POST", "/v1/completions", Some("k3y"), &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Not JSON, wrong types, unknown routes, a model without a chat template.
    let (s, _, v) = call(&app, "POST", "/v1/completions", Some("k3y"), "{").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("JSON"));
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("k3y"),
        r#"{"prompt":"x","n":"two"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "n");
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/completions",
        Some("k3y"),
        r#"{"prompt":"x","suffix":"y"}"#,
    )
    .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("suffix"))
    );
    let (s, _, _) = call(&app, "GET", "/v2/everything", Some("k3y"), "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some("k3y"),
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("chat template"));
    // Metrics count the errors and carry the engine's numbers.
    let resp = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("tuili_http_errors_total{status=\"401\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("tuili_requests_total{outcome=\"finished\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tuili_time_to_first_token_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("# TYPE tuili_kv_blocks_used gauge"));
}
