//! Micro-benchmarks of the per-request work, each next to a baseline measured in the same run
//! (this machine is shared and noisy: compare ratios, not absolute times).
//!
//! Run: `cargo bench -p gateway --bench hot_path`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

use gateway::balance::{EndpointRegistry, Pool};
use gateway::config::{BalancerKind, QueueConfig, ReplicaConfig, VersionConfig};
use gateway::proxy::read::peek;

fn chat_body(size: usize) -> Vec<u8> {
    let filler = "lorem ipsum ".repeat(size / 12 + 1);
    let body = format!(
        r#"{{"messages":[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"{}"}}],"model":"llama-3-70b","stream":true,"max_tokens":256}}"#,
        &filler[..size.saturating_sub(150)]
    );
    body.into_bytes()
}

/// The HTTP/1.1 server's head parse (httparse, then the request's method, URI, header map and
/// framing, sharing the buffer) against httparse alone on the same bytes: the price of turning
/// a parse into a request.
fn request_head(c: &mut Criterion) {
    let body = chat_body(1024);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway.internal:8080\r\nAccept-Encoding: gzip, deflate\r\n\
         Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n\
         User-Agent: OpenAI/Python 1.54.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Retry-Count: 0\r\n\
         Authorization: Bearer sk-0123456789abcdef0123456789abcdef\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    let mut g = c.benchmark_group("request_head");
    g.bench_function("h1_parse_head_11_headers_1k_body", |b| {
        b.iter(|| assert!(gateway::h1::parse_for_bench(black_box(&request))))
    });
    g.bench_function("baseline_httparse_alone", |b| {
        b.iter(|| {
            let buf = bytes::BytesMut::from(black_box(&request[..]));
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            assert!(matches!(req.parse(&buf), Ok(s) if s.is_complete()));
            black_box(req.headers.len())
        })
    });
    g.finish();
}

/// Peek of `model`/`stream` against a full parse into `serde_json::Value` (what a naive proxy
/// does) and a plain UTF-8 validation pass (the floor: every byte must be looked at once).
fn body_peek(c: &mut Criterion) {
    let mut g = c.benchmark_group("body_peek");
    for size in [1024usize, 200 * 1024] {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        let label = format!("{}KiB", size / 1024);
        g.bench_with_input(BenchmarkId::new("peek", &label), &body, |b, body| {
            b.iter(|| peek(black_box(body)).map(|p| p.stream))
        });
        g.bench_with_input(
            BenchmarkId::new("baseline_full_parse", &label),
            &body,
            |b, body| {
                b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).is_ok())
            },
        );
        g.bench_with_input(
            BenchmarkId::new("baseline_utf8_check", &label),
            &body,
            |b, body| b.iter(|| std::str::from_utf8(black_box(body)).is_ok()),
        );
    }
    g.finish();
}

fn pool(kind: BalancerKind, n: usize) -> Pool {
    let registry = EndpointRegistry::default();
    let replicas = (0..n)
        .map(|i| {
            let authority: http::uri::Authority = format!("10.0.{}.{}:8000", i / 250, i % 250)
                .parse()
                .unwrap_or_else(|_| http::uri::Authority::from_static("127.0.0.1:1"));
            ReplicaConfig {
                key: format!("http://{authority}"),
                authority,
                weight: 1 + (i % 3) as u32,
                max_inflight: 0,
            }
        })
        .collect();
    let v = VersionConfig {
        name: "v".into(),
        replicas,
    };
    let queue = QueueConfig {
        max_size: 0,
        timeout: Duration::from_secs(1),
    };
    let p = Pool::new(
        &v,
        kind,
        queue,
        Duration::from_secs(10),
        &registry,
        Arc::default(),
        Arc::default(),
    );
    // Realistic state: some load and some latency history on every replica.
    for (i, ep) in p.endpoints.iter().enumerate() {
        ep.observe_latency(
            Duration::from_millis(20 + (i % 7) as u64),
            Duration::from_secs(10),
        );
        for _ in 0..(i % 4) {
            std::mem::forget(ep.try_acquire());
        }
    }
    p
}

/// One pick per request, through the whole eligibility check (drained, health, ejection,
/// capacity) and the in-flight slot, against an atomic increment (the least a shared rotation
/// can cost).
fn balancer_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer_pick");
    for n in [8usize, 64] {
        for kind in BalancerKind::ALL {
            let p = pool(kind, n);
            g.bench_function(BenchmarkId::new(kind.as_str(), n), |b| {
                b.iter(|| p.try_acquire(black_box(&[])).map(|(i, _guard)| i).ok())
            });
        }
        let counter = std::sync::atomic::AtomicUsize::new(0);
        g.bench_function(BenchmarkId::new("baseline_atomic_increment", n), |b| {
            b.iter(|| counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % black_box(n))
        });
    }
    g.finish();
}

/// Loading the config snapshot (once per request) against cloning an `Arc`.
fn snapshot_load(c: &mut Criterion) {
    let cfg = gateway::config::parse(
        r#"
        [auth]
        enabled = false
        [[models]]
        name = "m"
        [[models.versions]]
        name = "v"
        replicas = [{ url = "http://127.0.0.1:1" }]
        "#,
    );
    let Ok(cfg) = cfg else { return };
    let state = gateway::state::AppState::new(cfg);
    let mut g = c.benchmark_group("snapshot_load");
    g.bench_function("arc_swap_load", |b| b.iter(|| black_box(state.snapshot())));
    let arc = state.snapshot();
    g.bench_function("baseline_arc_clone", |b| b.iter(|| black_box(arc.clone())));
    g.finish();
}

/// Auth (hash the presented key, look it up, compare) plus the key's request-limit check, as
/// done once per request, against hashing the key alone (the floor of any hashed-key scheme).
fn auth_and_limit(c: &mut Criterion) {
    use gateway::auth::{KeyEntry, KeyTable};
    use gateway::config::Rate;
    use gateway::limits::RequestLimiter;
    use sha2::Digest;
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("sk-bench-{i:08}-xxxxxxxxxxxxxxxx"))
        .collect();
    let rate = Rate {
        per_second: 1e9,
        burst: 1_000_000,
    };
    let table = KeyTable::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                KeyEntry::new(
                    format!("key-{i}"),
                    sha2::Sha256::digest(k.as_bytes()).into(),
                    None,
                    Some(Arc::new(RequestLimiter::new(rate, format!("k{i}"), 1))),
                    None,
                )
            })
            .collect(),
    );
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {}", keys[500])) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    let headers = gateway::fields::Fields::from(headers);
    let mut g = c.benchmark_group("auth_and_limit");
    g.bench_function("authenticate_plus_key_limit_1000_keys", |b| {
        b.iter(|| {
            let key = table.authenticate(black_box(&headers)).ok()?;
            key.requests.as_ref().map(|l| l.check_local())
        })
    });
    // The same, for a key the connection presented before (a kept-alive client's next
    // request): `authenticate_on` recalls it instead of hashing it.
    let memo = gateway::auth::KeyMemo::default();
    g.bench_function("remembered_key_plus_key_limit_1000_keys", |b| {
        b.iter(|| {
            let key = table.authenticate_on(black_box(&headers), &memo).ok()?;
            key.requests.as_ref().map(|l| l.check_local())
        })
    });
    g.bench_function("baseline_sha256_of_the_key", |b| {
        b.iter(|| sha2::Sha256::digest(black_box(keys[500].as_bytes())))
    });
    g.finish();
}

/// Metering a stream as it passes: the work done per forwarded chunk (one token event), against
/// copying the chunk once (the least any inspecting proxy does).
fn sse_metering(c: &mut Criterion) {
    use bytes::Bytes;
    use gateway::sse::SseMeter;
    let event = Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama-3-70b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    );
    let mut g = c.benchmark_group("sse_metering");
    g.throughput(Throughput::Bytes(event.len() as u64));
    g.bench_function("meter_one_token_event", |b| {
        let mut m = SseMeter::new(false);
        b.iter(|| m.feed(black_box(event.clone())))
    });
    g.bench_function("baseline_copy_the_event", |b| {
        b.iter(|| Bytes::copy_from_slice(black_box(&event)))
    });
    g.finish();
}

/// Reading `usage` from a whole JSON answer (every non-streaming request), against serde's typed
/// read of the same document.
fn json_usage(c: &mut Criterion) {
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Counts>,
    }
    #[derive(serde::Deserialize)]
    struct Counts {
        prompt_tokens: u64,
        completion_tokens: u64,
    }
    let answer: &[u8] = br#"{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15 ","role":"assistant","tool_calls":[]},"stop_reason":null}],"created":1796023740,"id":"chatcmpl-0","model":"bench-model","object":"chat.completion","usage":{"completion_tokens":16,"prompt_tokens":20,"total_tokens":36}}"#;
    let mut g = c.benchmark_group("json_usage");
    g.throughput(Throughput::Bytes(answer.len() as u64));
    g.bench_function("usage_of_a_387_byte_answer", |b| {
        b.iter(|| gateway::sse::json_usage(black_box(answer)))
    });
    g.bench_function("baseline_serde_typed_read", |b| {
        b.iter(|| {
            serde_json::from_slice::<Answer>(black_box(answer))
                .ok()
                .and_then(|a| a.usage)
                .map(|u| u.prompt_tokens + u.completion_tokens)
        })
    });
    g.finish();
}

/// The canary split of one request: the sticky hash of a key name into 10,000 buckets and the
/// weight test, against drawing a random bucket (the non-sticky split).
fn canary_split(c: &mut Criterion) {
    use gateway::canary::split::{bucket, on_canary, random_bucket};
    let mut g = c.benchmark_group("canary_split");
    g.bench_function("sticky_by_key_name", |b| {
        b.iter(|| on_canary(black_box(5.0), bucket(black_box(b"team-analytics-prod"))))
    });
    g.bench_function("baseline_random_bucket", |b| {
        b.iter(|| on_canary(black_box(5.0), random_bucket()))
    });
    g.finish();
}

criterion_group!(
    benches,
    request_head,
    body_peek,
    balancer_pick,
    snapshot_load,
    auth_and_limit,
    sse_metering,
    json_usage,
    canary_split
);
criterion_main!(benches);
