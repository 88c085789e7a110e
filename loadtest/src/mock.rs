//! A vLLM-like OpenAI server for tests, the demo and load tests: realistic JSON and SSE framing,
//! `usage`, `/v1/models` with `root`, `/health`, a 5 s keep-alive, and injectable faults.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// How an injected error answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorBody {
    /// vLLM's own shape: `{"object":"error","message":..,"type":..,"code":..}`.
    Vllm,
    /// A plain-text body, as a crashed uvicorn worker sends.
    Text,
}

/// Behaviour of one mock replica. Cheap to clone; tests may swap it at run time.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// The model name the replica serves (`/v1/models` id).
    pub model: String,
    /// The model path (`root` in `/v1/models`), e.g. `/models/llama/1.0.1`.
    pub root: String,
    /// Delay before the first token (streams) or before the whole answer (non-streams).
    pub ttft: Duration,
    /// Gap between tokens in a stream.
    pub inter_token: Duration,
    /// Tokens per reply, capped by the request's `max_tokens`.
    pub tokens: usize,
    /// Idle keep-alive of client connections (uvicorn/vLLM: 5 s).
    pub keep_alive: Duration,
    /// Fraction of requests (0..=1) answered with `error_status`.
    pub error_rate: f64,
    /// Status of injected errors.
    pub error_status: u16,
    /// Body of injected errors.
    pub error_body: ErrorBody,
    /// Accept requests but never answer.
    pub hang: bool,
    /// Break the connection after this many tokens of a stream.
    pub reset_after: Option<usize>,
    /// Extra delay before the response head of every request.
    pub slow_start: Duration,
    /// Embedding dimension.
    pub embedding_dim: usize,
    /// Like vLLM's `--api-key`: every `/v1/*` request needs `Authorization: Bearer <key>`
    /// (401 otherwise); `/health` stays open.
    pub api_key: Option<String>,
    /// Put the replica's own time to first token (from the request's arrival to the first
    /// token's write) on the first token's SSE event, as the comment line
    /// `: replica-ttft-us=N`. SSE clients ignore comments; `loadgen` subtracts it from the
    /// time it saw, which leaves the time spent outside the replica (network and proxy).
    pub stamp_ttft: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            model: "mock-model".into(),
            root: "/models/mock-model".into(),
            ttft: Duration::from_millis(20),
            inter_token: Duration::from_millis(5),
            tokens: 16,
            keep_alive: Duration::from_secs(5),
            error_rate: 0.0,
            error_status: 500,
            error_body: ErrorBody::Vllm,
            hang: false,
            reset_after: None,
            slow_start: Duration::ZERO,
            embedding_dim: 8,
            api_key: None,
            stamp_ttft: false,
        }
    }
}

/// What the replica saw; tests assert on it.
#[derive(Default, Debug)]
pub struct MockStats {
    /// Requests received on the inference endpoints.
    pub requests: AtomicUsize,
    /// Streams whose client went away before the last byte, with when it was noticed.
    aborted: Mutex<Vec<Instant>>,
    aborted_notify: tokio::sync::Notify,
    /// Bodies of the last requests (at most 16), for byte-identity checks.
    bodies: Mutex<Vec<Bytes>>,
    /// Bytes of the last streams sent (at most 16), complete or not.
    streams: Mutex<Vec<Bytes>>,
    /// Request headers of the last request.
    last_headers: Mutex<Option<http::HeaderMap>>,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    ids: AtomicU64,
}

impl MockStats {
    /// Bodies received so far (most recent last, at most 16).
    pub fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
    /// Exactly what the replica wrote for each of its last streams (most recent last).
    pub fn streams(&self) -> Vec<Bytes> {
        self.streams.lock().map(|b| b.clone()).unwrap_or_default()
    }
    /// Headers of the most recent inference request.
    pub fn last_headers(&self) -> Option<http::HeaderMap> {
        self.last_headers.lock().ok().and_then(|h| h.clone())
    }
    /// Instants at which streams were abandoned by their client.
    pub fn aborted(&self) -> Vec<Instant> {
        self.aborted.lock().map(|a| a.clone()).unwrap_or_default()
    }
    /// Waits until at least one stream was abandoned, returning when it was noticed.
    pub async fn wait_aborted(&self) -> Instant {
        loop {
            let notified = self.aborted_notify.notified();
            if let Some(first) = self.aborted().first() {
                return *first;
            }
            notified.await;
        }
    }
    fn record_abort(&self) {
        if let Ok(mut a) = self.aborted.lock() {
            a.push(Instant::now());
        }
        self.aborted_notify.notify_waiters();
    }
}

/// A running mock replica.
pub struct MockReplica {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<MockStats>,
    config: Arc<Mutex<MockConfig>>,
    stop: CancellationToken,
}

impl MockReplica {
    /// Binds `bind` (use port 0 in tests) and serves until dropped or stopped.
    pub async fn start(bind: SocketAddr, config: MockConfig) -> std::io::Result<Self> {
        // uvicorn's (and so vLLM's) accept backlog is 2048; tokio's default of 1024 made the
        // mock, not the proxy in front of it, drop SYNs when thousands of streams open at once.
        let socket = if bind.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(bind)?;
        let listener: TcpListener = socket.listen(2048)?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(MockStats::default());
        let config = Arc::new(Mutex::new(config));
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, config.clone(), stats.clone(), stop.clone()));
        Ok(Self {
            addr,
            stats,
            config,
            stop,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:4711`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the behaviour for requests that arrive from now on.
    pub fn set_config(&self, f: impl FnOnce(&mut MockConfig)) {
        if let Ok(mut c) = self.config.lock() {
            f(&mut c);
        }
    }

    /// Stops accepting and closes the listener.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for MockReplica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    config: Arc<Mutex<MockConfig>>,
    stats: Arc<MockStats>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let keep_alive = config
            .lock()
            .map(|c| c.keep_alive)
            .unwrap_or(Duration::from_secs(5));
        let (config, stats, stop) = (config.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let cfg = config.lock().map(|c| c.clone()).unwrap_or_default();
                handle(req, cfg, stats.clone())
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            // hyper's header-read timer also runs while a keep-alive connection idles, which
            // is exactly uvicorn's keep-alive timeout.
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(keep_alive);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

#[derive(Deserialize, Default)]
struct Req {
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    input: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

type MockBody = http_body_util::Either<http_body_util::Full<Bytes>, TokenStream>;

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut resp = Response::new(http_body_util::Either::Left(http_body_util::Full::new(
        body.into(),
    )));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn vllm_error(status: StatusCode, message: &str) -> Response<MockBody> {
    let body = serde_json::json!({
        "object": "error", "message": message, "type": "BadRequestError",
        "param": null, "code": status.as_u16(),
    });
    full(status, "application/json", body.to_string())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn handle(
    req: Request<Incoming>,
    cfg: MockConfig,
    stats: Arc<MockStats>,
) -> Result<Response<MockBody>, Infallible> {
    let arrived = Instant::now();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Some(key) = cfg.api_key.as_deref() {
        let sent = req.headers().get("authorization").map(|v| v.as_bytes());
        if path.starts_with("/v1/") && sent != Some(format!("Bearer {key}").as_bytes()) {
            return Ok(full(
                StatusCode::UNAUTHORIZED,
                "application/json",
                r#"{"error":"Unauthorized"}"#,
            ));
        }
    }
    match (method, path.as_str()) {
        (Method::GET, "/health") => return Ok(full(StatusCode::OK, "application/json", "")),
        (Method::GET, "/v1/models") => {
            let body = serde_json::json!({"object": "list", "data": [{
                "id": cfg.model, "object": "model", "created": now_secs(), "owned_by": "vllm",
                "root": cfg.root, "parent": null, "max_model_len": 8192,
            }]});
            return Ok(full(StatusCode::OK, "application/json", body.to_string()));
        }
        (Method::POST, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {}
        _ => return Ok(vllm_error(StatusCode::NOT_FOUND, "Not Found")),
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut h) = stats.last_headers.lock() {
        *h = Some(req.headers().clone());
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(vllm_error(StatusCode::BAD_REQUEST, "body read failed")),
    };
    if let Ok(mut b) = stats.bodies.lock() {
        if b.len() >= 16 {
            b.remove(0);
        }
        b.push(body.clone());
    }
    if cfg.hang {
        std::future::pending::<()>().await;
    }
    if !cfg.slow_start.is_zero() {
        tokio::time::sleep(cfg.slow_start).await;
    }
    if cfg.error_rate > 0.0 && fastrand::f64() < cfg.error_rate {
        let status =
            StatusCode::from_u16(cfg.error_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(match cfg.error_body {
            ErrorBody::Vllm => vllm_error(status, "injected fault"),
            ErrorBody::Text => full(status, "text/plain", "Internal Server Error"),
        });
    }
    let parsed: Req = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Ok(vllm_error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let id = stats.ids.fetch_add(1, Ordering::Relaxed);
    let prompt_tokens = (body.len() / 4).max(1);
    if path == "/v1/embeddings" {
        let inputs = match &parsed.input {
            Some(serde_json::Value::Array(a)) => a.len().max(1),
            _ => 1,
        };
        let data: Vec<_> = (0..inputs)
            .map(|i| {
                let v: Vec<f32> = (0..cfg.embedding_dim)
                    .map(|d| ((i + d) as f32 * 0.1).sin())
                    .collect();
                serde_json::json!({"object": "embedding", "index": i, "embedding": v})
            })
            .collect();
        let body = serde_json::json!({"id": format!("embd-{id}"), "object": "list",
            "created": now_secs(), "model": cfg.model, "data": data,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}});
        tokio::time::sleep(cfg.ttft).await;
        return Ok(full(StatusCode::OK, "application/json", body.to_string()));
    }
    let chat = path == "/v1/chat/completions";
    let limit = parsed
        .max_completion_tokens
        .or(parsed.max_tokens)
        .unwrap_or(usize::MAX);
    let tokens = cfg.tokens.min(limit);
    let finish = if tokens < cfg.tokens {
        "length"
    } else {
        "stop"
    };
    if parsed.stream.unwrap_or(false) {
        let include_usage = parsed
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let stream = TokenStream {
            id: if chat {
                format!("chatcmpl-{id}")
            } else {
                format!("cmpl-{id}")
            },
            chat,
            model: cfg.model.clone(),
            created: now_secs(),
            tokens,
            prompt_tokens,
            finish,
            include_usage,
            reset_after: cfg.reset_after,
            inter_token: cfg.inter_token,
            sent: 0,
            phase: Phase::Start,
            sleep: Box::pin(tokio::time::sleep(cfg.ttft)),
            stamp_from: cfg.stamp_ttft.then_some(arrived),
            written: Vec::new(),
            stats,
        };
        let mut resp = Response::new(http_body_util::Either::Right(stream));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        return Ok(resp);
    }
    tokio::time::sleep(cfg.ttft + cfg.inter_token * tokens as u32).await;
    let text = token_text(0, tokens);
    let usage = serde_json::json!({"prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + tokens, "completion_tokens": tokens});
    let body = if chat {
        serde_json::json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion",
            "created": now_secs(), "model": cfg.model, "choices": [{"index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": null, "finish_reason": finish, "stop_reason": null}], "usage": usage})
    } else {
        serde_json::json!({"id": format!("cmpl-{id}"), "object": "text_completion",
            "created": now_secs(), "model": cfg.model, "choices": [{"index": 0, "text": text,
            "logprobs": null, "finish_reason": finish, "stop_reason": null}], "usage": usage})
    };
    Ok(full(StatusCode::OK, "application/json", body.to_string()))
}

/// The words a reply is made of: deterministic, so tests can count them.
fn token_text(from: usize, to: usize) -> String {
    (from..to).map(|i| format!("tok{i} ")).collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Tokens,
    Finish,
    Usage,
    Done,
    Reset,
    Ended,
}

/// The SSE body of a streaming reply, paced by its own timer (no task per stream). Dropping it
/// before the end means the client went away; that is recorded for tests.
pub struct TokenStream {
    id: String,
    chat: bool,
    model: String,
    created: u64,
    tokens: usize,
    prompt_tokens: usize,
    finish: &'static str,
    include_usage: bool,
    reset_after: Option<usize>,
    inter_token: Duration,
    sent: usize,
    phase: Phase,
    sleep: Pin<Box<Sleep>>,
    /// The request's arrival, while the first token's stamp is still to be written.
    stamp_from: Option<Instant>,
    written: Vec<u8>,
    stats: Arc<MockStats>,
}

impl TokenStream {
    fn chunk(&self, delta: serde_json::Value, finish: Option<&str>) -> Bytes {
        let choice = if self.chat {
            serde_json::json!({"index": 0, "delta": delta, "logprobs": null,
                "finish_reason": finish})
        } else {
            let text = delta.get("content").cloned().unwrap_or_default();
            serde_json::json!({"index": 0, "text": text, "logprobs": null,
                "finish_reason": finish})
        };
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let v = serde_json::json!({"id": self.id, "object": object, "created": self.created,
            "model": self.model, "choices": [choice]});
        Bytes::from(format!("data: {v}\n\n"))
    }
}

impl Body for TokenStream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let r = this.poll_inner(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                this.written.extend_from_slice(d);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl TokenStream {
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self;
        loop {
            match this.phase {
                Phase::Start => {
                    if this.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.phase = Phase::Tokens;
                    if this.chat {
                        let c = this.chunk(
                            serde_json::json!({"role": "assistant", "content": ""}),
                            None,
                        );
                        return Poll::Ready(Some(Ok(Frame::data(c))));
                    }
                }
                Phase::Tokens => {
                    if this.reset_after.is_some_and(|n| this.sent >= n) {
                        // Yield once so hyper flushes the tokens already written: a real reset
                        // comes after the bytes before it reached the wire.
                        this.phase = Phase::Reset;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    if this.sent >= this.tokens {
                        this.phase = Phase::Finish;
                        continue;
                    }
                    if this.sent > 0 && this.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let text = token_text(this.sent, this.sent + 1);
                    let mut c = this.chunk(serde_json::json!({"content": text}), None);
                    if let Some(arrived) = this.stamp_from.take() {
                        let us = arrived.elapsed().as_micros();
                        c = Bytes::from(
                            [format!(": replica-ttft-us={us}\n").as_bytes(), &c].concat(),
                        );
                    }
                    this.sent += 1;
                    let next = tokio::time::Instant::now() + this.inter_token;
                    this.sleep.as_mut().reset(next);
                    return Poll::Ready(Some(Ok(Frame::data(c))));
                }
                Phase::Finish => {
                    if this.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.phase = if this.include_usage {
                        Phase::Usage
                    } else {
                        Phase::Done
                    };
                    let c = this.chunk(serde_json::json!({}), Some(this.finish));
                    return Poll::Ready(Some(Ok(Frame::data(c))));
                }
                Phase::Usage => {
                    this.phase = Phase::Done;
                    let object = if this.chat {
                        "chat.completion.chunk"
                    } else {
                        "text_completion"
                    };
                    let v = serde_json::json!({"id": this.id, "object": object,
                        "created": this.created, "model": this.model, "choices": [],
                        "usage": {"prompt_tokens": this.prompt_tokens,
                            "total_tokens": this.prompt_tokens + this.sent,
                            "completion_tokens": this.sent}});
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!(
                        "data: {v}\n\n"
                    ))))));
                }
                Phase::Done => {
                    this.phase = Phase::Ended;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        b"data: [DONE]\n\n",
                    )))));
                }
                Phase::Reset => {
                    this.phase = Phase::Ended;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "injected reset",
                    ))));
                }
                Phase::Ended => return Poll::Ready(None),
            }
        }
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        if let Ok(mut s) = self.stats.streams.lock() {
            if s.len() >= 16 {
                s.remove(0);
            }
            s.push(Bytes::from(std::mem::take(&mut self.written)));
        }
        if self.phase != Phase::Ended {
            self.stats.record_abort();
        }
    }
}
