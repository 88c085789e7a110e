//! Bad and hostile input: every case answers its status in OpenAI's error shape, and nothing
//! reaches a replica. Raw sockets where a well-behaved client library could not misbehave.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

async fn setup(extra: &str) -> (loadtest::MockReplica, TestGateway) {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], extra)).await;
    (m, gw)
}

fn assert_openai_error(body: &str, code: &str) {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string());
}

#[tokio::test]
async fn bad_bodies_are_400_and_unknown_models_404() {
    let (m, gw) = setup("").await;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "invalid_body"),
        (b"[]".to_vec(), 400, "invalid_body"),
        (b"".to_vec(), 400, "invalid_body"),
        (br#"{"messages":[]}"#.to_vec(), 400, "missing_model"),
        (br#"{"model":42}"#.to_vec(), 400, "invalid_body"),
        (br#"{"model":["a"]}"#.to_vec(), 400, "invalid_body"),
        (
            format!(r#"{{"model":"{MODEL}","stream":"yes"}}"#).into_bytes(),
            400,
            "invalid_body",
        ),
        (b"{\"model\":\"\xc3\x28\"}".to_vec(), 400, "invalid_body"),
        (
            format!(r#"{{"model":"{MODEL}","model":"other"}}"#).into_bytes(),
            400,
            "invalid_body",
        ),
        (
            br#"{"model":"no-such-model"}"#.to_vec(),
            404,
            "model_not_found",
        ),
        (
            format!(r#"{{"model":"{MODEL}@9.9"}}"#).into_bytes(),
            404,
            "model_not_found",
        ),
    ];
    for (body, status, code) in cases {
        let r = post_chat(gw.addr, &[], body.clone()).await;
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&body));
        assert_eq!(r.error_code(), code, "{:?}", String::from_utf8_lossy(&body));
    }
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn unknown_paths_wrong_methods_and_admin_paths_on_the_data_port() {
    let (_m, gw) = setup("").await;
    for (method, path, status, code) in [
        ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
        ("PUT", "/v1/embeddings", 405, "method_not_allowed"),
        ("POST", "/v1/models", 405, "method_not_allowed"),
        ("GET", "/v1/unknown", 404, "unknown_url"),
        ("GET", "/", 404, "unknown_url"),
        ("GET", "/metrics", 404, "unknown_url"),
        ("GET", "/healthz", 404, "unknown_url"),
        ("GET", "/readyz", 404, "unknown_url"),
        ("POST", "/admin/reload", 404, "unknown_url"),
    ] {
        let r = request(gw.addr, method, path, &[], "").await;
        assert_eq!(r.status, status, "{method} {path}");
        assert_eq!(r.error_code(), code, "{method} {path}");
        if status == 405 {
            assert!(r.headers.contains_key("allow"));
        }
    }
}

#[tokio::test]
async fn bodies_over_the_cap_are_413_with_or_without_content_length() {
    let (m, gw) = setup("[server]\nmax_body_bytes = 1024\n").await;
    let big = format!(r#"{{"model":"{MODEL}","x":"{}"}}"#, "a".repeat(2000));
    let r = post_chat(gw.addr, &[], big.clone()).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "request_too_large");
    // Chunked, no Content-Length: caught while reading.
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunked = format!("{head}{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let (resp, _) = raw(gw.addr, chunked.as_bytes(), Duration::from_secs(3)).await;
    let (status, body) = parse_raw(&resp);
    assert_eq!(status, 413, "{resp}");
    assert_openai_error(&body, "request_too_large");
    // Exactly at the cap is fine.
    let base = format!(r#"{{"model":"{MODEL}","x":""}}"#).len();
    let fits = format!(r#"{{"model":"{MODEL}","x":"{}"}}"#, "a".repeat(1024 - base));
    assert_eq!(fits.len(), 1024);
    let r = post_chat(gw.addr, &[], fits).await;
    assert_eq!(r.status, 200);
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 1);
}

/// A declared length over the cap is refused from the head: no byte of the body is waited for,
/// and a client that asked to be told first (`Expect: 100-continue`) is never told to send it.
#[tokio::test]
async fn a_declared_length_over_the_cap_is_413_before_the_body_is_read() {
    let (m, gw) = setup("[server]\nmax_body_bytes = 1024\n").await;
    for expect in ["", "Expect: 100-continue\r\n"] {
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: 1025\r\n{expect}\r\n"
        );
        // Only the head is sent, and the connection stays open: an answer must come without
        // the body.
        let (resp, _) = raw(gw.addr, head.as_bytes(), Duration::from_secs(3)).await;
        assert!(!resp.contains("100 Continue"), "{resp}");
        let (status, body) = parse_raw(&resp);
        assert_eq!(status, 413, "{expect:?}: {resp}");
        assert_openai_error(&body, "request_too_large");
    }
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_rejected_and_the_connection_closed() {
    let (m, gw) = setup("").await;
    let body = format!(r#"{{"model":"{MODEL}"}}"#);
    for head in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        // The classic CL.TE desync: a smuggled second request hides in the chunked body.
        let smuggled = "GET /v1/models HTTP/1.1\r\nHost: g\r\n\r\n";
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n{head}\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n{smuggled}",
            body.len()
        );
        let (resp, closed) = raw(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
        assert!(closed, "connection must be closed");
        let (status, rbody) = parse_raw(&resp);
        assert_eq!(status, 400, "{resp}");
        assert_eq!(
            resp.matches("HTTP/1.1").count(),
            1,
            "smuggled request was served: {resp}"
        );
        assert_openai_error(&rbody, "ambiguous_framing");
    }
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn two_different_content_lengths_are_rejected_and_the_connection_closed() {
    let (m, gw) = setup("").await;
    let body = format!(r#"{{"model":"{MODEL}"}}"#);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        body.len() + 5
    );
    let (resp, closed) = raw(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(closed);
    let (status, rbody) = parse_raw(&resp);
    assert_eq!(status, 400, "{resp}");
    assert_openai_error(&rbody, "ambiguous_framing");
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn oversized_header_sections_are_431_and_overlong_targets_414() {
    let (_m, gw) = setup("[server]\nmax_header_bytes = 4096\nmax_headers = 20\n").await;
    // Over our cap (20) but within the parser's margin (+10): the OpenAI-shaped 431.
    // A chat request with `n` extra headers.
    let with_headers = |n: usize| async move {
        let names: Vec<String> = (0..n).map(|i| format!("x-h{i}")).collect();
        let headers: Vec<(&str, &str)> = names.iter().map(|h| (h.as_str(), "v")).collect();
        request(
            gw.addr,
            "POST",
            "/v1/chat/completions",
            &headers,
            chat(false).to_string(),
        )
        .await
    };
    let r = with_headers(25).await;
    assert_eq!(r.status, 431);
    assert_eq!(r.error_code(), "headers_too_large");
    // A flood beyond the margin is refused by the parser itself: still an OpenAI-shaped 431.
    let r = with_headers(60).await;
    assert_eq!(r.status, 431);
    assert_eq!(r.error_code(), "headers_too_large");
    let long = "v".repeat(5000);
    let r = request(gw.addr, "GET", "/v1/models", &[("x-long", &long)], "").await;
    assert_eq!(r.status, 431);
    assert_eq!(r.error_code(), "headers_too_large");
    assert_eq!(r.headers["connection"], "close");
    // A request line longer than a whole head may be (4 KiB + the parser's 16 KiB margin) is a
    // target too long, not a header section too large. (Exactly one byte over, so that every
    // byte sent is read before the answer: unread bytes would turn the close into a reset.)
    let line = format!("GET /{}", "a".repeat(4096 + 16 * 1024 + 1 - 5));
    let (resp, closed) = raw(gw.addr, line.as_bytes(), Duration::from_secs(5)).await;
    let (status, body) = parse_raw(&resp);
    assert_eq!(status, 414, "{resp}");
    assert!(body.contains("\"uri_too_long\""), "{body}");
    assert!(closed);
}

#[tokio::test]
async fn slow_headers_get_408_and_an_idle_connection_is_just_closed() {
    let (_m, gw) = setup("[server]\nheader_read_timeout = \"300ms\"\n").await;
    let started = Instant::now();
    let (resp, closed) = raw(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nX-Slow: ",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(3));
    let (status, body) = parse_raw(&resp);
    assert_eq!(status, 408, "{resp:?}");
    assert_openai_error(&body, "request_timeout");
    // A keep-alive connection that sends nothing is closed quietly: no unsolicited 408 that a
    // client could mistake for the answer to its next request.
    let (resp, closed) = raw(gw.addr, b"", Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(resp, "");
}

#[tokio::test]
async fn slow_bodies_get_408() {
    let (m, gw) = setup("[server]\nbody_read_timeout = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let (resp, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
    let (status, body) = parse_raw(&resp);
    assert_eq!(status, 408, "{resp}");
    assert_openai_error(&body, "request_timeout");
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_hurt_the_gateway() {
    let (_m, gw) = setup("").await;
    for junk in [
        &b"\x00\x01\x02\x03garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff",
    ] {
        let (resp, _) = raw(gw.addr, junk, Duration::from_secs(2)).await;
        assert!(!resp.starts_with("HTTP/1.1 2"), "{resp}");
    }
    // Still serving.
    let r = request(gw.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(r.status, 200);
}
