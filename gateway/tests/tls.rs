//! TLS termination with certificates generated in the test (rcgen): HTTP/1.1 and h2 by ALPN,
//! TLS 1.1 refused, the certificate replaced on disk without dropping an open connection, and
//! HTTP/1.1 over TLS held to the same rules as plain HTTP/1.1 (OpenAI-shaped 400s, smuggling,
//! pipelining, 408, `send_timeout`, a client that leaves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Cert {
    pem: String,
    key: String,
    der: CertificateDer<'static>,
}

fn cert() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    Cert {
        pem: c.cert.pem(),
        key: c.key_pair.serialize_pem(),
        der: c.cert.der().clone(),
    }
}

fn write_cert(dir: &Path, c: &Cert) {
    // Replace atomically, as a certificate manager would.
    for (name, data) in [("tls.crt", &c.pem), ("tls.key", &c.key)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn client(trusted: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add((*c).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn setup() -> (PathBuf, loadtest::MockReplica, TestGateway, Cert) {
    setup_with(fast(), "").await
}

/// A gateway with TLS on, before it `extra_server` keys for `[server]`, and a mock behind it.
async fn setup_with(
    mock_cfg: loadtest::MockConfig,
    extra_server: &str,
) -> (PathBuf, loadtest::MockReplica, TestGateway, Cert) {
    let dir = temp_dir("tls");
    let c = cert();
    write_cert(&dir, &c);
    let m = mock(mock_cfg).await;
    let gw = TestGateway::start(&config(
        &[m.url()],
        &format!(
            "[server]\n{extra_server}\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("tls.crt").display(),
            dir.join("tls.key").display()
        ),
    ))
    .await;
    (dir, m, gw, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2_over_tls_by_alpn_with_security_headers() {
    let (dir, _m, gw, c) = setup().await;
    // HTTP/1.1.
    let tls = tls_connect(gw.addr, &client(&[&c.der], &[b"http/1.1"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .body(Full::new(Bytes::from(chat(true).to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    // h2 when the client offers it.
    let tls = tls_connect(gw.addr, &client(&[&c.der], &[b"h2", b"http/1.1"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/v1/nope")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    // Plain HTTP on the TLS port gets nowhere.
    let (resp, _) = raw(
        gw.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(!resp.starts_with("HTTP/1.1 200"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A ClientHello by hand with the given version (3.2 = TLS 1.1, 3.3 = TLS 1.2) and no
/// `supported_versions`, offering suites and extensions a TLS 1.2 server accepts — so that a
/// refusal of 3.2 can only be about the version.
fn client_hello(minor: u8) -> Vec<u8> {
    let ext = |ty: u16, body: &[u8]| {
        let mut e = ty.to_be_bytes().to_vec();
        e.extend_from_slice(&(body.len() as u16).to_be_bytes());
        e.extend_from_slice(body);
        e
    };
    let mut exts = Vec::new();
    exts.extend(ext(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17])); // groups: x25519, P-256
    exts.extend(ext(0x000b, &[0x01, 0x00])); // ec point formats: uncompressed
    exts.extend(ext(
        0x000d,
        &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    )); // sig algs
    exts.extend(ext(0xff01, &[0x00])); // renegotiation_info
    let mut hello = vec![0x03, minor];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE-{ECDSA,RSA}-AES128-GCM
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    hello.extend_from_slice(&exts);
    let mut hs = vec![0x01, 0];
    hs.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    hs.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

async fn first_bytes(addr: std::net::SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(hello).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    buf[..n].to_vec()
}

#[tokio::test]
async fn a_tls_1_1_client_is_refused() {
    let (dir, _m, gw, _c) = setup().await;
    // Control: the same hello as TLS 1.2 gets a ServerHello (a handshake record).
    let ok = first_bytes(gw.addr, &client_hello(3)).await;
    assert_eq!(ok.first(), Some(&22), "TLS 1.2 hello not answered: {ok:?}");
    // As TLS 1.1: a fatal protocol_version alert (or a closed connection), never a ServerHello.
    let refused = first_bytes(gw.addr, &client_hello(2)).await;
    assert!(
        refused.is_empty() || refused[0] == 21,
        "answered {refused:?}"
    );
    if refused.len() >= 7 {
        assert_eq!(
            (refused[5], refused[6]),
            (2, 70),
            "fatal protocol_version alert"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_served_without_dropping_open_connections() {
    let (dir, _m, gw, old) = setup().await;
    let new = cert();
    let trust_both = client(&[&old.der, &new.der], &[b"http/1.1"]);
    let tls = tls_connect(gw.addr, &trust_both).await;
    let served = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(served(&tls), old.der);
    let (mut open, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    write_cert(&dir, &new);
    let started = Instant::now();
    loop {
        let s = tls_connect(gw.addr, &trust_both).await;
        if served(&s) == new.der {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "new certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened with the old certificate still works.
    let req = http::Request::get("/v1/models")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(open.send_request(req).await.unwrap().status(), 200);
    // A broken certificate file is ignored: the current one stays.
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = tls_connect(gw.addr, &trust_both).await;
    assert_eq!(served(&s), new.der);
    std::fs::remove_dir_all(&dir).unwrap();
}

const WAIT: Duration = Duration::from_secs(5);

/// Reads until the end of the stream: the text, whether it ended within `wait`, and whether
/// the server ended it properly (`close_notify`, not just a TCP close).
async fn tls_read_to_end(
    s: &mut tokio_rustls::client::TlsStream<TcpStream>,
    wait: Duration,
) -> (String, bool, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    let text = |out: &[u8]| String::from_utf8_lossy(out).into_owned();
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (text(&out), false, false),
            Ok(Ok(0)) => return (text(&out), true, true),
            Ok(Err(_)) => return (text(&out), true, false),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn chat_request(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_gets_the_same_answers_as_plain_http1() {
    let (dir, m, gw, c) = setup_with(fast(), "header_read_timeout = \"300ms\"").await;
    let connector = client(&[&c.der], &[b"http/1.1"]);
    // Two pipelined requests on one connection, answered in order; the second asks to close,
    // and the connection then ends with a close_notify.
    let mut s = tls_connect(gw.addr, &connector).await;
    let body = chat(false).to_string();
    let second = "GET /v1/models HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n";
    s.write_all(format!("{}{second}", chat_request(&body)).as_bytes())
        .await
        .unwrap();
    let (text, closed, clean) = tls_read_to_end(&mut s, WAIT).await;
    assert!(closed && clean, "closed {closed}, clean {clean}: {text}");
    let answers: Vec<&str> = text.matches("HTTP/1.1 200 OK\r\n").collect();
    assert_eq!(answers.len(), 2, "{text}");
    assert!(text.contains("chat.completion") && text.contains("\"object\":\"list\""));
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 1);
    // Malformed heads and request smuggling: OpenAI-shaped 400s, then the connection closes.
    for (bytes, code) in [
        (&b"GET / HTTP/9.9\r\n\r\n"[..], "malformed_request"),
        (
            b"GET /v1/models HTTP/1.1\r\nBad Header\r\n\r\n",
            "malformed_request",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "ambiguous_framing",
        ),
    ] {
        let mut s = tls_connect(gw.addr, &connector).await;
        s.write_all(bytes).await.unwrap();
        let (text, closed, _) = tls_read_to_end(&mut s, WAIT).await;
        assert!(closed, "{text}");
        let (status, body) = parse_raw(&text);
        assert_eq!(status, 400, "{text}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    // Half a head, then silence: 408 once `header_read_timeout` has passed.
    let mut s = tls_connect(gw.addr, &connector).await;
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost:")
        .await
        .unwrap();
    let started = Instant::now();
    let (text, closed, _) = tls_read_to_end(&mut s, WAIT).await;
    assert!(closed, "{text}");
    assert_eq!(parse_raw(&text).0, 408, "{text}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        m.stats.requests.load(Ordering::Relaxed),
        1,
        "nothing else reached the replica"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stops_reading_is_cut_after_the_send_timeout() {
    // About 20 MB of answer: far more than the socket buffers and rustls's hold.
    let big = loadtest::MockConfig {
        tokens: 2_000_000,
        inter_token: Duration::ZERO,
        ..fast()
    };
    let (dir, m, gw, c) = setup_with(big, "send_timeout = \"300ms\"").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let mut s = client(&[&c.der], &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    s.write_all(chat_request(&chat(false).to_string()).as_bytes())
        .await
        .unwrap();
    assert!(eventually(WAIT, || m.stats.requests.load(Ordering::Relaxed) == 1).await);
    let ep = endpoint(&gw, &m.url());
    assert!(
        eventually(Duration::from_secs(10), || ep.inflight() == 0).await,
        "still in flight"
    );
    assert_one_client_closed(&gw).await;
    let (_, closed, _) = tls_read_to_end(&mut s, WAIT).await;
    assert!(closed);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_leaves_before_the_answer_cancels_the_upstream() {
    let slow = loadtest::MockConfig {
        ttft: Duration::from_secs(30),
        ..fast()
    };
    let (dir, m, gw, c) = setup_with(slow, "").await;
    let mut s = tls_connect(gw.addr, &client(&[&c.der], &[b"http/1.1"])).await;
    s.write_all(chat_request(&chat(true).to_string()).as_bytes())
        .await
        .unwrap();
    assert!(eventually(WAIT, || m.stats.requests.load(Ordering::Relaxed) == 1).await);
    // Gone without a word (no close_notify): the TCP connection just closes.
    drop(s);
    let ep = endpoint(&gw, &m.url());
    assert!(
        eventually(Duration::from_secs(2), || ep.inflight() == 0).await,
        "in-flight count still {}",
        ep.inflight()
    );
    assert_one_client_closed(&gw).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
