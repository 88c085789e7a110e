//! The happy path: streaming and non-streaming pass-through, byte identity, headers, HTTP/2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use loadtest::MockConfig;

#[tokio::test]
async fn streaming_chat_is_byte_identical_to_the_replicas_stream() {
    let m = mock(MockConfig {
        tokens: 12,
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let resp = send(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        chat(true).to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(resp.headers()["x-gateway-model-version"], "1.0.0");
    assert_eq!(
        resp.headers()["x-gateway-replica"],
        m.addr.to_string().as_str()
    );
    let (got, clean) = read_all(resp.into_body()).await;
    assert!(clean);
    let text = String::from_utf8(got.clone()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("data: ").count(), 12 + 3);
    // The replica records the stream once it is dropped; give it a moment.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = m.stats.streams();
    assert_eq!(sent.last().unwrap().as_ref(), got.as_slice());
}

#[tokio::test]
async fn a_200_kib_body_reaches_the_replica_byte_identical() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let filler = "x".repeat(200 * 1024);
    // Unusual spacing and key order must survive: the gateway never re-serialises.
    let body = format!(
        "{{ \"messages\" : [{{\"role\":\"user\",\"content\":\"{filler}\"}}],\n  \"model\":\"{MODEL}\" , \"max_tokens\": 3 }}"
    );
    assert!(body.len() > 200 * 1024);
    let r = post_chat(
        gw.addr,
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(m.stats.bodies().last().unwrap(), &Bytes::from(body));
}

#[tokio::test]
async fn non_streaming_completions_and_embeddings_pass_through() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 5);

    let r = post_json(
        gw.addr,
        "/v1/completions",
        serde_json::json!({"model": "alias", "prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["choices"][0]["text"], "tok0 tok1 ");

    let r = post_json(
        gw.addr,
        "/v1/embeddings",
        serde_json::json!({"model": MODEL, "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn models_are_listed_from_config() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let r = request(gw.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![MODEL.to_owned(), "alias".to_owned()]);
    let r = request(gw.addr, "GET", "/v1/models/alias", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "alias");
    let r = request(gw.addr, "GET", "/v1/models/nope", &[], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "model_not_found");
    // The replica was never asked.
    assert_eq!(
        m.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn request_id_is_propagated_or_generated_and_hop_by_hop_headers_dropped() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let r = post_chat(
        gw.addr,
        &[
            ("x-request-id", "client-id-42"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("x-custom", "kept"),
            ("accept-encoding", "gzip"),
        ],
        chat(false).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-request-id"], "client-id-42");
    let seen = m.stats.last_headers().unwrap();
    assert_eq!(seen["x-request-id"], "client-id-42");
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["host"], m.addr.to_string().as_str());
    assert!(seen.get("x-private").is_none());
    assert!(seen.get("accept-encoding").is_none());

    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(m.stats.last_headers().unwrap()["x-request-id"], id.as_str());
    // Gateway-made answers carry the id too.
    let r = request(gw.addr, "GET", "/nope", &[], "").await;
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn round_robin_spreads_requests_over_replicas() {
    let a = mock(fast()).await;
    let b = mock(fast()).await;
    let gw = TestGateway::start(&config_model(
        &[a.url(), b.url()],
        "",
        "balancer = \"round_robin\"",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(
            post_json(gw.addr, "/v1/chat/completions", chat(false))
                .await
                .status,
            200
        );
    }
    let load =
        |m: &loadtest::MockReplica| m.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((load(&a), load(&b)), (5, 5));
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], NO_PROBES)).await;
    for _ in 0..20 {
        assert_eq!(
            post_json(gw.addr, "/v1/chat/completions", chat(false))
                .await
                .status,
            200
        );
        let resp = open_stream(gw.addr).await;
        assert!(read_all(resp.into_body()).await.1);
    }
    let conns = m
        .stats
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        conns <= 2,
        "40 sequential requests opened {conns} upstream connections"
    );
}

#[tokio::test]
async fn idle_upstream_connections_are_not_reused_past_pool_idle_timeout() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(
        &[m.url()],
        &format!("{NO_PROBES}[upstream]\npool_idle_timeout = \"100ms\"\n"),
    ))
    .await;
    assert_eq!(
        post_json(gw.addr, "/v1/chat/completions", chat(false))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        post_json(gw.addr, "/v1/chat/completions", chat(false))
            .await
            .status,
        200
    );
    assert_eq!(
        m.stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

/// A chat completion request for an HTTP/2 client connection to the gateway.
fn h2_chat(gw: std::net::SocketAddr, body: serde_json::Value) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{gw}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn http2_prior_knowledge_on_the_same_port() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let (mut sender, _conn) = h2c(gw.addr).await;
    for stream in [false, true] {
        let resp = sender
            .send_request(h2_chat(gw.addr, chat(stream)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        // The replica's fields and the gateway's own reach h2 clients as they reach HTTP/1.1
        // ones.
        let content_type = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let got = resp.headers()["content-type"].to_str().unwrap();
        assert!(got.starts_with(content_type), "{got}");
        assert_eq!(resp.headers()["x-request-id"].len(), 36);
        assert_eq!(
            resp.headers()["x-gateway-replica"],
            m.addr.to_string().as_str()
        );
        assert!(resp.headers().contains_key("x-gateway-model-version"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if stream {
            assert!(body.ends_with(b"data: [DONE]\n\n"));
        } else {
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&body).unwrap()["object"],
                "chat.completion"
            );
        }
    }
}

/// `server.send_timeout` holds for HTTP/2 streams too: a stream whose client stops taking it
/// (grants it no more window) is reset after the timeout and its replica released, while the
/// connection goes on serving other streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_client_stops_reading_is_reset_after_the_send_timeout() {
    let (m, gw) = huge_answer_with_a_short_send_timeout().await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // A 16 KiB window per stream, never given back for a body left unread.
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let stalled = sender
        .send_request(h2_chat(gw.addr, chat(true)))
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    // Nothing read: the gateway gives up on the stream, the replica's connection is dropped,
    // its slot freed, and the request counted as the client's doing.
    let ep = endpoint(&gw, &m.url());
    assert!(
        eventually(Duration::from_secs(10), || ep.inflight() == 0).await,
        "still in flight"
    );
    assert_one_client_closed(&gw).await;
    // The stream was reset: what it was sent before the window closed, then the reset.
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.into_body().collect())
        .await
        .expect("the stream ends");
    assert!(read.is_err(), "a complete 20 MB answer?");
    // The connection itself lives on: another stream on it is served whole.
    let mut short = chat(true);
    short["max_tokens"] = 3.into();
    let resp = sender.send_request(h2_chat(gw.addr, short)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
}

/// A replica silent for longer than `send_timeout` between tokens is not a stalled client, and
/// a connection with a stream open is not idle: the HTTP/2 stream is served whole. Once nothing
/// is open for `header_read_timeout`, the connection is closed, as an idle HTTP/1.1 one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_with_pauses_is_served_whole_and_the_idle_connection_then_closed() {
    let m = mock(MockConfig {
        tokens: 3,
        inter_token: Duration::from_millis(700),
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(
        &[m.url()],
        "[server]\nsend_timeout = \"300ms\"\nheader_read_timeout = \"300ms\"\n",
    ))
    .await;
    let (mut sender, conn) = h2c(gw.addr).await;
    let resp = sender
        .send_request(h2_chat(gw.addr, chat(true)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("tok").count(), 3, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    // Then idle: the gateway closes the connection (a GOAWAY, then the end).
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle connection is still open");
    assert!(sender
        .send_request(http::Request::new(Full::new(Bytes::new())))
        .await
        .is_err());
}

/// The load tool's HTTP/2 mode, end to end: many streams at once over two shared connections,
/// each stream its own replica connection behind the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_multiplexes_streams_over_http2_connections() {
    let m = mock(MockConfig {
        tokens: 8,
        inter_token: Duration::from_millis(25),
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let plan = loadtest::loadgen::Plan {
        http2_connections: Some(2),
        ..loadtest::loadgen::Plan::streams(gw.addr, MODEL, 80, 40, 8)
    };
    let watch = {
        let state = gw.state.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..200 {
                most = most.max(state.descriptors.clients());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    let r = loadtest::loadgen::run(plan, |_, _| {}).await;
    assert_eq!((r.requests, r.ok, r.failed), (80, 80, 0));
    assert!((r.tokens_per_second * r.seconds - 640.0).abs() < 1.0);
    // 40 streams at once, on two client connections.
    assert_eq!(watch.await.unwrap(), 2);
}

/// A replica's SSE comment line (the mock's `: replica-ttft-us=N` stamp, which the comparison
/// script uses to split time to first token) passes through untouched, and the event it sits
/// in still counts as the first token.
#[tokio::test]
async fn a_comment_line_in_the_first_token_event_passes_through() {
    let m = mock(MockConfig {
        tokens: 4,
        ttft: Duration::from_millis(30),
        stamp_ttft: true,
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let (got, clean) = read_all(open_stream(gw.addr).await.into_body()).await;
    assert!(clean);
    let text = String::from_utf8(got.clone()).unwrap();
    assert_eq!(text.matches(": replica-ttft-us=").count(), 1, "{text}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(m.stats.streams().last().unwrap().as_ref(), got.as_slice());
    // Through the gateway, the load tool splits each first token's time.
    let plan = loadtest::loadgen::Plan::streams(gw.addr, MODEL, 8, 4, 4);
    let r = loadtest::loadgen::run(plan, |_, _| {}).await;
    assert_eq!((r.requests, r.ok), (8, 8));
    let (ttft, outside) = (r.ttft_ms.unwrap(), r.ttft_outside_replica_ms.unwrap());
    // Each stream's own 30 ms or more (the mock's wait) are taken out of its time.
    assert!(
        ttft.p50 >= 30.0 && outside.p50 >= 0.0 && outside.max <= ttft.max - 29.999,
        "{ttft:?} {outside:?}"
    );
    // The gateway saw the stamped event as the first token: one time-to-first-token sample
    // per stream in its own histogram.
    let metrics = request(gw.admin, "GET", "/metrics", &[], "").await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let count = metrics
        .lines()
        .find(|l| l.starts_with("ai_time_to_first_token_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("0");
    assert_eq!(count, "9", "{metrics}");
}

#[tokio::test]
async fn replica_errors_keep_their_status_and_get_the_openai_shape() {
    let m = mock(MockConfig {
        error_rate: 1.0,
        error_status: 400,
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    // vLLM's own error shape is rewrapped, message kept.
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "upstream_error");
    assert_eq!(r.json()["error"]["message"], "injected fault");
    // A plain-text 500 becomes JSON.
    m.set_config(|c| {
        c.error_status = 500;
        c.error_body = loadtest::ErrorBody::Text;
    });
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json()["error"]["message"], "Internal Server Error");
    assert_eq!(r.json()["error"]["type"], "api_error");
    // 4xx is never retried.
    assert_eq!(
        m.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn admin_listener_serves_health_and_readiness_only() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let r = request(gw.admin, "GET", "/healthz", &[], "").await;
    assert_eq!(r.status, 200);
    let r = request(gw.admin, "GET", "/readyz", &[], "").await;
    assert_eq!(r.status, 200);
    let r = post_chat(gw.admin, &[], chat(false).to_string()).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "unknown_url");
}
