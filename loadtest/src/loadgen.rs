//! The load generator: OpenAI chat-completion traffic against a base URL, open loop (a fixed
//! arrival rate, so slow answers cannot hide latency) or closed loop (a fixed number of clients),
//! streaming-aware: time to first token, gaps between tokens, total time, tokens/s, and a stream
//! counts as a success only if it ended with `[DONE]`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;

/// What to send and how.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: SocketAddr,
    pub host: String,
    pub path: String,
    pub model: String,
    pub api_key: Option<String>,
    pub stream: bool,
    /// Open loop at this many requests per second; `None` = closed loop.
    pub rate: Option<f64>,
    /// Closed loop: clients; open loop: the most requests in flight.
    pub concurrency: usize,
    pub duration: Duration,
    /// Requests started within this time of the start are not measured (their failures
    /// still count): the first wave opens every connection at once.
    pub warmup: Duration,
    pub max_requests: Option<u64>,
    /// Prompt sizes (bytes of user content) and max_tokens values, drawn at random per request.
    pub prompt_bytes: Vec<usize>,
    pub max_tokens: Vec<u32>,
    /// HTTP/2 (prior knowledge, h2c) over this many connections, the clients sharing them;
    /// `None`: HTTP/1.1, a connection per client.
    pub http2_connections: Option<usize>,
}

impl Plan {
    /// Streaming chat completions to `target` (over HTTP/1.1, no key, 100-byte prompts): `n`
    /// streams of `tokens` tokens, `concurrency` at a time, within 30 s.
    pub fn streams(
        target: SocketAddr,
        model: &str,
        n: u64,
        concurrency: usize,
        tokens: u32,
    ) -> Self {
        Self {
            target,
            host: target.to_string(),
            path: "/v1/chat/completions".into(),
            model: model.into(),
            api_key: None,
            stream: true,
            rate: None,
            concurrency,
            duration: Duration::from_secs(30),
            warmup: Duration::ZERO,
            max_requests: Some(n),
            prompt_bytes: vec![100],
            max_tokens: vec![tokens],
            http2_connections: None,
        }
    }
}

/// One request's outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub ok: bool,
    pub status: u16,
    /// Seconds since the run started.
    pub at: f64,
    pub total: f64,
    pub ttft: Option<f64>,
    /// The replica's own share of `ttft`, when it stamps its first token (`mock-replica
    /// --stamp-ttft`).
    pub replica_ttft: Option<f64>,
    pub tokens: u32,
    pub max_gap: Option<f64>,
}

impl Sample {
    /// Time to first token less the replica's own: the time outside the replica (the report's
    /// percentiles and `--samples` both take it from here).
    pub fn outside_replica(&self) -> Option<f64> {
        Some(self.ttft? - self.replica_ttft?)
    }
}

#[derive(Default)]
struct Collected {
    samples: Vec<Sample>,
    gaps: Vec<f64>,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(values: &mut [f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| {
            let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            values[i] * 1000.0
        };
        Some(Self {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            max: values[values.len() - 1] * 1000.0,
        })
    }
}

/// The run's summary (also the `--json` output).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub statuses: Vec<(u16, u64)>,
    pub seconds: f64,
    pub throughput_rps: f64,
    pub latency_ms: Option<Percentiles>,
    pub ttft_ms: Option<Percentiles>,
    /// Time to first token less the replica's own (streams whose replica stamps it): the
    /// time spent in the network and the proxy, without the replica's scheduling noise.
    pub ttft_outside_replica_ms: Option<Percentiles>,
    pub inter_token_ms: Option<Percentiles>,
    pub tokens_per_second: f64,
    /// Completions per second of the run, second by second.
    pub per_second: Vec<u64>,
    /// (percentile, latency ms) for the latency chart.
    pub latency_curve: Vec<(f64, f64)>,
    /// Every measured request, in the order they ended (`--samples`; not in `--json`).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

fn body(plan: &Plan) -> Bytes {
    let n = plan.prompt_bytes[fastrand::usize(..plan.prompt_bytes.len())];
    let max = plan.max_tokens[fastrand::usize(..plan.max_tokens.len())];
    let content: String = "lorem ipsum ".chars().cycle().take(n).collect();
    Bytes::from(
        serde_json::json!({"model": plan.model, "stream": plan.stream, "max_tokens": max,
            "messages": [{"role": "user", "content": content}]})
        .to_string(),
    )
}

/// A client's way to send: its own HTTP/1.1 connection, or a share of an HTTP/2 one.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Self::H1(s) => s.ready().await,
            Self::H2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        match self {
            Self::H1(s) => s.send_request(req).await,
            Self::H2(s) => s.send_request(req).await,
        }
    }
}

/// The HTTP/2 connections clients share (empty for HTTP/1.1): client `i` uses `i % len`,
/// opened on first use and again once closed.
type Shared = Arc<[tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>]>;

fn shared(plan: &Plan) -> Shared {
    (0..plan.http2_connections.map_or(0, |n| n.max(1)))
        .map(|_| tokio::sync::Mutex::new(None))
        .collect()
}

async fn connect(target: SocketAddr, shared: &Shared, client: usize) -> Option<Sender> {
    if !shared.is_empty() {
        let mut slot = shared[client % shared.len()].lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Some(Sender::H2(s.clone()));
        }
        let stream = TcpStream::connect(target).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *slot = Some(sender.clone());
        return Some(Sender::H2(sender));
    }
    let stream = TcpStream::connect(target).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(Sender::H1(sender))
}

/// Sends one request on `sender` (reconnecting if needed) and measures it.
async fn one(
    plan: &Plan,
    sender: &mut Option<Sender>,
    (shared, client): (&Shared, usize),
    started: Instant,
) -> (Sample, Vec<f64>) {
    let t0 = Instant::now();
    let mut sample = Sample {
        at: t0.duration_since(started).as_secs_f64(),
        ..Sample::default()
    };
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(plan.target, shared, client).await;
    }
    let Some(s) = sender.as_mut() else {
        sample.total = t0.elapsed().as_secs_f64();
        return (sample, Vec::new());
    };
    if s.ready().await.is_err() {
        *sender = None;
        return (sample, Vec::new());
    }
    // HTTP/2 takes the authority from the target; HTTP/1.1 sends it as `Host`.
    let mut req = match s {
        Sender::H1(_) => http::Request::post(plan.path.as_str()).header("host", plan.host.as_str()),
        Sender::H2(_) => http::Request::post(format!("http://{}{}", plan.host, plan.path)),
    }
    .header("content-type", "application/json");
    if let Some(k) = &plan.api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let Ok(req) = req.body(Full::new(body(plan))) else {
        return (sample, Vec::new());
    };
    let resp = match s.send(req).await {
        Ok(r) => r,
        Err(_) => {
            *sender = None;
            sample.total = t0.elapsed().as_secs_f64();
            return (sample, Vec::new());
        }
    };
    sample.status = resp.status().as_u16();
    let mut incoming = resp.into_body();
    let mut gaps = Vec::new();
    let mut last: Option<Instant> = None;
    let mut pending = Vec::new();
    let mut done = false;
    let mut clean = true;
    while let Some(frame) = incoming.frame().await {
        let Ok(frame) = frame else {
            clean = false;
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !plan.stream {
            continue;
        }
        pending.extend_from_slice(&data);
        // Complete events only; an event may span reads.
        while let Some(end) = find(&pending, b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            if find(&event, b"data: [DONE]").is_some() {
                done = true;
            } else if has_content(&event) {
                let now = Instant::now();
                match last {
                    None => {
                        sample.ttft = Some(now.duration_since(t0).as_secs_f64());
                        sample.replica_ttft = replica_ttft(&event);
                    }
                    Some(prev) => gaps.push(now.duration_since(prev).as_secs_f64()),
                }
                last = Some(now);
                sample.tokens += 1;
            }
        }
    }
    sample.total = t0.elapsed().as_secs_f64();
    sample.max_gap = gaps.iter().copied().reduce(f64::max);
    sample.ok = clean && sample.status == 200 && (!plan.stream || done);
    if !clean {
        *sender = None;
    }
    (sample, gaps)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The replica's own time to first token, from the comment line `: replica-ttft-us=N`.
fn replica_ttft(event: &[u8]) -> Option<f64> {
    const KEY: &[u8] = b": replica-ttft-us=";
    let from = find(event, KEY)? + KEY.len();
    let digits = event[from..].iter().take_while(|b| b.is_ascii_digit());
    let us = std::str::from_utf8(&event[from..from + digits.count()]).ok()?;
    Some(us.parse::<u64>().ok()? as f64 / 1e6)
}

fn has_content(event: &[u8]) -> bool {
    for key in [&b"\"content\":\""[..], b"\"text\":\""] {
        let mut from = 0;
        while let Some(i) = find(&event[from..], key) {
            let after = from + i + key.len();
            if event.get(after).is_some_and(|b| *b != b'"') {
                return true;
            }
            from = after;
        }
    }
    false
}

/// Runs the plan; `progress` is called about ten times a second with (done, ok).
pub async fn run(plan: Plan, progress: impl Fn(u64, u64) + Send + Sync + 'static) -> Report {
    let plan = Arc::new(plan);
    let collected = Arc::new(Mutex::new(Collected::default()));
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + plan.duration;
    let limit = plan.max_requests.unwrap_or(u64::MAX);
    let ticker = {
        let (done, ok) = (done.clone(), ok.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                progress(done.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
            }
        })
    };
    let warmup = plan.warmup.as_secs_f64();
    let record = {
        let (collected, done, ok) = (collected.clone(), done.clone(), ok.clone());
        move |mut s: Sample, gaps: Vec<f64>| {
            done.fetch_add(1, Ordering::Relaxed);
            if s.ok {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            if s.at < warmup && s.ok {
                return;
            }
            s.at = (s.at - warmup).max(0.0);
            if let Ok(mut c) = collected.lock() {
                c.samples.push(s);
                c.gaps.extend(gaps);
            }
        }
    };
    let mut tasks = Vec::new();
    let h2 = shared(&plan);
    match plan.rate {
        None => {
            for client in 0..plan.concurrency {
                let (plan, issued, record) = (plan.clone(), issued.clone(), record.clone());
                let h2 = h2.clone();
                tasks.push(tokio::spawn(async move {
                    let mut sender = None;
                    while Instant::now() < deadline
                        && issued.fetch_add(1, Ordering::Relaxed) < limit
                    {
                        let (s, g) = one(&plan, &mut sender, (&h2, client), started).await;
                        record(s, g);
                    }
                }));
            }
        }
        Some(rate) => {
            // Open loop: requests leave on schedule whatever happened to the earlier ones; a
            // pool of idle connections is shared, and more are opened as needed.
            let pool: Arc<Mutex<Vec<Sender>>> = Arc::default();
            let gate = Arc::new(tokio::sync::Semaphore::new(plan.concurrency.max(1)));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < limit {
                tick.tick().await;
                let Ok(permit) = gate.clone().acquire_owned().await else {
                    break;
                };
                let (plan, pool, record) = (plan.clone(), pool.clone(), record.clone());
                let (h2, client) = (h2.clone(), tasks.len());
                tasks.push(tokio::spawn(async move {
                    let mut sender = pool.lock().ok().and_then(|mut p| p.pop());
                    let (s, g) = one(&plan, &mut sender, (&h2, client), started).await;
                    if let (Some(c), Ok(mut p)) = (sender, pool.lock()) {
                        p.push(c);
                    }
                    record(s, g);
                    drop(permit);
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    ticker.abort();
    let seconds = (started.elapsed().as_secs_f64() - warmup).max(1e-3);
    let c = std::mem::take(&mut *collected.lock().unwrap_or_else(|p| p.into_inner()));
    summarize(c, seconds)
}

fn summarize(mut c: Collected, seconds: f64) -> Report {
    let requests = c.samples.len() as u64;
    let ok: Vec<&Sample> = c.samples.iter().filter(|s| s.ok).collect();
    let mut statuses = std::collections::BTreeMap::new();
    for s in &c.samples {
        *statuses.entry(s.status).or_insert(0u64) += 1;
    }
    let mut lat: Vec<f64> = ok.iter().map(|s| s.total).collect();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|s| s.ttft).collect();
    let mut outside: Vec<f64> = ok.iter().filter_map(|s| s.outside_replica()).collect();
    let tokens: u64 = ok.iter().map(|s| u64::from(s.tokens)).sum();
    let secs = seconds.ceil().max(1.0) as usize;
    let mut per_second = vec![0u64; secs];
    for s in &ok {
        let i = ((s.at + s.total) as usize).min(secs - 1);
        per_second[i] += 1;
    }
    let latency_ms = Percentiles::of(&mut lat);
    let latency_curve = if lat.is_empty() {
        Vec::new()
    } else {
        [1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0]
            .iter()
            .map(|p| {
                let i = ((p / 100.0 * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
                (*p, lat[i] * 1000.0)
            })
            .collect()
    };
    Report {
        requests,
        ok: ok.len() as u64,
        failed: requests - ok.len() as u64,
        statuses: statuses.into_iter().collect(),
        seconds,
        throughput_rps: ok.len() as f64 / seconds.max(1e-9),
        latency_ms,
        ttft_ms: Percentiles::of(&mut ttft),
        ttft_outside_replica_ms: Percentiles::of(&mut outside),
        inter_token_ms: Percentiles::of(&mut c.gaps),
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        per_second,
        latency_curve,
        samples: c.samples,
    }
}

/// The measured requests as CSV, a line each: when it started (seconds after the warm-up), how
/// it ended, and its times in milliseconds (empty where not measured: no first token, or a
/// replica that does not stamp its own).
pub fn samples_csv(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::from("at_s,ok,status,total_ms,ttft_ms,outside_replica_ms,tokens\n");
    for s in &r.samples {
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            "{:.6},{},{},{:.3},",
            s.at,
            u8::from(s.ok),
            s.status,
            s.total * 1e3
        );
        for v in [s.ttft, s.outside_replica()] {
            if let Some(v) = v {
                let _ = write!(out, "{:.3}", v * 1e3);
            }
            out.push(',');
        }
        let _ = writeln!(out, "{}", s.tokens);
    }
    out
}

/// The summary as a text table.
pub fn table(r: &Report) -> String {
    let row = |name: &str, p: &Option<Percentiles>| match p {
        Some(p) => format!(
            "{name:<18} {:>10.2} {:>10.2} {:>10.2} {:>10.2}\n",
            p.p50, p.p90, p.p99, p.max
        ),
        None => format!(
            "{name:<18} {:>10} {:>10} {:>10} {:>10}\n",
            "-", "-", "-", "-"
        ),
    };
    let mut out = format!(
        "requests {}  ok {}  failed {}  in {:.1} s  ->  {:.1} req/s, {:.1} tokens/s\nstatuses {:?}\n\n",
        r.requests, r.ok, r.failed, r.seconds, r.throughput_rps, r.tokens_per_second, r.statuses
    );
    out.push_str(&format!(
        "{:<18} {:>10} {:>10} {:>10} {:>10}\n",
        "(ms)", "p50", "p90", "p99", "max"
    ));
    out.push_str(&row("latency", &r.latency_ms));
    out.push_str(&row("time to 1st token", &r.ttft_ms));
    if r.ttft_outside_replica_ms.is_some() {
        out.push_str(&row(" outside replica", &r.ttft_outside_replica_ms));
    }
    out.push_str(&row("inter-token", &r.inter_token_ms));
    out
}

/// A self-contained HTML page with the latency-percentile and throughput-over-time charts, as
/// inline SVG (no scripts, no downloads).
pub fn html(r: &Report, title: &str) -> String {
    fn chart(points: &[(f64, f64)], x_label: &str, y_label: &str, log_x: bool) -> String {
        let (w, h, pad) = (640.0, 280.0, 48.0);
        if points.is_empty() {
            return "<p>no data</p>".into();
        }
        let xs: Vec<f64> = points
            .iter()
            .map(|(x, _)| {
                if log_x {
                    -(100.0 - x.min(99.99)).log10()
                } else {
                    *x
                }
            })
            .collect();
        let (x0, x1) = (
            xs.iter().copied().fold(f64::MAX, f64::min),
            xs.iter().copied().fold(f64::MIN, f64::max),
        );
        let y1 = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
        let sx = |x: f64| pad + (x - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * pad);
        let sy = |y: f64| h - pad - y / y1 * (h - 2.0 * pad);
        let poly: Vec<String> = xs
            .iter()
            .zip(points)
            .map(|(x, (_, y))| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let labels: String = xs
            .iter()
            .zip(points)
            .map(|(x, (px, py))| {
                format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{px}</text>\
                     <circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"><title>{px}: {py:.2}</title></circle>",
                    sx(*x),
                    h - pad + 14.0,
                    sx(*x),
                    sy(*py)
                )
            })
            .collect();
        format!(
            "<svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">\
             <line x1=\"{pad}\" y1=\"{by}\" x2=\"{rx}\" y2=\"{by}\" stroke=\"#999\"/>\
             <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{by}\" stroke=\"#999\"/>\
             <text x=\"{pad}\" y=\"{ty}\" font-size=\"11\">{y_label} (max {y1:.2})</text>\
             <text x=\"{rx}\" y=\"{lx}\" font-size=\"11\" text-anchor=\"end\">{x_label}</text>\
             <polyline fill=\"none\" stroke=\"#0b5fff\" stroke-width=\"2\" points=\"{}\"/>{labels}</svg>",
            poly.join(" "),
            by = h - pad,
            rx = w - pad,
            ty = pad - 10.0,
            lx = h - 8.0,
        )
    }
    let curve = chart(&r.latency_curve, "percentile", "latency ms", true);
    let tp: Vec<(f64, f64)> = r
        .per_second
        .iter()
        .enumerate()
        .map(|(i, n)| (i as f64, *n as f64))
        .collect();
    let throughput = chart(&tp, "second", "completed requests/s", false);
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2rem;max-width:760px}}pre{{background:#f6f8fa;padding:1rem}}</style>\
         </head><body><h1>{t}</h1><pre>{table}</pre><h2>Latency by percentile</h2>{curve}\
         <h2>Throughput over time</h2>{throughput}</body></html>",
        t = esc(title),
        table = esc(&table(r)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_content_detection() {
        let mut v: Vec<f64> = (1..=100).map(|i| i as f64 / 1000.0).collect();
        let p = Percentiles::of(&mut v).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        assert!(has_content(
            br#"data: {"choices":[{"delta":{"content":"hi"}}]}"#
        ));
        assert!(!has_content(
            br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(has_content(br#"data: {"choices":[{"text":"x"}]}"#));
        let stamped = b": replica-ttft-us=50123\ndata: {\"choices\":[]}\n\n";
        assert_eq!(replica_ttft(stamped), Some(0.050123));
        assert_eq!(replica_ttft(b": replica-ttft-us=\ndata: x\n\n"), None);
        assert_eq!(replica_ttft(b"data: x\n\n"), None);
    }

    #[tokio::test]
    async fn a_stamping_replica_splits_time_to_first_token() {
        let m = crate::MockReplica::start(
            "127.0.0.1:0".parse().unwrap(),
            crate::MockConfig {
                ttft: Duration::from_millis(40),
                inter_token: Duration::from_millis(1),
                tokens: 3,
                stamp_ttft: true,
                ..crate::MockConfig::default()
            },
        )
        .await
        .unwrap();
        let plan = Plan::streams(m.addr, "mock-model", 6, 2, 3);
        let r = run(plan.clone(), |_, _| {}).await;
        assert_eq!((r.requests, r.ok), (6, 6));
        let (ttft, outside) = (r.ttft_ms.unwrap(), r.ttft_outside_replica_ms.unwrap());
        // Each stream's own 40 ms or more (the mock's wait) are taken out of its time; what
        // is left is loopback and scheduling.
        assert!(ttft.p50 >= 40.0, "{ttft:?}");
        assert!(
            outside.p50 >= 0.0 && outside.max <= ttft.max - 39.999,
            "{outside:?} {ttft:?}"
        );
        assert!(table(&r).contains("outside replica"));
        // `--samples`: a line per request, its split in the last columns but one.
        let csv = samples_csv(&r);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 7, "{csv}");
        assert_eq!(
            lines[0],
            "at_s,ok,status,total_ms,ttft_ms,outside_replica_ms,tokens"
        );
        for line in &lines[1..] {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!((f[1], f[2], f[6]), ("1", "200", "3"), "{line}");
            let (ttft, outside): (f64, f64) = (f[4].parse().unwrap(), f[5].parse().unwrap());
            assert!(ttft >= 40.0 && outside <= ttft - 39.999, "{line}");
        }
        // A replica that does not stamp gives no split.
        m.set_config(|c| c.stamp_ttft = false);
        let r = run(plan, |_, _| {}).await;
        assert!(r.ttft_ms.is_some() && r.ttft_outside_replica_ms.is_none());
        let csv = samples_csv(&r);
        assert!(csv.lines().skip(1).all(|l| l.ends_with(",,3")), "{csv}");
    }

    #[tokio::test]
    async fn runs_against_the_mock_and_counts_only_finished_streams() {
        let m = crate::MockReplica::start(
            "127.0.0.1:0".parse().unwrap(),
            crate::MockConfig {
                ttft: Duration::from_millis(5),
                inter_token: Duration::from_millis(2),
                tokens: 8,
                ..crate::MockConfig::default()
            },
        )
        .await
        .unwrap();
        let plan = Plan {
            duration: Duration::from_secs(10),
            ..Plan::streams(m.addr, "mock-model", 40, 4, 8)
        };
        let r = run(plan.clone(), |_, _| {}).await;
        assert_eq!((r.requests, r.ok), (40, 40));
        assert!(r.ttft_ms.unwrap().p50 >= 5.0);
        assert!((r.tokens_per_second * r.seconds - 320.0).abs() < 1.0);
        assert!(html(&r, "t").contains("<svg"));
        // Streams cut short are failures.
        m.set_config(|c| c.reset_after = Some(3));
        let r = run(
            Plan {
                max_requests: Some(5),
                ..plan.clone()
            },
            |_, _| {},
        )
        .await;
        assert_eq!((r.requests, r.ok, r.failed), (5, 0, 5));
        // Failures during the warm-up still count; successes then are not measured.
        let r = run(
            Plan {
                max_requests: Some(5),
                warmup: Duration::from_secs(5),
                ..plan.clone()
            },
            |_, _| {},
        )
        .await;
        assert_eq!((r.requests, r.ok, r.failed), (5, 0, 5));
        m.set_config(|c| c.reset_after = None);
        let r = run(
            Plan {
                max_requests: None,
                duration: Duration::from_millis(600),
                warmup: Duration::from_millis(300),
                ..plan
            },
            |_, _| {},
        )
        .await;
        assert!(r.ok > 0 && r.failed == 0);
        assert!(
            r.seconds < 0.45,
            "measured time excludes the warm-up: {}",
            r.seconds
        );
    }
}
