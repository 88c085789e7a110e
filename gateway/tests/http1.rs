//! The data port's own HTTP/1.1 server (`gateway::h1`) on real sockets: keep-alive,
//! pipelining, `Expect: 100-continue`, HTTP/1.0, `HEAD`, chunked uploads, malformed heads, and
//! a client that leaves before its answer is ready.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use loadtest::MockConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

async fn setup(extra: &str) -> (loadtest::MockReplica, TestGateway) {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(&[m.url()], extra)).await;
    (m, gw)
}

/// Reads one response (content-length or chunked framing) off a kept-alive connection.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let rest: Vec<u8> = buf.drain(..head_end).collect::<Vec<_>>();
    drop(rest);
    let body = if head.starts_with("http/1.1 100") || head.contains("\r\ncontent-length: 0\r\n") {
        Vec::new()
    } else if let Some(len) = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length: "))
    {
        let len: usize = len.trim().parse().unwrap();
        while buf.len() < len {
            fill(s, buf).await;
        }
        buf.drain(..len).collect()
    } else {
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(s, buf).await;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break body;
            }
        }
    };
    (head, String::from_utf8_lossy(&body).into_owned())
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
        .await
        .expect("response in time")
        .unwrap();
    assert!(
        n > 0,
        "closed early; have {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

fn chat_request(extra_headers: &str, body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (m, gw) = setup("").await;
    let body = chat(false).to_string();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Three requests in one write: two chats around a model listing.
    let all = format!(
        "{}GET /v1/models HTTP/1.1\r\nHost: g\r\n\r\n{}",
        chat_request("", &body),
        chat_request("X-Request-Id: third\r\n", &body)
    );
    s.write_all(all.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (h1, b1) = read_response(&mut s, &mut buf).await;
    let (h2, b2) = read_response(&mut s, &mut buf).await;
    let (h3, b3) = read_response(&mut s, &mut buf).await;
    assert!(h1.starts_with("http/1.1 200"), "{h1}");
    assert!(b1.contains("chat.completion"), "{b1}");
    assert!(
        h2.starts_with("http/1.1 200") && b2.contains("\"list\""),
        "{h2}{b2}"
    );
    assert!(h3.contains("x-request-id: third"), "{h3}");
    assert!(b3.contains("chat.completion"), "{b3}");
    assert!(!h1.contains("connection: close"));
    assert!(h1.contains("\r\ndate: "), "{h1}");
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn expect_100_continue_is_answered_only_when_the_body_is_wanted() {
    let (m, gw) = setup("").await;
    let body = chat(false).to_string();
    // The head alone, announcing the body.
    let head_only = chat_request("Expect: 100-continue\r\n", &body).replace(&body, "");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(head_only.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (interim, _) = read_response(&mut s, &mut buf).await;
    assert!(interim.starts_with("http/1.1 100 continue"), "{interim}");
    s.write_all(body.as_bytes()).await.unwrap();
    let (head, answer) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(answer.contains("chat.completion"));
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 1);

    // Refused before the body is read (auth): no 100, an answer, and the connection closes
    // (the unsent body would otherwise be read as the next request).
    let (_m, gw) = setup(&format!(
        "[auth]\nenabled = true\n[[api_keys]]\nname = \"k\"\nsha256 = \"{}\"\n",
        sha("sk-right")
    ))
    .await;
    let (resp, closed) = raw(gw.addr, head_only.as_bytes(), WAIT).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(!resp.contains(" 100 "), "{resp}");
    assert!(closed);
}

#[tokio::test]
async fn http_1_0_and_head_requests() {
    let (_m, gw) = setup("").await;
    // HTTP/1.0 without keep-alive: answered, then closed.
    let (resp, closed) = raw(gw.addr, b"GET /v1/models HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("connection: close"), "{resp}");
    assert!(closed);
    // HTTP/1.0 with keep-alive, then HEAD on the same connection: a length and no body.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_response(&mut s, &mut buf).await;
    assert!(head.contains("connection: keep-alive"), "{head}");
    let len = body.len();
    s.write_all(b"HEAD /v1/models HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(&mut s, &mut buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {len}\r\n")),
        "{head}"
    );
    buf.drain(..head_end);
    // No body follows: the next answer starts right after the head.
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_chunked_upload_in_pieces_reaches_the_replica_whole() {
    let (m, gw) = setup("").await;
    let body = chat(false).to_string();
    let (a, b) = body.split_at(body.len() / 2);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n",
            a.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(format!("{:x};ext=1\r\n{b}\r\n0\r\n\r\n", b.len()).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, answer) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(answer.contains("chat.completion"));
    assert_eq!(m.stats.bodies().last().unwrap(), body.as_bytes());
    // A broken chunk size: 400, and the connection is not reused.
    let (resp, closed) = raw(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        WAIT,
    )
    .await;
    let (status, body) = parse_raw(&resp);
    assert_eq!(status, 400, "{resp}");
    assert!(body.contains("invalid_body"), "{body}");
    assert!(closed);
}

#[tokio::test]
async fn malformed_heads_get_an_openai_400_and_a_closed_connection() {
    let (m, gw) = setup("").await;
    for junk in [
        &b"GET / HTTP/9.9\r\n\r\n"[..],
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x00\x01\x02\x03garbage\r\n\r\n",
    ] {
        let (resp, closed) = raw(gw.addr, junk, WAIT).await;
        let (status, body) = parse_raw(&resp);
        assert_eq!(status, 400, "{resp}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "malformed_request", "{v}");
        assert!(resp.contains("connection: close"));
        assert!(closed);
    }
    // A header flood beyond the parser's margin: 431 in OpenAI's shape too.
    let flood: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let req = format!("GET /v1/models HTTP/1.1\r\n{flood}\r\n");
    let (resp, closed) = raw(gw.addr, req.as_bytes(), WAIT).await;
    let (status, body) = parse_raw(&resp);
    assert_eq!(status, 431, "{resp}");
    assert!(body.contains("headers_too_large"), "{body}");
    assert!(closed);
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_quietly_after_the_header_timeout() {
    let (_m, gw) = setup("[server]\nheader_read_timeout = \"300ms\"\n").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, _) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"));
    // A second request 200 ms later: the timeout counts from this wait, not the first one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"));
    let started = std::time::Instant::now();
    let (rest, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed);
    assert_eq!(rest, "", "no unsolicited answer");
    let idle_for = started.elapsed();
    assert!(
        idle_for >= Duration::from_millis(250) && idle_for < Duration::from_secs(3),
        "closed after {idle_for:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_cancels_the_upstream_and_is_recorded() {
    let m = mock(MockConfig {
        ttft: Duration::from_secs(30),
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let body = chat(true).to_string();
    s.write_all(chat_request("", &body).as_bytes())
        .await
        .unwrap();
    assert!(
        eventually(WAIT, || m.stats.requests.load(Ordering::Relaxed) == 1).await,
        "the request reached the replica"
    );
    drop(s);
    // The gateway drops the request at once: its upstream connection closes, the in-flight
    // count returns to zero, and the request is recorded as the client's doing.
    let ep = endpoint(&gw, &m.url());
    assert!(
        eventually(Duration::from_secs(2), || ep.inflight() == 0).await,
        "in-flight count still {}",
        ep.inflight()
    );
    assert_one_client_closed(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_idle_connections_at_once_and_busy_ones_after_their_answer() {
    let m = mock(MockConfig {
        tokens: 10,
        inter_token: Duration::from_millis(30),
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config(&[m.url()], "")).await;
    // An idle kept-alive connection.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /v1/models HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let mut idle_buf = Vec::new();
    read_response(&mut idle, &mut idle_buf).await;
    // A busy one: a stream under way.
    let mut busy = TcpStream::connect(gw.addr).await.unwrap();
    busy.write_all(chat_request("", &chat(true).to_string()).as_bytes())
        .await
        .unwrap();
    let mut busy_buf = Vec::new();
    fill(&mut busy, &mut busy_buf).await;
    let started = std::time::Instant::now();
    let drain = tokio::spawn(gw.shutdown());
    // The idle one closes without an answer; the stream ends whole, then its connection.
    let (rest, closed) = read_until_close(&mut idle, WAIT).await;
    assert!(closed && rest.is_empty(), "{rest:?}");
    let (rest, closed) = read_until_close(&mut busy, WAIT).await;
    assert!(closed);
    busy_buf.extend_from_slice(rest.as_bytes());
    let text = String::from_utf8_lossy(&busy_buf);
    assert!(
        text.contains("data: [DONE]") && text.ends_with("0\r\n\r\n"),
        "{text}"
    );
    tokio::time::timeout(WAIT, drain).await.unwrap().unwrap();
    // Well under the 30 s drain timeout: nothing waited for the idle connection.
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let (m, gw) = huge_answer_with_a_short_send_timeout().await;
    // A small receive buffer, and nothing read: the gateway's writes soon find no room.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(gw.addr).await.unwrap();
    s.write_all(chat_request("", &chat(false).to_string()).as_bytes())
        .await
        .unwrap();
    assert!(eventually(WAIT, || m.stats.requests.load(Ordering::Relaxed) == 1).await);
    // The gateway gives up on the stalled reader: the replica's connection is dropped, its
    // slot freed, and the request counted as the client's doing.
    let ep = endpoint(&gw, &m.url());
    assert!(
        eventually(Duration::from_secs(10), || ep.inflight() == 0).await,
        "still in flight"
    );
    assert_one_client_closed(&gw).await;
    // And the client's connection is closed: reading now drains what was sent, then ends.
    let (_, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed);
}

/// Field names are case-insensitive: the key, the request id and what the client's
/// `Connection` names are found whatever their case, and the replica gets the client's fields
/// by name with their values as sent.
#[tokio::test]
async fn fields_are_found_and_forwarded_whatever_the_case_of_their_names() {
    let key = "sk-case-0123456789";
    let extra = format!(
        "[auth]\nenabled = true\n[[api_keys]]\nname = \"a\"\nsha256 = \"{}\"\n",
        sha(key)
    );
    let (m, gw) = setup(&extra).await;
    let chat_body = chat(false).to_string();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let fields = format!(
        "AUTHORIZATION: Bearer {key}\r\nX-Request-Id: Mixed-Case-1\r\nCONNECTION: X-Private\r\n\
         X-Private: secret\r\nX-Custom: Kept As Sent\r\nAccept-Encoding: gzip\r\n"
    );
    s.write_all(chat_request(&fields, &chat_body).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "{head}{body}");
    let seen = m.stats.last_headers().unwrap();
    assert_eq!(seen["x-request-id"], "Mixed-Case-1");
    assert_eq!(seen["x-custom"], "Kept As Sent");
    assert!(seen.get("x-private").is_none(), "{seen:?}");
    assert!(seen.get("accept-encoding").is_none(), "{seen:?}");
    // The client's key is the gateway's credential: it does not reach the replica.
    assert!(seen.get("authorization").is_none(), "{seen:?}");
    // A wrong key in any case is refused.
    let fields = "Authorization: Bearer sk-wrong\r\n";
    s.write_all(chat_request(fields, &chat_body).as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("http/1.1 401"), "{head}{body}");
}

#[tokio::test]
async fn past_max_connections_a_client_waits_to_be_accepted_and_a_reload_can_let_it_in() {
    const TOKEN: &str = "GW_TEST_ADMIN_MAXCONN";
    std::env::set_var(TOKEN, "maxconn-token");
    let m = mock(fast()).await;
    let dir = temp_dir("maxconn");
    let path = dir.join("gateway.toml");
    let config_with = |cap: u32| {
        config(
            &[m.url()],
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                 admin_token_env = \"{TOKEN}\"\nmax_connections = {cap}\n"
            ),
        )
    };
    std::fs::write(&path, config_with(1)).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let body = chat(false).to_string();
    let (mut a, mut buf_a) = (TcpStream::connect(gw.addr).await.unwrap(), Vec::new());
    a.write_all(chat_request("", &body).as_bytes())
        .await
        .unwrap();
    assert!(read_response(&mut a, &mut buf_a).await.0.contains(" 200 "));
    // The second client's connect succeeds (the listen queue), but it is not read while the
    // first one, kept alive, holds the only place.
    let (mut b, mut buf_b) = (TcpStream::connect(gw.addr).await.unwrap(), Vec::new());
    b.write_all(chat_request("", &body).as_bytes())
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(400), b.read(&mut byte))
            .await
            .is_err(),
        "answered over max_connections"
    );
    let metrics = request(gw.admin, "GET", "/metrics", &[], "").await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("\ngateway_client_connections 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\ngateway_client_connections_limit 1\n"),
        "{metrics}"
    );
    let status = admin(&gw, "GET", "/admin/status", "maxconn-token")
        .await
        .json();
    assert_eq!(status["client_connections"], 1, "{status}");
    assert_eq!(status["client_connections_limit"], 1, "{status}");
    assert!(status["open_file_limit"].as_u64().unwrap() > 0, "{status}");
    // The first one leaves: the second is accepted and answered.
    drop(a);
    assert!(read_response(&mut b, &mut buf_b).await.0.contains(" 200 "));
    // A third waits behind the second, until a reload raises the cap.
    let (mut c, mut buf_c) = (TcpStream::connect(gw.addr).await.unwrap(), Vec::new());
    c.write_all(chat_request("", &body).as_bytes())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(400), c.read(&mut byte))
            .await
            .is_err(),
        "answered over max_connections"
    );
    std::fs::write(&path, config_with(2)).unwrap();
    assert_eq!(
        admin(&gw, "POST", "/admin/reload", "maxconn-token")
            .await
            .status,
        200
    );
    assert!(read_response(&mut c, &mut buf_c).await.0.contains(" 200 "));
    // Both still served on their connections.
    b.write_all(chat_request("", &body).as_bytes())
        .await
        .unwrap();
    assert!(read_response(&mut b, &mut buf_b).await.0.contains(" 200 "));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Between a raw replica's writes.
const PAUSE: Duration = Duration::from_millis(100);

/// The chunks of a chunked body, as sent (their data), and whether the last chunk came.
fn chunks_of(mut body: &[u8]) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    while let Some(i) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&body[..i]).unwrap(), 16).unwrap();
        if size == 0 {
            return (out, true);
        }
        out.push(String::from_utf8_lossy(&body[i + 2..i + 2 + size]).into_owned());
        body = &body[i + 2 + size + 2..];
    }
    (out, false)
}

/// Events a replica sends together (a reader that fell behind, or a role event and the first
/// token written back to back) leave the gateway in one write, as one chunk, instead of one
/// write each; events that come apart still go out as they come.
#[tokio::test]
async fn events_that_arrive_together_leave_in_one_chunk() {
    let together: Vec<u8> = [SSE_HEAD.to_vec(), (0..4).flat_map(event_chunk).collect()].concat();
    let mut end = event_chunk(5);
    end.extend_from_slice(b"0\r\n\r\n");
    let (url, replica) =
        raw_replica(vec![together, event_chunk(4), end], PAUSE, Duration::ZERO).await;
    let gw = TestGateway::start(&config(&[url], NO_PROBES)).await;
    let req = chat_request("Connection: close\r\n", &chat(true).to_string());
    let (resp, _) = raw(gw.addr, req.as_bytes(), WAIT).await;
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let (chunks, whole) = chunks_of(body.as_bytes());
    assert!(whole, "{resp}");
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    assert!(
        (0..4).all(|i| chunks[0].contains(&format!("tok{i}\""))),
        "{chunks:?}"
    );
    assert!(
        chunks[1].contains("tok4") && chunks[2].contains("tok5"),
        "{chunks:?}"
    );
    replica.abort();
}

/// A break found while gathering (a bad chunk after good ones, read together) is passed on
/// after the good events: they are sent, then the message is left unfinished.
#[tokio::test]
async fn a_break_behind_events_read_together_comes_after_them() {
    let broken: Vec<u8> = [
        SSE_HEAD.to_vec(),
        (0..3).flat_map(event_chunk).collect(),
        b"zz\r\nnot a chunk\r\n".to_vec(),
    ]
    .concat();
    let (url, replica) = raw_replica(vec![broken], PAUSE, Duration::ZERO).await;
    let gw = TestGateway::start(&config(&[url], NO_PROBES)).await;
    let req = chat_request("Connection: close\r\n", &chat(true).to_string());
    let (resp, closed) = raw(gw.addr, req.as_bytes(), WAIT).await;
    assert!(closed, "{resp}");
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let (chunks, whole) = chunks_of(body.as_bytes());
    assert!(!whole, "{resp}");
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert!(
        (0..3).all(|i| chunks[0].contains(&format!("tok{i}\""))),
        "{chunks:?}"
    );
    replica.abort();
}
