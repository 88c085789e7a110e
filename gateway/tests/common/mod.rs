//! Test harness: the real gateway on 127.0.0.1:0 in-process, mock replicas, and small HTTP
//! clients (hyper, and raw sockets for the hostile cases).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gateway::Gateway;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use loadtest::{MockConfig, MockReplica};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const MODEL: &str = "test-model";

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub state: std::sync::Arc<gateway::state::AppState>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    /// Starts the gateway from config text; listen addresses are forced to 127.0.0.1:0.
    pub async fn start(toml: &str) -> Self {
        let mut doc: toml_edit::DocumentMut = toml.parse().unwrap();
        doc["server"]["listen"] = toml_edit::value("127.0.0.1:0");
        doc["server"]["admin_listen"] = toml_edit::value("127.0.0.1:0");
        Self::run(Gateway::from_source(&doc.to_string(), None).unwrap())
    }

    /// Starts the gateway from a config file (which should listen on 127.0.0.1:0); changes are
    /// written back to it.
    pub async fn start_file(path: &std::path::Path) -> Self {
        Self::run(Gateway::from_file(path).unwrap())
    }

    fn run(gw: Gateway) -> Self {
        let (addr, admin) = (gw.addrs.data, gw.addrs.admin);
        let state = gw.state();
        let stop = CancellationToken::new();
        let task = tokio::spawn(gw.serve(stop.clone()));
        Self {
            addr,
            admin,
            state,
            stop,
            task: Some(task),
        }
    }

    /// Begins a drain and waits for it to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A config with one model whose single version has these replicas, plus extra TOML on top.
pub fn config(replicas: &[String], extra: &str) -> String {
    config_model(replicas, extra, "")
}

/// Like `config`, with extra keys for the model (e.g. `balancer = "round_robin"`).
pub fn config_model(replicas: &[String], extra: &str, model_keys: &str) -> String {
    let list: Vec<String> = replicas
        .iter()
        .map(|u| format!("{{ url = \"{u}\" }}"))
        .collect();
    config_replicas(&list, extra, model_keys)
}

/// Like `config_model`, with each replica's inline table given in full.
pub fn config_replicas(replicas: &[String], extra: &str, model_keys: &str) -> String {
    // Auth is on by default; tests that are not about auth turn it off.
    let auth = if extra.contains("[auth]") || extra.contains("[[api_keys]]") {
        ""
    } else {
        "[auth]\nenabled = false\n"
    };
    format!(
        "{auth}{extra}\n[[models]]\nname = \"{MODEL}\"\naliases = [\"alias\"]\n{model_keys}\n\
         [[models.versions]]\nname = \"1.0.0\"\nreplicas = [{}]\n",
        replicas.join(", ")
    )
}

/// A new directory of its own under the system's temp dir (`tag` names it), for a test's
/// config file or deployment tree.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gateway-{tag}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Extra TOML that turns active health probes off (for tests that count connections).
pub const NO_PROBES: &str = "[health]\nactive = false\n";

pub async fn mock(cfg: MockConfig) -> MockReplica {
    MockReplica::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            model: MODEL.into(),
            ..cfg
        },
    )
    .await
    .unwrap()
}

pub fn fast() -> MockConfig {
    MockConfig {
        ttft: Duration::from_millis(1),
        inter_token: Duration::from_millis(1),
        tokens: 5,
        ..MockConfig::default()
    }
}

/// A port nothing listens on: connections are refused.
pub fn refused_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("http://{a}")
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    /// Asserts the OpenAI error shape and returns `error.code`.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "no error.message in {v}");
        assert!(e["type"].is_string(), "no error.type in {v}");
        assert!(e.get("code").is_some(), "no error.code in {v}");
        e["code"].as_str().unwrap_or("").to_owned()
    }
}

/// Sends one request on a fresh HTTP/1.1 connection and returns the head and the live body.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    sender.send_request(req).await.unwrap()
}

pub type Response = http::Response<Incoming>;

/// Opens a streaming chat completion and returns once its response head arrived.
pub async fn open_stream(addr: SocketAddr) -> Response {
    send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        chat(true).to_string(),
    )
    .await
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let resp = send(addr, method, path, headers, body).await;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body timed out")
        .expect("body failed")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn post_json(addr: SocketAddr, path: &str, body: serde_json::Value) -> Reply {
    request(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

/// A chat completion with the given headers (e.g. a key, a forwarded-for address).
pub async fn post_chat(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    request(addr, "POST", "/v1/chat/completions", headers, body).await
}

pub fn chat(stream: bool) -> serde_json::Value {
    serde_json::json!({"model": MODEL, "stream": stream,
        "messages": [{"role": "user", "content": "Hello"}]})
}

/// Reads a body to its end, returning what arrived and whether it ended cleanly.
pub async fn read_all(mut body: Incoming) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
            Err(_) => panic!("body stalled"),
            Ok(None) => return (out, true),
            Ok(Some(Err(_))) => return (out, false),
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
        }
    }
}

/// A client connection to `addr` speaking HTTP/2 without TLS (prior knowledge), its
/// connection task running on its own: the handle ends when the connection does.
pub async fn h2c(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    (sender, tokio::spawn(conn))
}

/// A replica on a raw socket: takes one connection, reads the request, then writes each of
/// `writes` in one `write` call, `pause` after each, and holds the connection open for `hold`
/// before closing it. Its URL, and its task.
pub async fn raw_replica(
    writes: Vec<Vec<u8>>,
    pause: Duration,
    hold: Duration,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let _ = s.read(&mut buf).await.unwrap();
        for w in writes {
            s.write_all(&w).await.unwrap();
            tokio::time::sleep(pause).await;
        }
        tokio::time::sleep(hold).await;
    });
    (url, task)
}

/// The head of a replica's chunked SSE answer.
pub const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// Token event `i` (content `tok{i}`) as one HTTP chunk.
pub fn event_chunk(i: usize) -> Vec<u8> {
    let event =
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i}\"}}}}]}}\n\n");
    format!("{:x}\r\n{event}\r\n", event.len()).into_bytes()
}

/// Writes raw bytes and reads until the server closes (or `wait` passes).
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_close(&mut s, wait).await
}

/// Reads until EOF; returns the text and whether the server closed within `wait`.
pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Splits a raw HTTP/1.1 response into status and body (content-length framed).
pub fn parse_raw(resp: &str) -> (u16, String) {
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Calls the admin API with a bearer token.
pub async fn admin(gw: &TestGateway, method: &str, path: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    request(gw.admin, method, path, &[("authorization", &auth)], "").await
}

/// The live endpoint of a replica URL.
pub fn endpoint(gw: &TestGateway, url: &str) -> std::sync::Arc<gateway::balance::Endpoint> {
    gw.state.endpoints.find(url).expect("no such replica")
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// A `redis-server` of the test's own on a free port, stopped by its PID when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is needed for these tests (.ci/run installs Debian's)");
        let s = Self {
            port,
            child: Some(child),
        };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Hex SHA-256 of a key, for `[[api_keys]] sha256`.
pub fn sha(key: &str) -> String {
    gateway::auth::hash_key(key.as_bytes())
}

/// Sends chat requests with `key` at `per_second` for `secs` (open loop: a slow answer does
/// not delay the next request). Returns (accepted, rate limited, other).
pub async fn pace(
    addr: SocketAddr,
    key: &str,
    per_second: u32,
    secs: f64,
) -> (usize, usize, usize) {
    let total = (f64::from(per_second) * secs).round() as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let auth = format!("Bearer {key}");
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            post_chat(addr, &[("authorization", &auth)], chat(false).to_string())
                .await
                .status
        }));
    }
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            _ => other += 1,
        }
    }
    (ok, limited, other)
}

/// The gateway counted exactly one request as `status="client_closed"`.
pub async fn assert_one_client_closed(gw: &TestGateway) {
    let text = request(gw.admin, "GET", "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    assert!(
        text.lines().any(|l| l.starts_with("ai_requests_total")
            && l.contains("status=\"client_closed\"")
            && l.ends_with(" 1")),
        "{text}"
    );
}

/// A replica whose answers are 2 million tokens (about 20 MB, far more than socket buffers or
/// an h2 window hold) unless a request asks for fewer, behind a gateway whose
/// `send_timeout` is 300 ms.
pub async fn huge_answer_with_a_short_send_timeout() -> (MockReplica, TestGateway) {
    let m = mock(MockConfig {
        tokens: 2_000_000,
        inter_token: Duration::ZERO,
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "[server]\nsend_timeout = \"300ms\"\n")).await;
    (m, gw)
}
