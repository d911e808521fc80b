//! `tuili-server`: the OpenAI-compatible HTTP server.
//!
//! Owns: HTTP (axum), OpenAI's request and response shapes, server-sent events, the API key,
//! the body limit and the Prometheus text of `/metrics`. May not: touch the model, the KV
//! cache or the scheduler — every request goes to the engine's serving loop
//! ([`tuili_engine::serve::ServeLoop`]) as a message, and its events come back on a channel.
//!
//! Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both streaming or not),
//! `GET /v1/models`, `POST /tokenize` and `POST /detokenize` (vLLM's and llama.cpp's shapes),
//! `GET /tokenizer_info`, `GET /health`, `GET /metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Semaphore;
use tuili_engine::serve::{Event, Rejection, ServeLoop, Submission};
use tuili_engine::{Engine, GenerateRequest, Prompt as EnginePrompt};
use tuili_sample::StepLogprobs;
use tuili_tokenizer::chat::Message;

pub mod error;
pub mod metrics;
pub mod openai;

pub use error::ApiError;

use openai::{Body, Kind, Prompt};

/// Settings of the HTTP side.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// Bearer key required on `/v1/*` when set.
    pub api_key: Option<String>,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Time a client has to send a request's body in full (a client that sends headers and
    /// never the body must not hold a connection and a task for ever).
    pub body_timeout: std::time::Duration,
    /// The browser origin allowed to call the API from a page (`*` for any); none: no CORS
    /// headers, so browsers keep other sites' pages from reading the answers.
    pub cors_origin: Option<String>,
}

/// What every handler shares.
pub struct AppState {
    pub server: ServeLoop,
    pub http: HttpConfig,
    created: u64,
    next_id: AtomicU64,
    /// HTTP error responses by status code.
    errors: Mutex<BTreeMap<u16, u64>>,
    /// Turns for preparing heavy bodies ([`LIGHT_BODY`]): one per core the process may use.
    heavy: Arc<Semaphore>,
}

impl AppState {
    pub fn new(server: ServeLoop, http: HttpConfig) -> AppState {
        AppState {
            server,
            http,
            created: now(),
            next_id: AtomicU64::new(1),
            errors: Mutex::new(BTreeMap::new()),
            heavy: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
        }
    }

    fn engine(&self) -> &Engine {
        self.server.engine()
    }

    fn count_error(&self, status: StatusCode) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status.as_u16())
            .or_default() += 1;
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The application: routes, API key check, body limit.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.http.max_body;
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .route_layer(middleware::from_fn_with_state(state.clone(), read_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), count_errors))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no route {} {}", req.method(), req.uri().path()),
        kind: "invalid_request_error",
        param: None,
        code: Some("not_found"),
        retry_after: None,
    }
}

async fn wrong_method(req: Request) -> ApiError {
    let path = req.uri().path();
    let allowed = match path {
        "/v1/completions" | "/v1/chat/completions" | "/tokenize" | "/detokenize" => "POST",
        _ => "GET",
    };
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{} {path} is not allowed; use {allowed}", req.method()),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
        retry_after: None,
    }
}

async fn count_errors(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    if r.status().is_client_error() || r.status().is_server_error() {
        st.count_error(r.status());
    }
    r
}

/// The fields of vLLM's and llama.cpp's `/tokenize` and `/detokenize` bodies.
#[derive(serde::Deserialize)]
struct TokenizeBody {
    /// vLLM: text to tokenize.
    prompt: Option<String>,
    /// vLLM: a conversation, rendered with the chat template.
    messages: Option<Vec<openai::ChatMessage>>,
    /// vLLM (default true).
    add_special_tokens: Option<bool>,
    /// llama.cpp: text to tokenize.
    content: Option<String>,
    /// llama.cpp (default false).
    add_special: Option<bool>,
    /// llama.cpp: each id with its piece.
    #[serde(default)]
    with_pieces: bool,
    /// `/detokenize`, both.
    tokens: Option<Vec<u32>>,
}

fn parse_tokenize(body: &[u8]) -> Result<TokenizeBody, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != "." && path != "?").then_some(path.as_str());
        ApiError::invalid(format!("invalid request: {}", e.into_inner()), param)
    })
}

/// `POST /tokenize`: vLLM's shape (`prompt` or `messages` → `tokens`, `count`,
/// `max_model_len`) or llama.cpp's (`content` → `tokens`, as `{id, piece}` with
/// `with_pieces`). The same tokenizer, template and special-token rules as generation.
async fn tokenize(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || -> Result<Response, ApiError> {
        let b = parse_tokenize(&body)?;
        let e = st2.engine();
        let tok = e.tokenizer();
        // The generation path's bound: refused by length before tokenizing.
        let check = |t: &str, param: &str| e.check_text(t).map_err(|m| engine_err(m, param));
        let err = |m: tuili_tokenizer::TokenizerError| ApiError::invalid(m.to_string(), None);
        if let Some(text) = &b.content {
            check(text, "content")?;
            let ids = tok
                .encode(text, b.add_special.unwrap_or(false), true)
                .map_err(err)?;
            let tokens: Value = if b.with_pieces {
                ids.iter()
                    .map(|&id| {
                        let piece = tok.decode(&[id], false).unwrap_or_default();
                        json!({"id": id, "piece": piece})
                    })
                    .collect()
            } else {
                json!(ids)
            };
            return Ok(Json(json!({"tokens": tokens})).into_response());
        }
        let ids = match (&b.prompt, &b.messages) {
            (Some(text), None) => {
                check(text, "prompt")?;
                tok.encode(text, b.add_special_tokens.unwrap_or(true), true)
                    .map_err(err)?
            }
            (None, Some(_)) => {
                let fake = Body {
                    messages: b.messages,
                    ..Body::default()
                };
                let conv = messages(&fake)?;
                let template = e
                    .chat_template()
                    .map_err(|m| ApiError::invalid(m.to_string(), Some("messages")))?;
                let (text, add_bos) = tok.render_chat(template, &conv).map_err(err)?;
                check(&text, "messages")?;
                tok.encode(&text, add_bos, true).map_err(err)?
            }
            _ => {
                return Err(ApiError::invalid(
                    "send one of prompt or messages (vLLM) or content (llama.cpp)",
                    None,
                ))
            }
        };
        Ok(
            Json(json!({"count": ids.len(), "max_model_len": e.n_ctx(), "tokens": ids}))
                .into_response(),
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenization failed: {e}")))?
}

/// `POST /detokenize`: `tokens` → text, answered as both vLLM (`prompt`) and llama.cpp
/// (`content`) read it.
async fn detokenize(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let b = parse_tokenize(&body)?;
    let ids = b
        .tokens
        .ok_or_else(|| ApiError::invalid("tokens is required", Some("tokens")))?;
    let text = st
        .engine()
        .tokenizer()
        .decode_text(&ids)
        .map_err(|m| ApiError::invalid(m.to_string(), Some("tokens")))?;
    Ok(Json(json!({"prompt": text, "content": text})).into_response())
}

/// `GET /tokenizer_info`: what a client needs to use the server's tokenizer.
async fn tokenizer_info(State(st): State<Arc<AppState>>) -> Json<Value> {
    let tok = st.engine().tokenizer();
    let piece = |id: Option<u32>| id.and_then(|i| tok.piece(i).ok().map(String::from));
    Json(json!({
        "model": st.http.model_name,
        "vocab_size": tok.n_vocab(),
        "max_model_len": st.engine().n_ctx(),
        "bos_token": piece(tok.bos()),
        "eos_token": piece(tok.eos()),
        "bos_token_id": tok.bos(),
        "eos_token_id": tok.eos(),
        "add_bos_token": tok.adds_bos(),
    }))
}

/// Reads the body in full within [`HttpConfig::body_timeout`] (408 otherwise) and within
/// the body limit (413), before the handler sees it.
async fn read_body(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = st.http.max_body;
    let too_large = || {
        ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("the request body is larger than the server's limit of {limit} bytes (tuili serve --max-body)"),
        kind: "invalid_request_error",
        param: None,
        code: None,
        retry_after: None,
    }
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large().into_response();
    }
    let (parts, body) = req.into_parts();
    let t = st.http.body_timeout;
    let bytes = match tokio::time::timeout(t, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        // Over the limit, or the client broke off (then nobody reads this).
        Ok(Err(_)) => return too_large().into_response(),
        Err(_) => {
            return ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                message: format!(
                    "the request body did not arrive in full within {} s",
                    t.as_secs_f64()
                ),
                kind: "invalid_request_error",
                param: None,
                code: Some("timeout"),
                retry_after: None,
            }
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// CORS, only when `--cors-origin` asks: the allowed origin on answers to requests that
/// come from it, and preflight (`OPTIONS` with `Access-Control-Request-Method`) answered
/// 204 before the API key is checked, as browsers send it without credentials.
async fn cors(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(allowed) = st.http.cors_origin.as_deref() else {
        return next.run(req).await;
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let Some(origin) = origin.filter(|o| allowed == "*" || o == allowed) else {
        return next.run(req).await;
    };
    let preflight = req.method() == axum::http::Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut r = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = r.headers_mut();
    let value = |s: &str| axum::http::HeaderValue::from_str(s).ok();
    if let Some(v) = value(if allowed == "*" { "*" } else { &origin }) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(header::VARY, axum::http::HeaderValue::from_static("origin"));
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            axum::http::HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            axum::http::HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            axum::http::HeaderValue::from_static("600"),
        );
    }
    r
}

/// Constant-time comparison of the presented key with the configured one.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.http.api_key {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(presented.trim().as_bytes(), key.as_bytes()) {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "invalid or missing API key (Authorization: Bearer …)".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_api_key"),
                retry_after: None,
            }
            .into_response();
        }
    }
    next.run(req).await
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": st.http.model_name,
        "object": "model",
        "created": st.created,
        "owned_by": "tuili",
        "max_model_len": st.engine().n_ctx(),
    }]}))
}

/// `ok`, or 503 and why when the group of ranks of a distributed run is broken.
async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.server.metrics().broken() {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "reason": why})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let errors = st.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(st.server.metrics(), &errors),
    )
}

/// Parses a JSON body, naming the field a type error is about.
fn parse(body: &[u8]) -> Result<Body, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if inner.is_eof() && first.is_none() {
            ApiError::invalid("the body is empty; send a JSON object", None)
        } else if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("the body is not valid JSON: {inner}"), None)
        } else if first != Some(&b'{') {
            ApiError::invalid(
                "the body must be a JSON object of the request's fields, as {\"prompt\": …}",
                None,
            )
        } else if path == "." || path == "?" {
            ApiError::invalid(format!("invalid request: {inner}"), None)
        } else {
            ApiError::invalid(format!("invalid {path}: {inner}"), Some(&path))
        }
    })
}

/// Bodies larger than this are "heavy": their parsing, template and tokenization take
/// turns under [`AppState::heavy`], so a few megabyte prompts cannot occupy every core
/// while small requests go straight on.
const LIGHT_BODY: usize = 64 << 10;

/// Sets the cancel flag when dropped: the client went away (or the response is complete,
/// when it no longer matters).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A request handed to the serving loop, accepted.
struct Running {
    rx: UnboundedReceiver<Event>,
    _cancel: CancelOnDrop,
}

/// Submits and waits for the loop's answer (accepted, or why not).
async fn start(st: &AppState, req: GenerateRequest, prompt: Vec<u32>) -> Result<Running, ApiError> {
    // A broken group may have its loop stuck in a collective: answer here.
    if let Some(why) = st.server.metrics().broken() {
        return Err(ApiError::busy(why));
    }
    let (tx, mut rx) = unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    st.server.submit(Submission {
        req,
        prompt,
        sink: Box::new(move |ev| tx.send(ev).is_ok()),
        cancel: cancel.clone(),
    });
    let guard = CancelOnDrop(cancel);
    match rx.recv().await {
        Some(Event::Accepted) => Ok(Running { rx, _cancel: guard }),
        Some(Event::Rejected(Rejection::Busy(m))) => Err(ApiError::busy(m)),
        Some(Event::Rejected(Rejection::Invalid(m))) => Err(ApiError::invalid(m, None)),
        Some(Event::Failed(m)) => Err(ApiError::internal(m)),
        _ => Err(ApiError::internal("the serving loop stopped")),
    }
}

/// The prompt, the engine request and what the response needs to know.
struct Prepared {
    req: GenerateRequest,
    prompt: Vec<u32>,
    /// Completions with `echo`: the prompt text to put before each completion.
    echo: Option<String>,
    stream: bool,
    include_usage: bool,
}

/// An engine error as a 400 naming the parameter at fault: the setting's own name when the
/// engine gives one, else `param`.
fn engine_err(err: tuili_engine::EngineError, param: &str) -> ApiError {
    use tuili_engine::EngineError as E;
    use tuili_sample::SampleError as S;
    let name = match &err {
        E::BadSetting { name, .. } => Some(name.to_string()),
        E::Sample(S::BadParam { name, .. }) => Some(name.to_string()),
        E::Sample(S::BadToken { .. }) => Some("logit_bias".into()),
        _ => None,
    };
    ApiError::invalid(err.to_string(), Some(name.as_deref().unwrap_or(param)))
}

/// The conversation of a chat request, as the engine's messages (text parts only).
fn messages(body: &Body) -> Result<Vec<Message>, ApiError> {
    let msgs = body
        .messages
        .as_ref()
        .ok_or_else(|| ApiError::invalid("messages is required", Some("messages")))?;
    if msgs.is_empty() {
        return Err(ApiError::invalid(
            "messages is empty; a chat needs at least one message",
            Some("messages"),
        ));
    }
    let mut conv = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let text = match &m.content {
            None => String::new(),
            Some(openai::Content::Text(t)) => t.clone(),
            Some(openai::Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                format!("only text content parts are supported, got {:?}", p.kind),
                                Some(&format!("messages[{i}].content")),
                            ))
                        }
                    }
                }
                s
            }
        };
        if !matches!(
            m.role.as_str(),
            "system" | "user" | "assistant" | "developer" | "tool"
        ) {
            return Err(ApiError::invalid(
                format!("unknown role {:?}", m.role),
                Some(&format!("messages[{i}].role")),
            ));
        }
        conv.push(Message::new(&m.role, &text));
    }
    Ok(conv)
}

fn prepare(st: &AppState, body: &Body, kind: Kind) -> Result<Prepared, ApiError> {
    if let Some(m) = &body.model {
        if m != &st.http.model_name {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "the model {m:?} does not exist; this server serves {:?}",
                    st.http.model_name
                ),
                kind: "invalid_request_error",
                param: Some("model".into()),
                code: Some("model_not_found"),
                retry_after: None,
            });
        }
    }
    let (mut req, max_tokens) = body.to_request(kind, tuili_sample::fresh_seed())?;
    let e = st.engine();
    let param = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    req.prompt = match kind {
        Kind::Completion => match body
            .prompt
            .as_ref()
            .ok_or_else(|| ApiError::invalid("prompt is required", Some("prompt")))?
        {
            Prompt::Text(t) => EnginePrompt::Text(t.clone()),
            Prompt::Texts(v) if v.len() == 1 => EnginePrompt::Text(v[0].clone()),
            Prompt::Ids(ids) => EnginePrompt::Ids(ids.clone()),
            Prompt::IdLists(v) if v.len() == 1 => EnginePrompt::Ids(v[0].clone()),
            _ => {
                return Err(ApiError::invalid(
                    "one prompt per request (send a request per prompt)",
                    Some("prompt"),
                ))
            }
        },
        Kind::Chat => EnginePrompt::Chat(messages(body)?),
    };
    // The one request path: the engine checks the settings and turns the prompt into ids.
    let prompt = e.prepare(&req).map_err(|err| engine_err(err, param))?;
    let echo = match (&req.prompt, body.echo) {
        (EnginePrompt::Text(t), true) => Some(t.clone()),
        (EnginePrompt::Ids(ids), true) => Some(e.tokenizer().decode_text(ids).unwrap_or_default()),
        _ => None,
    };
    // OpenAI's max_tokens counts against the context with the prompt; left out, it is
    // whatever room the context has.
    let n_ctx = e.n_ctx();
    let room = n_ctx - prompt.len();
    if room == 0 {
        return Err(ApiError::invalid(
            format!(
                "the prompt is {} tokens long; this model's context holds {n_ctx}",
                prompt.len()
            ),
            Some(param),
        ));
    }
    req.max_tokens = match max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::invalid(
                format!(
                    "this model's context holds {n_ctx} tokens; the prompt has {} and max_tokens asks for {m} more",
                    prompt.len()
                ),
                Some("max_tokens"),
            ))
        }
        Some(m) => m,
        None => room,
    };
    Ok(Prepared {
        req,
        prompt,
        echo,
        stream: body.stream,
        include_usage: body
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    })
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    respond(st, body, Kind::Completion).await
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    respond(st, body, Kind::Chat).await
}

/// Parsing, the chat template and tokenization: CPU work that grows with the body, run on
/// tokio's blocking threads so that the I/O threads keep answering (`/health`, streams) —
/// heavy bodies a few at a time, under [`AppState::heavy`].
async fn parse_and_prepare(
    st: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<(Body, Prepared), ApiError> {
    let body = body.map_err(|r| ApiError {
        status: r.status(),
        message: r.body_text(),
        kind: "invalid_request_error",
        param: None,
        code: None,
        retry_after: None,
    })?;
    let permit = if body.len() > LIGHT_BODY {
        let sem = st.heavy.clone();
        let p = sem
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the server is shutting down"))?;
        Some(p)
    } else {
        None
    };
    let st = st.clone();
    tokio::task::spawn_blocking(move || {
        // Held until the work is done, even when the client has gone.
        let _permit = permit;
        let body = parse(&body)?;
        let p = prepare(&st, &body, kind)?;
        Ok((body, p))
    })
    .await
    .map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))?
}

/// One completion's result, gathered from events.
#[derive(Default)]
struct Choice {
    text: String,
    logprobs: Vec<StepLogprobs>,
    finish: Option<&'static str>,
}

async fn respond(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let (body, p) = parse_and_prepare(&st, body, kind).await?;
    let n = p.req.n;
    let id_num = st.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match kind {
        Kind::Completion => format!("cmpl-{id_num:016x}"),
        Kind::Chat => format!("chatcmpl-{id_num:016x}"),
    };
    let (stream, include_usage, echo) = (p.stream, p.include_usage, p.echo.clone());
    let mut running = start(&st, p.req, p.prompt).await?;
    if stream {
        return Ok(sse(st, running, kind, id, n, include_usage, echo));
    }
    let mut choices: Vec<Choice> = (0..n).map(|_| Choice::default()).collect();
    let usage = loop {
        match running.rx.recv().await {
            Some(Event::Token {
                index,
                text,
                logprobs,
                ..
            }) => {
                if let Some(c) = choices.get_mut(index) {
                    c.text.push_str(&text);
                    c.logprobs.extend(logprobs);
                }
            }
            Some(Event::Text { index, text }) => {
                if let Some(c) = choices.get_mut(index) {
                    c.text.push_str(&text);
                }
            }
            Some(Event::Done { index, reason, .. }) => {
                if let Some(c) = choices.get_mut(index) {
                    c.finish = Some(openai::finish_reason(reason));
                }
            }
            Some(Event::Finished {
                prompt_tokens,
                completion_tokens,
            }) => {
                break (prompt_tokens, completion_tokens);
            }
            Some(Event::Failed(m)) => return Err(ApiError::internal(m)),
            Some(Event::Accepted | Event::Rejected(_)) => {}
            None => return Err(ApiError::internal("the serving loop stopped")),
        }
    };
    let tok = st.engine().tokenizer();
    let logprobs_on = body
        .logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && v != &json!(false));
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| match kind {
            Kind::Completion => {
                let pre = echo.clone().unwrap_or_default();
                let lp = logprobs_on
                    .then(|| openai::completion_logprobs(tok, &c.logprobs, pre.chars().count()));
                json!({"index": i, "text": pre + &c.text, "logprobs": lp,
                       "finish_reason": c.finish.unwrap_or("stop")})
            }
            Kind::Chat => {
                let lp = logprobs_on.then(|| openai::chat_logprobs(tok, &c.logprobs));
                json!({"index": i,
                       "message": {"role": "assistant", "content": c.text},
                       "logprobs": lp,
                       "finish_reason": c.finish.unwrap_or("stop")})
            }
        })
        .collect();
    let object = match kind {
        Kind::Completion => "text_completion",
        Kind::Chat => "chat.completion",
    };
    Ok(Json(json!({
        "id": id,
        "object": object,
        "created": now(),
        "model": st.http.model_name,
        "choices": choices,
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1,
                  "total_tokens": usage.0 + usage.1},
    }))
    .into_response())
}

/// Server-sent events: one chunk per token (and per held-back text), a last chunk per
/// choice with its finish_reason, the usage when asked, then `[DONE]`. Dropping the stream
/// (the client went away) cancels the request.
#[allow(clippy::too_many_arguments)]
fn sse(
    st: Arc<AppState>,
    running: Running,
    kind: Kind,
    id: String,
    n: usize,
    include_usage: bool,
    echo: Option<String>,
) -> Response {
    struct S {
        st: Arc<AppState>,
        running: Running,
        kind: Kind,
        id: String,
        created: u64,
        /// Per choice: the role delta (chat) or echo sent, and the text offset so far.
        started: Vec<bool>,
        offsets: Vec<usize>,
        include_usage: bool,
        echo: Option<String>,
        done: bool,
    }
    impl S {
        fn chunk(&self, choices: Value, usage: Option<Value>) -> SseEvent {
            let object = match self.kind {
                Kind::Completion => "text_completion",
                Kind::Chat => "chat.completion.chunk",
            };
            let mut v = json!({"id": self.id, "object": object, "created": self.created,
                               "model": self.st.http.model_name, "choices": choices});
            if let Some(u) = usage {
                v["usage"] = u;
            }
            SseEvent::default().data(v.to_string())
        }

        /// A choice's delta of `text` (with logprobs) or its end.
        fn delta(
            &mut self,
            index: usize,
            text: &str,
            lp: Option<&StepLogprobs>,
            finish: Option<&str>,
        ) -> Vec<SseEvent> {
            let mut out = Vec::new();
            let tok = self.st.engine().tokenizer();
            if index >= self.started.len() {
                return out;
            }
            match self.kind {
                Kind::Completion => {
                    let mut t = String::new();
                    if !self.started[index] {
                        self.started[index] = true;
                        if let Some(e) = &self.echo {
                            t.push_str(e);
                            self.offsets[index] += e.chars().count();
                        }
                    }
                    t.push_str(text);
                    let lp = lp.map(|l| {
                        openai::completion_logprobs(
                            tok,
                            std::slice::from_ref(l),
                            self.offsets[index],
                        )
                    });
                    self.offsets[index] += text.chars().count();
                    out.push(self.chunk(
                        json!([{"index": index, "text": t, "logprobs": lp, "finish_reason": finish}]),
                        None,
                    ));
                }
                Kind::Chat => {
                    if !self.started[index] {
                        self.started[index] = true;
                        out.push(self.chunk(
                            json!([{"index": index, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": null, "finish_reason": null}]),
                            None,
                        ));
                    }
                    let lp = lp.map(|l| openai::chat_logprobs(tok, std::slice::from_ref(l)));
                    let delta = if finish.is_some() && text.is_empty() {
                        json!({})
                    } else {
                        json!({"content": text})
                    };
                    out.push(self.chunk(
                        json!([{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]),
                        None,
                    ));
                }
            }
            out
        }
    }
    let state = S {
        st,
        running,
        kind,
        id,
        created: now(),
        started: vec![false; n],
        offsets: vec![0; n],
        include_usage,
        echo,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let events: Vec<SseEvent> = match s.running.rx.recv().await {
            Some(Event::Token {
                index,
                text,
                logprobs,
                ..
            }) => s.delta(index, &text, logprobs.as_ref(), None),
            Some(Event::Text { index, text }) => s.delta(index, &text, None, None),
            Some(Event::Done { index, reason, .. }) => {
                s.delta(index, "", None, Some(openai::finish_reason(reason)))
            }
            Some(Event::Finished {
                prompt_tokens,
                completion_tokens,
            }) => {
                s.done = true;
                let mut v = Vec::new();
                if s.include_usage {
                    v.push(s.chunk(
                        json!([]),
                        Some(json!({"prompt_tokens": prompt_tokens,
                                    "completion_tokens": completion_tokens,
                                    "total_tokens": prompt_tokens + completion_tokens})),
                    ));
                }
                v.push(SseEvent::default().data("[DONE]"));
                v
            }
            Some(Event::Failed(m)) => {
                s.done = true;
                vec![SseEvent::default().data(ApiError::internal(m).json().to_string())]
            }
            Some(Event::Accepted | Event::Rejected(_)) => Vec::new(),
            None => {
                s.done = true;
                vec![SseEvent::default().data(
                    ApiError::internal("the serving loop stopped")
                        .json()
                        .to_string(),
                )]
            }
        };
        let items: Vec<Result<SseEvent, std::convert::Infallible>> =
            events.into_iter().map(Ok).collect();
        Some((futures_util::stream::iter(items), s))
    });
    use futures_util::StreamExt;
    Sse::new(stream.flatten())
        .keep_alive(KeepAlive::default())
        .into_response()
}
