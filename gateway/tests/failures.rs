//! Replicas that refuse, fail, hang, go silent or break mid-stream; clients that leave.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use loadtest::{MockConfig, MockReplica};

fn load(m: &MockReplica) -> usize {
    m.stats.requests.load(Ordering::Relaxed)
}

#[tokio::test]
async fn one_refusing_replica_of_three_costs_no_request() {
    let a = mock(fast()).await;
    let b = mock(fast()).await;
    let gw = TestGateway::start(&config(&[a.url(), refused_url(), b.url()], "")).await;
    for i in 0..300 {
        let stream = i % 3 == 0;
        let resp = send(
            gw.addr,
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            chat(stream).to_string(),
        )
        .await;
        assert_eq!(resp.status(), 200, "request {i}");
        let (_, clean) = read_all(resp.into_body()).await;
        assert!(clean, "request {i}");
    }
    // Every request was answered exactly once: nothing was sent twice to a replica that answered.
    assert_eq!(load(&a) + load(&b), 300);
}

#[tokio::test]
async fn a_stream_reset_after_five_tokens_reaches_the_client_cut_and_is_not_retried() {
    let cfg = MockConfig {
        tokens: 20,
        reset_after: Some(5),
        ..fast()
    };
    let a = mock(cfg.clone()).await;
    let b = mock(cfg).await;
    let gw = TestGateway::start(&config(&[a.url(), b.url()], "")).await;
    let resp = open_stream(gw.addr).await;
    assert_eq!(resp.status(), 200);
    let (got, clean) = read_all(resp.into_body()).await;
    assert!(!clean, "a cut stream must end in an error, not a clean end");
    let text = String::from_utf8(got).unwrap();
    let tokens = (0..20)
        .filter(|i| text.contains(&format!("\"tok{i} \"")))
        .count();
    assert_eq!(tokens, 5, "{text}");
    assert!(
        !text.contains("[DONE]"),
        "the gateway must not invent [DONE]"
    );
    assert!(!text.contains("finish_reason\":\"stop") && !text.contains("finish_reason\":\"length"));
    assert_eq!(load(&a) + load(&b), 1, "no retry after the first byte");
}

#[tokio::test]
async fn a_503_before_the_head_is_retried_elsewhere_and_a_400_is_not() {
    let sick = mock(MockConfig {
        error_rate: 1.0,
        error_status: 503,
        ..fast()
    })
    .await;
    let good = mock(fast()).await;
    let gw = TestGateway::start(&config(&[sick.url(), good.url()], "")).await;
    for _ in 0..6 {
        let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(load(&good), 6);
    assert!((1..=6).contains(&load(&sick)));
    // A 503 on the last allowed attempt is passed on in the OpenAI shape.
    good.set_config(|c| {
        c.error_rate = 1.0;
        c.error_status = 503;
    });
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 503);
    r.error_code();
}

#[tokio::test]
async fn every_replica_down_is_a_502_naming_the_model_not_the_replicas() {
    let urls = [refused_url(), refused_url()];
    let gw = TestGateway::start(&config(&urls, "")).await;
    let r = post_json(gw.addr, "/v1/chat/completions", chat(true)).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unavailable");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains(MODEL), "{msg}");
    for u in &urls {
        let port = u.rsplit(':').next().unwrap();
        assert!(!msg.contains(port), "replica address leaked: {msg}");
    }
    assert!(!String::from_utf8_lossy(&r.body).contains("127.0.0.1"));
}

#[tokio::test]
async fn a_replica_that_never_answers_is_a_504_and_is_not_retried() {
    let hung = mock(MockConfig {
        hang: true,
        ..fast()
    })
    .await;
    let other = mock(fast()).await;
    let gw = TestGateway::start(&config_model(
        &[hung.url(), other.url()],
        "[upstream]\nresponse_head_timeout = \"300ms\"\n",
        "balancer = \"round_robin\"",
    ))
    .await;
    // Round robin starts at the first replica.
    let started = Instant::now();
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        load(&other),
        0,
        "the hung replica may still be working on it"
    );
}

#[tokio::test]
async fn the_head_deadline_is_each_requests_own_on_a_reused_connection() {
    // The deadline timer lives with the replica connection and is moved for each request.
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(
        &[m.url()],
        &format!("{NO_PROBES}[upstream]\nresponse_head_timeout = \"400ms\"\n"),
    ))
    .await;
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 200);
    // The first request's deadline passes while the connection waits in the pool: the next
    // one, slower than what was left of it but quicker than its own, is answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.set_config(|c| c.slow_start = Duration::from_millis(250));
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 200, "{}", r.error_code());
    // And one that never answers still meets its own.
    m.set_config(|c| c.hang = true);
    let started = Instant::now();
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(390));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        m.stats.connections.load(Ordering::Relaxed),
        1,
        "one connection, reused"
    );
}

#[tokio::test]
async fn a_replica_that_goes_silent_mid_stream_is_cut_by_the_idle_chunk_timeout() {
    let m = mock(MockConfig {
        tokens: 5,
        inter_token: Duration::from_secs(30),
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(
        &[m.url()],
        "[upstream]\nidle_chunk_timeout = \"300ms\"\n",
    ))
    .await;
    let resp = open_stream(gw.addr).await;
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let (got, clean) = read_all(resp.into_body()).await;
    assert!(!clean);
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = String::from_utf8(got).unwrap();
    assert!(text.contains("tok0") && !text.contains("[DONE]"), "{text}");
}

/// The idle timer is polled once and then only checked while tokens flow: a replica that sends
/// several quick events and then goes silent is still cut, `idle_chunk_timeout` after its last
/// event.
#[tokio::test]
async fn a_replica_silent_after_quick_events_is_cut_after_its_last_one() {
    // Six events 40 ms apart (the head with the first), then silent, the connection held open.
    let mut writes: Vec<Vec<u8>> = (0..6).map(event_chunk).collect();
    writes[0] = [SSE_HEAD, &writes[0]].concat();
    let (url, replica) =
        raw_replica(writes, Duration::from_millis(40), Duration::from_secs(30)).await;
    let gw = TestGateway::start(&config(
        &[url],
        &format!("{NO_PROBES}[upstream]\nidle_chunk_timeout = \"300ms\"\n"),
    ))
    .await;
    let resp = open_stream(gw.addr).await;
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let (got, clean) = read_all(resp.into_body()).await;
    let took = started.elapsed();
    assert!(!clean);
    let text = String::from_utf8(got).unwrap();
    assert!(text.contains("tok5") && !text.contains("[DONE]"), "{text}");
    // Six events 40 ms apart, then 300 ms of silence: cut well before a second timeout.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    replica.abort();
}

#[tokio::test]
async fn slow_streams_are_not_cut_by_any_total_timeout() {
    let m = mock(MockConfig {
        tokens: 8,
        inter_token: Duration::from_millis(100),
        ..fast()
    })
    .await;
    // Each gap (100 ms) is within the idle limit; the whole stream (~900 ms) is longer than it.
    let gw = TestGateway::start(&config(
        &[m.url()],
        "[upstream]\nidle_chunk_timeout = \"400ms\"\nresponse_head_timeout = \"400ms\"\n",
    ))
    .await;
    let resp = open_stream(gw.addr).await;
    let (got, clean) = read_all(resp.into_body()).await;
    assert!(clean);
    assert!(got.ends_with(b"data: [DONE]\n\n"));
}

#[tokio::test]
async fn client_disconnect_mid_stream_closes_the_upstream_within_100ms() {
    let m = mock(MockConfig {
        tokens: 1000,
        inter_token: Duration::from_millis(10),
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let mut resp = open_stream(gw.addr).await;
    use http_body_util::BodyExt;
    for _ in 0..3 {
        resp.body_mut().frame().await.unwrap().unwrap();
    }
    let dropped_at = Instant::now();
    drop(resp);
    let noticed = tokio::time::timeout(Duration::from_secs(2), m.stats.wait_aborted())
        .await
        .expect("the replica never saw the client leave");
    let after = noticed.saturating_duration_since(dropped_at);
    assert!(after < Duration::from_millis(100), "took {after:?}");
}

#[tokio::test]
async fn inflight_is_released_when_streams_end_or_break() {
    let m = mock(MockConfig {
        tokens: 3,
        ..fast()
    })
    .await;
    let cfg = config(&[m.url()], "");
    let file = gateway::config::parse_file(&cfg).unwrap();
    let mut file = file;
    file.server.listen = Some("127.0.0.1:0".into());
    file.server.admin_listen = Some("127.0.0.1:0".into());
    let gw = gateway::Gateway::bind(gateway::config::validate::validate(&file).unwrap()).unwrap();
    let state = gw.state();
    let addr = gw.addrs.data;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gw.serve(stop.clone()));
    let ep = state.snapshot().routes[MODEL].versions[0].endpoints[0].clone();
    let resp = open_stream(addr).await;
    assert_eq!(ep.inflight(), 1, "a stream counts until its body ends");
    assert!(read_all(resp.into_body()).await.1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(ep.inflight(), 0);
    assert_eq!(
        ep.idle_connections(),
        1,
        "a clean end returns the connection"
    );
    m.set_config(|c| c.reset_after = Some(1));
    let resp = open_stream(addr).await;
    assert!(!read_all(resp.into_body()).await.1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(ep.inflight(), 0);
    stop.cancel();
}

#[tokio::test]
async fn an_empty_success_body_is_counted_with_its_status_and_keeps_the_connection() {
    // A 204 (or any Content-Length: 0 answer) has no body for hyper to poll.
    let m = mock(MockConfig {
        error_rate: 1.0,
        error_status: 204,
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], NO_PROBES)).await;
    for _ in 0..2 {
        let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
    }
    let ep = endpoint(&gw, &m.url());
    assert!(eventually(Duration::from_secs(1), || ep.inflight() == 0).await);
    assert_eq!(
        ep.idle_connections(),
        1,
        "the connection went back to the pool"
    );
    let metrics = request(gw.admin, "GET", "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = text
        .lines()
        .find(|l| l.starts_with("ai_requests_total{") && l.contains("status=\"204\""))
        .unwrap_or_default();
    assert!(line.ends_with(" 2"), "{text}");
}
