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
    app_with(max_queue, api_key, max_body, None)
}

fn app_with(
    max_queue: usize,
    api_key: Option<&str>,
    max_body: usize,
    chat_template: Option<&str>,
) -> axum::Router {
    app_full(max_queue, api_key, max_body, chat_template, None)
}

fn app_full(
    max_queue: usize,
    api_key: Option<&str>,
    max_body: usize,
    chat_template: Option<&str>,
    cors: Option<&str>,
) -> axum::Router {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/models/stories260K/stories260K.gguf");
    let mut engine = Engine::load(
        model,
        EngineConfig {
            n_ctx: 128,
            n_batch: 64,
            threads: 1,
        },
    )
    .unwrap();
    if let Some(t) = chat_template {
        engine.set_chat_template(t).unwrap();
    }
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
            body_timeout: std::time::Duration::from_secs(2),
            cors_origin: cors.map(String::from),
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
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("the body is not valid JSON: EOF"));
    assert_eq!(v["error"]["param"], Value::Null);
    let bad = [
        (
            r#"{"prompt": "x",}"#,
            "the body is not valid JSON: trailing comma at line 1 column 16",
            None,
        ),
        ("", "the body is empty; send a JSON object", None),
        (
            r#"[{"prompt": "x"}]"#,
            "the body must be a JSON object",
            None,
        ),
        (
            r#"{"prompt": [1, -2]}"#,
            "invalid prompt: token ids are integers from 0 to 4294967295; prompt[1] is -2",
            Some("prompt"),
        ),
        (
            r#"{"prompt": [[1], [2.5]]}"#,
            "prompt[1][0] is 2.5",
            Some("prompt"),
        ),
        (
            r#"{"prompt": ["a", 2]}"#,
            "a list that mixes kinds",
            Some("prompt"),
        ),
        (r#"{"prompt": []}"#, "the list is empty", Some("prompt")),
        (
            r#"{"prompt": {"a": 1}}"#,
            "expected a string, a list of strings",
            Some("prompt"),
        ),
    ];
    for (body, message, param) in bad {
        let (s, _, v) = call(&app, "POST", "/v1/completions", Some("k3y"), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        let got = v["error"]["message"].as_str().unwrap();
        assert!(got.contains(message), "{body}: {got}");
        assert_eq!(v["error"]["param"].as_str(), param, "{body}");
    }
    let (s, _, v) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some("k3y"),
        r#"{"messages": []}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error"]["message"],
        "messages is empty; a chat needs at least one message"
    );
    // A route asked with the wrong method: OpenAI's error JSON, as every other error.
    let (s, _, v) = call(&app, "GET", "/v1/completions", Some("k3y"), "").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        v["error"]["message"],
        "GET /v1/completions is not allowed; use POST"
    );
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

/// `app` on a loopback port, on a runtime of two I/O threads as `tuili serve` runs it (kept
/// alive by the returned runtime).
fn serve_tcp(app: axum::Router) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await });
    (rt, addr)
}

/// One HTTP/1.1 exchange over a fresh connection, blocking: (status, body).
fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // A server that refuses a body may answer and close before it is all sent.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The trial of issue 20: two 6 MB prompts made `/health` take 14 s, tokenized on the I/O
/// threads. Now such prompts are refused by their length before tokenization, and parsing
/// and tokenizing run off the I/O threads: with four clients sending them back to back, a
/// health check and a small completion each answer within 100 ms (9 probes of 10 — one
/// scheduling hiccup of a loaded 2-core machine is forgiven — and every one within 1 s).
#[test]
fn big_prompts_do_not_stall_other_requests() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    let (_rt, addr) = serve_tcp(app_with(64, None, 8 << 20, Some("chatml")));
    let text = "Once upon a time there was a cat. ".repeat(6 << 20 >> 5);
    let big_completion = serde_json::json!({"prompt": text, "max_tokens": 4}).to_string();
    let big_chat = serde_json::json!({"messages": [{"role": "user", "content": text}]}).to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, refused) = (stop.clone(), refused.clone());
            let (path, body) = if i == 3 {
                ("/v1/chat/completions", big_chat.clone())
            } else {
                ("/v1/completions", big_completion.clone())
            };
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (status, answer) = http(addr, "POST", path, body.as_bytes());
                    assert_eq!(status, 400, "{answer}");
                    assert!(answer.contains("bytes of text"), "{answer}");
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let small = br#"{"prompt": "Once", "max_tokens": 2, "temperature": 0}"#;
    let mut times = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        let (status, _) = http(addr, "GET", "/health", b"");
        let health = t0.elapsed();
        assert_eq!(status, 200);
        let t0 = Instant::now();
        let (status, answer) = http(addr, "POST", "/v1/completions", small);
        let completion = t0.elapsed();
        assert_eq!(status, 200, "{answer}");
        times.push((health, completion));
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let n = refused.load(Ordering::Relaxed);
    assert!(n >= 4, "the big requests ran {n} times");
    let slow = |f: fn(&(Duration, Duration)) -> Duration, limit: u64| {
        times
            .iter()
            .filter(|t| f(t) > Duration::from_millis(limit))
            .count()
    };
    assert!(
        slow(|t| t.0, 100) <= 1 && slow(|t| t.1, 100) <= 1,
        "{times:?} with {n} big requests refused"
    );
    assert!(
        slow(|t| t.0, 1000) == 0 && slow(|t| t.1, 1000) == 0,
        "{times:?}"
    );
    eprintln!("{n} big requests refused meanwhile; (health, completion): {times:?}");
}

/// A client that sends the headers and never the body is answered 408 once the body
/// timeout (2 s here) passes, and holds up nobody meanwhile.
#[test]
fn a_body_that_never_comes_times_out() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let (_rt, addr) = serve_tcp(app(8, None, 1 << 20));
    let t0 = Instant::now();
    let mut stalled: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n{\"pro")
                .unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    let (status, _) = http(addr, "GET", "/health", b"");
    assert_eq!(status, 200);
    assert!(t.elapsed() < Duration::from_millis(500));
    let (status, _) = http(
        addr,
        "POST",
        "/v1/completions",
        br#"{"prompt": "Once", "max_tokens": 2}"#,
    );
    assert_eq!(status, 200);
    for s in &mut stalled {
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("did not arrive in full within 2 s"), "{out}");
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // Over the limit by its declared length: 413 before any byte of it is read.
    let (status, answer) = http(addr, "POST", "/v1/completions", &vec![b' '; (1 << 20) + 1]);
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("--max-body"), "{answer}");
}

/// vLLM's and llama.cpp's `/tokenize` and `/detokenize`, and `/tokenizer_info`.
#[tokio::test]
async fn tokenize_and_detokenize_endpoints() {
    let app = app_with(8, None, 1 << 20, Some("chatml"));
    // vLLM: with BOS by default.
    let (s, _, v) = call(&app, "POST", "/tokenize", None, r#"{"prompt": "Hi there"}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["tokens"], serde_json::json!([1, 320, 417, 383]));
    assert_eq!(
        (v["count"].as_u64(), v["max_model_len"].as_u64()),
        (Some(4), Some(128))
    );
    let (_, _, v) = call(
        &app,
        "POST",
        "/tokenize",
        None,
        r#"{"prompt": "Hi there", "add_special_tokens": false}"#,
    )
    .await;
    assert_eq!(v["tokens"], serde_json::json!([320, 417, 383]));
    // A conversation, through the chat template.
    let (s, _, v) = call(
        &app,
        "POST",
        "/tokenize",
        None,
        r#"{"messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["count"].as_u64().unwrap() > 5);
    // llama.cpp: no BOS by default, pieces on request.
    let (_, _, v) = call(
        &app,
        "POST",
        "/tokenize",
        None,
        r#"{"content": "Hi there", "with_pieces": true}"#,
    )
    .await;
    assert_eq!(
        v["tokens"][0],
        serde_json::json!({"id": 320, "piece": " H"})
    );
    let (s, _, v) = call(
        &app,
        "POST",
        "/detokenize",
        None,
        r#"{"tokens": [1, 320, 417, 383]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["prompt"].as_str(), v["content"].as_str()),
        (Some("Hi there"), Some("Hi there"))
    );
    let (s, _, v) = call(&app, "POST", "/detokenize", None, r#"{"tokens": [99999]}"#).await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("tokens"))
    );
    let (s, _, v) = call(&app, "POST", "/tokenize", None, r#"{"nothing": 1}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("prompt or messages"));
    let (s, _, v) = call(&app, "GET", "/tokenizer_info", None, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["vocab_size"].as_u64(), v["bos_token_id"].as_u64()),
        (Some(512), Some(1))
    );
    let (s, _, _) = call(&app, "GET", "/tokenize", None, "").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

/// No CORS headers unless `--cors-origin` asks; then for that origin only, with preflight
/// answered before the API key.
#[tokio::test]
async fn cors_only_when_asked() {
    async fn send(app: &axum::Router, method: &str, origin: &str) -> axum::response::Response {
        let r = Request::builder()
            .method(method)
            .uri("/v1/models")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(r).await.unwrap()
    }
    let plain = app(8, Some("k"), 1 << 20);
    let r = send(&plain, "GET", "http://evil.example").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = send(&plain, "OPTIONS", "http://evil.example").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_ne!(r.status(), StatusCode::NO_CONTENT);
    let open = app_full(8, Some("k"), 1 << 20, None, Some("http://localhost:3000"));
    let r = send(&open, "OPTIONS", "http://localhost:3000").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert!(r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    // The key is still required for the request itself; the answer carries the header.
    let r = send(&open, "GET", "http://localhost:3000").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let r = send(&open, "GET", "http://evil.example").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
