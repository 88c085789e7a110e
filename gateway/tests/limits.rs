//! API keys and rate limits on one instance: 401/403/429 with their bodies and headers, the
//! per-key rate over 5 s of overload, token budgets with reserve-and-settle, per-IP limits
//! behind trusted proxies, and keys never appearing in logs, metrics or bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use loadtest::MockConfig;

const KEY_A: &str = "sk-test-aaaaaaaaaaaaaaaa";
const KEY_B: &str = "sk-test-bbbbbbbbbbbbbbbb";

fn keys_config(replicas: &[String], extra: &str, key_a: &str, key_b: &str) -> String {
    let mut c = config(
        replicas,
        &format!(
            "[auth]\nenabled = true\n{extra}\n\
             [[api_keys]]\nname = \"team-a\"\nsha256 = \"{}\"\n{key_a}\n\
             [[api_keys]]\nname = \"team-b\"\nsha256 = \"{}\"\n{key_b}\n",
            sha(KEY_A),
            sha(KEY_B)
        ),
    );
    // A second model, for access checks.
    c.push_str(&format!(
        "[[models]]\nname = \"other-model\"\n[[models.versions]]\nname = \"1\"\n\
         replicas = [{{ url = \"{}\" }}]\n",
        replicas[0]
    ));
    c
}

/// `passing` chat requests answered 200, then one refused with 429 whose message names `why`.
async fn passes_then_429(addr: std::net::SocketAddr, passing: usize, why: &str) {
    for _ in 0..passing {
        assert_eq!(
            post_json(addr, "/v1/chat/completions", chat(false))
                .await
                .status,
            200
        );
    }
    let r = post_json(addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 429);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains(why));
}

async fn with_key(addr: std::net::SocketAddr, key: &str, body: serde_json::Value) -> Reply {
    let auth = format!("Bearer {key}");
    post_chat(addr, &[("authorization", &auth)], body.to_string()).await
}

#[tokio::test]
async fn missing_and_wrong_keys_are_401_and_valid_keys_work_in_either_header() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&keys_config(&[m.url()], "", "", "")).await;
    for headers in [
        vec![],
        vec![("authorization", "Bearer sk-nope")],
        vec![("x-api-key", "sk-nope")],
        vec![("authorization", KEY_A)],
    ] {
        let r = request(
            gw.addr,
            "POST",
            "/v1/chat/completions",
            &headers,
            chat(false).to_string(),
        )
        .await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.error_code(), "invalid_api_key");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert!(!String::from_utf8_lossy(&r.body).contains("sk-"));
    }
    let r = request(gw.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(with_key(gw.addr, KEY_A, chat(false)).await.status, 200);
    let r = post_chat(gw.addr, &[("x-api-key", KEY_B)], chat(false).to_string()).await;
    assert_eq!(r.status, 200);
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 2);
    // The client's key is the gateway's credential: it never reaches a replica.
    let seen = m.stats.last_headers().unwrap();
    assert!(seen.get("authorization").is_none() && seen.get("x-api-key").is_none());
}

#[tokio::test]
async fn replicas_get_their_own_key_from_upstream_api_key_env_never_the_clients() {
    let m = mock(fast()).await;
    std::env::set_var("GW_TEST_REPLICA_KEY", "replica-secret");
    let extra = "[upstream]\napi_key_env = \"GW_TEST_REPLICA_KEY\"";
    let gw = TestGateway::start(&keys_config(&[m.url()], extra, "", "")).await;
    assert_eq!(with_key(gw.addr, KEY_A, chat(false)).await.status, 200);
    let seen = m.stats.last_headers().unwrap();
    assert_eq!(seen["authorization"], "Bearer replica-secret");
    // With auth off the client's own Authorization would pass, but the configured key wins.
    let open = config(
        &[m.url()],
        "[auth]\nenabled = false\n[upstream]\napi_key_env = \"GW_TEST_REPLICA_KEY\"",
    );
    let gw = TestGateway::start(&open).await;
    let r = post_chat(
        gw.addr,
        &[("authorization", "Bearer client")],
        chat(false).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = m.stats.last_headers().unwrap();
    assert_eq!(seen.get_all("authorization").iter().count(), 1);
    assert_eq!(seen["authorization"], "Bearer replica-secret");
    // A variable that is not set is a config error naming the field.
    let err = gateway::config::parse(&config(
        &[m.url()],
        "[upstream]\napi_key_env = \"GW_TEST_UNSET_VARIABLE_XYZ\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("upstream.api_key_env"), "{err}");
    assert!(!err.contains("replica-secret"));
}

#[tokio::test]
async fn a_key_gets_only_its_models_403_or_hidden_404() {
    let m = mock(fast()).await;
    let scoped = format!("models = [\"{MODEL}\"]");
    let gw = TestGateway::start(&keys_config(&[m.url()], "", &scoped, "")).await;
    let other = serde_json::json!({"model": "other-model", "messages": []});
    let r = with_key(gw.addr, KEY_A, other.clone()).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "model_not_allowed");
    assert_eq!(r.json()["error"]["type"], "permission_error");
    // Aliases of an allowed model are allowed.
    let alias = serde_json::json!({"model": "alias", "messages": []});
    assert_eq!(with_key(gw.addr, KEY_A, alias).await.status, 200);
    // The list shows only what the key may use; the other key sees everything.
    let ids = |r: Reply| -> Vec<String> {
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let auth_a = format!("Bearer {KEY_A}");
    let r = request(
        gw.addr,
        "GET",
        "/v1/models",
        &[("authorization", &auth_a)],
        "",
    )
    .await;
    assert_eq!(ids(r), vec![MODEL, "alias"]);
    let auth_b = format!("Bearer {KEY_B}");
    let r = request(
        gw.addr,
        "GET",
        "/v1/models",
        &[("authorization", &auth_b)],
        "",
    )
    .await;
    assert_eq!(ids(r), vec![MODEL, "alias", "other-model"]);
    let r = request(
        gw.addr,
        "GET",
        "/v1/models/other-model",
        &[("authorization", &auth_a)],
        "",
    )
    .await;
    assert_eq!(r.status, 404, "retrieving a model not allowed hides it");

    let hidden = TestGateway::start(&keys_config(
        &[m.url()],
        "hide_unlisted_models = true",
        &scoped,
        "",
    ))
    .await;
    let r = with_key(hidden.addr, KEY_A, other).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "model_not_found");
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_openai_headers() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&keys_config(
        &[m.url()],
        "",
        "requests_per_second = 1.0\nburst = 2",
        "",
    ))
    .await;
    let r = with_key(gw.addr, KEY_A, chat(false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(r.headers["x-ratelimit-remaining-requests"], "1");
    assert!(r.headers.contains_key("x-ratelimit-reset-requests"));
    assert_eq!(with_key(gw.addr, KEY_A, chat(false)).await.status, 200);
    let r = with_key(gw.addr, KEY_A, chat(false)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "requests");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["x-ratelimit-remaining-requests"], "0");
    // The other key is not affected.
    assert_eq!(with_key(gw.addr, KEY_B, chat(false)).await.status, 200);
    let r = request(gw.admin, "GET", "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        text.contains("gateway_ratelimited_total{scope=\"key\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_50_per_second_burst_10_driven_at_200_per_second_for_5s() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&keys_config(
        &[m.url()],
        "",
        "requests_per_second = 50.0\nburst = 10",
        "",
    ))
    .await;
    let (addr, b) = (gw.addr, tokio::spawn(pace(gw.addr, KEY_B, 10, 5.0)));
    let (ok, limited, other) = pace(addr, KEY_A, 200, 5.0).await;
    let expected = 10.0 + 50.0 * 5.0;
    eprintln!("key at 50 r/s burst 10, offered 200 r/s for 5 s: {ok} accepted (expected {expected}), {limited} limited");
    assert_eq!(other, 0);
    assert!(
        (ok as f64 - expected).abs() <= expected * 0.05,
        "accepted {ok}"
    );
    let (b_ok, b_limited, _) = b.await.unwrap();
    assert_eq!((b_ok, b_limited), (50, 0), "the second key was affected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_reserve_the_worst_case_and_settle_to_usage() {
    let m = mock(MockConfig {
        tokens: 100,
        inter_token: Duration::from_millis(5),
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&keys_config(
        &[m.url()],
        "",
        "tokens_per_minute = 10000",
        "",
    ))
    .await;
    let body = serde_json::json!({"model": MODEL, "stream": true, "max_tokens": 1000,
        "messages": [{"role": "user", "content": "Hi"}]});
    let auth = format!("Bearer {KEY_A}");
    let mut opened = Vec::new();
    for _ in 0..20 {
        let (addr, auth, body) = (gw.addr, auth.clone(), body.to_string());
        opened.push(tokio::spawn(async move {
            send(
                addr,
                "POST",
                "/v1/chat/completions",
                &[("authorization", &auth)],
                body,
            )
            .await
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for o in opened {
        let resp = o.await.unwrap();
        match resp.status().as_u16() {
            200 => admitted.push(resp),
            429 => {
                assert_eq!(resp.headers()["x-ratelimit-limit-tokens"], "10000");
                refused += 1;
            }
            s => panic!("status {s}"),
        }
    }
    eprintln!(
        "tokens: {} admitted at once of 20 (10,000 tpm, max_tokens 1000), {refused} refused",
        admitted.len()
    );
    assert!(
        admitted.len() <= 10 && admitted.len() >= 9,
        "admitted {}",
        admitted.len()
    );
    // The gateway asked the replica for usage, and kept it out of the client's stream.
    let sent = m.stats.bodies();
    assert!(String::from_utf8_lossy(sent.last().unwrap()).contains("\"include_usage\":true"));
    for resp in admitted {
        let (body, clean) = read_all(resp.into_body()).await;
        assert!(clean);
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(
            !text.contains("\"usage\""),
            "usage the client did not ask for leaked"
        );
    }
    // Settled to ~140 tokens each: new requests fit again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        let r = with_key(gw.addr, KEY_A, body.clone()).await;
        assert_eq!(r.status, 200);
    }
    // A client that asks for usage gets it.
    let mut asked = body.clone();
    asked["stream_options"] = serde_json::json!({"include_usage": true});
    let r = with_key(gw.addr, KEY_A, asked).await;
    assert!(String::from_utf8_lossy(&r.body).contains("\"usage\""));
}

/// A request no replica took (here: none reachable) generated nothing: its token reservation
/// is given back, so failures do not use up a key's budget.
#[tokio::test]
async fn a_request_no_replica_took_gives_its_tokens_back() {
    let gw = TestGateway::start(&keys_config(
        &[refused_url()],
        NO_PROBES,
        "tokens_per_minute = 3000",
        "",
    ))
    .await;
    // Each reserves about 1,000 tokens: without the refund the third would be refused (429).
    let body = serde_json::json!({"model": MODEL, "max_tokens": 1000,
        "messages": [{"role": "user", "content": "Hi"}]});
    for i in 0..10 {
        let r = with_key(gw.addr, KEY_A, body.clone()).await;
        assert!(
            r.status == 502 || r.status == 503,
            "request {i}: status {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[tokio::test]
async fn per_ip_limits_use_the_socket_address_or_trusted_forwarded_for() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(
        &[m.url()],
        "[limits]\nper_ip_requests_per_second = 1.0\nper_ip_burst = 2\n",
    ))
    .await;
    passes_then_429(gw.addr, 2, "address").await;
    // Forwarded-For from an untrusted peer changes nothing.
    let r = post_chat(
        gw.addr,
        &[("x-forwarded-for", "198.51.100.1")],
        chat(false).to_string(),
    )
    .await;
    assert_eq!(r.status, 429);

    let trusted = TestGateway::start(&config(
        &[m.url()],
        "[limits]\nper_ip_requests_per_second = 1.0\nper_ip_burst = 2\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    ))
    .await;
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        for n in 0..3 {
            let r = post_chat(
                trusted.addr,
                &[("x-forwarded-for", client)],
                chat(false).to_string(),
            )
            .await;
            assert_eq!(r.status, if n < 2 { 200 } else { 429 }, "{client} #{n}");
        }
    }
}

#[tokio::test]
async fn a_model_wide_limit_applies_to_every_caller() {
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config_model(
        &[m.url()],
        "",
        "requests_per_second = 1.0\nburst = 3",
    ))
    .await;
    passes_then_429(gw.addr, 3, "model").await;
}

/// A replica that sends each answer in one piece framed by `Content-Length` (as a buffering
/// server might), a stream included: the usage event in it.
async fn length_framed_stream_replica() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    // One whole request (head and Content-Length body), then its answer.
                    let whole = |got: &[u8]| {
                        let end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        (got.len() >= end + length).then_some(end + length)
                    };
                    while whole(&got).is_none() {
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let used = whole(&got).unwrap();
                    got.drain(..used);
                    let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n\
                                data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n\
                                data: [DONE]\n\n";
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// The usage event the gateway asked for on a client's behalf is taken out of a stream the
/// replica framed by length: the replica's length is then not the answer's. HTTP/1.1 clients
/// get the answer chunked, h2 clients without the replica's `content-length`; both get all of
/// it, and no usage.
#[tokio::test]
async fn a_length_framed_stream_that_loses_its_usage_event_is_not_sent_with_that_length() {
    let url = length_framed_stream_replica().await;
    let gw = TestGateway::start(&keys_config(
        &[url],
        NO_PROBES,
        "tokens_per_minute = 100000",
        "",
    ))
    .await;
    let body = serde_json::json!({"model": MODEL, "stream": true,
        "messages": [{"role": "user", "content": "Hi"}]});
    let check = |text: &str| {
        assert!(text.contains("\"hi\""), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(!text.contains("usage"), "{text}");
    };
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        with_key(gw.addr, KEY_A, body.clone()),
    )
    .await
    .expect("the answer ended");
    assert_eq!(r.status, 200);
    check(&String::from_utf8_lossy(&r.body));
    // h2: hyper writes the head from the map.
    let (mut sender, _conn) = h2c(gw.addr).await;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/v1/chat/completions", gw.addr))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY_A}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("content-length"));
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .expect("the answer ended")
    .unwrap()
    .to_bytes();
    check(&String::from_utf8_lossy(&got));
    // Without stripping (the client asked for usage itself) the replica's length holds.
    let mut asked = body;
    asked["stream_options"] = serde_json::json!({"include_usage": true});
    let r = with_key(gw.addr, KEY_A, asked).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("\"usage\""));
    assert_eq!(
        r.headers
            .get("content-length")
            .map(|v| v.to_str().unwrap().parse::<usize>().unwrap()),
        Some(r.body.len())
    );
}

/// The gateway remembers the key that passed on a kept-alive connection (and skips its hash
/// when the same key comes again): a reload that revokes the key still refuses it on that
/// connection, a key that stays keeps working, and a key added works at once.
#[tokio::test]
async fn a_key_revoked_by_a_reload_is_refused_on_a_connection_that_used_it() {
    const TOKEN: &str = "GW_TEST_ADMIN_KEYS";
    std::env::set_var(TOKEN, "keys-token");
    let m = mock(fast()).await;
    let dir = temp_dir("keys");
    let path = dir.join("gateway.toml");
    let config = |keys: &[&str]| {
        let mut c = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             admin_token_env = \"{TOKEN}\"\n{NO_PROBES}[auth]\nenabled = true\n"
        );
        for (i, k) in keys.iter().enumerate() {
            c.push_str(&format!(
                "[[api_keys]]\nname = \"key-{i}\"\nsha256 = \"{}\"\n",
                sha(k)
            ));
        }
        c.push_str(&format!(
            "[[models]]\nname = \"{MODEL}\"\n[[models.versions]]\nname = \"1\"\n\
             replicas = [{{ url = \"{}\" }}]\n",
            m.url()
        ));
        c
    };
    std::fs::write(&path, config(&[KEY_A, KEY_B])).unwrap();
    let gw = TestGateway::start_file(&path).await;
    // Every request below goes on this one connection.
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(conn);
    let mut status_with = async |key: &str| {
        let req = http::Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("host", "gw")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                chat(false).to_string(),
            )))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        status
    };
    assert_eq!(status_with(KEY_A).await, 200);
    assert_eq!(status_with(KEY_A).await, 200);
    assert_eq!(status_with("sk-test-not-a-key").await, 401);
    assert_eq!(status_with(KEY_A).await, 200);
    // Key A revoked, a third key added.
    const KEY_C: &str = "sk-test-cccccccccccccccc";
    std::fs::write(&path, config(&[KEY_B, KEY_C])).unwrap();
    assert_eq!(
        admin(&gw, "POST", "/admin/reload", "keys-token")
            .await
            .status,
        200
    );
    assert_eq!(status_with(KEY_A).await, 401);
    assert_eq!(status_with(KEY_B).await, 200);
    assert_eq!(status_with(KEY_C).await, 200);
    assert_eq!(status_with(KEY_A).await, 401);
    // All of it on the one connection.
    assert!(!connection.is_finished());
    std::fs::remove_dir_all(&dir).unwrap();
}
