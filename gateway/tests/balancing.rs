//! Load balancing, health and overload protection through the real gateway, against mock
//! replicas. Distributions are measured over at least 2,000 requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use loadtest::{MockConfig, MockReplica};

fn load(m: &MockReplica) -> usize {
    m.stats.requests.load(Ordering::Relaxed)
}

/// Sends `n` non-streaming requests from `workers` concurrent clients; returns failures.
async fn drive(gw: &TestGateway, n: usize, workers: usize) -> usize {
    let addr = gw.addr;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = post_json(addr, "/v1/chat/completions", chat(false)).await;
                if r.status != 200 {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_inflight_spreads_30_long_streams_10_per_replica() {
    let long = MockConfig {
        tokens: 1000,
        inter_token: Duration::from_millis(20),
        ..fast()
    };
    let ms = [
        mock(long.clone()).await,
        mock(long.clone()).await,
        mock(long).await,
    ];
    let urls: Vec<String> = ms.iter().map(|m| m.url()).collect();
    let gw = TestGateway::start(&config_model(&urls, "", "balancer = \"least_inflight\"")).await;
    let mut open = Vec::new();
    for _ in 0..30 {
        let resp = open_stream(gw.addr).await;
        assert_eq!(resp.status(), 200);
        open.push(resp);
    }
    let held: Vec<usize> = urls.iter().map(|u| endpoint(&gw, u).inflight()).collect();
    assert_eq!(held.iter().sum::<usize>(), 30);
    assert!(held.iter().all(|&h| (9..=11).contains(&h)), "{held:?}");
    drop(open);
    let freed = eventually(Duration::from_secs(2), || {
        urls.iter().all(|u| endpoint(&gw, u).inflight() == 0)
    })
    .await;
    assert!(freed, "in-flight not released when clients left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_starves_a_5x_slower_replica_and_forgives_it_after_recovery() {
    let quick = MockConfig {
        ttft: Duration::from_millis(4),
        inter_token: Duration::ZERO,
        tokens: 1,
        ..MockConfig::default()
    };
    let slow = mock(MockConfig {
        ttft: Duration::from_millis(20),
        ..quick.clone()
    })
    .await;
    let a = mock(quick.clone()).await;
    let b = mock(quick).await;
    // A 1 s decay here plays the role of the default 10 s: recovery is checked within 3 s of
    // traffic, the scaled equivalent of 30 s.
    let gw = TestGateway::start(&config_model(
        &[slow.url(), a.url(), b.url()],
        "[upstream]\newma_decay = \"1s\"\n",
        "balancer = \"p2c_ewma\"",
    ))
    .await;
    assert_eq!(drive(&gw, 2000, 4).await, 0);
    let share = load(&slow) as f64 / 2000.0;
    assert!(share <= 0.15, "slow replica got {:.1} %", share * 100.0);
    eprintln!(
        "5x slower replica got {:.1} % of 2000 requests",
        share * 100.0
    );

    slow.set_config(|c| c.ttft = Duration::from_millis(4));
    let started = Instant::now();
    let mut recovered = None;
    while started.elapsed() < Duration::from_secs(3) {
        let before = (load(&slow), load(&a) + load(&b));
        assert_eq!(drive(&gw, 200, 4).await, 0);
        let got = load(&slow) - before.0;
        let total = got + load(&a) + load(&b) - before.1;
        if got as f64 >= 0.25 * total as f64 {
            recovered = Some(started.elapsed());
            break;
        }
    }
    let took = recovered.expect("recovered replica did not get back to 25 % within 3 s");
    eprintln!("recovered replica back to >= 25 % after {took:?} of traffic (decay 1 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_splits_1_2_3() {
    let ms = [mock(fast()).await, mock(fast()).await, mock(fast()).await];
    let replicas: Vec<String> = ms
        .iter()
        .zip([1, 2, 3])
        .map(|(m, w)| format!("{{ url = \"{}\", weight = {w} }}", m.url()))
        .collect();
    let gw = TestGateway::start(&config_replicas(
        &replicas,
        "",
        "balancer = \"weighted_round_robin\"",
    ))
    .await;
    assert_eq!(drive(&gw, 2400, 4).await, 0);
    for (m, want) in ms.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
        let got = load(m) as f64 / 2400.0;
        assert!((got - want).abs() <= 0.02, "got {got:.3}, want {want:.3}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_costs_no_request_is_ejected_and_comes_back_after_restart() {
    let a = mock(fast()).await;
    let b = mock(fast()).await;
    let victim = mock(fast()).await;
    let victim_addr = victim.addr;
    let gw = TestGateway::start(&config_model(
        &[a.url(), b.url(), victim.url()],
        "[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 2\n\
         unhealthy_threshold = 3\nmax_fails = 3\nfail_timeout = \"30s\"\n",
        "balancer = \"round_robin\"",
    ))
    .await;
    let ep = endpoint(&gw, &victim.url());
    assert_eq!(drive(&gw, 300, 4).await, 0);
    assert!(load(&victim) > 0);

    victim.stop();
    drop(victim);
    assert_eq!(drive(&gw, 600, 4).await, 0, "clients saw errors");
    assert!(ep.ejections_total() >= 1, "not ejected after max_fails");
    let now = gateway::clock::now_ns();
    assert!(!ep.is_routable(now));

    // Restart on the same port: back within healthy_threshold probes (2 × 100 ms, plus slack).
    let restarted = MockReplica::start(
        victim_addr,
        MockConfig {
            model: MODEL.into(),
            ..fast()
        },
    )
    .await
    .unwrap();
    let back_at = Instant::now();
    let back = eventually(Duration::from_secs(2), || {
        ep.is_routable(gateway::clock::now_ns())
    })
    .await;
    assert!(back, "restarted replica not back in rotation");
    let took = back_at.elapsed();
    assert!(took < Duration::from_millis(600), "took {took:?}");
    eprintln!("restarted replica back in rotation after {took:?} (2 probes of 100 ms)");
    assert_eq!(drive(&gw, 300, 4).await, 0);
    assert!(
        load(&restarted) >= 90,
        "restarted replica got {}",
        load(&restarted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serving_the_wrong_model_is_unhealthy_with_check_model() {
    let good = mock(fast()).await;
    let wrong = MockReplica::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            model: "some-other-model".into(),
            ..fast()
        },
    )
    .await
    .unwrap();
    let gw = TestGateway::start(&config(
        &[good.url(), wrong.url()],
        "[health]\ninterval = \"50ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 2\ncheck_model = true\n",
    ))
    .await;
    let bad = endpoint(&gw, &wrong.url());
    assert!(eventually(Duration::from_secs(2), || !bad.is_healthy()).await);
    assert!(endpoint(&gw, &good.url()).is_healthy());
    assert!(bad.last_error().unwrap().contains("some-other-model"));
    let before = load(&wrong);
    assert_eq!(drive(&gw, 50, 2).await, 0);
    assert_eq!(load(&wrong), before, "unhealthy replica got traffic");
    // Without check_model the same replica is healthy: it answers /health.
    let gw2 = TestGateway::start(&config(
        &[wrong.url()],
        "[health]\ninterval = \"50ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 2\n",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(endpoint(&gw2, &wrong.url()).is_healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_their_own_key_are_probed_and_served_with_it() {
    // Like vLLM started with --api-key: /v1/* needs the key, /health does not.
    let keyed = mock(MockConfig {
        api_key: Some("vllm-key".into()),
        ..fast()
    })
    .await;
    let health = "[health]\ninterval = \"50ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 1\ncheck_model = true\n";
    // Without the key the model check gets 401: unhealthy, and requests are refused upstream.
    let gw = TestGateway::start(&config(&[keyed.url()], health)).await;
    let ep = endpoint(&gw, &keyed.url());
    assert!(eventually(Duration::from_secs(2), || !ep.is_healthy()).await);
    assert!(
        ep.last_error().unwrap().contains("401"),
        "{:?}",
        ep.last_error()
    );
    std::env::set_var("GW_TEST_VLLM_KEY", "vllm-key");
    let with_key = format!("{health}[upstream]\napi_key_env = \"GW_TEST_VLLM_KEY\"\n");
    let gw = TestGateway::start(&config(&[keyed.url()], &with_key)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ep = endpoint(&gw, &keyed.url());
    assert!(ep.is_healthy(), "{:?}", ep.last_error());
    assert_eq!(
        post_json(gw.addr, "/v1/chat/completions", chat(false))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_unhealthy_means_panic_mode_not_failure() {
    let m = MockReplica::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            model: "other".into(),
            ..fast()
        },
    )
    .await
    .unwrap();
    let gw = TestGateway::start(&config(
        &[m.url()],
        "[health]\ninterval = \"50ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 1\ncheck_model = true\n",
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(2), || !endpoint(&gw, &m.url())
            .is_healthy())
        .await
    );
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 200);
    // Not ready: no model has a routable replica.
    let r = request(gw.admin, "GET", "/readyz", &[], "").await;
    assert_eq!(r.status, 503);
}

/// One replica with a single slot (its streams are long), and the given queue settings.
async fn one_slot_gateway(queue: &str) -> (MockReplica, TestGateway) {
    let m = mock(MockConfig {
        tokens: 1000,
        inter_token: Duration::from_millis(10),
        ..fast()
    })
    .await;
    let gw = TestGateway::start(&config_replicas(
        &[format!("{{ url = \"{}\", max_inflight = 1 }}", m.url())],
        NO_PROBES,
        &format!("queue = {{ {queue} }}"),
    ))
    .await;
    (m, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_replicas_queue_fifo_and_a_full_queue_sheds_in_under_10ms() {
    let (m, gw) = one_slot_gateway("max_size = 2, timeout = \"10s\"").await;
    // Occupy the only slot with a long stream.
    let held = open_stream(gw.addr).await;
    assert_eq!(held.status(), 200);
    // Two short requests queue, in this order.
    let mut queued = Vec::new();
    for id in ["first", "second"] {
        let body = serde_json::json!({"model": MODEL, "max_tokens": 1,
            "messages": [{"role": "user", "content": id}]});
        let addr = gw.addr;
        queued.push(tokio::spawn(async move {
            post_json(addr, "/v1/chat/completions", body).await
        }));
        let n = queued.len();
        let pool_queue = gw.state.queues.get_or_insert(MODEL, "1.0.0");
        assert!(eventually(Duration::from_secs(2), || pool_queue.len() == n).await);
    }
    // The queue is full: the next request is shed at once.
    let started = Instant::now();
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "queue_full");
    assert!(r.headers.contains_key("retry-after"));
    assert!(took < Duration::from_millis(10), "shedding took {took:?}");
    eprintln!("full queue shed a request in {took:?}");
    // Free the slot: the queued requests are served in arrival order.
    drop(held);
    for q in queued {
        assert_eq!(q.await.unwrap().status, 200);
    }
    let bodies: Vec<String> = m
        .stats
        .bodies()
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let first = bodies.iter().position(|b| b.contains("\"first\"")).unwrap();
    let second = bodies
        .iter()
        .position(|b| b.contains("\"second\""))
        .unwrap();
    assert!(first < second, "served out of order: {bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_times_out_with_503() {
    let (_m, gw) = one_slot_gateway("max_size = 4, timeout = \"200ms\"").await;
    let _held = open_stream(gw.addr).await;
    let started = Instant::now();
    let r = post_json(gw.addr, "/v1/chat/completions", chat(false)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "queue_timeout");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(gw.state.queues.get_or_insert(MODEL, "1.0.0").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_replica_gets_nothing_new_and_its_streams_finish() {
    const TOKEN_ENV: &str = "GW_TEST_ADMIN_TOKEN_DRAIN";
    std::env::set_var(TOKEN_ENV, "drain-secret");
    let cfg = MockConfig {
        tokens: 30,
        inter_token: Duration::from_millis(20),
        ..fast()
    };
    let a = mock(cfg.clone()).await;
    let b = mock(cfg).await;
    let gw = TestGateway::start(&config(
        &[a.url(), b.url()],
        &format!("[server]\nadmin_token_env = \"{TOKEN_ENV}\"\n"),
    ))
    .await;
    let stream = open_stream(gw.addr).await;
    let id = stream.headers()["x-gateway-replica"]
        .to_str()
        .unwrap()
        .to_owned();
    let (drained, other) = if id == a.addr.to_string() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let reading = tokio::spawn(read_all(stream.into_body()));

    let r = admin(
        &gw,
        "POST",
        &format!("/admin/replicas/{id}/drain"),
        "drain-secret",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["drained"], true);
    let before = load(drained);
    assert_eq!(drive(&gw, 20, 2).await, 0);
    assert_eq!(load(drained), before, "a drained replica got new requests");
    assert_eq!(load(other), 20);
    let (body, clean) = reading.await.unwrap();
    assert!(
        clean && body.ends_with(b"data: [DONE]\n\n"),
        "open stream cut by drain"
    );

    let r = admin(&gw, "GET", "/admin/replicas", "drain-secret").await;
    let list = r.json()["replicas"].as_array().unwrap().clone();
    let entry = list.iter().find(|e| e["id"] == id.as_str()).unwrap();
    assert_eq!(entry["drained"], true);
    assert_eq!(entry["models"][0]["model"], MODEL);
    assert_eq!(entry["models"][0]["version"], "1.0.0");

    let r = admin(
        &gw,
        "POST",
        &format!("/admin/replicas/{id}/enable"),
        "drain-secret",
    )
    .await;
    assert_eq!(r.json()["drained"], false);
    assert_eq!(drive(&gw, 20, 2).await, 0);
    assert!(load(drained) > before);
}

#[tokio::test]
async fn the_admin_api_needs_its_token() {
    const TOKEN_ENV: &str = "GW_TEST_ADMIN_TOKEN_AUTH";
    std::env::set_var(TOKEN_ENV, "s3cret");
    let m = mock(fast()).await;
    let gw = TestGateway::start(&config(
        &[m.url()],
        &format!("[server]\nadmin_token_env = \"{TOKEN_ENV}\"\n"),
    ))
    .await;
    let r = request(gw.admin, "GET", "/admin/replicas", &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert_eq!(r.error_code(), "invalid_admin_token");
    let r = admin(&gw, "GET", "/admin/replicas", "wrong").await;
    assert_eq!(r.status, 401);
    let r = admin(&gw, "GET", "/admin/replicas", "s3cret").await;
    assert_eq!(r.status, 200);
    let list = r.json()["replicas"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    for key in [
        "id",
        "url",
        "healthy",
        "ejected",
        "ejections",
        "drained",
        "inflight",
        "max_inflight",
        "ewma_ms",
        "models",
        "last_error",
    ] {
        assert!(list[0].get(key).is_some(), "missing {key}");
    }
    let r = admin(&gw, "POST", "/admin/replicas/10.9.9.9:1/drain", "s3cret").await;
    assert_eq!(r.status, 404);
    let r = admin(
        &gw,
        "GET",
        &format!("/admin/replicas/{}/drain", m.addr),
        "s3cret",
    )
    .await;
    assert_eq!(r.status, 405);
    // The admin API never answers on the data port.
    let r = request(
        gw.addr,
        "GET",
        "/admin/replicas",
        &[("authorization", "Bearer s3cret")],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    // No token configured: the admin API is off, liveness still answers.
    let gw2 = TestGateway::start(&config(
        &[m.url()],
        "[server]\nadmin_token_env = \"GW_TEST_TOKEN_THAT_IS_NOT_SET\"\n",
    ))
    .await;
    let r = admin(&gw2, "GET", "/admin/replicas", "anything").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "admin_disabled");
    assert_eq!(
        request(gw2.admin, "GET", "/healthz", &[], "").await.status,
        200
    );
}
